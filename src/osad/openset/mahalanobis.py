"""Mahalanobis distance in the latent space (Lee, Lee, Lee & Shin, NeurIPS 2018,
"A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", https://arxiv.org/abs/1807.03888).

Fit, on the latent features ``z_i`` of the training images with labels ``y_i``:
class means ``mu_c`` and one covariance shared by all classes (tied)::

    Sigma = 1/N * sum_i (z_i - mu_{y_i}) (z_i - mu_{y_i})^T

Score: the squared Mahalanobis distance to the closest class mean, which is
the paper's confidence ``M(x) = max_c -(z - mu_c)^T Sigma^-1 (z - mu_c)`` with
the sign flipped (higher = more unknown)::

    score(x) = min_c (z - mu_c)^T Sigma^+ (z - mu_c)

``Sigma^+`` is the pseudo-inverse: the latent of a ReLU layer often has dead
units, which make ``Sigma`` singular; directions with eigenvalue below
``rcond * max eigenvalue`` are dropped, as ``numpy.linalg.pinv`` does.

Only the single-layer score of the final latent, without the paper's input
preprocessing or its logistic-regression ensemble over layers: both need
out-of-distribution (or adversarial) validation data to tune, which an
open-set protocol does not have. Differentiable (a minimum of quadratics).
"""

from __future__ import annotations

import torch
from torch import Tensor

from osad.errors import FitError
from osad.openset.base import Scorer, require


class Mahalanobis(Scorer):
    name = "mahalanobis"
    label = "Mahalanobis"
    needs_features = True

    def __init__(self, rcond: float = 1e-6) -> None:
        self.rcond = rcond
        self.means: Tensor | None = None
        self.whitening: Tensor | None = None

    def fit(
        self,
        logits: Tensor,
        features: Tensor | None,
        labels: Tensor,
        images: Tensor | None = None,
    ) -> Mahalanobis:
        """Class means and the tied covariance of the training ``features``."""
        z = require(features, "latent features to fit", self.name).detach().double().cpu()
        labels = labels.cpu()
        # The logits' width counts the classes, so a missing last class is noticed too.
        num_classes = int(labels.max()) + 1 if logits is None else logits.shape[1]
        missing = [c for c in range(num_classes) if not (labels == c).any()]
        if missing:
            raise FitError(
                f"Mahalanobis fit has no training image of classes {missing}: fit it on "
                "training data that covers every known class"
            )
        means = torch.stack([z[labels == c].mean(dim=0) for c in range(num_classes)])
        centred = z - means[labels]
        covariance = centred.T @ centred / len(z)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        # Relative to the largest eigenvalue, and positive: rounding leaves eigenvalues
        # of about -1e-17 in the null space, which must not be inverted.
        kept = eigenvalues > self.rcond * eigenvalues.max().clamp_min(0)
        if not kept.any():
            raise FitError(
                "Mahalanobis fit: the latent features of every class are identical, so "
                "there is no covariance to whiten with; the model has collapsed or not "
                "trained: check its training history or train it again"
            )
        # Sigma^+ = W W^T, so (z - mu)^T Sigma^+ (z - mu) = ||(z - mu) W||^2.
        self.whitening = eigenvectors[:, kept] / eigenvalues[kept].sqrt()
        self.means = means
        return self

    def distances(self, features: Tensor) -> Tensor:
        """Squared Mahalanobis distance of each feature to each class mean, (N, K)."""
        if self.means is None or self.whitening is None:
            raise RuntimeError("Mahalanobis.score called before fit")
        kw = dict(dtype=features.dtype, device=features.device)
        whitening = self.whitening.to(**kw)
        white_features = features @ whitening
        white_means = self.means.to(**kw) @ whitening
        return (white_features.unsqueeze(1) - white_means.unsqueeze(0)).square().sum(dim=2)

    def score(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None
    ) -> Tensor:
        features = require(features, "latent features", self.name)
        return self.distances(features).amin(dim=1)
