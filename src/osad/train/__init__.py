"""Training: methods, their objectives and the loop.

The public names below load their module on first use (:func:`osad.lazy.lazy_exports`),
so that importing one light submodule (``osad.train.functional``) does not load the loop.
"""

from __future__ import annotations

from osad.lazy import lazy_exports

# Public name -> the submodule that defines it.
_EXPORTS = {
    "METHODS": "methods",
    "Method": "methods",
    "model_spec": "methods",
    "NonFiniteLossError": "loop",
    "TrainResult": "loop",
    "build_model_for": "loop",
    "train": "loop",
    "StepLosses": "objectives",
    "TrainObjective": "objectives",
    "TrainState": "state",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
