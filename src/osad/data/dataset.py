"""Datasets as whole tensors, and the open-set view built from them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import Tensor

from osad.data.splits import unknown_of


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
    """What osad needs to know about a dataset before loading it."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    known_splits: tuple[tuple[int, ...], ...]
    load: Callable[[str], RawDataset]
    description: str = ""

    @property
    def num_splits(self) -> int:
        return len(self.known_splits)


@dataclass
class OpenSetData:
    """One open-set split, ready for training and testing.

    Training and validation hold known classes only, with labels remapped to
    ``0..K-1`` in the order of ``known_classes``. The test set holds known and
    unknown images; ``test_labels`` is the remapped label for known images and
    -1 for unknown ones, ``test_classes`` the original class id.
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


def _resize(images: Tensor, size: int) -> Tensor:
    if size == 0 or images.shape[-1] == size == images.shape[-2]:
        return images
    was_uint8 = images.dtype == torch.uint8
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    if was_uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.clamp_(0.0, 1.0)


def build_openset(
    info: DatasetInfo,
    raw: RawDataset,
    split: int,
    *,
    test_fraction: float,
    val_fraction: float,
    partition_seed: int,
    image_size: int = 0,
    known_classes: Sequence[int] = (),
) -> OpenSetData:
    """Select known/unknown classes of ``split`` and partition train/val/test, seeded.

    ``known_classes``, when given, replaces the split table's known classes;
    every other class is unknown.

    A dataset without an official test set is partitioned with a stratified,
    seeded split (``test_fraction``). The validation set is a stratified, seeded
    ``val_fraction`` of the known training images. Unknown-class training images
    are never used.
    """
    known = tuple(known_classes) or info.known_splits[split]
    unknown = unknown_of(known, info.num_classes)
    pool = raw.train
    if raw.test is None:
        idx = np.arange(len(pool.labels))
        train_idx, test_idx = train_test_split(
            idx,
            test_size=test_fraction,
            stratify=pool.labels.numpy(),
            random_state=partition_seed,
        )
        train = ClassImages(pool.images[np.sort(train_idx)], pool.labels[np.sort(train_idx)])
        test = ClassImages(pool.images[np.sort(test_idx)], pool.labels[np.sort(test_idx)])
    else:
        train, test = pool, raw.test

    remap = torch.full((info.num_classes,), -1, dtype=torch.long)
    remap[list(known)] = torch.arange(len(known))

    is_known = remap[train.labels] >= 0
    known_idx = is_known.nonzero(as_tuple=True)[0].numpy()
    if val_fraction > 0:
        fit_idx, val_idx = train_test_split(
            known_idx,
            test_size=val_fraction,
            stratify=train.labels[known_idx].numpy(),
            random_state=partition_seed,
        )
        fit_idx, val_idx = np.sort(fit_idx), np.sort(val_idx)
    else:
        fit_idx, val_idx = known_idx, known_idx[:0]

    return OpenSetData(
        name=info.name,
        known_classes=tuple(known),
        unknown_classes=unknown,
        mean=info.mean,
        std=info.std,
        train_images=_resize(train.images[fit_idx], image_size),
        train_labels=remap[train.labels[fit_idx]],
        val_images=_resize(train.images[val_idx], image_size),
        val_labels=remap[train.labels[val_idx]],
        test_images=_resize(test.images, image_size),
        test_labels=remap[test.labels],
        test_classes=test.labels.clone(),
    )
