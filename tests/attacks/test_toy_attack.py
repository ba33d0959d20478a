"""A new attack is one class and one decorator: registered here, the toy attack is
configurable (``eval.attacks.toy...``, its parameters checked), built by
``build_attack``, captioned, and held to the registry contract
(tests/attacks/test_registry_contract.py) with no edit anywhere else."""

from __future__ import annotations

import re

import pytest
import torch

from osad.attacks import ATTACK_SPECS, Attack, Param, attack, build_attack, register_attack
from osad.config import make_config
from osad.errors import ConfigError
from tests.attacks import test_registry_contract as contract


def _define_toy(*, leaves_train_mode: bool = False) -> type:
    @register_attack(
        "toy",
        "PGD from the image with a step of eps / steps",
        params={"steps": Param(2, "iterations", at_least=1, caption="{} toy steps")},
    )
    class Toy(Attack):
        def __init__(
            self,
            model,
            eps=8 / 255,
            steps=2,
            *,
            norm="linf",
            restarts=1,
            loss="ce",
            objective=None,
            generator=None,
        ):
            super().__init__(model, eps, norm, restarts, loss, objective, generator)
            self.steps = steps

        def perturb(self, x, y, *, targeted):
            adv = attack(
                self.model,
                x,
                y,
                alpha=self.eps / self.steps,
                steps=self.steps,
                random_start=False,
                targeted=targeted,
                **self.shared_arguments(),
            )
            if leaves_train_mode:
                self.model.eval()
            return adv

    return Toy


@pytest.fixture
def toy():
    cls = _define_toy()
    yield cls
    del ATTACK_SPECS["toy"]


@pytest.fixture
def broken_toy():
    cls = _define_toy(leaves_train_mode=True)
    yield cls
    del ATTACK_SPECS["toy"]


def test_the_config_takes_the_toy_and_checks_its_parameters(toy):
    config = make_config(
        overrides=["eval.attacks.t={name: toy, eps: 16}", "eval.attacks.t.steps=4"]
    )
    attack_config = config.eval.attacks["t"]
    assert attack_config.params == {"steps": 4}
    assert attack_config.describe() == "TOY linf eps 16/255, 4 toy steps"
    built = build_attack(torch.nn.Linear(1, 1), attack_config)
    assert isinstance(built, toy) and built.steps == 4 and built.eps == pytest.approx(16 / 255)
    assert make_config(overrides=["train.attack.name=toy"]).train.attack.name == "toy"
    for override, message in [
        ("eval.attacks.t={name: toy, steps: 0}", "'eval.attacks.t.steps' must be >= 1, got 0"),
        ("eval.attacks.t={name: toy, stepz: 3}", "did you mean 'eval.attacks.t.steps'"),
        ("eval.attacks.t={name: toy, queries: 3}", "'eval.attacks.t.queries' does not apply"),
        ("eval.attacks.t={name: toyy}", "did you mean 'toy'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            make_config(overrides=[override])


def test_the_contract_checks_the_toy(toy):
    for norm in contract.norms("toy"):
        for dtype in (torch.float32, torch.float64):
            contract.check_budget_and_box("toy", norm, dtype)
        contract.check_modes_and_gradients("toy", norm)
        contract.check_seeded("toy", norm)


def test_the_contract_catches_an_attack_that_leaves_the_model_in_eval_mode(broken_toy):
    with pytest.raises(AssertionError):
        contract.check_modes_and_gradients("toy", "linf")
