"""The scorer interface: ``fit`` on training outputs, then ``score``.

Every scorer follows one convention: **higher score = more unknown**. Scores
are torch functions of the model outputs, differentiable wherever the math
allows, so attacks can target them directly.
"""

from __future__ import annotations

from torch import Tensor, nn

from osad.errors import ConfigError


class Scorer:
    """Base class. Subclasses set ``name`` (and ``label``) and implement :meth:`score`.

    ``needs_features`` / ``needs_images``: whether :meth:`score` uses the latent
    features or the (possibly attacked) input images besides the logits.
    ``needs_model``: whether the constructor takes the network as its first
    argument (scores that run the model again, such as ODIN).
    """

    name: str = ""
    label: str = ""  # how tables and figures name it (``OpenMax (B&B)``); default: name
    needs_features: bool = False
    needs_images: bool = False
    needs_model: bool = False

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


def require(value: Tensor | None, what: str, scorer: str) -> Tensor:
    """``value`` itself, or a one-line error saying that ``scorer`` needs ``what``."""
    if value is None:
        raise ValueError(f"score '{scorer}' needs {what}")
    return value


def require_eval_mode(model: nn.Module, scorer: str) -> None:
    """Scores that run the network must not use or update batch statistics."""
    if model.training:
        raise ValueError(
            f"score '{scorer}' runs the model, which is in training mode; call model.eval() "
            "first so that BatchNorm uses its running statistics"
        )


def check_positive(value: float, option: str, scorer: str) -> None:
    if not value > 0:
        raise ConfigError(f"option '{option}' of score '{scorer}' must be > 0, got {value}")
