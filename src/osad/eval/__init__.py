"""Evaluation: the test protocol, metrics and reports.

The names below load their module on first use (PEP 562), so that importing one
light submodule (:mod:`osad.eval.metrics`, used by the anti-spoofing slice) does not
load the protocol, the attacks and the scores.
"""

from __future__ import annotations

from osad.lazy import lazy_exports

_EXPORTS = {
    "MeanStd": "metrics",
    "acceptance_threshold": "metrics",
    "aupr_in": "metrics",
    "aupr_out": "metrics",
    "auroc": "metrics",
    "closed_set_accuracy": "metrics",
    "fpr_at_tpr": "metrics",
    "mean_std": "metrics",
    "open_set_eer": "metrics",
    "open_set_hter": "metrics",
    "open_set_metrics": "metrics",
    "operating_point": "metrics",
    "oscr": "metrics",
    "summarize_splits": "metrics",
    "ConditionResult": "protocol",
    "EvalResult": "protocol",
    "evaluate": "protocol",
    "metrics_dict": "report",
    "results_table": "report",
    "write_results": "report",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
