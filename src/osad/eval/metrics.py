"""Evaluation metrics.

Open-set convention: unknown = positive class and higher score = more unknown,
unless a function or key names the positive class otherwise. ``scores``,
``is_unknown`` and ``correct`` are per-sample arrays (torch tensors or numpy)
over the whole test set, known and unknown images together. Formulas, tie and
interpolation rules: docs/scores-and-metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import Tensor

ArrayLike = Tensor | np.ndarray | Sequence[float]

# Rates are turned into sample counts with ceil(rate * n); the tolerance keeps
# 0.95 * 20 (19.000000000000004 in floating point) at 19 samples.
_COUNT_TOLERANCE = 1e-9


def _numpy(values: ArrayLike, dtype: type) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu()
        # NumPy has no bfloat16: widen reduced-precision floats first.
        values = (values.double() if values.is_floating_point() else values).numpy()
    return np.asarray(values, dtype=dtype)


def _scores_and_mask(scores: ArrayLike, is_unknown: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 scores and boolean unknown mask with both classes present."""
    scores = _numpy(scores, np.float64)
    is_unknown = _numpy(is_unknown, bool)
    if scores.shape != is_unknown.shape or scores.ndim != 1:
        raise ValueError(
            f"scores {scores.shape} and is_unknown {is_unknown.shape} must be equal-length vectors"
        )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if is_unknown.all() or not is_unknown.any():
        raise ValueError("open-set metrics need both known and unknown samples")
    return scores, is_unknown


