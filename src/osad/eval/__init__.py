"""Evaluation: the test protocol, metrics and reports."""

from __future__ import annotations

from osad.eval.metrics import (
    MeanStd,
    acceptance_threshold,
    aupr_in,
    aupr_out,
    auroc,
    closed_set_accuracy,
    fpr_at_tpr,
    mean_std,
    open_set_eer,
    open_set_hter,
    open_set_metrics,
    operating_point,
    oscr,
    summarize_splits,
)
from osad.eval.protocol import ConditionResult, EvalResult, evaluate
from osad.eval.report import metrics_dict, results_table, write_results

__all__ = [
    "ConditionResult",
    "EvalResult",
    "MeanStd",
    "acceptance_threshold",
    "aupr_in",
    "aupr_out",
    "auroc",
    "closed_set_accuracy",
    "evaluate",
    "fpr_at_tpr",
    "mean_std",
    "metrics_dict",
    "open_set_eer",
    "open_set_hter",
    "open_set_metrics",
    "operating_point",
    "oscr",
    "results_table",
    "summarize_splits",
    "write_results",
]
