"""Properties every attack must have: budget, box, restarts, no side effects on the model."""

import pytest
import torch

from osad.attacks import (
    APGD,
    ATTACKS,
    FGSM,
    FGSMRS,
    PGD,
    Oracle,
    Square,
    attack,
    build_attack,
    cross_entropy,
    margin,
)
from osad.config import AttackConfig
from tests.attacks.helpers import accuracy, seeded

NORM_EPS = [("linf", 16 / 255), ("l2", 0.5)]


def _every_attack(model, eps, norm, restarts=1, generator=None):
    kw = dict(eps=eps, norm=norm, restarts=restarts, generator=generator)
    return {
        "pgd": PGD(model, alpha=eps / 3, steps=5, **kw),
        "fgsm": FGSM(model, **kw),
        "fgsm-rs": FGSMRS(model, **kw),
        "apgd": APGD(model, steps=5, **kw),
        "square": Square(model, queries=20, **kw),
    }


def test_pgd_lowers_accuracy_of_undefended_model(plain_model, known_batch):
    x, y = known_batch
    clean = accuracy(plain_model, x, y)
    adv = PGD(plain_model, eps=32 / 255, alpha=8 / 255, steps=10)(x, y)
    assert clean > 0.9
    assert accuracy(plain_model, adv, y) < clean - 0.3


def test_fgsm_variants_lower_accuracy(plain_model, known_batch):
    x, y = known_batch
    clean = accuracy(plain_model, x, y)
    assert accuracy(plain_model, FGSM(plain_model, eps=32 / 255)(x, y), y) < clean - 0.05
    rs = FGSMRS(plain_model, eps=32 / 255, generator=seeded())
    assert rs.alpha == pytest.approx(1.25 * 32 / 255) and rs.random_start and rs.steps == 1
    assert accuracy(plain_model, rs(x, y), y) < clean - 0.05


