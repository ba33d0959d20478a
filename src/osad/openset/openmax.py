"""OpenMax in the form the OSDN paper evaluates it.

Fit (Bendale & Boult, CVPR 2016, https://arxiv.org/abs/1511.06233, with the
authors' OSAD simplification): from the logits of the *correctly classified*
training images of each class c, the mean activation vector MAV_c and a
Weibull model (:mod:`osad.openset.weibull`) of the ``tail_size`` largest
distances ``||logit - MAV_c||``.

Score of a logit vector l, with ``w_c = 1 - WeibullCDF_c(||l - MAV_c||)``::

    score(l) = -log sum_c exp(l_c * w_c)

Higher = more unknown. No alpha-rank, no explicit unknown probability (the
paper's variant). Vectorised over the batch and differentiable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from osad.openset.base import Scorer
from osad.openset.weibull import LIBMR_TRANSLATE, WeibullTail


@dataclass(frozen=True)
class ClassFit:
    """What the fit of one class used: honest bookkeeping for reports."""

    correct: int
    tail: int
    used_misclassified: bool


class OpenMax(Scorer):
    name = "openmax"

    def __init__(self, tail_size: int = 20, translate: float = LIBMR_TRANSLATE) -> None:
        if tail_size < 2:
            raise ValueError(f"tail_size must be >= 2, got {tail_size}")
        self.tail_size = tail_size
        self.translate = translate
        self.mav: Tensor | None = None
        self.weibull: WeibullTail | None = None
        self.class_fits: list[ClassFit] = []

    def fit(
        self,
        logits: Tensor,
        features: Tensor | None,
        labels: Tensor,
        images: Tensor | None = None,
    ) -> OpenMax:
        """Fit on training logits and their true labels (0..K-1).

        A class with fewer than two correctly classified images (possible under a
        strong attack) is fitted on all its images instead; ``class_fits``
        records where that happened.
        """
        logits = logits.detach().double().cpu()
        labels = labels.cpu()
        num_classes = logits.shape[1]
        correct = logits.argmax(dim=1) == labels
        mavs, tails, fits = [], [], []
        for c in range(num_classes):
            of_class = labels == c
            chosen = of_class & correct
            fallback = int(chosen.sum()) < 2
            if fallback:
                chosen = of_class
            if int(chosen.sum()) < 2:
                raise ValueError(f"OpenMax needs at least two training images of class {c}")
            class_logits = logits[chosen]
            mav = class_logits.mean(dim=0)
            dist = (class_logits - mav).norm(dim=1).numpy()
            tail = np.sort(dist)[-self.tail_size :]
            mavs.append(mav)
            tails.append(tail)
            fits.append(ClassFit(int((of_class & correct).sum()), len(tail), fallback))
        self.mav = torch.stack(mavs)
        self.weibull = WeibullTail.fit(tails, self.translate)
        self.class_fits = fits
        return self

    def score(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None
    ) -> Tensor:
        if self.mav is None or self.weibull is None:
            raise RuntimeError("OpenMax.score called before fit")
        mav = self.mav.to(device=logits.device, dtype=logits.dtype)
        distances = torch.cdist(logits, mav, compute_mode="donot_use_mm_for_euclid_dist")
        keep = 1.0 - self.weibull.cdf(distances)
        return -torch.logsumexp(logits * keep, dim=1)
