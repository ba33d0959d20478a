"""Miniature datasets written in each official on-disk format.

Every image encodes where it came from, so tests can check the pixel layout
and the label mapping after loading: for CIFAR, SVHN and the IDX files the
first row of the first channel starts with the label, the part (0 = train,
1 = test) and the image's index in its file; TinyImageNet and folder images
are solid colours derived from their class.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_TRAIN_PER_CLASS = 3
CIFAR_TEST_PER_CLASS = 2


def _tagged_images(labels: np.ndarray, part: int, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 images of ``shape`` (C, H, W) carrying their label, part and index."""
    rng = np.random.default_rng(len(labels) * 7 + part)
    images = rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
    images[:, 0, 0, 0] = labels
    images[:, 0, 0, 1] = part
    images[:, 0, 0, 2] = np.arange(len(labels)) % 256
    return images


def _labels(num_classes: int, per_class: int, seed: int) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def _write_batch(path: Path, images: np.ndarray, label_keys: dict[str, list[int]]) -> None:
    """One CIFAR python batch; protocol 2 as in the official files (Python 2's cPickle)."""
    batch = {
        "batch_label": path.name,
        "data": images.reshape(len(images), -1),
        "filenames": [f"{path.name}_{j}.png" for j in range(len(images))],
        **label_keys,
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = _labels(10, CIFAR_TRAIN_PER_CLASS * 5, seed=0)
    images = _tagged_images(labels, 0, (3, 32, 32))
    for i, chunk in enumerate(np.array_split(np.arange(len(labels)), 5), 1):
        _write_batch(folder / f"data_batch_{i}", images[chunk], {"labels": labels[chunk].tolist()})
    test_labels = _labels(10, CIFAR_TEST_PER_CLASS, seed=1)
    test_images = _tagged_images(test_labels, 1, (3, 32, 32))
    _write_batch(folder / "test_batch", test_images, {"labels": test_labels.tolist()})
    return folder


def write_cifar100(root: Path, per_class: int = 1) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for part, name in enumerate(("train", "test")):
        labels = _labels(100, per_class, seed=2 + part)
        images = _tagged_images(labels, part, (3, 32, 32))
        keys = {"fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist()}
        _write_batch(folder / name, images, keys)
    return folder


def write_svhn(root: Path, per_class: int = 10) -> Path:
    from scipy.io import savemat

    folder = root / "svhn"
    folder.mkdir(parents=True)
    for part, name in enumerate(("train_32x32.mat", "test_32x32.mat")):
        labels = _labels(10, per_class, seed=4 + part)
        images = _tagged_images(labels, part, (3, 32, 32))
        # SVHN stores (H, W, C, N) and the digit 0 as label 10.
        stored = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]
        savemat(folder / name, {"X": images.transpose(2, 3, 1, 0), "y": stored})
    return folder


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(root: Path, folder: str = "MNIST/raw", gz: bool = True, per_class: int = 10) -> Path:
    out = root / folder
    out.mkdir(parents=True)
    for part, prefix in enumerate(("train", "t10k")):
        labels = _labels(10, per_class, seed=6 + part)
        images = _tagged_images(labels, part, (1, 28, 28))[:, 0]
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            if gz:
                (out / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (out / name).write_bytes(data)
    return out


def class_colour(c: int) -> tuple[int, int, int]:
    return ((37 * c) % 256, (91 * c + 40) % 256, (53 * c + 100) % 256)


def _solid(path: Path, colour: tuple[int, int, int], size: int, mode: str = "RGB") -> None:
    image = Image.new("RGB", (size, size), colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert(mode).save(path, quality=98)


def tinyimagenet_wnids() -> list[str]:
    """200 class ids, listed unsorted as in the official wnids.txt."""
    ids = [f"n{10000000 + 7919 * i:08d}" for i in range(200)]
    return list(np.random.default_rng(8).permutation(ids))


def write_tinyimagenet(root: Path, train_per_class: int = 2) -> Path:
    """train/<wnid>/images/*.JPEG, val/images/*.JPEG with val_annotations.txt.

    Class ``c`` (position in the sorted wnids) is painted ``class_colour(c)``;
    one training image of class 0 is stored grayscale, as a few official ones are.
    """
    folder = root / "tiny-imagenet-200"
    wnids = tinyimagenet_wnids()
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    order = {w: i for i, w in enumerate(sorted(wnids))}
    lines = []
    for n, wnid in enumerate(wnids):
        c = order[wnid]
        for j in range(train_per_class):
            mode = "L" if (c == 0 and j == 0) else "RGB"
            _solid(
                folder / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", class_colour(c), 64, mode
            )
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        _solid(folder / "val" / "images" / f"val_{n}.JPEG", class_colour(c), 64)
        lines.append(f"val_{n}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cats", "dogs")) -> Path:
    """An ImageFolder tree: images of mixed sizes and modes, nested one level deeper in places."""
    for c, name in enumerate(classes):
        _solid(root / name / "a.png", class_colour(c), 40)
        _solid(root / name / "b.jpg", class_colour(c), 20, "L")
        _solid(root / name / "nested" / "c.png", class_colour(c), 32)
    (root / "README.txt").write_text("not an image")
    return root


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_imagenet64(root: Path, train_per_class: int = 1) -> Path:
    """The downsampled ImageNet 64x64 batches: python pickles of ``data`` (N, 12288)
    uint8 rows (red, green, blue planes), ``labels`` 1..1000 and, in the training
    batches, ``mean``. Channel 0 starts with label % 256, label // 256 and the part."""
    folder = root / "imagenet64"
    folder.mkdir(parents=True)

    def images_of(labels: np.ndarray, part: int) -> np.ndarray:
        images = _tagged_images(labels, part, (3, 64, 64))
        images[:, 0, 0, 0] = labels % 256
        images[:, 0, 0, 1] = labels // 256
        images[:, 0, 0, 2] = part
        return images

    def write(path: Path, labels: np.ndarray, images: np.ndarray, train: bool) -> None:
        batch = {"data": images.reshape(len(images), -1), "labels": (labels + 1).tolist()}
        if train:
            batch["mean"] = images.reshape(len(images), -1).mean(0)
        path.write_bytes(pickle.dumps(batch))

    labels = _labels(1000, train_per_class, seed=8)
    images = images_of(labels, 0)
    for i, chunk in enumerate(np.array_split(np.arange(len(labels)), 10), 1):
        write(folder / f"train_data_batch_{i}", labels[chunk], images[chunk], True)
    val_labels = _labels(1000, 1, seed=9)
    write(folder / "val_data", val_labels, images_of(val_labels, 1), False)
    return folder
