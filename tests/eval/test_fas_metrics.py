"""HTER, EER and AUC against hand computations on planted scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from osad.eval.metrics import auroc, eer, far_frr, hter

# Three real frames (label 1) and three attacks (label 0).
SCORES = np.array([0.9, 0.8, 0.4, 0.7, 0.2, 0.1])
LABELS = np.array([1, 1, 1, 0, 0, 0])


def test_hter_at_a_threshold_is_the_mean_of_far_and_frr():
    # threshold 0.5: attack 0.7 accepted (FAR 1/3), real 0.4 rejected (FRR 1/3)
    assert far_frr(SCORES, LABELS, 0.5) == pytest.approx((1 / 3, 1 / 3))
    assert hter(SCORES, LABELS, 0.5) == pytest.approx(1 / 3)
    # threshold 0.75: no attack accepted, reals 0.4 rejected -> (0 + 1/3) / 2
    assert hter(SCORES, LABELS, 0.75) == pytest.approx(1 / 6)
    # a score equal to the threshold is accepted
    assert far_frr(SCORES, LABELS, 0.7) == pytest.approx((1 / 3, 1 / 3))
    # everything accepted: FAR 1, FRR 0
    assert hter(torch.tensor(SCORES), torch.tensor(LABELS), 0.0) == pytest.approx(0.5)


def test_eer_is_where_far_meets_frr():
    # thresholds 0.9: (0, 2/3); 0.8: (0, 1/3); 0.7: (1/3, 1/3) <- equal
    rate, threshold = eer(SCORES, LABELS)
    assert threshold == pytest.approx(0.7) and rate == pytest.approx(1 / 3)
    assert hter(SCORES, LABELS, threshold) == pytest.approx(rate)
    # separable scores: EER 0 at the lowest real score
    rate, threshold = eer(np.array([0.6, 0.9, 0.1, 0.3]), np.array([1, 1, 0, 0]))
    assert rate == 0.0 and threshold == pytest.approx(0.6)


def test_eer_without_an_exact_crossing():
    # reals 0.9, 0.5; attacks 0.6, 0.3, 0.2, 0.1
    # t=0.9: FAR 0, FRR 1/2 (gap 1/2); t=0.6: FAR 1/4, FRR 1/2 (gap 1/4);
    # t=0.5: FAR 1/4, FRR 0 (gap 1/4, the lower threshold wins) -> EER 1/8
    scores = np.array([0.9, 0.5, 0.6, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 0, 0, 0, 0])
    rate, threshold = eer(scores, labels)
    assert threshold == pytest.approx(0.5) and rate == pytest.approx(1 / 8)


def test_auc_counts_correctly_ordered_pairs():
    # real 0.9 and 0.8 beat all 3 attacks, real 0.4 beats 2: 8 of 9 pairs
    assert auroc(SCORES, LABELS == 1) == pytest.approx(8 / 9)


def test_metrics_need_both_classes():
    with pytest.raises(ValueError, match="both"):
        eer(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="both"):
        hter(np.array([0.1, 0.2]), np.array([0, 0]), 0.5)
