"""An independent cross-check of the ensemble with torchattacks (Kim, 2020,
https://github.com/Harry24k/adversarial-attacks-pytorch), whose APGD and APGD-T are
ports of AutoAttack's (Croce & Hein, ICML 2020).

torchattacks is a test-only dependency installed without its dependencies
(``pip install --no-deps torchattacks==3.5.1``: its metadata asks for torchvision,
which osad never needs). Where CI=true the test fails without it; elsewhere it skips.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from osad.config import make_config
from osad.data import to_float
from osad.eval import auroc, evaluate

try:
    import torchattacks
except ImportError:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip(
        "torchattacks not installed: pip install --no-deps torchattacks==3.5.1",
        allow_module_level=True,
    )

EPS = 8  # 1/255: the plain model is neither broken nor intact here


class ConfidenceGap(nn.Module):
    """Two 'logits' (0, f) whose cross-entropy for label 0 is log(1 + e^f), increasing in
    ``f = sign * (l_pi2 - l_pi1)``: an untargeted attack on it lowers (sign +1: make a
    known image look unknown) or raises (sign -1: make an unknown one look known) the gap
    between the two largest logits, a logit-space surrogate of every confidence score."""

    def __init__(self, model: nn.Module, sign: float) -> None:
        super().__init__()
        self.model, self.sign = model, sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = self.model(x).topk(2, dim=1).values
        f = self.sign * (top[:, 1] - top[:, 0])
        return torch.stack([torch.zeros_like(f), f], dim=1)


@pytest.mark.slow
def test_ensemble_is_at_least_as_strong_as_torchattacks(plain_model, digits_split0, one_thread):
    data = digits_split0
    config = make_config(
        overrides=[
            "method=plain",
            "model.width=8",
            "model.latent_dim=32",
            "eval.scores=[msp]",
            "eval.openmax_fit=clean",
            "eval.figures=false",
            f"eval.attacks={{pgd: {{name: pgd, eps: {EPS}, steps: 1}}}}",
            "eval.version=standard",
        ]
    )
    result = evaluate(plain_model, data, config, progress=False)
    ensemble = result.conditions[-1]
    assert ensemble.name == "ensemble"

    eps = EPS / 255
    images, labels = to_float(data.test_images), data.test_labels
    known = labels >= 0
    x, y = images[known], labels[known]
    with torch.no_grad():
        correct = plain_model(x).argmax(1) == y
    for attack in (
        torchattacks.APGD(plain_model, eps=eps, steps=100, loss="ce", seed=0),
        torchattacks.APGDT(plain_model, eps=eps, steps=100, n_classes=6, seed=0),
    ):
        with torch.no_grad():
            correct &= plain_model(attack(x, y)).argmax(1) == y
    independent_accuracy = correct.float().mean().item()
    assert 0.1 < independent_accuracy < 0.9  # a budget where the comparison means something
    assert ensemble.closed_set_accuracy <= independent_accuracy + 0.01

    attacked = images.clone()
    for sign, side in ((1.0, known), (-1.0, ~known)):
        surrogate = torchattacks.APGD(ConfidenceGap(plain_model, sign), eps=eps, steps=100)
        zeros = torch.zeros(int(side.sum()), dtype=torch.long)
        # best_loss: the highest-loss point per sample (perturb alone keeps only the points
        # that flip the 2-class prediction, which this objective never does)
        _, best = surrogate.perturb(images[side], zeros, best_loss=True)
        attacked[side] = best.detach()
    with torch.no_grad():
        msp = -plain_model(attacked).softmax(1).amax(1)
    independent_auroc = auroc(msp, ~known)
    assert ensemble.auroc["msp"] <= independent_auroc
    assert independent_auroc < result.conditions[0].auroc["msp"]  # the surrogate attack works
