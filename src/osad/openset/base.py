"""The scorer interface: ``fit`` on training outputs, then ``score``.

Every scorer follows one convention: **higher score = more unknown**. Scores
are torch functions of the model outputs, differentiable wherever the math
allows, so attacks can target them directly.
"""

from __future__ import annotations

from torch import Tensor


class Scorer:
    """Base class. Subclasses set ``name`` and implement :meth:`score`.

    ``needs_features`` / ``needs_images``: whether :meth:`score` uses the latent
    features or the (possibly attacked) input images besides the logits.
    """

    name: str = ""
    needs_features: bool = False
    needs_images: bool = False

    def fit(
        self,
        logits: Tensor,
        features: Tensor | None,
        labels: Tensor,
        images: Tensor | None = None,
    ) -> Scorer:
        """Learn from training outputs (no-op for scores that learn nothing)."""
        return self

    def score(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None
    ) -> Tensor:
        """Per-sample unknown-ness, shape (N,); higher = more likely unknown."""
        raise NotImplementedError

    def __call__(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None
    ) -> Tensor:
        return self.score(logits, features, images)
