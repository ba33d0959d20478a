"""The model registry: ``create_model(name, **kwargs)`` builds any class registered
under ``name`` with :func:`register_model` where the class is defined (timm's
``@register_model``); the pair ``(name, kwargs)`` is saved with the weights so a run
rebuilds its exact architecture. A slice above the models (the anti-spoofing network
in :mod:`osad.fas.model`) registers its own, so this package never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

ModelClass = TypeVar("ModelClass", bound=type[nn.Module])

MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: ``create_model(name, ...)`` builds the class. Two classes under
    one name are a programming error (``ValueError``)."""

    def register(cls: ModelClass) -> ModelClass:
        if MODELS.get(name, cls) is not cls:
            raise ValueError(f"model name '{name}' is taken by {MODELS[name].__qualname__}")
        MODELS[name] = cls
        return cls

    return register
