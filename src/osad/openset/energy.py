"""Energy score (Liu et al., NeurIPS 2020, "Energy-based Out-of-distribution
Detection", https://arxiv.org/abs/2010.03759).

The free energy of the logits at temperature T::

    score = E(x) = -T * log sum_c exp(logits_c / T)

Unknown images have higher energy. T = 1 (the paper's choice) makes it the
negative log-partition of the softmax; as T -> 0 it tends to ``-max logit``.
Differentiable everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from osad.openset.base import Scorer, check_positive


class Energy(Scorer):
    name = "energy"
    label = "Energy"

    def __init__(self, temperature: float = 1.0) -> None:
        check_positive(temperature, "temperature", self.name)
        self.temperature = temperature

    def score(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None
    ) -> Tensor:
        t = self.temperature
        return -t * torch.logsumexp(logits / t, dim=1)
