"""Per-class Weibull models of the largest distances, as libMR's ``FitHigh``.

libMR (https://github.com/Vastlab/libMR) fits a two-parameter Weibull to the
``tail_size`` largest values after translating them so that the smallest tail
value lands on ``translate`` (libMR's ``translate_amount``, default 10000):
``t = d + translate - small_score``. The CDF of a new distance ``d`` is the
fitted Weibull CDF at its translated value. The large constant keeps every
translated value positive; the shape parameter then becomes large, so the CDF
is a steep step across the range of the tail. The fit here is scipy's maximum
likelihood fit with the location fixed at 0, as libMR's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from osad.errors import FitError

LIBMR_TRANSLATE = 10000.0


@dataclass(frozen=True)
class WeibullTail:
    """Fitted parameters for K classes (arrays of length K)."""

    shape: np.ndarray
    scale: np.ndarray
    small_score: np.ndarray
    translate: float = LIBMR_TRANSLATE

    @classmethod
    def fit(cls, tails: list[np.ndarray], translate: float = LIBMR_TRANSLATE) -> WeibullTail:
        """Fit one Weibull per entry of ``tails`` (each the largest distances of a class)."""
        shape, scale, small = [], [], []
        for values in tails:
            values = np.sort(np.asarray(values, dtype=np.float64))
            if not cls.has_spread(values, translate):
                raise FitError(
                    f"a Weibull tail needs at least two distinct distances, class {len(shape)} "
                    f"has {np.unique(values).size}: the model gives (nearly) the same output "
                    "for all its training images, so it has collapsed or not trained; check "
                    "its training history or train it again"
                )
            lowest = values[0]
            c, _, s = stats.weibull_min.fit(values + translate - lowest, floc=0.0)
            shape.append(c)
            scale.append(s)
            small.append(lowest)
        return cls(np.array(shape), np.array(scale), np.array(small), translate)

    @staticmethod
    def has_spread(values: np.ndarray, translate: float = LIBMR_TRANSLATE) -> bool:
        """Whether a Weibull can be fitted to ``values``: at least two of them, differing
        by more than float32 rounding (the resolution of a network's outputs), and still
        distinct after the translation."""
        values = np.asarray(values, dtype=np.float64)
        if values.size < 2:
            return False
        resolution = np.finfo(np.float32).eps * np.abs(values).max()
        return bool(np.ptp(values) > resolution and np.ptp(values + translate) > 0)

    def cdf(self, distances: Tensor) -> Tensor:
        """Weibull CDF of translated distances, shape (N, K) -> (N, K), differentiable.

        Computed as ``1 - exp(-exp(k * log1p((d + translate - small - scale) / scale)))``
        so that float32 keeps its precision next to the large translation, in float32
        at least (float16 and bfloat16 distances are upcast; the result has their dtype).
        The exponent is clamped at ``log(-log(tiny))``, above which the CDF is exactly 1
        in that dtype: the values are unchanged, and the gradient far above the tail is
        0 instead of ``0 * inf = NaN`` (``exp`` overflows in float32 from about 88).
        Finite for every finite distance, and so is its gradient.
        """
        work = torch.promote_types(distances.dtype, torch.float32)
        kw = dict(dtype=work, device=distances.device)
        k = torch.as_tensor(self.shape, **kw)
        lam = torch.as_tensor(self.scale, **kw)
        offset = torch.as_tensor(self.translate - self.small_score - self.scale, **kw)
        ratio = (distances.to(work) + offset) / lam  # translated / scale - 1
        positive = ratio > -1
        # where() before log1p keeps the gradient finite at and below ratio = -1.
        log_u = torch.log1p(torch.where(positive, ratio, 0.0))
        ceiling = math.log(-math.log(torch.finfo(work).tiny))
        cdf = -torch.expm1(-torch.exp((k * log_u).clamp_max(ceiling)))
        return torch.where(positive, cdf, 0.0).to(distances.dtype)
