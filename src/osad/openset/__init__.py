"""Open-set scores: fitted objects with ``fit`` and ``score``; higher = more unknown.

Build any of them by name with :func:`make_scorer`.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from osad.errors import ConfigError, did_you_mean, unknown_name
from osad.openset.base import Scorer
from osad.openset.energy import Energy
from osad.openset.knn import KNN
from osad.openset.mahalanobis import Mahalanobis
from osad.openset.maxlogit import MaxLogit
from osad.openset.msp import MSP
from osad.openset.odin import ODIN
from osad.openset.openmax import OpenMax, OpenMaxBB
from osad.openset.reconstruction import Reconstruction
from osad.openset.weibull import LIBMR_TRANSLATE, WeibullTail

SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls
    for cls in (
        MSP,
        MaxLogit,
        Energy,
        ODIN,
        Mahalanobis,
        KNN,
        OpenMax,
        OpenMaxBB,
        Reconstruction,
    )
}


def scorer_options(name: str) -> list[str]:
    """The keyword options of score ``name`` (constructor arguments besides the model)."""
    parameters = inspect.signature(SCORERS[name].__init__).parameters.values()
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in keyword and p.name not in ("self", "model")]


def make_scorer(name: str, model: nn.Module | None = None, **options: Any) -> Scorer:
    """The unfitted scorer ``name`` with ``options``; ``model`` for scores that run it.

    Raises :class:`~osad.errors.ConfigError` for an unknown name or option, a
    missing model, or an option out of range.
    """
    if name not in SCORERS:
        raise unknown_name("score", name, SCORERS)
    cls = SCORERS[name]
    allowed = scorer_options(name)
    for option in options:
        if option not in allowed:
            listed = ", ".join(allowed) if allowed else "none"
            raise ConfigError(
                f"score '{name}' has no option '{option}'{did_you_mean(option, allowed)}; "
                f"its options: {listed}"
            )
    if not cls.needs_model:
        return cls(**options)
    if model is None:
        raise ConfigError(f"score '{name}' runs the network, so make_scorer needs model=...")
    return cls(model, **options)


__all__ = [
    "KNN",
    "LIBMR_TRANSLATE",
    "MSP",
    "ODIN",
    "SCORERS",
    "Energy",
    "Mahalanobis",
    "MaxLogit",
    "OpenMax",
    "OpenMaxBB",
    "Reconstruction",
    "Scorer",
    "WeibullTail",
    "make_scorer",
    "scorer_options",
]
