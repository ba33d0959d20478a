"""Datasets and open-set splits.

``load_openset(config.data)`` returns an :class:`OpenSetData` for any dataset
in :data:`DATASETS`; images are uint8 (as stored in the files) or float in
[0, 1], never normalised (normalisation is the model's first layer).

The unknown test images are the held-out classes of the split, or, with
``data.unknown``, the test images of another dataset or every image of an
image folder (out-of-distribution unknowns).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from osad.data.augment import random_crop_flip, rotate_batch, rotate_by, to_float
from osad.data.catalog import DATASETS
from osad.data.dataset import (
    ClassImages,
    DatasetInfo,
    OpenSetData,
    RawDataset,
    build_openset,
    conform,
    partition,
)
from osad.data.files import ensure_files, resolve_data_root
from osad.data.formats import read_image_folder
from osad.data.splits import unknown_of
from osad.errors import DataError, unknown_name


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered dataset, or a ConfigError with a suggestion."""
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    return DATASETS[name]


def is_folder_path(text: str) -> bool:
    """Whether ``data.unknown`` names an image folder rather than a dataset."""
    return text.startswith(("~", ".")) or "/" in text or os.sep in text


def load_raw(
    info: DatasetInfo, data_config, train_classes: tuple[int, ...] | None = None
) -> RawDataset:
    """Read ``info``'s dataset from the data root, fetching missing files if allowed.

    ``train_classes``: the training images needed (None: all); a dataset that can
    read only some classes (``info.read_classes``) reads only those.
    """
    root = resolve_data_root(data_config.root)
    for files in info.files:
        ensure_files(files, root, download=data_config.download, check=data_config.verify)
    if train_classes is not None and info.read_classes is not None:
        return info.read_classes(root, train_classes)
    return info.read(root)


def split_classes(info: DatasetInfo, data_config) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(known, unknown) classes: ``data.known`` and the rest, or the split's table row."""
    if data_config.known:
        known = tuple(data_config.known)
        return known, unknown_of(known, info.num_classes)
    return info.split(data_config.split)


def load_unknown_source(data_config, like: DatasetInfo, dtype: torch.dtype) -> ClassImages:
    """The out-of-distribution unknowns named by ``data.unknown``, in ``like``'s format.

    A dataset contributes its test set (its whole pool if it has no official
    test set); an image folder contributes every image, its subfolders naming
    classes.
    """
    name = data_config.unknown
    if is_folder_path(name):
        images = read_image_folder(Path(name).expanduser(), like.channels, like.image_size)
    else:
        raw = load_raw(dataset_info(name), data_config, train_classes=())
        images = raw.test if raw.test is not None else raw.train
    return ClassImages(conform(images.images, like.channels, like.image_size, dtype), images.labels)


def load_openset(data_config) -> OpenSetData:
    """Load the dataset named by a :class:`~osad.config.DataConfig` and build its split."""
    info = dataset_info(data_config.name)
    known, unknown = split_classes(info, data_config)
    train, test = partition(
        load_raw(info, data_config, known),
        test_fraction=data_config.test_fraction,
        partition_seed=data_config.partition_seed,
    )
    if data_config.unknown:
        # Other datasets' classes get ids after this one's; the split's own
        # held-out classes leave the test set.
        extra = load_unknown_source(data_config, info, train.images.dtype)
        offset = info.num_classes
        test = ClassImages(
            torch.cat([test.images, extra.images]), torch.cat([test.labels, extra.labels + offset])
        )
        unknown = tuple(offset + int(c) for c in extra.labels.unique())
    if not unknown:
        raise DataError(f"{data_config.name}: no unknown classes left for the test set")
    return build_openset(
        info,
        train,
        test,
        known,
        unknown,
        val_fraction=data_config.val_fraction,
        partition_seed=data_config.partition_seed,
        image_size=data_config.image_size,
    )


__all__ = [
    "DATASETS",
    "ClassImages",
    "DatasetInfo",
    "OpenSetData",
    "RawDataset",
    "build_openset",
    "dataset_info",
    "is_folder_path",
    "load_openset",
    "load_raw",
    "random_crop_flip",
    "resolve_data_root",
    "rotate_batch",
    "rotate_by",
    "to_float",
]
