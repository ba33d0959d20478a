"""The FAS evaluation on planted scores: video averaging and threshold transfer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from osad.fas.evaluate import level_result, video_scores
from osad.fas.frames import FasFrames

# Validation scores: three real frames (label 1) and three attacks (label 0); their
# EER threshold is 0.7 (tests/eval/test_fas_metrics.py).
VAL_SCORES = np.array([0.9, 0.8, 0.4, 0.7, 0.2, 0.1])
VAL_LABELS = np.array([1, 1, 1, 0, 0, 0])


def test_video_scores_average_the_frames_of_each_video():
    frames = FasFrames(
        images=torch.zeros(5, 3, 4, 4),
        labels=torch.tensor([1, 1, 0, 0, 0]),
        depth=torch.zeros(5, 1, 1, 1),
        videos=torch.tensor([3, 3, 7, 7, 8]),
        video_names=tuple(str(i) for i in range(9)),
    )
    scores, labels, ids = video_scores(torch.tensor([0.2, 0.6, 0.5, 0.1, 0.9]), frames)
    assert ids.tolist() == [3, 7, 8] and labels.tolist() == [1, 0, 0]
    assert scores.tolist() == pytest.approx([0.4, 0.3, 0.9])


def test_level_result_takes_the_threshold_from_validation_scores():
    # validation: EER threshold 0.7 (as above); on the target it gives FAR 1/2, FRR 0
    target_scores = torch.tensor([0.95, 0.75, 0.8, 0.3])
    target_labels = torch.tensor([1, 1, 0, 0])
    result = level_result(
        target_scores, target_labels, torch.tensor(VAL_SCORES), torch.tensor(VAL_LABELS)
    )
    assert result.val_threshold == pytest.approx(0.7)
    assert (result.far_at_val_threshold, result.frr_at_val_threshold) == (0.5, 0.0)
    assert result.hter_at_val_threshold == pytest.approx(0.25)
    # target: t=0.95 gives (FAR 0, FRR 1/2), t=0.8 (1/2, 1/2), t=0.75 (1/2, 0) -> EER 1/2 at 0.8
    assert result.target_eer == pytest.approx(0.5) and result.target_eer_threshold == pytest.approx(
        0.8
    )
    assert result.auc == pytest.approx(3 / 4) and result.count == 4
