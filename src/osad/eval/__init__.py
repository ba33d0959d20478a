"""Evaluation: the test protocol, metrics and reports."""

from __future__ import annotations

from osad.eval.metrics import auroc, closed_set_accuracy
from osad.eval.protocol import ConditionResult, EvalResult, evaluate, outputs_under_attack
from osad.eval.report import metrics_dict, results_table, write_results

__all__ = [
    "ConditionResult",
    "EvalResult",
    "auroc",
    "closed_set_accuracy",
    "evaluate",
    "metrics_dict",
    "outputs_under_attack",
    "results_table",
    "write_results",
]
