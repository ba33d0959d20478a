import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from osad.eval import (
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


def test_auroc_matches_sklearn_and_hand_value():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=200)
    unknown = rng.random(200) < 0.4
    assert auroc(torch.tensor(scores), torch.tensor(unknown)) == pytest.approx(
        roc_auc_score(unknown, scores)
    )
    # 3 of the 4 (unknown, known) pairs are ranked right -> 0.75
    assert auroc(np.array([0.9, 0.2, 0.5, 0.1]), np.array([True, True, False, False])) == 0.75


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError):
        auroc(np.array([1.0, 2.0]), np.array([True, True]))


def test_closed_set_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
    assert closed_set_accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def _random_case(seed, n=300, decimals=1):
    """Scores with many ties (rounded) and about 40% unknown."""
    rng = np.random.default_rng(seed)
    unknown = rng.random(n) < 0.4
    scores = np.round(rng.normal(size=n) + unknown, decimals)
    return scores, unknown


def test_aupr_in_and_out_match_hand_values_and_sklearn():
    # ranked by score: U(0.9) K(0.8) U(0.3) K(0.1) K(0.05)
    scores = np.array([0.9, 0.8, 0.3, 0.1, 0.05])
    unknown = np.array([True, False, True, False, False])
    # out: unknown hits at ranks 1 and 3 -> (1 + 2/3) / 2
    assert aupr_out(scores, unknown) == pytest.approx((1 + 2 / 3) / 2)
    # in: from the lowest score, known hits at ranks 1, 2 and 4 -> (1 + 1 + 3/4) / 3
    assert aupr_in(scores, unknown) == pytest.approx((1 + 1 + 3 / 4) / 3)
    for seed in range(3):
        s, u = _random_case(seed)
        assert aupr_out(torch.tensor(s), torch.tensor(u)) == pytest.approx(
            average_precision_score(u, s)
        )
        assert aupr_in(s, u) == pytest.approx(average_precision_score(~u, -s))


def test_fpr95_both_conventions_on_a_hand_example():
    unknown_scores = np.arange(20.0)  # 0 .. 19
    known_scores = np.arange(20.0) - 12  # -12 .. 7
    scores = np.r_[unknown_scores, known_scores]
    unknown = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    # flag score >= 1 (19 of 20 unknown): known 1..7 are flagged -> 7/20
    assert fpr_at_tpr(scores, unknown, positive="unknown") == pytest.approx(7 / 20)
    # accept score <= 6 (19 of 20 known): unknown 0..6 are accepted -> 7/20
    assert fpr_at_tpr(scores, unknown, positive="known") == pytest.approx(7 / 20)
    # one known outlier at 10, the other known images at -5
    scores = np.r_[unknown_scores, np.full(19, -5.0), 10.0]
    # flag score >= 1: only the outlier among the known -> 1/20
    assert fpr_at_tpr(scores, unknown, positive="unknown") == pytest.approx(1 / 20)
    # accept score <= -5 (19 of 20 known): no unknown image is accepted
    assert fpr_at_tpr(scores, unknown, positive="known") == 0.0


def test_fpr95_ties_fall_on_one_side():
    # five unknown images tied at the threshold: all are flagged, and so is the tied known one
    scores = np.r_[np.full(5, 1.0), [1.0, 0.0, 0.0, 0.0]]
    unknown = np.r_[np.ones(5, bool), np.zeros(4, bool)]
    assert fpr_at_tpr(scores, unknown, positive="unknown") == pytest.approx(1 / 4)
    assert fpr_at_tpr(scores, unknown, positive="known") == pytest.approx(1.0)


def _sklearn_fpr_at_tpr(positive_mask, positive_scores, tpr=0.95):
    fpr, tprs, _ = roc_curve(positive_mask, positive_scores, drop_intermediate=False)
    return fpr[np.argmax(tprs >= tpr - 1e-12)]


@pytest.mark.parametrize("seed", range(4))
def test_fpr95_matches_sklearn_roc_curve(seed):
    scores, unknown = _random_case(seed, decimals=seed % 3)
    assert fpr_at_tpr(scores, unknown, positive="unknown") == pytest.approx(
        _sklearn_fpr_at_tpr(unknown, scores)
    )
    assert fpr_at_tpr(scores, unknown, positive="known") == pytest.approx(
        _sklearn_fpr_at_tpr(~unknown, -scores)
    )


def test_oscr_on_planted_examples():
    # known 0.1 (correct), 0.3 (wrong); unknown 0.2, 0.4:
    # curve (0,0) -> (0,.5) -> (.5,.5) -> (.5,.5) -> (1,.5): area 0.5
    scores = np.array([0.1, 0.3, 0.2, 0.4])
    unknown = np.array([False, False, True, True])
    correct = np.array([True, False, False, False])
    assert oscr(scores, unknown, correct) == pytest.approx(0.5)
    # a known-unknown tie is one straight segment: (0,0) -> (0,.5) -> (.5,1) -> (1,1)
    scores = np.array([0.1, 0.2, 0.2, 0.5])
    correct = np.array([True, True, False, False])
    assert oscr(scores, unknown, correct) == pytest.approx(0.875)
    assert oscr(scores, unknown, correct) == pytest.approx(auroc(scores, unknown))


