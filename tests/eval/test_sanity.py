"""The gradient-masking checks flag a masked model and pass a normal one."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from osad.config import make_config
from osad.eval.sanity import CheckSettings, run_checks

# eps 32/255 lets many digit pixels cross a level of the round(4x)/4 quantiser below;
# 50 APGD steps have converged on the normal model (25 left a seed-dependent image or
# two of 42 unbroken, within one image of the check's tolerance).
CONFIG = make_config(
    overrides=["method=plain", "eval.attacks={pgd: {name: apgd, eps: 32, steps: 50}}"]
)
SETTINGS = CheckSettings(images=64, square_queries=200, eps_multiples=(0.0, 1.0))


class QuantisedInput(nn.Module):
    """``round(4x)/4`` before the network: zero input gradients almost everywhere, the
    textbook gradient masking (Athalye et al., ICML 2018)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * 4) / 4)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.forward_features(torch.round(x * 4) / 4)


@pytest.fixture(scope="module")
def normal(plain_model, digits_split0, single_thread):
    return {r.name: r for r in run_checks(plain_model, digits_split0, CONFIG, SETTINGS)}


@pytest.fixture(scope="module")
def masked(plain_model, digits_split0, single_thread):
    model = QuantisedInput(plain_model)
    return {r.name: r for r in run_checks(model, digits_split0, CONFIG, SETTINGS)}


@pytest.mark.slow
def test_a_normal_model_passes_every_check(normal):
    failed = {name: r.summary for name, r in normal.items() if not r.passed}
    assert not failed
    assert normal["eps_monotone"].figures["eps"] == [0.0, 32.0, 255.0]


@pytest.mark.slow
def test_a_gradient_masked_model_is_flagged(masked):
    assert not masked["gradients"].passed
    assert masked["gradients"].figures["margin"]["nonzero_share"] == 0.0
    # the black-box attack beats the white-box one, whose gradients are zero
    assert not masked["black_box"].passed
    white_box, square = (
        masked["black_box"].figures["white_box"],
        masked["black_box"].figures["square"],
    )
    assert square[0] < white_box[0] - SETTINGS.tol
    assert masked["deterministic"].passed  # the quantiser is deterministic


def test_a_randomised_model_fails_the_repeat_check(plain_model, digits_split0):
    from osad.attacks.outputs import outputs_under_attack
    from osad.eval.protocol import make_scorers
    from osad.eval.sanity import check_deterministic, make_probe

    class Noisy(QuantisedInput):
        @staticmethod
        def noisy(x):
            return (x + 0.01 * torch.randn_like(x)).clamp(0, 1)

        def forward(self, x):
            return self.model(self.noisy(x))

        def forward_features(self, x):
            return self.model.forward_features(self.noisy(x))

    model = Noisy(plain_model).eval()
    config = make_config(overrides=["method=plain", "eval.scores=[msp,knn]"])
    train = outputs_under_attack(
        model, digits_split0.train_images, digits_split0.train_labels, None, batch_size=256, seed=0
    )
    probe = make_probe(model, digits_split0, config, SETTINGS, train)
    result = check_deterministic(
        probe, make_scorers(config, model), train, digits_split0.train_labels
    )
    assert not result.passed and set(result.figures["differing"]) == {"logits", "msp", "knn"}


@pytest.mark.slow
def test_the_ensemble_check_flags_a_weak_attack(plain_model, digits_split0, single_thread):
    from osad.attacks.outputs import outputs_under_attack
    from osad.eval.options import paper_budget
    from osad.eval.sanity import check_ensemble, make_probe

    # one PGD step of 1/255 at eps 32/255: far from the worst case
    config = make_config(
        overrides=[
            "method=plain",
            "eval.scores=[msp]",
            "eval.attacks={pgd: {name: pgd, eps: 32, alpha: 1, steps: 1}}",
        ]
    )
    settings = dataclasses.replace(SETTINGS, version="fast")
    data = digits_split0
    train = outputs_under_attack(
        plain_model, data.train_images, data.train_labels, None, batch_size=256, seed=0
    )
    probe = make_probe(plain_model, data, config, settings, train)
    base = paper_budget(config).resolved()
    result = check_ensemble(probe, base, probe.measure(base), train, data.train_labels, settings)
    assert not result.passed
    attack, ensemble = result.figures["attack"], result.figures["ensemble"]
    assert ensemble[0] < attack[0] - settings.tol and ensemble[1] < attack[1] - settings.tol
