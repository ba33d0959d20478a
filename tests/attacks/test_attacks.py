import pytest
import torch

from osad.attacks import FGSM, FGSMRS, PGD, attack, build_attack, cross_entropy
from osad.config import AttackConfig


def _known_test(data, n=200):
    known = data.test_labels >= 0
    return data.test_images[known][:n], data.test_labels[known][:n]


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_pgd_lowers_accuracy_of_undefended_model(plain_model, digits_split0):
    x, y = _known_test(digits_split0)
    clean = _accuracy(plain_model, x, y)
    adv = PGD(plain_model, eps=32 / 255, alpha=8 / 255, steps=10)(x, y)
    assert clean > 0.9
    assert _accuracy(plain_model, adv, y) < clean - 0.3


def test_fgsm_lowers_accuracy(plain_model, digits_split0):
    x, y = _known_test(digits_split0)
    adv = FGSM(plain_model, eps=32 / 255)(x, y)
    assert _accuracy(plain_model, adv, y) < _accuracy(plain_model, x, y) - 0.05


@pytest.mark.parametrize("norm,eps", [("linf", 16 / 255), ("l2", 0.5)])
def test_budget_and_box_hold_exactly(plain_model, digits_split0, norm, eps):
    x, y = _known_test(digits_split0, 64)
    adv = PGD(plain_model, eps=eps, alpha=eps / 3, steps=7, norm=norm, restarts=2)(x, y)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max().item() <= eps + 1e-6
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    # The attack uses its budget: most perturbations reach the boundary.
    assert (size > 0.9 * eps).float().mean() > 0.5


def test_no_gradient_leaks_into_parameters_and_modes_are_restored(plain_model, digits_split0):
    x, y = _known_test(digits_split0, 32)
    plain_model.train()
    bn = next(m for m in plain_model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running = bn.running_mean.clone()
    for p in plain_model.parameters():
        p.grad = None
    PGD(plain_model, eps=8 / 255, steps=3)(x, y)
    assert all(p.grad is None for p in plain_model.parameters())
    assert torch.equal(bn.running_mean, running)  # BN in eval mode while attacking
    assert plain_model.training and bn.training  # previous mode restored
    plain_model.eval()


def test_labels_are_optional(plain_model, digits_split0):
    x, _ = _known_test(digits_split0, 32)
    with torch.no_grad():
        pred = plain_model(x).argmax(1)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    a = PGD(plain_model, eps=16 / 255, steps=3, generator=gen())(x)
    b = PGD(plain_model, eps=16 / 255, steps=3, generator=gen())(x, pred)
    assert torch.equal(a, b)


def test_restarts_never_do_worse_than_one_start(plain_model, digits_split0):
    x, y = _known_test(digits_split0, 128)

    def losses(restarts):
        adv = attack(
            plain_model,
            x,
            y,
            eps=16 / 255,
            alpha=4 / 255,
            steps=3,
            restarts=restarts,
            generator=torch.Generator().manual_seed(0),
        )
        with torch.no_grad():
            return cross_entropy(plain_model(adv), None, y)

    one, three = losses(1), losses(3)
    assert (three >= one - 1e-5).all()


def test_targeted_attack_reaches_target(plain_model, digits_split0):
    x, y = _known_test(digits_split0, 64)
    target = (y + 1) % 6
    adv = PGD(plain_model, eps=64 / 255, alpha=8 / 255, steps=20)(x, target, targeted=True)
    with torch.no_grad():
        hit = (plain_model(adv).argmax(1) == target).float().mean().item()
    assert hit > 0.5


def test_build_attack_converts_units():
    model = torch.nn.Linear(1, 1)
    pgd = build_attack(model, AttackConfig(name="pgd", eps=8, alpha=2, steps=4))
    assert isinstance(pgd, PGD) and pgd.eps == pytest.approx(8 / 255)
    assert pgd.alpha == pytest.approx(2 / 255) and pgd.steps == 4
    fgsm = build_attack(model, AttackConfig(name="fgsm", eps=8))
    assert isinstance(fgsm, FGSM) and fgsm.alpha == fgsm.eps and fgsm.steps == 1
    rs = build_attack(model, AttackConfig(name="fgsm-rs", eps=8, alpha=10))
    assert isinstance(rs, FGSMRS) and rs.random_start and rs.alpha == pytest.approx(10 / 255)
