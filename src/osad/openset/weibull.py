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
            if values.size < 2 or np.ptp(values) == 0:
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

    def cdf(self, distances: Tensor) -> Tensor:
        """Weibull CDF of translated distances, shape (N, K) -> (N, K), differentiable.

        Computed as ``1 - exp(-exp(k * log1p((d + translate - small - scale) / scale)))``
        so that float32 keeps its precision next to the large translation.
        """
        kw = dict(dtype=distances.dtype, device=distances.device)
        k = torch.as_tensor(self.shape, **kw)
        lam = torch.as_tensor(self.scale, **kw)
        offset = torch.as_tensor(self.translate - self.small_score - self.scale, **kw)
        ratio = (distances + offset) / lam  # translated / scale - 1
        positive = ratio > -1
        # where() before log1p keeps the gradient finite at and below ratio = -1.
        log_u = torch.log1p(torch.where(positive, ratio, 0.0))
        cdf = -torch.expm1(-torch.exp(k * log_u))
        return torch.where(positive, cdf, 0.0)
