"""Maximum logit (Hendrycks et al., ICML 2022, "Scaling Out-of-Distribution
Detection for Real-World Settings", https://arxiv.org/abs/1911.11132):
``score = -max_c logits_c``."""

from __future__ import annotations

from torch import Tensor

from osad.openset.base import Scorer


class MaxLogit(Scorer):
    name = "maxlogit"
    label = "MaxLogit"

    def score(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None
    ) -> Tensor:
        return -logits.amax(dim=1)
