"""The contract of every registered attack, built the way a run builds it (an
AttackConfig through ``build_attack``): the budget and the [0, 1] box hold in float32
and float64 for each norm it supports, the model's train/eval modes and BatchNorm
statistics come back unchanged, no gradient reaches a parameter, and one seed gives
one result. A new attack is checked by registering it, without editing a list here
(see tests/attacks/test_toy_attack.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from osad.attacks import ATTACK_SPECS, build_attack
from osad.attacks.registry import NORMS
from osad.config import AttackConfig
from tests.attacks.helpers import seeded

CLASSES = 4
# Budgets in 1/255: 8/255 in linf, 0.5 in l2 (the usual CIFAR-10 settings).
EPS = {"linf": 8.0, "l2": 127.5}


def net(dtype: torch.dtype = torch.float64) -> nn.Module:
    """A small network with BatchNorm and dropout, whose modes an attack must restore."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, CLASSES),
    ).to(dtype)


def images(dtype: torch.dtype = torch.float64, n: int = 6) -> torch.Tensor:
    x = torch.rand(n, 1, 8, 8, generator=seeded(1), dtype=torch.float64)
    x[:, :, 0], x[:, :, 1] = 0.0, 1.0  # the box's corners
    return x.to(dtype)


def fast_config(name: str, norm: str) -> AttackConfig:
    """Attack ``name`` at the norm's budget (or the one it fixes), each count it takes
    (steps, queries, candidates, patch side) at most 3: the contract holds from the
    first iterate on."""
    spec = ATTACK_SPECS[name]
    params = {
        key: min(p.default, 3)
        for key, p in spec.params.items()
        if p.type is int and not p.fixed and p.at_least is not None
    }
    shared = {"norm": norm, "eps": EPS[norm], **spec.fixed}
    return AttackConfig(name=name, params=params, **shared)


def norms(name: str) -> list[str]:
    """The norms attack ``name`` runs in."""
    fixed = ATTACK_SPECS[name].fixed.get("norm")
    return list(NORMS) if fixed is None else [fixed]


def check_budget_and_box(name: str, norm: str, dtype: torch.dtype) -> None:
    config = fast_config(name, norm)
    model = net(dtype).eval()
    x = images(dtype)
    adv = build_attack(model, config, generator=seeded())(x, torch.arange(6) % CLASSES)
    assert adv.dtype == dtype and adv.shape == x.shape
    delta = (adv.double() - x.double()).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max().item() <= config.eps_unit * (1 + 1e-6) + 1e-12, name
    assert adv.min() >= 0 and adv.max() <= 1


def check_modes_and_gradients(name: str, norm: str) -> None:
    model = net()
    model.train()
    model[3].eval()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    statistics = [t.clone() for t in (model[1].running_mean, model[1].running_var)]
    build_attack(model, fast_config(name, norm), generator=seeded())(images())
    assert [m.training for m in model.modules()] == modes, name
    assert torch.equal(model[1].running_mean, statistics[0]), "BatchNorm statistics moved"
    assert torch.equal(model[1].running_var, statistics[1]), "BatchNorm statistics moved"
    assert all(p.grad is None for p in model.parameters()), "a gradient reached a parameter"
    assert all(p.requires_grad for p in model.parameters())


def check_seeded(name: str, norm: str) -> None:
    model = net().eval()
    runs = [
        build_attack(model, fast_config(name, norm), generator=seeded(5))(images())
        for _ in range(2)
    ]
    assert torch.equal(*runs), name


CASES = [(name, norm) for name in ATTACK_SPECS for norm in norms(name)]


@pytest.mark.parametrize("name,norm", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_budget_and_box_hold(name, norm, dtype):
    check_budget_and_box(name, norm, dtype)


@pytest.mark.parametrize("name,norm", CASES)
def test_modes_are_restored_and_no_parameter_gets_a_gradient(name, norm):
    check_modes_and_gradients(name, norm)


@pytest.mark.parametrize("name,norm", CASES)
def test_one_seed_gives_one_result(name, norm):
    check_seeded(name, norm)


@pytest.mark.parametrize("name", list(ATTACK_SPECS))
def test_declared_defaults_are_the_constructors(name):
    """A registered parameter's default (1/255 units, in eps for step sizes) is what
    the class takes when the parameter is left out."""
    spec = ATTACK_SPECS[name]
    config = AttackConfig(name=name, **{"eps": 8.0, **spec.fixed})
    direct = spec.cls(nn.Linear(1, 1), **({} if "eps" in spec.fixed else {"eps": 8 / 255}))
    assert repr(build_attack(nn.Linear(1, 1), config)) == repr(direct)
    assert spec.description and config.describe()
