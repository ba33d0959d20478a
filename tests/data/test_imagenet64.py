"""Downsampled ImageNet 64x64: the official pickled batches, class filtering and splits."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from osad.config import make_config
from osad.data import DATASETS, load_openset
from osad.data.splits import IMAGENET64_KNOWN, IMAGENET64_SEEDS
from osad.errors import DataError
from tests.data import miniature


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    miniature.write_imagenet64(root)
    return root


def _labels_from_tags(images: torch.Tensor) -> torch.Tensor:
    return images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()


def test_reader_takes_the_planes_in_order_and_labels_from_one(root):
    raw = DATASETS["imagenet64"].read(root)
    assert raw.train.images.shape == (1000, 3, 64, 64) and raw.test.images.shape == (
        1000,
        3,
        64,
        64,
    )
    for part, images, labels in (
        (0, raw.train.images, raw.train.labels),
        (1, raw.test.images, raw.test.labels),
    ):
        assert images.dtype == torch.uint8
        assert torch.equal(_labels_from_tags(images), labels)  # 1-based in the file, 0-based here
        assert (images[:, 0, 0, 2] == part).all()
    assert sorted(raw.train.labels.tolist()) == list(range(1000))
    # Rows are (R plane, G plane, B plane), each 64x64 in row-major order.
    with (root / "imagenet64" / "val_data").open("rb") as f:
        rows = pickle.load(f)["data"]
    assert torch.equal(raw.test.images[3, 1], torch.from_numpy(rows[3, 4096:8192].reshape(64, 64)))


def test_only_the_requested_training_classes_are_kept(root):
    raw = DATASETS["imagenet64"].read_classes(root, (5, 999, 0))
    assert sorted(raw.train.labels.tolist()) == [0, 5, 999]
    assert torch.equal(_labels_from_tags(raw.train.images), raw.train.labels)
    assert len(raw.test.labels) == 1000


@pytest.mark.parametrize("split", [0, 1, 2])
def test_splits_follow_the_reference_permutations(root, split):
    order = np.random.RandomState(IMAGENET64_SEEDS[split]).permutation(1000)
    assert IMAGENET64_KNOWN[split] == tuple(int(c) for c in order[:100])
    config = make_config(
        overrides=[
            f"data.root={root}",
            "data.name=imagenet64",
            f"data.split={split}",
            "data.val_fraction=0",
            "data.download=false",
        ]
    )
    data = load_openset(config.data)
    assert data.known_classes == IMAGENET64_KNOWN[split] and len(data.unknown_classes) == 900
    assert len(data.train_labels) == 100 and sorted(data.train_labels.tolist()) == list(range(100))
    known_ids = torch.tensor(IMAGENET64_KNOWN[split])
    assert torch.equal(known_ids[data.train_labels], _labels_from_tags(data.train_images))
    assert (data.test_labels >= 0).sum() == 100 and (data.test_labels < 0).sum() == 900


def test_missing_files_say_where_to_get_them(tmp_path):
    config = make_config(overrides=[f"data.root={tmp_path}", "data.name=imagenet64"])
    with pytest.raises(
        DataError,
        match=r"Downsampled ImageNet 64x64 not found: expected train_data_batch_1"
        r".*image-net.org/download-images.*--data-root",
    ):
        load_openset(config.data)
    assert not (tmp_path / "imagenet64").exists()  # nothing was fetched or created


def _rewrite(path, **changes):
    with path.open("rb") as f:
        batch = pickle.load(f)
    batch.update(changes)
    path.write_bytes(pickle.dumps(batch))


@pytest.mark.parametrize(
    "damage,message",
    [
        (
            lambda b: _rewrite(b, data=np.zeros((3, 3072), np.uint8)),
            "must be uint8 of shape \\(N, 12288\\)",
        ),
        (lambda b: _rewrite(b, labels=[0] * 100), "labels outside 1..1000"),
        (lambda b: b.write_bytes(b.read_bytes()[:500]), "not a readable pickled batch"),
    ],
)
def test_damaged_batch_is_refused_by_name(tmp_path, damage, message):
    miniature.write_imagenet64(tmp_path)
    damage(tmp_path / "imagenet64" / "train_data_batch_4")
    with pytest.raises(DataError, match=f"train_data_batch_4.*{message}"):
        DATASETS["imagenet64"].read(tmp_path)
