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

from osad.lazy import lazy_exports

__version__ = "0.1.0"

_MODULES = {"eval.any_model": ("ModelEvaluation", "evaluate_model")}
_names, __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
__all__ = ["__version__", *_names]
