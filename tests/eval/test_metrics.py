import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from osad.eval import auroc, closed_set_accuracy


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
