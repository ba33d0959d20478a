"""Datasets as whole tensors, and the open-set view built from them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import Tensor

from osad.data.files import FileSet
from osad.data.splits import unknown_of
from osad.errors import DataError


@dataclass(frozen=True)
class ClassImages:
    """All images of one dataset part with their class ids (0..num_classes-1)."""

    images: Tensor  # (N, C, H, W), uint8 in [0, 255] or float in [0, 1]
    labels: Tensor  # (N,), int64


@dataclass(frozen=True)
class RawDataset:
    """A dataset as loaded from disk: an official train/test partition, or one pool."""

    train: ClassImages
    test: ClassImages | None  # None: the pool in ``train`` is partitioned by the config


@dataclass(frozen=True)
class DatasetInfo:
    """What osad needs to know about a dataset before loading it.

    ``read(root)`` parses the dataset once ``files`` are present under the
    data root. Split ``i`` knows the classes ``known_splits[i]``; its unknown
    classes are ``unknown_splits[i]``, or all other classes when
    ``unknown_splits`` is None. ``mean`` and ``std`` are per-channel training-set
    statistics in [0, 1] units (the model's normalisation layer).
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    known_splits: tuple[tuple[int, ...], ...]
    read: Callable[[Path], RawDataset]
    files: tuple[FileSet, ...] = ()
    unknown_splits: tuple[tuple[int, ...], ...] | None = None
    description: str = ""
    # For datasets too large to hold whole: read(root, train_classes) keeps only the
    # training images of those classes (the test part is read whole).
    read_classes: Callable[[Path, tuple[int, ...]], RawDataset] | None = None

    @property
    def num_splits(self) -> int:
        return len(self.known_splits)

    def split(self, index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(known, unknown) class ids of split ``index``."""
        known = self.known_splits[index]
        if self.unknown_splits is None:
            return known, unknown_of(known, self.num_classes)
        return known, self.unknown_splits[index]


@dataclass
class OpenSetData:
    """One open-set split, ready for training and testing.

    Training and validation hold known classes only, with labels remapped to
    ``0..K-1`` in the order of ``known_classes``. The test set holds known and
    unknown images; ``test_labels`` is the remapped label for known images and
    -1 for unknown ones, ``test_classes`` the original class id. ``source``
    records where the images came from (see :func:`osad.data.load_openset`).
    """

    name: str
    known_classes: tuple[int, ...]
    unknown_classes: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    test_classes: Tensor
    source: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.known_classes)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    @property
    def test_known(self) -> Tensor:
        return self.test_labels >= 0

    def to(self, device: torch.device | str) -> OpenSetData:
        """Move every tensor to ``device`` (the whole dataset lives there)."""
        moved = {
            k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()
        }
        return OpenSetData(**moved)


def resize(images: Tensor, size: int) -> Tensor:
    """Bilinear resize to ``size`` x ``size`` (antialiased when shrinking); 0 keeps the size."""
    if size == 0 or images.shape[-1] == size == images.shape[-2]:
        return images
    was_uint8 = images.dtype == torch.uint8
    shrink = size < max(images.shape[-2:])
    out = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )
    if was_uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.clamp_(0.0, 1.0)


# ITU-R BT.601 luma weights, as PIL's RGB -> L conversion uses.
_LUMA = (0.299, 0.587, 0.114)


def conform(images: Tensor, channels: int, size: int, dtype: torch.dtype) -> Tensor:
    """Images of another dataset in this one's format: channels, square size and dtype."""
    if images.shape[1] == 3 and channels == 1:
        weights = torch.tensor(_LUMA).view(1, 3, 1, 1)
        gray = (images.float() * weights).sum(1, keepdim=True)
        images = gray.round_().to(torch.uint8) if images.dtype == torch.uint8 else gray
    elif images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    elif images.shape[1] != channels:
        raise ValueError(f"cannot convert {images.shape[1]} channels to {channels}")
    images = resize(images, size)
    if dtype == images.dtype:
        return images
    if images.dtype == torch.uint8:
        return images.to(dtype).div_(255.0)
    return images.mul(255.0).round_().clamp_(0, 255).to(dtype)


def stratified_split(
    idx: np.ndarray,
    labels: np.ndarray,
    fraction: float,
    seed: int,
    key: str,
    what: str,
    fix: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """``idx`` split into (rest, ``fraction`` of it) with every class of ``labels`` on
    both sides (scikit-learn's stratified split, seeded); a
    :class:`~osad.errors.DataError` naming the config ``key`` and the fractions that
    work when a side would miss a class. ``what`` names the images in the message,
    ``fix`` ends it."""
    classes, counts = np.unique(labels, return_counts=True)
    n, c = len(idx), len(classes)
    side = math.ceil(fraction * n)  # scikit-learn's size of the `fraction` side
    if counts.min(initial=n) < 2:
        raise DataError(
            f"'{key}': class {classes[counts.argmin()]} has a single image among the {n} {what}; "
            f"a split that keeps every class on both sides needs two of each{fix}"
        )
    if not c <= side <= n - c:
        low, high = math.ceil(c / n * 1e4) / 1e4, math.floor((n - c) / n * 1e4) / 1e4
        raise DataError(
            f"'{key}' {fraction:g} holds out {side} of the {n} {what} for {c} classes; it "
            f"must be in [{low:g}, {high:g}] to keep every class on both sides{fix}"
        )
    return train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)


def partition(
    raw: RawDataset, *, test_fraction: float, partition_seed: int
) -> tuple[ClassImages, ClassImages]:
    """(train, test): the official partition, or a seeded stratified split of the pool."""
    if raw.test is not None:
        return raw.train, raw.test
    pool = raw.train
    idx = np.arange(len(pool.labels))
    train_idx, test_idx = stratified_split(
        idx, pool.labels.numpy(), test_fraction, partition_seed, "data.test_fraction", "images"
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return (
        ClassImages(pool.images[train_idx], pool.labels[train_idx]),
        ClassImages(pool.images[test_idx], pool.labels[test_idx]),
    )


def build_openset(
    info: DatasetInfo,
    train: ClassImages,
    test: ClassImages,
    known: tuple[int, ...],
    unknown: tuple[int, ...],
    *,
    val_fraction: float,
    partition_seed: int,
    image_size: int = 0,
) -> OpenSetData:
    """The open-set view of a train/test partition.

    Training and validation images are those of the ``known`` classes (the
    validation set is a stratified, seeded ``val_fraction`` of them), labelled
    by their position in ``known``. The test set keeps the images of ``known``
    and ``unknown`` classes only; other classes (and every unknown-class
    training image) are never used.
    """
    known, unknown = tuple(known), tuple(unknown)
    if set(known) & set(unknown):
        raise ValueError(f"classes {sorted(set(known) & set(unknown))} are both known and unknown")
    num_ids = 1 + max(known + unknown + (int(train.labels.max()), int(test.labels.max())))
    remap = torch.full((num_ids,), -1, dtype=torch.long)
    remap[list(known)] = torch.arange(len(known))

    known_idx = (remap[train.labels] >= 0).nonzero(as_tuple=True)[0].numpy()
    if val_fraction > 0:
        fit_idx, val_idx = stratified_split(
            known_idx,
            train.labels[known_idx].numpy(),
            val_fraction,
            partition_seed,
            "data.val_fraction",
            f"known training images of {info.name}",
            " (or 0: no validation)",
        )
        fit_idx, val_idx = np.sort(fit_idx), np.sort(val_idx)
    else:
        fit_idx, val_idx = known_idx, known_idx[:0]

    used = torch.zeros(num_ids, dtype=torch.bool)
    used[list(known + unknown)] = True
    test_idx = used[test.labels].nonzero(as_tuple=True)[0]

    return OpenSetData(
        name=info.name,
        known_classes=known,
        unknown_classes=unknown,
        mean=info.mean,
        std=info.std,
        train_images=resize(train.images[fit_idx], image_size),
        train_labels=remap[train.labels[fit_idx]],
        val_images=resize(train.images[val_idx], image_size),
        val_labels=remap[train.labels[val_idx]],
        test_images=resize(test.images[test_idx], image_size),
        test_labels=remap[test.labels[test_idx]],
        test_classes=test.labels[test_idx].clone(),
    )
