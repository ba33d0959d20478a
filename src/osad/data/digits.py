"""The embedded default: scikit-learn's real 8x8 handwritten digits (no download)."""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.datasets import load_digits

from osad.data.dataset import ClassImages, RawDataset


def load_digits_pool(root: Path | None = None) -> RawDataset:
    """All 1797 digits as one pool of float images in [0, 1] (gray levels 0..16 / 16).

    The digits ship with scikit-learn, so the data root is not used.
    """
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    return RawDataset(train=ClassImages(images, labels), test=None)
