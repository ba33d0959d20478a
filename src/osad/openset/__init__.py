"""Open-set scores: fitted objects with ``fit`` and ``score``; higher = more unknown.

Build any of them by name with :func:`make_scorer`.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable
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


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: add the :class:`Scorer` subclass ``cls`` to :data:`SCORERS` under
    ``cls.name`` (its options are its constructor's keywords, its table name
    ``cls.label``)."""
    if not cls.name or cls.name in SCORERS:
        raise ValueError(f"score class {cls.__name__} needs a new name, got {cls.name!r}")
    SCORERS[cls.name] = cls
    return cls


def scorer_option_types(name: str) -> dict[str, Any]:
    """The keyword options of score ``name`` (constructor arguments besides the model),
    each with its annotated type."""
    init = SCORERS[name].__init__
    hints = typing.get_type_hints(init)
    parameters = inspect.signature(init).parameters.values()
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        p.name: hints.get(p.name, Any)
        for p in parameters
        if p.kind in keyword and p.name not in ("self", "model")
    }


def scorer_options(name: str) -> list[str]:
    """The keyword options of score ``name`` (constructor arguments besides the model)."""
    return list(scorer_option_types(name))


def check_scorer_options(name: str, options: Iterable[str], key: str = "") -> None:
    """Raise a one-line :class:`~osad.errors.ConfigError` for an unknown score ``name``
    or an option it does not take; ``key`` (e.g. ``eval.score_options``) prefixes it."""
    where = f"'{key}': " if key else ""
    if name not in SCORERS:
        raise unknown_name(f"score in '{key}'" if key else "score", name, SCORERS)
    allowed = scorer_options(name)
    for option in options:
        if option not in allowed:
            listed = ", ".join(allowed) if allowed else "none"
            raise ConfigError(
                f"{where}score '{name}' has no option '{option}'"
                f"{did_you_mean(option, allowed)}; its options: {listed}"
            )


def score_label(name: str) -> str:
    """How tables and figures name score ``name`` (``openmax`` -> ``OpenMax``); an
    unregistered name (another task's score) is shown as it is."""
    cls = SCORERS.get(name)
    return (cls.label or cls.name) if cls is not None else name


def make_scorer(name: str, model: nn.Module | None = None, **options: Any) -> Scorer:
    """The unfitted scorer ``name`` with ``options``; ``model`` for scores that run it.

    Raises :class:`~osad.errors.ConfigError` for an unknown name or option, a
    missing model, or an option out of range.
    """
    check_scorer_options(name, options)
    cls = SCORERS[name]
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
    "check_scorer_options",
    "make_scorer",
    "register_scorer",
    "score_label",
    "scorer_option_types",
    "scorer_options",
]
