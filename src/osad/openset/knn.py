"""Deep nearest neighbours in the latent space (Sun, Ming, Zhu & Li, ICML 2022,
"Out-of-Distribution Detection with Deep Nearest Neighbors",
https://arxiv.org/abs/2204.06507).

Fit: keep the L2-normalised latent features ``u_i = z_i / ||z_i||`` of the
training images. Score: the distance from the normalised test feature ``u`` to
its k-th nearest training feature::

    score(x) = || u - u_(k) ||_2,   u_(k) = k-th nearest u_i to u

Higher = farther from the training data = more unknown. The paper uses k = 50
on CIFAR-10 with all training images; with fewer than k training images, k is
the number of training images. On the unit sphere ``||u - v||^2 = 2 - 2 u.v``,
so the neighbours come from one matrix product per chunk of ``chunk_size``
test images. Differentiable (almost everywhere: which neighbour is k-th
changes piecewise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from osad.errors import ConfigError
from osad.openset.base import Scorer, require


class KNN(Scorer):
    name = "knn"
    label = "KNN"
    needs_features = True

    def __init__(self, k: int = 50, chunk_size: int = 1024) -> None:
        if k < 1:
            raise ConfigError(f"option 'k' of score 'knn' must be >= 1, got {k}")
        if chunk_size < 1:
            raise ConfigError(f"option 'chunk_size' of score 'knn' must be >= 1, got {chunk_size}")
        self.k = k
        self.chunk_size = chunk_size
        self.bank: Tensor | None = None

    @property
    def effective_k(self) -> int:
        """``k``, capped at the number of training features."""
        if self.bank is None:
            raise RuntimeError("KNN used before fit")
        return min(self.k, len(self.bank))

    def fit(
        self,
        logits: Tensor,
        features: Tensor | None,
        labels: Tensor,
        images: Tensor | None = None,
    ) -> KNN:
        """Store the normalised training features (labels are not used)."""
        z = require(features, "latent features to fit", self.name).detach()
        self.bank = F.normalize(z, dim=1)
        return self

    def score(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None
    ) -> Tensor:
        features = require(features, "latent features", self.name)
        k = self.effective_k
        bank = self.bank.to(device=features.device, dtype=features.dtype)
        distances = []
        for chunk in F.normalize(features, dim=1).split(self.chunk_size):
            kth_similarity = (chunk @ bank.T).topk(k, dim=1).values[:, -1]
            # clamp: a test feature equal to a training one must keep a finite gradient
            distances.append((2 - 2 * kth_similarity).clamp_min(1e-12).sqrt())
        return torch.cat(distances)
