"""Datasets and open-set splits.

``load_openset(config.data)`` returns an :class:`OpenSetData` for any dataset
in :data:`DATASETS`; images are float in [0, 1] or uint8, never normalised
(normalisation is the model's first layer).
"""

from __future__ import annotations

from osad.data.augment import random_crop_flip, rotate_batch, rotate_by, to_float
from osad.data.dataset import (
    ClassImages,
    DatasetInfo,
    OpenSetData,
    RawDataset,
    build_openset,
)
from osad.data.digits import load_digits_pool
from osad.data.splits import CIFAR10_KNOWN
from osad.errors import unknown_name

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits",
        num_classes=10,
        channels=1,
        image_size=8,
        # Statistics of all 1797 scikit-learn digits, in [0, 1] units.
        mean=(0.3053,),
        std=(0.3760,),
        known_splits=CIFAR10_KNOWN,
        load=load_digits_pool,
        description="scikit-learn load_digits: real 8x8 handwritten digits, embedded",
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered dataset, or a ConfigError with a suggestion."""
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    return DATASETS[name]


def load_openset(data_config) -> OpenSetData:
    """Load the dataset named by a :class:`~osad.config.DataConfig` and build its split."""
    info = dataset_info(data_config.name)
    raw = info.load(data_config.root)
    return build_openset(
        info,
        raw,
        data_config.split,
        test_fraction=data_config.test_fraction,
        val_fraction=data_config.val_fraction,
        partition_seed=data_config.partition_seed,
        image_size=data_config.image_size,
        known_classes=data_config.known_classes,
    )


__all__ = [
    "DATASETS",
    "ClassImages",
    "DatasetInfo",
    "OpenSetData",
    "RawDataset",
    "build_openset",
    "dataset_info",
    "load_openset",
    "random_crop_flip",
    "rotate_batch",
    "rotate_by",
    "to_float",
]
