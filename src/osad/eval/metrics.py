"""Evaluation metrics.

Open-set convention: unknown = positive class, higher score = more unknown.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
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


# ---------------------------------------------------------------------------
# Verification metrics (face anti-spoofing): label 1 = bona fide (positive),
# higher score = more likely bona fide, a sample is accepted when score >= threshold.


def _scores_and_labels(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray):
    scores = np.asarray(
        scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64
    )
    positive = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels) == 1
    if positive.all() or not positive.any():
        raise ValueError("verification metrics need both positive (1) and negative (0) samples")
    return scores, positive


def far_frr(
    scores: Tensor | np.ndarray, labels: Tensor | np.ndarray, threshold: float
) -> tuple[float, float]:
    """(FAR, FRR) at ``threshold``: FAR = negatives with score >= threshold / negatives,
    FRR = positives with score < threshold / positives."""
    scores, positive = _scores_and_labels(scores, labels)
    accepted = scores >= threshold
    return float(accepted[~positive].mean()), float((~accepted[positive]).mean())


def hter(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray, threshold: float) -> float:
    """Half total error rate ``HTER = (FAR + FRR) / 2`` at ``threshold``."""
    far, frr = far_frr(scores, labels, threshold)
    return (far + frr) / 2


def eer(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> tuple[float, float]:
    """(equal error rate, its threshold).

    Among the thresholds where the accept decision changes (every distinct score,
    and +inf), take the one minimising ``|FAR - FRR|`` (the lowest such threshold on
    ties); the EER is ``(FAR + FRR) / 2`` there, so ``hter(s, y, t) == eer`` at it.
    """
    scores, positive = _scores_and_labels(scores, labels)
    far, tpr, thresholds = roc_curve(positive, scores, drop_intermediate=False)
    frr = 1.0 - tpr
    gap = np.abs(far - frr)
    best = int(np.flatnonzero(gap == gap.min())[-1])
    return float((far[best] + frr[best]) / 2), float(thresholds[best])
