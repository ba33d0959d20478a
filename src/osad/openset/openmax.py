"""OpenMax, in the form the OSDN paper evaluates it and as Bendale & Boult define it.

Both variants share the fit (Bendale & Boult, CVPR 2016, "Towards Open Set
Deep Networks", https://arxiv.org/abs/1511.06233): from the logits of the
*correctly classified* training images of each class c, the mean activation
vector MAV_c and a Weibull model (:mod:`osad.openset.weibull`) of the
``tail_size`` largest distances ``d(logit, MAV_c)``. ``translate`` is libMR's
translate constant: before the Weibull fit the tail of class c is shifted so
that its smallest value lands on ``translate`` (``t = d + translate -
min(tail)``), and every test distance is shifted the same way. It keeps every
value positive whatever the distance's scale; the fitted Weibull CDF then is
a steep step across the range of the tail (about 0 below the tail, about 1
above it). libMR's and the default is 10000.

``openmax`` (:class:`OpenMax`, the authors' OSAD simplification): Euclidean
distance, ``w_c = 1 - WeibullCDF_c(||l - MAV_c||)``, and::

    score(l) = -log sum_c exp(l_c * w_c)

No alpha-rank, no explicit unknown probability. Differentiable.

``openmax-bb`` (:class:`OpenMaxBB`, Bendale & Boult's Algorithm 2): see its
docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from osad.errors import ConfigError, FitError, unknown_name
from osad.openset.base import Scorer
from osad.openset.weibull import LIBMR_TRANSLATE, WeibullTail

# Bendale & Boult's eucos: the Euclidean part is scaled by 1/200 (their
# ImageNet logits' scale) so that it and the cosine distance weigh alike.
EUCOS_EUCLIDEAN_SCALE = 1 / 200


def euclidean_distance(a: Tensor, b: Tensor) -> Tensor:
    """``||a_i - b_j||_2``, (N, D) x (K, D) -> (N, K)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos(a_i, b_j)``, (N, D) x (K, D) -> (N, K)."""
    return 1 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def eucos_distance(a: Tensor, b: Tensor) -> Tensor:
    """``||a_i - b_j|| / 200 + 1 - cos(a_i, b_j)``, Bendale & Boult's default."""
    return EUCOS_EUCLIDEAN_SCALE * euclidean_distance(a, b) + cosine_distance(a, b)


DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "euclidean": euclidean_distance,
    "eucos": eucos_distance,
    "cosine": cosine_distance,
}


@dataclass(frozen=True)
class ClassFit:
    """What the fit of one class used: honest bookkeeping for reports."""

    correct: int
    tail: int
    used_misclassified: bool


