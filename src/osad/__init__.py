"""osad: open-set adversarial defense in PyTorch.

Train classifiers that stay accurate under adversarial attack and recognise
images of classes never seen in training, even when those are attacked:
the Open-Set Defense Network (OSDN, ECCV 2020), its baselines and a rigorous
open-set robustness evaluation.

``osad.evaluate_model`` evaluates any classifier (see
:mod:`osad.eval.any_model`); it is imported on first use, so ``import osad``
stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {"evaluate_model": "osad.eval.any_model", "ModelEvaluation": "osad.eval.any_model"}
__all__ = ["ModelEvaluation", "__version__", "evaluate_model"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'osad' has no attribute {name!r}")
