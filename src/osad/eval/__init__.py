"""Evaluation: the test protocol, metrics and reports.

The names below load their module on first use (PEP 562), so that importing one
light submodule (:mod:`osad.eval.metrics`, used by the anti-spoofing slice) does not
load the protocol, the attacks and the scores.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_MODULES = {
    "MeanStd": "osad.eval.metrics",
    "acceptance_threshold": "osad.eval.metrics",
    "aupr_in": "osad.eval.metrics",
    "aupr_out": "osad.eval.metrics",
    "auroc": "osad.eval.metrics",
    "closed_set_accuracy": "osad.eval.metrics",
    "fpr_at_tpr": "osad.eval.metrics",
    "mean_std": "osad.eval.metrics",
    "open_set_eer": "osad.eval.metrics",
    "open_set_hter": "osad.eval.metrics",
    "open_set_metrics": "osad.eval.metrics",
    "operating_point": "osad.eval.metrics",
    "oscr": "osad.eval.metrics",
    "summarize_splits": "osad.eval.metrics",
    "ConditionResult": "osad.eval.protocol",
    "EvalResult": "osad.eval.protocol",
    "evaluate": "osad.eval.protocol",
    "metrics_dict": "osad.eval.report",
    "results_table": "osad.eval.report",
    "write_results": "osad.eval.report",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'osad.eval' has no attribute {name!r}")
    return getattr(import_module(_MODULES[name]), name)
