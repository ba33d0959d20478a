"""Training: methods from loss terms, their objectives and the loop.

The names below load their module on first use, so that importing a low module of
this package (:mod:`osad.train.step`, used by the anti-spoofing trainer) does not
load the loop and what it needs (attacks, distributed training).
"""

from __future__ import annotations

from osad.lazy import lazy_exports

_MODULES = {
    "step": ("NonFiniteLossError", "TrainResult"),
    "objectives": ("StepLosses", "TrainObjective"),
    "state": ("TrainState",),
    "factory": ("build_model_for",),
    "loop": ("train",),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
