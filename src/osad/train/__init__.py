"""Training: methods from loss terms, their objectives and the loop."""

from __future__ import annotations

from osad.train.factory import build_model_for
from osad.train.loop import train
from osad.train.methods import METHODS, Method, NetworkSpec, model_spec
from osad.train.objectives import StepLosses, TrainObjective
from osad.train.state import TrainState
from osad.train.step import NonFiniteLossError, TrainResult

__all__ = [
    "METHODS",
    "Method",
    "NetworkSpec",
    "NonFiniteLossError",
    "StepLosses",
    "TrainObjective",
    "TrainResult",
    "TrainState",
    "build_model_for",
    "model_spec",
    "train",
]
