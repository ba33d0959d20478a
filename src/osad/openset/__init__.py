"""Open-set scores: fitted objects with ``fit`` and ``score``; higher = more unknown."""

from __future__ import annotations

from osad.openset.base import Scorer
from osad.openset.msp import MSP
from osad.openset.openmax import OpenMax
from osad.openset.weibull import LIBMR_TRANSLATE, WeibullTail

SCORERS: dict[str, type[Scorer]] = {
    "msp": MSP,
    "openmax": OpenMax,
}

__all__ = ["LIBMR_TRANSLATE", "MSP", "SCORERS", "OpenMax", "Scorer", "WeibullTail"]
