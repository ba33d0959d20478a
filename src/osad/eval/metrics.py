"""Evaluation metrics.

Open-set convention: unknown = positive class, higher score = more unknown.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score
from torch import Tensor


def closed_set_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of known images whose argmax logit is their label."""
    if len(labels) == 0:
        return float("nan")
    return (logits.argmax(dim=1) == labels).float().mean().item()


def auroc(scores: Tensor | np.ndarray, is_unknown: Tensor | np.ndarray) -> float:
    """Area under the ROC curve with unknown images as positives."""
    scores = np.asarray(
        scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64
    )
    is_unknown = np.asarray(
        is_unknown.cpu() if isinstance(is_unknown, Tensor) else is_unknown, dtype=bool
    )
    if is_unknown.all() or not is_unknown.any():
        raise ValueError("AUROC needs both known and unknown samples")
    return float(roc_auc_score(is_unknown, scores))
