"""Evaluation: the test protocol, metrics and reports.

The names below load their module on first use (PEP 562), so that importing one
light submodule (:mod:`osad.eval.metrics`, used by the anti-spoofing slice) does not
load the protocol, the attacks and the scores.
"""

from __future__ import annotations

from osad.lazy import lazy_exports

_MODULES = {
    "metrics": (
        "MeanStd",
        "acceptance_threshold",
        "aupr_in",
        "aupr_out",
        "auroc",
        "closed_set_accuracy",
        "fpr_at_tpr",
        "mean_std",
        "open_set_eer",
        "open_set_hter",
        "open_set_metrics",
        "operating_point",
        "oscr",
        "summarize_splits",
    ),
    "protocol": ("ConditionResult", "EvalResult", "evaluate"),
    "report": ("metrics_dict", "results_table", "write_results"),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
