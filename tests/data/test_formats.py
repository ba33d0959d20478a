"""Each official on-disk format, read from miniature files: layout, labels, damage."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from osad.config import make_config
from osad.data import DATASETS, load_openset
from osad.data.formats import read_idx, read_image_folder
from osad.errors import DataError
from tests.data import miniature


def _check_tags(images: torch.Tensor, labels: torch.Tensor, part: int) -> None:
    """The first pixels of channel 0 carry label, part and index (see miniature.py)."""
    assert images.dtype == torch.uint8 and labels.dtype == torch.long
    assert torch.equal(images[:, 0, 0, 0].long(), labels)
    assert (images[:, 0, 0, 1] == part).all()


def test_cifar10_batches(tmp_path):
    miniature.write_cifar10(tmp_path)
    raw = DATASETS["cifar10"].read(tmp_path)
    assert raw.train.images.shape == (150, 3, 32, 32)
    assert raw.test.images.shape == (20, 3, 32, 32)
    _check_tags(raw.train.images, raw.train.labels, 0)
    _check_tags(raw.test.images, raw.test.labels, 1)
    # Batches are concatenated in order: the index tag restarts at 0 in no batch.
    assert torch.equal(raw.train.images[:, 0, 0, 2].long(), torch.arange(150))
    assert torch.bincount(raw.train.labels).tolist() == [15] * 10


def test_cifar100_uses_fine_labels(tmp_path):
    miniature.write_cifar100(tmp_path)
    raw = DATASETS["cifar100"].read(tmp_path)
    assert raw.train.images.shape == (100, 3, 32, 32)
    assert sorted(raw.train.labels.tolist()) == list(range(100))
    _check_tags(raw.test.images, raw.test.labels, 1)


def test_svhn_mat_maps_label_10_to_digit_0(tmp_path):
    miniature.write_svhn(tmp_path)
    raw = DATASETS["svhn"].read(tmp_path)
    assert raw.train.images.shape == (100, 3, 32, 32)
    assert set(raw.train.labels.tolist()) == set(range(10))
    _check_tags(raw.train.images, raw.train.labels, 0)
    _check_tags(raw.test.images, raw.test.labels, 1)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_gzipped_or_not(tmp_path, gz):
    miniature.write_idx(tmp_path, "FashionMNIST/raw", gz=gz)
    raw = DATASETS["fashion-mnist"].read(tmp_path)
    assert raw.train.images.shape == (100, 1, 28, 28)
    _check_tags(raw.train.images, raw.train.labels, 0)
    _check_tags(raw.test.images, raw.test.labels, 1)


def test_tinyimagenet_folder_layout(tmp_path):
    miniature.write_tinyimagenet(tmp_path, train_per_class=2)
    raw = DATASETS["tinyimagenet"].read(tmp_path)
    assert raw.train.images.shape == (400, 3, 64, 64)
    assert raw.test.images.shape == (200, 3, 64, 64)
    # Class ids follow the sorted wnids, for training and for the annotated val images.
    for part in (raw.train, raw.test):
        colours = torch.tensor([miniature.class_colour(int(c)) for c in part.labels])
        centre = part.images[:, :, 32, 32].int()
        gray = part.images[:, 0, 32, 32] == part.images[:, 2, 32, 32]
        assert ((centre - colours).abs().max(1).values[~gray] <= 3).all()
    assert torch.bincount(raw.test.labels).tolist() == [1] * 200
    # The grayscale JPEG became a 3-channel image with equal channels.
    first = raw.train.images[raw.train.labels == 0][0]
    assert torch.equal(first[0], first[1]) and torch.equal(first[1], first[2])


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_tree(tmp_path, channels):
    miniature.write_image_folder(tmp_path)
    images = read_image_folder(tmp_path, channels, 16)
    assert images.images.shape == (6, channels, 16, 16)
    assert images.images.dtype == torch.uint8
    assert images.labels.tolist() == [0, 0, 0, 1, 1, 1]  # README.txt is not an image


def test_flat_image_folder_is_one_class(tmp_path):
    miniature.write_image_folder(tmp_path)
    images = read_image_folder(tmp_path / "dogs" / "nested", 3, 8)
    assert images.labels.tolist() == [0]


def test_empty_image_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        read_image_folder(tmp_path / "empty", 3, 8)
    with pytest.raises(DataError, match="does not exist"):
        read_image_folder(tmp_path / "absent", 3, 8)


def test_idx_header_is_checked(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(miniature.idx_bytes(np.zeros((4, 2, 2), dtype=np.uint8)))
    assert read_idx(path).shape == (4, 2, 2)
    path.write_bytes(b"\x00\x00\x0d\x03" + path.read_bytes()[4:])  # float32 type code
    with pytest.raises(DataError, match="magic"):
        read_idx(path)


# ---------------------------------------------------------------------------
# Damaged files: the public loader refuses them with one DataError naming the file.


def _rewrite_cifar_batch(path, **changes):
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    batch.update(changes)
    path.write_bytes(pickle.dumps(batch, protocol=2))


def _damage_cifar_shape(root):
    path = root / "cifar-10-batches-py" / "data_batch_2"
    data = pickle.loads(path.read_bytes(), encoding="latin1")["data"]
    _rewrite_cifar_batch(path, data=data[:, :1000])
    return path


def _damage_cifar_labels(root):
    path = root / "cifar-10-batches-py" / "test_batch"
    _rewrite_cifar_batch(path, labels=[12] * 20)
    return path


def _cifar_labels_as_strings(root):
    path = root / "cifar-10-batches-py" / "data_batch_1"
    labels = pickle.loads(path.read_bytes(), encoding="latin1")["labels"]
    _rewrite_cifar_batch(path, labels=[str(y) for y in labels])
    return path


def _cifar_labels_as_mapping(root):
    path = root / "cifar-10-batches-py" / "test_batch"
    _rewrite_cifar_batch(path, labels={"cat": 3})
    return path


def _cifar_without_images(root):
    path = root / "cifar-10-batches-py" / "data_batch_4"
    _rewrite_cifar_batch(path, data=np.zeros((0, 3072), np.uint8), labels=[])
    return path


def _truncate_idx_gz(root):
    path = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    miniature.truncate(path, 0.6)
    return path


def _shorten_idx_payload(root):
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-28]))  # a complete gzip of a truncated array
    return path


def _mismatched_idx_labels(root):
    path = root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(miniature.idx_bytes(np.zeros(7, dtype=np.uint8))))
    return path


def _truncate_jpeg(root):
    folder = root / "tiny-imagenet-200" / "val" / "images"
    path = folder / "val_7.JPEG"
    miniature.truncate(path, 0.4)
    return path


def _resize_jpeg(root):
    from PIL import Image

    path = next((root / "tiny-imagenet-200" / "train").glob("*/images/*_1.JPEG"))
    Image.new("RGB", (60, 64)).save(path)
    return path


DAMAGE = {
    "cifar batch truncated": ("cifar10", miniature.write_cifar10, lambda r: _truncate(r, "c10")),
    "cifar data of wrong shape": ("cifar10", miniature.write_cifar10, _damage_cifar_shape),
    "cifar labels out of range": ("cifar10", miniature.write_cifar10, _damage_cifar_labels),
    "cifar labels as strings": ("cifar10", miniature.write_cifar10, _cifar_labels_as_strings),
    "cifar labels as a mapping": ("cifar10", miniature.write_cifar10, _cifar_labels_as_mapping),
    "cifar batch without images": ("cifar10", miniature.write_cifar10, _cifar_without_images),
    "svhn mat truncated": ("svhn", miniature.write_svhn, lambda r: _truncate(r, "svhn")),
    "idx gzip truncated": ("mnist", miniature.write_idx, _truncate_idx_gz),
    "idx payload short": ("mnist", miniature.write_idx, _shorten_idx_payload),
    "idx labels mismatched": ("mnist", miniature.write_idx, _mismatched_idx_labels),
    "jpeg truncated": ("tinyimagenet", miniature.write_tinyimagenet, _truncate_jpeg),
    "jpeg of wrong size": ("tinyimagenet", miniature.write_tinyimagenet, _resize_jpeg),
}


def _truncate(root, which):
    path = {
        "c10": root / "cifar-10-batches-py" / "data_batch_3",
        "svhn": root / "svhn" / "test_32x32.mat",
    }[which]
    miniature.truncate(path)
    return path


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_file_is_refused_by_name(tmp_path, case):
    name, write, damage = DAMAGE[case]
    write(tmp_path)
    path = damage(tmp_path)
    config = make_config(
        overrides=[f"data.name={name}", f"data.root={tmp_path}", "data.verify=false"]
    )
    with pytest.raises(DataError) as info:
        load_openset(config.data)
    assert str(path.name) in str(info.value)
    assert "\n" not in str(info.value)


def test_checksums_catch_what_shapes_cannot(tmp_path, monkeypatch):
    """A changed pixel keeps every shape; data.verify compares the MD5 and refuses it."""
    from osad.data.catalog import SVHN_FILES
    from osad.data.files import md5sum

    folder = miniature.write_svhn(tmp_path)
    for name in SVHN_FILES.files:  # pretend the miniature files are the official ones
        monkeypatch.setitem(SVHN_FILES.md5, name, md5sum(folder / name))
    config = make_config(overrides=["data.name=svhn", f"data.root={tmp_path}"])
    load_openset(config.data)

    path = folder / "train_32x32.mat"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    unverified = make_config(
        overrides=["data.name=svhn", f"data.root={tmp_path}", "data.verify=false"]
    )
    assert len(load_openset(unverified.data).train_labels) > 0
    with pytest.raises(DataError, match=r"train_32x32.mat fails its checksum .*data.verify=false"):
        load_openset(config.data)


def test_files_that_are_not_the_official_ones_are_refused(tmp_path):
    miniature.write_cifar10(tmp_path)
    config = make_config(overrides=["data.name=cifar10", f"data.root={tmp_path}"])
    with pytest.raises(DataError, match="data_batch_1 fails its checksum"):
        load_openset(config.data)


# ---------------------------------------------------------------------------
# Crafted pickles: a batch file is data, never code.


class _Call:
    """Pickles as a call of ``function(*args)``, the way a crafted file runs code."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _crafted_payloads(marker):
    import builtins
    import os

    return {
        "os.system": _Call(os.system, f"touch {marker}"),
        "builtins.exec": _Call(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("where", ["data", "labels", "top level"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
def test_a_crafted_batch_runs_no_code(tmp_path, where, payload):
    """The payload would create ``marker`` when unpickled; the reader refuses the file
    naming it and the global, and the marker never appears."""
    folder = miniature.write_cifar10(tmp_path)
    marker = tmp_path / "executed"
    call = _crafted_payloads(marker)[payload]
    path = folder / "data_batch_3"
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    document = call if where == "top level" else {**batch, where: call}
    path.write_bytes(pickle.dumps(document, protocol=2))
    config = make_config(
        overrides=["data.name=cifar10", f"data.root={tmp_path}", "data.verify=false"]
    )
    with pytest.raises(DataError) as info:
        load_openset(config.data)
    assert not marker.exists()
    message = str(info.value)
    assert "\n" not in message and "data_batch_3" in message
    # Protocol 2 names builtins as Python 2's __builtin__.
    refused = "posix.system" if payload == "os.system" else "__builtin__.exec"
    assert f"references {refused}," in message


@pytest.mark.parametrize("protocol,numpy_major", [(2, 1), (3, 1), (2, 2), (3, 2), (4, 2), (5, 2)])
def test_batches_of_every_pickle_protocol_and_numpy_major_load(tmp_path, protocol, numpy_major):
    """The official files (CIFAR: Python 2 cPickle, protocol 2; ImageNet64: Python 3,
    protocol 3; both with numpy 1 names) and re-pickled copies (numpy 2 names,
    protocols up to 5) load through the restricted reader."""
    from osad.data.formats import read_pickled_batches

    folder = miniature.write_cifar10(tmp_path)
    path = folder / "test_batch"
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    data = pickle.dumps(batch, protocol=protocol)
    if numpy_major == 1:  # the module names numpy 1 writes (text GLOBALs up to protocol 3)
        data = data.replace(b"numpy._core.", b"numpy.core.")
        assert b"numpy.core.multiarray" in data
    path.write_bytes(data)
    got = read_pickled_batches([path], "labels", 10)
    assert torch.equal(got.images.reshape(len(got.images), -1), torch.from_numpy(batch["data"]))
    assert got.labels.tolist() == batch["labels"]
