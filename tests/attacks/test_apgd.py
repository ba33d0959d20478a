import torch
from torch import nn

from osad.attacks import APGD, PGD, cross_entropy, halve_step, step_checkpoints
from tests.attacks.helpers import accuracy, seeded


def test_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99: intervals shrink by 0.03 to 0.06.
    assert step_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert step_checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert step_checkpoints(1) == [1]


def test_step_halves_on_either_condition():
    t, f = torch.tensor([True]), torch.tensor([False])
    improved, same = torch.tensor([2.0]), torch.tensor([1.0])
    before = torch.tensor([1.0])
    # Condition 1: fewer than 75% of the 10 steps increased the objective.
    assert halve_step(torch.tensor([7.0]), 10, t, improved, before).item()
    assert not halve_step(torch.tensor([8.0]), 10, t, improved, before).item()
    # Condition 2: no halving at the last checkpoint and no new best since.
    assert halve_step(torch.tensor([8.0]), 10, f, same, before).item()
    assert not halve_step(torch.tensor([8.0]), 10, t, same, before).item()
    assert not halve_step(torch.tensor([8.0]), 10, f, improved, before).item()


class _Pixels(nn.Module):
    """'Logits' = the image itself, so an objective can be any function of the pixels."""

    def forward(self, x):
        return x.flatten(1)


def test_halving_lets_apgd_settle_where_a_fixed_step_oscillates():
    # Maximise -||x - c||^2 with c inside the ball: a linf step of fixed size 2 eps keeps
    # jumping over c, APGD's halved steps close in on it.
    x = torch.full((4, 1, 4, 4), 0.5)
    target = x + torch.linspace(-0.03, 0.03, 16).view(1, 1, 4, 4)

    def closeness(logits, features, labels):
        return -(logits - target.flatten(1)).square().sum(1)

    eps = 0.1
    kw = dict(eps=eps, steps=100, objective=closeness, random_start=False)
    apgd = APGD(_Pixels(), **kw)(x, torch.zeros(4, dtype=torch.long))
    pgd = PGD(_Pixels(), alpha=2 * eps, **kw)(x, torch.zeros(4, dtype=torch.long))
    assert (apgd - target).abs().max() < 1e-3
    assert (pgd - target).abs().max() > 0.01


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_steps(plain_model, known_batch):
    x, y = known_batch
    kw = dict(eps=32 / 255, steps=10, generator=seeded())
    adv_pgd = PGD(plain_model, alpha=8 / 255, **kw)(x, y)
    adv_apgd = APGD(plain_model, **kw)(x, y)
    assert accuracy(plain_model, adv_apgd, y) <= accuracy(plain_model, adv_pgd, y) + 0.02
    with torch.no_grad():
        loss_pgd = cross_entropy(plain_model(adv_pgd), None, y).mean()
        loss_apgd = cross_entropy(plain_model(adv_apgd), None, y).mean()
    assert loss_apgd >= loss_pgd - 0.05


def test_apgd_dlr_and_l2_lower_accuracy(plain_model, known_batch):
    x, y = known_batch
    clean = accuracy(plain_model, x, y)
    dlr = APGD(plain_model, eps=32 / 255, steps=20, loss="dlr", generator=seeded())(x, y)
    l2 = APGD(plain_model, eps=1.0, steps=10, norm="l2", generator=seeded())(x, y)
    assert accuracy(plain_model, dlr, y) < clean - 0.3
    assert accuracy(plain_model, l2, y) < clean - 0.3
