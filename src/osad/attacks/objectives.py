"""Attack objectives: per-sample losses the attacker maximises.

An objective is a callable ``objective(logits, features, labels) -> loss`` with
one loss per sample. ``features`` is the model's latent (``None`` for models
without ``forward_features``), so objectives can attack detection scores
computed in the latent space, not just the classifier. An objective that also
needs the current (attacked) input images sets the attribute
``needs_images = True``; the engine then calls it with ``images=...``.
"""

from __future__ import annotations

from typing import Protocol

import torch.nn.functional as F
from torch import Tensor


class Objective(Protocol):
    def __call__(self, logits: Tensor, features: Tensor | None, labels: Tensor) -> Tensor: ...


def cross_entropy(logits: Tensor, features: Tensor | None, labels: Tensor) -> Tensor:
    """Per-sample cross-entropy of the classifier (the paper's attack loss)."""
    return F.cross_entropy(logits, labels, reduction="none")
