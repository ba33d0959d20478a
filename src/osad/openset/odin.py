"""ODIN (Liang, Li & Srikant, ICLR 2018, "Enhancing The Reliability of
Out-of-distribution Image Detection in Neural Networks",
https://arxiv.org/abs/1706.02690).

Temperature scaling plus input preprocessing. With ``S(x; T) =
softmax(f(x) / T)`` and ``y = argmax_c f(x)_c``, the image is first moved one
gradient-sign step towards a higher temperature-scaled confidence::

    x~ = x - eps * sign(-grad_x log S_y(x; T))
    score(x) = -max_c S_c(x~; T)

(the paper thresholds ``max_c S_c(x~; T)``; the sign makes higher = more
unknown). Defaults are the paper's CIFAR settings, T = 1000 and eps = 0.0014,
here in [0, 1] pixel units; the paper tuned both on out-of-distribution
validation data, which an open-set protocol does not have, so they stay fixed.
The step is not clamped to [0, 1], as in the paper.

Differentiability: the preprocessing direction ``sign(...)`` is piecewise
constant in ``x``, so its derivative is zero almost everywhere. The direction
is computed in a separate inner backward pass and then held constant, and the
outer forward ``f(x~)`` stays on the autograd graph: ``d score / d x`` is the
exact derivative of ODIN almost everywhere (not an approximation), and an
attack that differentiates this score attacks the full detector, preprocessing
included. The inner pass asks for the input gradient only, so no gradient
reaches the model's parameters.

Under attack: the preprocessing step raises the confidence of whatever class
the (attacked) image is assigned to, so an attack that already pushed a known
image to a wrong class, or an unknown image to high confidence, is reinforced,
not undone. Its eps (0.0014, about 0.36/255) is far below attack budgets, so
it cannot undo a perturbation either. Each score costs two forwards and one
backward.

``logits`` passed to :meth:`ODIN.score` are not used: ODIN runs the model on
the images (``needs_images``), which must be the images the logits came from.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from osad.errors import ConfigError
from osad.inputs import inputs_checked
from osad.openset.base import Scorer, check_positive, require, require_eval_mode


class ODIN(Scorer):
    name = "odin"
    label = "ODIN"
    needs_images = True
    needs_model = True

    def __init__(self, model: nn.Module, temperature: float = 1000.0, eps: float = 0.0014) -> None:
        check_positive(temperature, "temperature", self.name)
        if eps < 0:
            raise ConfigError(f"option 'eps' of score 'odin' must be >= 0, got {eps}")
        self.model = model
        self.temperature = temperature
        self.eps = eps

    def preprocess(self, images: Tensor) -> Tensor:
        """``x~``: one gradient-sign step raising the top temperature-scaled softmax."""
        if self.eps == 0:
            return images
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)
            log_confidence = (self.model(x) / self.temperature).log_softmax(dim=1).amax(dim=1)
            (grad,) = torch.autograd.grad(log_confidence.sum(), x)
        return images + self.eps * grad.sign()

    def score(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None
    ) -> Tensor:
        images = require(images, "the input images", self.name)
        require_eval_mode(self.model, self.name)
        # ODIN's step may leave [0, 1] by eps, as in the paper: no range check on x~.
        with inputs_checked():
            scaled = self.model(self.preprocess(images)) / self.temperature
        return -scaled.softmax(dim=1).amax(dim=1)