class OpenMax(Scorer):
    """The OSDN paper's OpenMax: ``score(l) = -log sum_c exp(l_c * w_c)``.

    Args:
        tail_size: number of largest training distances per class the Weibull is fitted to.
        translate: libMR's translate constant (see the module docstring).
    """

    name = "openmax"
    label = "OpenMax"
    distance = "euclidean"

    def __init__(self, tail_size: int = 20, translate: float = LIBMR_TRANSLATE) -> None:
        if tail_size < 2:
            raise ConfigError(f"option 'tail_size' of score '{self.name}' must be >= 2")
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

        A class whose correctly classified images give no Weibull tail (fewer than
        two, possible under a strong attack, or distances without spread: two images
        are always equidistant from their mean) is fitted on all its images instead;
        ``class_fits`` records where that happened. Raises :class:`FitError` when
        all the images of a class give no tail either.
        """
        logits = logits.detach().double().cpu()
        labels = labels.cpu()
        correct = logits.argmax(dim=1) == labels
        mavs, tails, fits = [], [], []
        for c in range(logits.shape[1]):
            of_class = labels == c
            fit = self._class_tail(logits[of_class & correct])
            fallback = fit is None
            if fallback:
                fit = self._class_tail(logits[of_class])
            if fit is None:
                raise self._no_tail_error(c, int(of_class.sum()))
            mav, tail = fit
            mavs.append(mav)
            tails.append(tail)
            fits.append(ClassFit(int((of_class & correct).sum()), len(tail), fallback))
        self.mav = torch.stack(mavs)
        self.weibull = WeibullTail.fit(tails, self.translate)
        self.class_fits = fits
        return self

    def _class_tail(self, class_logits: Tensor) -> tuple[Tensor, np.ndarray] | None:
        """(MAV, the ``tail_size`` largest distances to it) of one class's logits, or
        None when they give no Weibull tail (fewer than two, or no spread)."""
        if len(class_logits) < 2:
            return None
        mav = class_logits.mean(dim=0)
        distances = DISTANCES[self.distance](class_logits, mav.unsqueeze(0))[:, 0].numpy()
        tail = np.sort(distances)[-self.tail_size :]
        return (mav, tail) if WeibullTail.has_spread(tail, self.translate) else None

    def _no_tail_error(self, c: int, count: int) -> FitError:
        if count < 2:
            return FitError(
                f"{self.name} needs at least two training images of class {c}, got {count}: "
                "fit it on more training data"
            )
        why = (
            "two images are always equidistant from their mean"
            if count == 2
            else "the model gives the same output for all of them, so it has collapsed or "
            "not trained; check its training history or train it again"
        )
        return FitError(
            f"{self.name} has no Weibull tail for class {c}: the {self.distance} distances "
            f"of its {count} training images to their mean are all equal ({why}); "
            "fit it on more training data"
        )

    def outlier_probability(self, logits: Tensor) -> Tensor:
        """WeibullCDF_c(d(l, MAV_c)) for every class, (N, K): 1 = far outside class c."""
        if self.mav is None or self.weibull is None:
            raise RuntimeError(f"{type(self).__name__}.score called before fit")
        # float32 at least: distances in bfloat16 are too coarse (and cdist has no kernel).
        work = torch.promote_types(logits.dtype, torch.float32)
        mav = self.mav.to(device=logits.device, dtype=work)
        distances = DISTANCES[self.distance](logits.to(work), mav)
        return self.weibull.cdf(distances).to(logits.dtype)

    def score(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None
    ) -> Tensor:
        keep = 1.0 - self.outlier_probability(logits)
        return -torch.logsumexp(logits * keep, dim=1)


SCORE_KINDS = ("unknown", "uncertainty")


class OpenMaxBB(OpenMax):
    """OpenMax as Bendale & Boult define it (CVPR 2016, Algorithm 2).

    For a logit vector l with the classes ranked by l (rank r = 0 for the
    largest), only the top ``alpha`` classes are revised, by
    ``w_c = 1 - (alpha - r_c) / alpha * WeibullCDF_c(d(l, MAV_c))`` (``w_c = 1``
    for r_c >= alpha). The revised activations and the unknown activation::

        v_c = l_c * w_c,    v_0 = sum_c l_c * (1 - w_c)

    and the OpenMax probabilities are the softmax over the K + 1 values
    ``(v_1, ..., v_K, v_0)``. The rank weights ``(alpha - r) / alpha`` (1 for the
    top class, 1/alpha for the alpha-th) are those of the authors' released code;
    the paper's printed ``(alpha - i) / alpha`` for 1-based rank i would never
    revise the alpha-th class and, with alpha = 1, nothing at all.

    Args:
        tail_size: largest training distances per class for the Weibull fit (paper: 20).
        alpha: number of top classes revised (paper: 10 of 1000), capped at K.
        distance: ``"eucos"`` (default, the authors' choice:
            ``||l - MAV|| / 200 + 1 - cos(l, MAV)``), ``"euclidean"`` or ``"cosine"``.
        translate: libMR's translate constant (see the module docstring).
        score_kind: ``"unknown"`` (default): ``score = P(unknown)``, the (K+1)-th
            probability; ``"uncertainty"``: ``score = 1 - max_c P(c)`` over the known
            classes, which also rises when the known probabilities are spread out
            (Bendale & Boult reject when the unknown class wins *or* the top
            probability is below a threshold).

    Differentiable almost everywhere: the ranking is piecewise constant, the
    rest is smooth in the logits.
    """

    name = "openmax-bb"
    label = "OpenMax (B&B)"

    def __init__(
        self,
        tail_size: int = 20,
        alpha: int = 10,
        distance: str = "eucos",
        translate: float = LIBMR_TRANSLATE,
        score_kind: str = "unknown",
    ) -> None:
        super().__init__(tail_size=tail_size, translate=translate)
        if alpha < 1:
            raise ConfigError(f"option 'alpha' of score '{self.name}' must be >= 1, got {alpha}")
        if distance not in DISTANCES:
            raise unknown_name(f"distance of score '{self.name}'", distance, DISTANCES)
        if score_kind not in SCORE_KINDS:
            raise unknown_name(f"score_kind of score '{self.name}'", score_kind, SCORE_KINDS)
        self.alpha = alpha
        self.distance = distance
        self.score_kind = score_kind

    def rank_weights(self, logits: Tensor) -> Tensor:
        """``max(alpha - r_c, 0) / alpha`` with r_c the rank of class c in l, (N, K)."""
        alpha = min(self.alpha, logits.shape[1])
        ranks = logits.detach().argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        return ((alpha - ranks).to(logits.dtype) / alpha).clamp_min(0)

    def probabilities(self, logits: Tensor) -> Tensor:
        """OpenMax probabilities, (N, K + 1); the last column is the unknown class."""
        revision = self.rank_weights(logits) * self.outlier_probability(logits)  # 1 - w_c
        revised = logits * (1 - revision)
        unknown = (logits * revision).sum(dim=1, keepdim=True)
        return torch.cat([revised, unknown], dim=1).softmax(dim=1)

    def score(
        self, logits: Tensor, features: Tensor | None = None, images: Tensor | None = None
    ) -> Tensor:
        probabilities = self.probabilities(logits)
        if self.score_kind == "unknown":
            return probabilities[:, -1]
        return 1 - probabilities[:, :-1].amax(dim=1)