def closed_set_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of known images whose argmax logit is their label."""
    if len(labels) == 0:
        return float("nan")
    return (logits.argmax(dim=1) == labels).float().mean().item()


def auroc(scores: ArrayLike, is_unknown: ArrayLike) -> float:
    """Area under the ROC curve with unknown images as positives (ties count 1/2)."""
    scores, is_unknown = _scores_and_mask(scores, is_unknown)
    return float(roc_auc_score(is_unknown, scores))


def aupr_in(scores: ArrayLike, is_unknown: ArrayLike) -> float:
    """Area under the precision-recall curve with *known* images as positives,
    ranked by the negated score (average precision, no interpolation)."""
    scores, is_unknown = _scores_and_mask(scores, is_unknown)
    return float(average_precision_score(~is_unknown, -scores))


def aupr_out(scores: ArrayLike, is_unknown: ArrayLike) -> float:
    """Area under the precision-recall curve with *unknown* images as positives
    (average precision, no interpolation)."""
    scores, is_unknown = _scores_and_mask(scores, is_unknown)
    return float(average_precision_score(is_unknown, scores))


def _kth_largest(values: np.ndarray, rate: float) -> float:
    """The largest t with ``mean(values >= t) >= rate``: the ceil(rate * n)-th largest value."""
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    if len(values) == 0:
        raise ValueError("a threshold needs at least one score")
    count = max(1, math.ceil(rate * len(values) - _COUNT_TOLERANCE))
    return float(np.sort(values)[::-1][count - 1])


def acceptance_threshold(known_scores: ArrayLike, rate: float = 0.95) -> float:
    """The smallest threshold t that accepts (``score <= t``) at least ``rate`` of
    ``known_scores``: their ceil(rate * n)-th smallest score.

    Fix it on the scores of *clean known validation* images, then apply it
    unchanged to attacked test images (:func:`operating_point`).
    """
    return -_kth_largest(-_numpy(known_scores, np.float64), rate)


def fpr_at_tpr(
    scores: ArrayLike, is_unknown: ArrayLike, tpr: float = 0.95, positive: str = "unknown"
) -> float:
    """False-positive rate at the threshold where the true-positive rate first reaches ``tpr``.

    ``positive="unknown"``: flag ``score >= t`` as unknown with t the largest
    threshold that flags at least ``tpr`` of the unknown images; FPR = share of
    known images flagged. ``positive="known"``: accept ``score <= t`` as known
    with t the smallest threshold that accepts at least ``tpr`` of the known
    images; FPR = share of unknown images accepted. Samples tied at t fall on
    the same side (no interpolation, no random tie-breaking), so the achieved
    TPR can exceed ``tpr``.
    """
    scores, is_unknown = _scores_and_mask(scores, is_unknown)
    if positive == "unknown":
        oriented, is_positive = scores, is_unknown
    elif positive == "known":
        oriented, is_positive = -scores, ~is_unknown
    else:
        raise ValueError(f"positive must be 'unknown' or 'known', got {positive!r}")
    threshold = _kth_largest(oriented[is_positive], tpr)
    return float(np.mean(oriented[~is_positive] >= threshold))


def oscr(scores: ArrayLike, is_unknown: ArrayLike, correct: ArrayLike) -> float:
    """Area under the Open-Set Classification Rate curve (Dhamija, Günther &
    Boult, NeurIPS 2018, "Reducing Network Agnostophobia",
    https://arxiv.org/abs/1811.04110).

    With the known-ness ``-score`` as the confidence and a threshold theta:
    ``CCR(theta)`` = share of known images that are correctly classified
    (``correct``) and have ``-score >= theta``; ``FPR(theta)`` = share of
    unknown images with ``-score >= theta`` (accepted as some known class).
    theta sweeps every distinct score from +inf to -inf, so the curve runs from
    (0, 0) to (1, closed-set accuracy); the area is the trapezoidal rule over
    those points (a tie between known and unknown images is a straight
    segment). With every known image correct it equals :func:`auroc`.
    ``correct`` is read for known images only.
    """
    scores, is_unknown = _scores_and_mask(scores, is_unknown)
    correct = _numpy(correct, bool)
    if correct.shape != scores.shape:
        raise ValueError(f"correct {correct.shape} must match scores {scores.shape}")
    order = np.argsort(scores, kind="stable")  # most known-like first
    ranked = scores[order]
    ccr = np.cumsum((correct & ~is_unknown)[order]) / np.sum(~is_unknown)
    fpr = np.cumsum(is_unknown[order]) / np.sum(is_unknown)
    # one point per distinct threshold: the last sample tied at each score
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    x = np.r_[0.0, fpr[last_of_tie]]
    y = np.r_[0.0, ccr[last_of_tie]]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def operating_point(
    scores: ArrayLike,
    is_unknown: ArrayLike,
    threshold: float,
    correct: ArrayLike | None = None,
) -> dict[str, float]:
    """Rates at a fixed threshold (accept as known when ``score <= threshold``).

    ``known_accepted``: share of known images accepted; ``unknown_rejected``:
    share of unknown images rejected; with ``correct``, also
    ``known_accepted_correct``: share of known images accepted *and* correctly
    classified.
    """
    scores, is_unknown = _scores_and_mask(scores, is_unknown)
    accepted_known = scores[~is_unknown] <= threshold
    point = {
        "known_accepted": float(np.mean(accepted_known)),
        "unknown_rejected": float(np.mean(scores[is_unknown] > threshold)),
    }
    if correct is not None:
        correct_known = _numpy(correct, bool)[~is_unknown]
        point["known_accepted_correct"] = float(np.mean(accepted_known & correct_known))
    return point


def open_set_metrics(
    scores: ArrayLike,
    is_unknown: ArrayLike,
    logits: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    threshold: float | None = None,
) -> dict[str, float]:
    """Every open-set metric of one score on one test set, as a flat dict.

    Keys (documented in docs/scores-and-metrics.md):
    ``auroc``, ``aupr_in``, ``aupr_out``, ``fpr95_known_positive``,
    ``fpr95_unknown_positive`` always; with ``logits`` (N, K) and ``labels``
    (N,; read for known images only, e.g. -1 for unknown) also
    ``closed_set_accuracy`` and ``oscr``; with ``threshold`` (from
    :func:`acceptance_threshold` on clean validation scores) also
    ``threshold``, ``known_accepted``, ``unknown_rejected``, ``hter`` and, given
    logits and labels, ``known_accepted_correct``. ``eer`` always: the equal error
    rate of rejecting unknown images (:func:`open_set_eer`).
    """
    scores, is_unknown = _scores_and_mask(scores, is_unknown)
    result = {
        "auroc": auroc(scores, is_unknown),
        "aupr_in": aupr_in(scores, is_unknown),
        "aupr_out": aupr_out(scores, is_unknown),
        "fpr95_known_positive": fpr_at_tpr(scores, is_unknown, 0.95, positive="known"),
        "fpr95_unknown_positive": fpr_at_tpr(scores, is_unknown, 0.95, positive="unknown"),
        "eer": open_set_eer(scores, is_unknown),
    }
    correct = None
    if (logits is None) != (labels is None):
        raise ValueError("give both logits and labels, or neither")
    if logits is not None:
        predicted = _numpy(logits, np.float64).argmax(axis=1)
        correct = predicted == _numpy(labels, np.int64)
        result["closed_set_accuracy"] = float(np.mean(correct[~is_unknown]))
        result["oscr"] = oscr(scores, is_unknown, correct)
    if threshold is not None:
        result["threshold"] = float(threshold)
        result.update(operating_point(scores, is_unknown, threshold, correct))
        result["hter"] = open_set_hter(result)
    return result


def open_set_eer(scores: ArrayLike, is_unknown: ArrayLike) -> float:
    """Equal error rate of rejecting unknown images as ``score >= t``: where the share of
    known images rejected equals the share of unknown images accepted (:func:`eer` with
    unknown images as the positive class; its tie and threshold rules)."""
    scores, is_unknown = _scores_and_mask(scores, is_unknown)
    return eer(scores, is_unknown.astype(np.int64))[0]


def open_set_hter(point: Mapping[str, float]) -> float:
    """Half total error rate at a fixed threshold, from :func:`operating_point`'s rates:
    ``((1 - known_accepted) + (1 - unknown_rejected)) / 2``, the mean of the share of
    known images rejected and the share of unknown images accepted."""
    return ((1 - point["known_accepted"]) + (1 - point["unknown_rejected"])) / 2


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof = 1; NaN for one value) of ``n`` values."""

    mean: float
    std: float
    n: int


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean and sample standard deviation over splits (or seeds)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
    return MeanStd(float(np.mean(values)), std, int(values.size))


def summarize_splits(per_split: Sequence[Mapping[str, float]]) -> dict[str, MeanStd]:
    """Key-wise :func:`mean_std` over one flat metric dict per split; keys must agree."""
    if not per_split:
        raise ValueError("summarize_splits needs at least one split")
    keys = list(per_split[0])
    for i, metrics in enumerate(per_split):
        if set(metrics) != set(keys):
            raise ValueError(f"split {i} has metrics {sorted(metrics)}, split 0 has {sorted(keys)}")
    return {key: mean_std([metrics[key] for metrics in per_split]) for key in keys}


# ---------------------------------------------------------------------------
# Verification metrics (face anti-spoofing): label 1 = bona fide (positive),
# higher score = more likely bona fide, a sample is accepted when score >= threshold.


def _scores_and_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    scores = _numpy(scores, np.float64)
    positive = _numpy(labels, np.int64) == 1
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