@pytest.mark.parametrize("norm,eps", NORM_EPS)
def test_every_attack_keeps_budget_and_box_exactly(plain_model, known_batch, norm, eps):
    x, y = known_batch
    for name, atk in _every_attack(plain_model, eps, norm, restarts=2, generator=seeded()).items():
        adv = atk(x, y)
        delta = (adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert size.max().item() <= eps + 1e-6, name
        assert adv.min() >= 0.0 and adv.max() <= 1.0, name
        # Iterative attacks use their budget: most perturbations reach the boundary.
        # (One l2 step from x loses part of its length to the box on these digits.)
        if name in ("pgd", "apgd", "square"):
            assert (size > 0.9 * eps).float().mean() > 0.5, name


class _ModeWatch:
    """Records the training flag of every BatchNorm at each forward pass."""

    def __init__(self, model):
        self.modes: list[bool] = []
        self.handles = [
            m.register_forward_pre_hook(lambda module, args: self.modes.append(module.training))
            for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]

    def remove(self):
        for h in self.handles:
            h.remove()


def test_no_attack_leaks_gradients_or_touches_batchnorm(plain_model, known_batch):
    x, y = known_batch
    bn = next(m for m in plain_model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running = bn.running_mean.clone()
    for name, atk in _every_attack(plain_model, 16 / 255, "linf").items():
        for p in plain_model.parameters():
            p.grad = None
        plain_model.train()
        watch = _ModeWatch(plain_model)
        try:
            atk(x[:16], y[:16])
        finally:
            watch.remove()
        assert watch.modes and not any(watch.modes), f"{name}: BatchNorm in training mode"
        assert all(p.grad is None for p in plain_model.parameters()), name
        assert torch.equal(bn.running_mean, running), name
        assert plain_model.training and bn.training, f"{name}: previous mode not restored"
    plain_model.eval()


def test_labels_are_optional(plain_model, known_batch):
    x, _ = known_batch
    with torch.no_grad():
        pred = plain_model(x).argmax(1)
    for name in ("pgd", "apgd", "square"):
        a = _every_attack(plain_model, 16 / 255, "linf", generator=seeded(1))[name](x)
        b = _every_attack(plain_model, 16 / 255, "linf", generator=seeded(1))[name](x, pred)
        assert torch.equal(a, b), name


@pytest.mark.parametrize("objective", [cross_entropy, margin])
def test_restarts_never_do_worse_than_one_start(plain_model, known_batch, objective):
    x, y = known_batch
    oracle = Oracle(plain_model, objective, y)
    for name in ("pgd", "apgd", "square"):
        one, three = (
            _every_attack(plain_model, 16 / 255, "linf", restarts=r, generator=seeded())[name]
            for r in (1, 3)
        )
        one.objective = three.objective = objective
        a, b = oracle(one(x, y)), oracle(three(x, y))
        # Better = successful (misclassified) first, then a higher objective.
        not_worse = (b.success & ~a.success) | (
            (b.success == a.success) & (b.value >= a.value - 1e-5)
        )
        assert not_worse.all(), name


def test_best_point_prefers_success_over_a_higher_loss(plain_model, known_batch):
    x, y = known_batch
    adv = attack(plain_model, x, y, eps=32 / 255, alpha=8 / 255, steps=10, generator=seeded())
    last = attack(
        plain_model, x, y, eps=32 / 255, alpha=8 / 255, steps=10, generator=seeded(), select="last"
    )
    # The best iterate is misclassified wherever the last one is.
    with torch.no_grad():
        wrong_best = plain_model(adv).argmax(1) != y
        wrong_last = plain_model(last).argmax(1) != y
    assert (wrong_best | ~wrong_last).all()


def test_targeted_attack_reaches_target(plain_model, known_batch):
    x, y = known_batch
    target = (y + 1) % 6
    adv = PGD(plain_model, eps=64 / 255, alpha=8 / 255, steps=20)(x, target, targeted=True)
    with torch.no_grad():
        hit = (plain_model(adv).argmax(1) == target).float().mean().item()
    assert hit > 0.5


def test_build_attack_converts_units_and_fills_defaults():
    model = torch.nn.Linear(1, 1)
    pgd = build_attack(model, AttackConfig(name="pgd", eps=8, params={"alpha": 2, "steps": 4}))
    assert isinstance(pgd, PGD) and pgd.eps == pytest.approx(8 / 255)
    assert pgd.alpha == pytest.approx(2 / 255) and pgd.steps == 4
    fgsm = build_attack(model, AttackConfig(name="fgsm", eps=8))
    assert isinstance(fgsm, FGSM) and fgsm.alpha == fgsm.eps and fgsm.steps == 1
    assert not fgsm.random_start
    rs = build_attack(model, AttackConfig(name="fgsm-rs", eps=8))
    assert isinstance(rs, FGSMRS) and rs.random_start and rs.alpha == pytest.approx(10 / 255)
    apgd = build_attack(model, AttackConfig(name="apgd", eps=4, loss="dlr", restarts=2))
    assert isinstance(apgd, APGD) and apgd.objective.name == "dlr" and apgd.restarts == 2
    sq = build_attack(model, AttackConfig(name="square", eps=8, norm="l2", params={"queries": 50}))
    assert isinstance(sq, Square) and sq.queries == 50 and sq.norm == "l2"
    assert sq.objective is margin
    custom = build_attack(model, AttackConfig(name="apgd"), objective=margin)
    assert custom.objective is margin


def test_config_defaults_equal_the_python_defaults():
    model = torch.nn.Linear(1, 1)
    for name, cls in ATTACKS.items():
        if name == "patch":  # no budget to set: the patch takes any value in [0, 1]
            from_config, direct = build_attack(model, AttackConfig(name=name, eps=255)), cls(model)
        else:
            from_config = build_attack(model, AttackConfig(name=name, eps=8))
            direct = cls(model, eps=8 / 255)
        assert repr(from_config) == repr(direct), name
