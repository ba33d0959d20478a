"""Open-set protocols on miniature datasets: split membership, composition, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from osad.config import make_config
from osad.data import DATASETS, load_openset
from osad.data.splits import (
    CIFAR10_KNOWN,
    CIFAR100_ANIMALS,
    CIFAR_PLUS_10_UNKNOWN,
    CIFAR_PLUS_50_UNKNOWN,
    TINYIMAGENET_KNOWN,
)
from osad.errors import ConfigError, DataError
from tests.data import miniature


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One data root holding every miniature dataset."""
    root = tmp_path_factory.mktemp("data")
    miniature.write_cifar10(root)
    miniature.write_cifar100(root)
    miniature.write_svhn(root)
    miniature.write_idx(root, "MNIST/raw", gz=True)
    miniature.write_idx(root, "FashionMNIST/raw", gz=False)
    miniature.write_tinyimagenet(root, train_per_class=2)
    miniature.write_image_folder(root / "my-images")
    return root


def _load(root, *overrides):
    config = make_config(
        overrides=[f"data.root={root}", "data.verify=false", "data.download=false", *overrides]
    )
    return load_openset(config.data)


def _check_open_set(data, known, unknown, n_test_images):
    """Known and unknown are disjoint; training holds known classes only, remapped in
    order; the test set holds every test image of exactly the known and unknown classes."""
    assert data.known_classes == tuple(known) and set(data.unknown_classes) == set(unknown)
    assert set(known).isdisjoint(unknown)
    k = len(known)
    assert set(data.train_labels.tolist()) == set(range(k))
    assert set(data.val_labels.tolist()) <= set(range(k))
    is_known = data.test_labels >= 0
    mapped = torch.tensor(known)[data.test_labels[is_known]]
    assert torch.equal(mapped, data.test_classes[is_known])
    assert set(data.test_classes[~is_known].tolist()) == set(unknown)
    assert set(data.test_classes.tolist()) == set(known) | set(unknown)
    assert len(data.test_labels) == n_test_images


@pytest.mark.parametrize("name", ["cifar10", "svhn", "mnist", "fashion-mnist"])
@pytest.mark.parametrize("split", range(5))
def test_six_four_splits(root, name, split):
    data = _load(root, f"data.name={name}", f"data.split={split}")
    known = CIFAR10_KNOWN[split]
    unknown = tuple(c for c in range(10) if c not in known)
    n_test = {"cifar10": 20}.get(name, 100)
    _check_open_set(data, known, unknown, n_test)
    # Pixels arrive untouched: the label tag of every known test image matches its class.
    assert torch.equal(data.test_images[:, 0, 0, 0].long(), data.test_classes)
    assert data.train_images.dtype == torch.uint8
    info = DATASETS[name]
    assert data.train_images.shape[1:] == (info.channels, info.image_size, info.image_size)


@pytest.mark.parametrize("split", range(3))
def test_tinyimagenet_splits_follow_the_reference_permutations(root, split):
    seed = (20200221, 20200231, 20200241)[split]
    order = np.random.RandomState(seed).permutation(200).tolist()
    assert TINYIMAGENET_KNOWN[split] == tuple(order[:20])
    # Two training images per class are too few for a stratified validation split.
    data = _load(root, "data.name=tinyimagenet", f"data.split={split}", "data.val_fraction=0")
    _check_open_set(data, order[:20], order[20:], 200)
    assert data.train_images.shape[1:] == (3, 64, 64)
    assert len(data.train_labels) == 20 * 2


@pytest.mark.parametrize("n,split", [(10, 0), (10, 3), (50, 0)])
def test_cifar_plus_n(root, n, split):
    data = _load(root, f"data.name=cifar+{n}", f"data.split={split}")
    table = {10: CIFAR_PLUS_10_UNKNOWN, 50: CIFAR_PLUS_50_UNKNOWN}[n]
    unknown = [10 + c for c in table[split]]
    # 4 vehicle classes x 2 CIFAR-10 test images, n CIFAR-100 classes x 1 test image.
    _check_open_set(data, (0, 1, 8, 9), unknown, 4 * 2 + n)
    # CIFAR-100 images keep their own pixels: the tag is the CIFAR-100 fine label.
    cifar100 = data.test_classes >= 10
    assert torch.equal(data.test_images[cifar100, 0, 0, 0].long(), data.test_classes[cifar100] - 10)


def test_cifar_plus_tables_are_animal_classes():
    for split in CIFAR_PLUS_10_UNKNOWN:
        assert len(set(split)) == 10 and set(split) <= set(CIFAR100_ANIMALS)
    # Miller et al.'s CIFAR+50 trial 0 (datasets/CIFAR+50/class_splits/0.json) is a
    # permutation of all 50 animal classes.
    published = [
        73, 55, 99, 45, 26, 91, 29, 98, 93, 38, 64, 14, 3, 19, 32, 42, 15, 34, 79, 36, 27, 35,
        18, 97, 2, 1, 95, 78, 50, 44, 21, 72, 80, 31, 24, 6, 77, 74, 67, 88, 65, 63, 30, 46,
        75, 43, 4, 66, 11, 7,
    ]  # fmt: skip
    assert sorted(published) == list(CIFAR100_ANIMALS) == sorted(CIFAR_PLUS_50_UNKNOWN[0])


