"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017,
https://arxiv.org/abs/1610.02136): ``score = -max_c softmax(logits)_c``."""

from __future__ import annotations

from torch import Tensor

from osad.openset.base import Scorer


class MSP(Scorer):
    name = "msp"
    label = "MSP"

    def score(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None
    ) -> Tensor:
        return -logits.softmax(dim=1).amax(dim=1)