@pytest.mark.parametrize("seed", range(3))
def test_oscr_is_auroc_when_all_known_are_correct_and_scales_with_accuracy(seed):
    scores, unknown = _random_case(seed)
    assert oscr(scores, unknown, np.ones_like(unknown)) == pytest.approx(
        roc_auc_score(unknown, scores)
    )
    assert oscr(scores, unknown, np.zeros_like(unknown)) == 0.0
    rng = np.random.default_rng(seed)
    some = rng.random(len(scores)) < 0.7
    assert 0 < oscr(scores, unknown, some) < roc_auc_score(unknown, scores)


def test_acceptance_threshold_and_operating_point():
    val_known = np.arange(1.0, 101.0)  # clean validation scores 1 .. 100
    assert acceptance_threshold(val_known, 0.95) == 95.0
    assert acceptance_threshold(np.arange(20.0), 0.95) == 18.0  # the 19th smallest, not the 20th
    threshold = acceptance_threshold(val_known)
    scores = np.array([50.0, 96.0, 95.0, 10.0, 200.0, 90.0, 99.0])
    unknown = np.array([False, False, False, False, True, True, True])
    correct = np.array([True, True, False, False, False, False, False])
    point = operating_point(scores, unknown, threshold, correct)
    assert point == {
        "known_accepted": 3 / 4,  # 50, 95, 10
        "unknown_rejected": 2 / 3,  # 200, 99
        "known_accepted_correct": 1 / 4,  # only 50 is accepted and correct
    }
    assert "known_accepted_correct" not in operating_point(scores, unknown, threshold)


def test_open_set_metrics_is_the_flat_set_of_every_metric():
    scores, unknown = _random_case(0)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(len(scores), 4))
    labels = np.where(unknown, -1, rng.integers(0, 4, len(scores)))
    correct = logits.argmax(1) == labels
    full = open_set_metrics(
        torch.tensor(scores), torch.tensor(unknown), torch.tensor(logits), labels, threshold=0.3
    )
    assert full == pytest.approx(
        {
            "auroc": auroc(scores, unknown),
            "aupr_in": aupr_in(scores, unknown),
            "aupr_out": aupr_out(scores, unknown),
            "fpr95_known_positive": fpr_at_tpr(scores, unknown, positive="known"),
            "fpr95_unknown_positive": fpr_at_tpr(scores, unknown, positive="unknown"),
            "closed_set_accuracy": closed_set_accuracy(
                torch.tensor(logits[~unknown]), torch.tensor(labels[~unknown])
            ),
            "oscr": oscr(scores, unknown, correct),
            "eer": open_set_eer(scores, unknown),
            "threshold": 0.3,
            **operating_point(scores, unknown, 0.3, correct),
            "hter": open_set_hter(operating_point(scores, unknown, 0.3)),
        }
    )
    assert set(open_set_metrics(scores, unknown)) == {
        "auroc",
        "aupr_in",
        "aupr_out",
        "fpr95_known_positive",
        "fpr95_unknown_positive",
        "eer",
    }
    with pytest.raises(ValueError, match="both logits and labels"):
        open_set_metrics(scores, unknown, logits=logits)


def test_open_set_eer_and_hter_by_hand():
    # known 0.1..0.4, unknown 0.35..0.7 (higher = more unknown)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6, 0.7])
    unknown = np.array([False] * 4 + [True] * 4)
    # rejecting score >= 0.4: one known rejected (1/4), one unknown accepted (0.35: 1/4)
    assert open_set_eer(scores, unknown) == pytest.approx(0.25)
    # accepting score <= 0.3: 3/4 known accepted, every unknown rejected -> (1/4 + 0) / 2
    metrics = open_set_metrics(scores, unknown, threshold=0.3)
    assert metrics["hter"] == pytest.approx(0.125)
    assert open_set_metrics(-scores, unknown)["eer"] == pytest.approx(0.75)


def test_metrics_refuse_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([np.nan, 1.0]), np.array([True, False]))
    with pytest.raises(ValueError, match="equal-length"):
        aupr_out(np.array([1.0, 2.0, 3.0]), np.array([True, False]))
    with pytest.raises(ValueError, match="both known and unknown"):
        oscr(np.array([1.0, 2.0]), np.array([False, False]), np.array([True, True]))
    with pytest.raises(ValueError, match="positive"):
        fpr_at_tpr(np.array([1.0, 2.0]), np.array([True, False]), positive="unknwon")
    with pytest.raises(ValueError, match="rate"):
        acceptance_threshold(np.array([1.0]), 0.0)


def test_mean_std_over_splits():
    values = [0.9, 0.8, 0.95, 0.85, 0.7]
    summary = mean_std(values)
    assert summary.mean == pytest.approx(np.mean(values))
    assert summary.std == pytest.approx(np.std(values, ddof=1))
    assert summary.n == 5
    assert np.isnan(mean_std([0.5]).std)
    splits = [{"auroc": 0.9, "oscr": 0.8}, {"auroc": 0.7, "oscr": 0.6}]
    table = summarize_splits(splits)
    assert table["auroc"].mean == pytest.approx(0.8)
    assert table["oscr"].std == pytest.approx(np.sqrt(0.02))
    with pytest.raises(ValueError, match="split 1"):
        summarize_splits([{"auroc": 0.9}, {"oscr": 0.6}])