def test_unknowns_from_another_dataset(root):
    data = _load(root, "data.name=cifar10", "data.unknown=svhn")
    known = CIFAR10_KNOWN[0]
    # SVHN classes get ids 10..19; CIFAR-10's held-out classes leave the test set.
    _check_open_set(data, known, range(10, 20), 6 * 2 + 100)
    svhn = data.test_classes >= 10
    assert torch.equal(data.test_images[svhn, 0, 0, 0].long(), data.test_classes[svhn] - 10)


def test_ood_images_are_converted_to_the_training_format_when_asked(root):
    with pytest.raises(DataError, match=r"cifar10 holds 32x32 RGB images, the training data"):
        _load(root, "data.name=mnist", "data.unknown=cifar10")
    mnist = _load(
        root, "data.name=mnist", "data.unknown=cifar10", "data.image_size=28", "data.channels=1"
    )
    assert mnist.test_images.shape[1:] == (1, 28, 28) and mnist.test_images.dtype == torch.uint8
    cifar = _load(
        root, "data.name=cifar10", "data.unknown=mnist", "data.image_size=32", "data.channels=3"
    )
    assert cifar.test_images.shape[1:] == (3, 32, 32)
    gray = cifar.test_images[cifar.test_classes >= 10]
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])


def test_unknowns_from_an_image_folder(root):
    folder = root / "my-images"
    with pytest.raises(DataError, match=r"holds 2 gray and 4 RGB images; set data\.channels"):
        _load(root, "data.name=digits", f"data.unknown={folder}")
    asked = ("data.image_size=8", "data.channels=1")
    data = _load(root, "data.name=digits", f"data.unknown={folder}", *asked)
    assert data.unknown_classes == (10, 11)  # the folder's two classes
    unknown = data.test_images[data.test_labels < 0]
    assert unknown.shape == (6, 1, 8, 8) and unknown.dtype == torch.float32
    assert unknown.min() >= 0.0 and unknown.max() <= 1.0


def test_explicit_known_classes(root):
    data = _load(root, "data.name=cifar10", "data.known=[0,1,2,3,4,5,6,7,8,9]", "data.unknown=svhn")
    _check_open_set(data, tuple(range(10)), range(10, 20), 20 + 100)
    custom = _load(root, "data.name=cifar10", "data.known=[3,7]")
    _check_open_set(custom, (3, 7), [c for c in range(10) if c not in (3, 7)], 20)
    cifar100 = _load(root, "data.name=cifar100", "data.known=[0,1]", "data.val_fraction=0")
    assert len(cifar100.unknown_classes) == 98


def test_loading_is_deterministic(root):
    a = _load(root, "data.name=cifar10", "data.split=1")
    b = _load(root, "data.name=cifar10", "data.split=1")
    for key in ("train_images", "train_labels", "val_images", "test_images", "test_classes"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    c = _load(root, "data.name=cifar10", "data.split=1", "data.partition_seed=5")
    assert not torch.equal(a.val_images, c.val_images)


def test_resize_keeps_uint8(root):
    data = _load(root, "data.name=cifar10", "data.image_size=16")
    assert data.train_images.shape[1:] == (3, 16, 16) and data.train_images.dtype == torch.uint8


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (["data.name=cifar100"], ConfigError, "has no split table"),
        (["data.name=tinyimagenet", "data.split=3"], ConfigError, "must be in 0..2"),
        (
            ["data.name=tinyimagenet"],
            DataError,
            r"val_fraction' 0.1 holds out 4 of the 40 .* \[0.5, 0.5\]",
        ),
        (["data.name=cifar+50", "data.split=1"], ConfigError, "must be in 0..0"),
        (["data.known=[0,0,1]"], ConfigError, "duplicates"),
        (["data.known=[0,10]"], ConfigError, "class ids in 0..9"),
        (["data.known=[0,1,2,3,4,5,6,7,8,9]"], ConfigError, "names every class"),
        (["data.unknown=svhm"], ConfigError, "did you mean 'svhn'"),
        (["data.unknown=digits"], ConfigError, "another dataset"),
        (["data.unknown=./no-such-folder"], DataError, "does not exist"),
        (["data.name=svhn", "data.val_fraction=0.5"], None, None),
    ],
)
def test_bad_data_settings(root, overrides, error, message):
    if error is None:
        _load(root, *overrides)
        return
    with pytest.raises(error, match=message):
        _load(root, *overrides)
