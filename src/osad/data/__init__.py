"""Datasets and open-set splits.

``load_openset(config.data)`` returns an :class:`OpenSetData` for any dataset
in :data:`DATASETS`, or for an image folder (``data.name=folder``,
:mod:`osad.data.folder`); images are uint8 (as stored in the files) or float in
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
from osad.data.folder import (
    FOLDER,
    ImageFormat,
    channel_mean_std,
    check_same_format,
    known_classes,
    read_folder,
    read_unknown_folder,
)
from osad.data.splits import unknown_of
from osad.errors import DataError, unknown_name


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered dataset, or a ConfigError with a suggestion
    (``folder``, an image folder, is described by the folder itself)."""
    if name not in DATASETS:
        raise unknown_name("dataset", name, (*DATASETS, FOLDER))
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


def folder_root(data_config) -> Path:
    """The image folder of ``data.name=folder``: ``data.root`` (or ``--data-root``), absolute."""
    if not data_config.root:
        raise DataError(
            "data.name=folder reads the image folder that data.root=PATH (or --data-root "
            "PATH) names; set it"
        )
    return Path(data_config.root).expanduser().resolve()


def source_name(data_config) -> str:
    """How titles name the training data: the dataset, or ``folder:<folder name>``."""
    if data_config.name == FOLDER:
        return f"{FOLDER}:{folder_root(data_config).name}"
    return data_config.name


def unknown_source_name(data_config) -> str:
    """How titles name ``data.unknown``: the dataset, or ``folder:<folder name>``."""
    name = data_config.unknown
    return f"{FOLDER}:{Path(name).expanduser().resolve().name}" if is_folder_path(name) else name


def target_format(info: DatasetInfo, data_config) -> ImageFormat:
    """The format every image is given: the training data's, or the one the config asks."""
    return ImageFormat(
        data_config.channels or info.channels,
        data_config.image_size or info.image_size,
        f"the training data ({info.name})",
    )


def load_unknown_source(data_config, target: ImageFormat, dtype: torch.dtype) -> ClassImages:
    """The out-of-distribution unknowns named by ``data.unknown``, in the ``target`` format.

    A dataset contributes its test set (its whole pool if it has no official
    test set); an image folder contributes every image, its subfolders naming
    classes. Images of another size or channel count than ``target`` are
    converted only where ``data.image_size`` / ``data.channels`` ask; otherwise a
    DataError names what was found and the key to set.
    """
    name, size, channels = data_config.unknown, data_config.image_size, data_config.channels
    if is_folder_path(name):
        images = read_unknown_folder(Path(name).expanduser(), target, size, channels)
    else:
        info = dataset_info(name)
        native = ImageFormat(
            channels or info.channels, size or info.image_size, f"data.unknown {name}"
        )
        check_same_format(native, target)
        raw = load_raw(info, data_config, train_classes=())
        images = raw.test if raw.test is not None else raw.train
    return ClassImages(conform(images.images, target.channels, target.size, dtype), images.labels)


def _folder_dataset(data_config) -> tuple[DatasetInfo, RawDataset, dict]:
    root = folder_root(data_config)
    raw, record = read_folder(root, data_config.image_size, data_config.channels)
    info = DatasetInfo(
        name=f"{FOLDER}:{root.name}",
        num_classes=len(record["classes"]),
        channels=record["channels"],
        image_size=record["image_size"],
        mean=(),  # computed from the training images
        std=(),
        known_splits=(),
        read=lambda _root: raw,
        description=f"the image folder {root}",
    )
    return info, raw, record


def load_openset(data_config) -> OpenSetData:
    """Load the dataset named by a :class:`~osad.config.DataConfig` and build its split.

    ``OpenSetData.source`` records where the images came from: for an image folder
    its path, class names, format, partition and normalisation statistics.
    """
    if data_config.name == FOLDER:
        info, raw, source = _folder_dataset(data_config)
        known = known_classes(data_config.known, tuple(source["classes"]))
        unknown = unknown_of(known, info.num_classes)
    else:
        info = dataset_info(data_config.name)
        known, unknown = split_classes(info, data_config)
        raw = load_raw(info, data_config, known)
        source = {"source": "dataset", "name": info.name}
    if raw.test is None:
        source["partition"] = (
            f"seeded stratified: test_fraction {data_config.test_fraction}, "
            f"partition_seed {data_config.partition_seed}"
        )
    train, test = partition(
        raw, test_fraction=data_config.test_fraction, partition_seed=data_config.partition_seed
    )
    target = target_format(info, data_config)
    if target.channels != info.channels:  # data.channels asks for a conversion
        train, test = (
            ClassImages(conform(p.images, target.channels, 0, p.images.dtype), p.labels)
            for p in (train, test)
        )
    if data_config.unknown:
        # Other datasets' classes get ids after this one's; the split's own
        # held-out classes leave the test set.
        extra = load_unknown_source(data_config, target, train.images.dtype)
        offset = info.num_classes
        test = ClassImages(
            torch.cat([test.images, extra.images]), torch.cat([test.labels, extra.labels + offset])
        )
        unknown = tuple(offset + int(c) for c in extra.labels.unique())
        source["unknown"] = unknown_source_name(data_config)
    if not unknown:
        raise DataError(f"{data_config.name}: no unknown classes left for the test set")
    data = build_openset(
        info,
        train,
        test,
        known,
        unknown,
        val_fraction=data_config.val_fraction,
        partition_seed=data_config.partition_seed,
        image_size=data_config.image_size,
    )
    if not info.mean or target.channels != info.channels:
        # No published statistics for these images: those of the training images.
        data.mean, data.std = channel_mean_std(data.train_images)
        source["normalisation"] = "mean and std of the training images"
    source.update(mean=list(data.mean), std=list(data.std))
    data.source = source
    return data


__all__ = [
    "DATASETS",
    "FOLDER",
    "ClassImages",
    "DatasetInfo",
    "OpenSetData",
    "RawDataset",
    "build_openset",
    "dataset_info",
    "folder_root",
    "is_folder_path",
    "load_openset",
    "load_raw",
    "random_crop_flip",
    "resolve_data_root",
    "rotate_batch",
    "rotate_by",
    "source_name",
    "to_float",
    "unknown_source_name",
]
