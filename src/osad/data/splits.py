"""Open-set splits: which classes are known, and which unknown, in each split.

* CIFAR-10 and SVHN: the 5 splits of the reference protocol (6 known / 4
  unknown, Shao et al., ECCV 2020). MNIST, Fashion-MNIST and the embedded
  digits reuse this table (the OSAD reference has no MNIST split of its own).
* TinyImageNet: 3 splits, known = the first 20 classes of
  ``numpy.random.RandomState(seed).permutation(200)`` for the reference's
  seeds, the other 180 unknown.
* Downsampled ImageNet 64x64: 3 splits, known = the first 100 classes of
  ``numpy.random.RandomState(seed).permutation(1000)`` for the seeds of
  OSDN-CAML (Shao et al., IJCV 2022), the other 900 unknown.
* CIFAR+10 / CIFAR+50 (Neal et al., ECCV 2018, https://arxiv.org/abs/1804.00722):
  the 4 non-animal CIFAR-10 classes are known, 10 or 50 animal classes of
  CIFAR-100 are unknown. The class lists are the published trials of Miller et
  al. (WACV 2021, https://github.com/dimitymiller/cac-openset,
  ``datasets/CIFAR+10/class_splits/*.json``), which follow that rule.
"""

from __future__ import annotations

import numpy as np

CIFAR10_KNOWN: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 4, 5, 9),
    (0, 3, 5, 7, 8, 9),
    (0, 1, 5, 6, 7, 8),
    (3, 4, 5, 7, 8, 9),
    (0, 1, 2, 3, 7, 8),
)

TINYIMAGENET_SEEDS = (20200221, 20200231, 20200241)
TINYIMAGENET_CLASSES = 200
TINYIMAGENET_KNOWN_COUNT = 20


def permutation_split(seed: int, num_classes: int, num_known: int) -> tuple[int, ...]:
    """The first ``num_known`` classes of ``RandomState(seed).permutation(num_classes)``."""
    order = np.random.RandomState(seed).permutation(num_classes)
    return tuple(int(c) for c in order[:num_known])


TINYIMAGENET_KNOWN: tuple[tuple[int, ...], ...] = tuple(
    permutation_split(seed, TINYIMAGENET_CLASSES, TINYIMAGENET_KNOWN_COUNT)
    for seed in TINYIMAGENET_SEEDS
)

# Downsampled ImageNet 64x64 (OSDN-CAML, Shao et al. IJCV 2022): 3 splits, known =
# the first 100 classes of RandomState(seed).permutation(1000), the other 900 unknown.
IMAGENET64_SEEDS = (20210823, 20210826, 20210829)
IMAGENET64_CLASSES = 1000
IMAGENET64_KNOWN_COUNT = 100

IMAGENET64_KNOWN: tuple[tuple[int, ...], ...] = tuple(
    permutation_split(seed, IMAGENET64_CLASSES, IMAGENET64_KNOWN_COUNT) for seed in IMAGENET64_SEEDS
)

# airplane, automobile, ship, truck
CIFAR10_VEHICLES = (0, 1, 8, 9)

# CIFAR-100 fine-label ids of its 10 animal superclasses (aquatic mammals, fish,
# insects, large carnivores, large omnivores and herbivores, medium-sized
# mammals, non-insect invertebrates, people, reptiles, small mammals).
CIFAR100_ANIMALS = (
    1, 2, 3, 4, 6, 7, 11, 14, 15, 18, 19, 21, 24, 26, 27, 29, 30, 31, 32, 34,
    35, 36, 38, 42, 43, 44, 45, 46, 50, 55, 63, 64, 65, 66, 67, 72, 73, 74, 75, 77,
    78, 79, 80, 88, 91, 93, 95, 97, 98, 99,
)  # fmt: skip

# Unknown CIFAR-100 classes of the 5 CIFAR+10 trials (Miller et al.'s files 0..4).
CIFAR_PLUS_10_UNKNOWN: tuple[tuple[int, ...], ...] = (
    (43, 36, 24, 18, 80, 98, 30, 93, 78, 3),
    (74, 91, 98, 79, 50, 66, 24, 26, 6, 42),
    (79, 63, 36, 4, 29, 55, 75, 46, 72, 38),
    (95, 93, 26, 43, 36, 27, 18, 30, 64, 32),
    (88, 18, 19, 24, 65, 50, 4, 93, 35, 46),
)

# CIFAR+50 draws 50 of the 50 animal classes: every trial has the same unknown
# set, so the protocol's trials differ only in training randomness (vary `seed`).
CIFAR_PLUS_50_UNKNOWN: tuple[tuple[int, ...], ...] = (CIFAR100_ANIMALS,)

# In the combined CIFAR+N label space, CIFAR-100 class c has id CIFAR100_OFFSET + c.
CIFAR100_OFFSET = 10


def unknown_of(known: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
    """The classes of ``range(num_classes)`` that are not known."""
    known_set = set(known)
    return tuple(c for c in range(num_classes) if c not in known_set)
