"""Training: methods, their objectives and the loop."""

from __future__ import annotations

from osad.train.loop import NonFiniteLossError, TrainResult, build_model_for, train
from osad.train.methods import METHODS, Method, model_spec
from osad.train.objectives import StepLosses, TrainObjective
from osad.train.state import TrainState

__all__ = [
    "METHODS",
    "Method",
    "NonFiniteLossError",
    "StepLosses",
    "TrainObjective",
    "TrainResult",
    "TrainState",
    "build_model_for",
    "model_spec",
    "train",
]
