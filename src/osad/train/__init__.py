"""Training: methods from loss terms, their objectives and the loop.

The names below load their module on first use, so that importing a low module of
this package (:mod:`osad.train.step`, used by the anti-spoofing trainer) does not
load the loop and what it needs (attacks, distributed training).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_MODULES = {
    "METHODS": "osad.train.methods",
    "Method": "osad.train.methods",
    "NetworkSpec": "osad.train.methods",
    "NonFiniteLossError": "osad.train.step",
    "StepLosses": "osad.train.objectives",
    "TrainObjective": "osad.train.objectives",
    "TrainResult": "osad.train.step",
    "TrainState": "osad.train.state",
    "build_model_for": "osad.train.factory",
    "model_spec": "osad.train.methods",
    "train": "osad.train.loop",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'osad.train' has no attribute {name!r}")
    return getattr(import_module(_MODULES[name]), name)
