"""Image folders as datasets (``data.name=folder``) and as out-of-distribution unknowns.

A folder in the ImageFolder layout holds one first-level subfolder per class
(class ids follow the sorted names). Its train/test partition is, in order:

* ``train/`` and ``test/`` subfolders, each in the ImageFolder layout;
* ``train.txt`` and ``test.txt`` lists of image paths relative to the folder
  (``<class>/<file>``, one a line; images in neither list are not used);
* otherwise a seeded stratified partition of every image (``data.test_fraction``,
  ``data.partition_seed``), recorded in the run's ``data.json``.

Images keep their size and channels unless ``data.image_size`` or ``data.channels``
asks for a conversion; a folder of mixed sizes or channels without such a setting
is refused with one line naming what it holds and the key to set.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from osad.data.dataset import ClassImages, RawDataset
from osad.data.formats import decode_images, list_image_folder
from osad.errors import DataError

FOLDER = "folder"
SPLIT_LISTS = ("train.txt", "test.txt")
# Without data.known: the first 60% of the sorted class names are known (the 6/4 of
# CIFAR-10), at least 2, and at least one class is left unknown.
KNOWN_SHARE = 0.6
# PIL modes decoded as one channel; every other mode is read as RGB (alpha dropped).
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def channel_name(channels: int) -> str:
    return "gray" if channels == 1 else "RGB"


@dataclass(frozen=True)
class ImageFormat:
    """Channels and square side of a set of images; ``what`` describes them in messages."""

    channels: int
    size: int
    what: str

    def text(self) -> str:
        return f"{self.size}x{self.size} {channel_name(self.channels)}"


def _header(path: Path) -> tuple[tuple[int, int], int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size, 1 if image.mode in GRAY_MODES else 3
    except Exception as exc:  # PIL raises OSError, SyntaxError, ... for damaged files
        raise DataError(f"{path} is not a readable image ({exc})") from None


def native_format(files: list[Path], what: str, image_size: int, channels: int) -> ImageFormat:
    """The format images ``files`` are read in: their own, or the one the config asks.

    ``image_size`` / ``channels`` 0 keep the images' own size / channels, which must
    then be the same for all (and square); otherwise one DataError line names what
    was found and the key to set.
    """
    workers = min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        headers = list(pool.map(_header, files))
    sizes = Counter(size for size, _ in headers)
    modes = Counter(c for _, c in headers)
    if not channels and len(modes) > 1:
        found = " and ".join(f"{n} {channel_name(c)}" for c, n in sorted(modes.items()))
        raise DataError(
            f"{what} holds {found} images; set data.channels=3 (or 1) to convert them all"
        )
    if not image_size:
        if len(sizes) > 1:
            found = ", ".join(f"{w}x{h}: {n}" for (w, h), n in sizes.most_common())
            raise DataError(
                f"{what} holds images of {len(sizes)} sizes ({found}); "
                "set data.image_size=N to resize them all to NxN"
            )
        ((w, h),) = sizes
        if w != h:
            raise DataError(
                f"{what} holds {w}x{h} images, not square; set data.image_size=N to resize "
                "them to NxN"
            )
        image_size = w
    return ImageFormat(channels or next(iter(modes)), image_size, what)


@dataclass(frozen=True)
class FolderLayout:
    """The images of a folder dataset: class names and the files of each part."""

    root: Path
    classes: tuple[str, ...]
    parts: dict[str, tuple[list[Path], list[int]]]  # "train"/"test", or "pool"
    partition: str  # how train and test were chosen

    @property
    def files(self) -> list[Path]:
        return [f for files, _ in self.parts.values() for f in files]


def _listed(root: Path, name: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for n, line in enumerate((root / name).read_text().splitlines(), 1):
        entry = line.strip()
        if not entry:
            continue
        path = root / entry
        first = Path(entry).parts[0]
        if first not in index or not path.is_file():
            raise DataError(
                f"{root / name} line {n}: '{entry}' is not an image under a class folder of {root}"
            )
        files.append(path)
        labels.append(index[first])
    return files, labels


def scan_folder(root: Path) -> FolderLayout:
    """The classes and train/test files of the image folder ``root`` (see the module)."""
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist; data.name=folder reads the folder "
            "data.root (or --data-root) names"
        )
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_files, train_labels, train_names = list_image_folder(root / "train")
        test_files, test_labels, test_names = list_image_folder(root / "test")
        classes = sorted(set(train_names) | set(test_names))
        index = {c: i for i, c in enumerate(classes)}
        train = (train_files, [index[train_names[y]] for y in train_labels])
        test = (test_files, [index[test_names[y]] for y in test_labels])
        return FolderLayout(root, tuple(classes), {"train": train, "test": test}, "train/, test/")
    files, labels, classes = list_image_folder(root)
    if all((root / name).is_file() for name in SPLIT_LISTS):
        parts = {part: _listed(root, f"{part}.txt", classes) for part in ("train", "test")}
        overlap = set(parts["train"][0]) & set(parts["test"][0])
        if overlap:
            raise DataError(
                f"{root}: {len(overlap)} images are in both train.txt and test.txt, "
                f"e.g. {sorted(overlap)[0]}"
            )
        return FolderLayout(root, tuple(classes), parts, "train.txt, test.txt")
    if len(classes) == 1 and files[0].parent == root:
        raise DataError(
            f"image folder {root} has no class subfolders; put each class's images in "
            f"a subfolder named after it ({root}/<class>/<image>)"
        )
    return FolderLayout(root, tuple(classes), {"pool": (files, labels)}, "seeded")


def known_classes(spec: list, classes: tuple[str, ...]) -> tuple[int, ...]:
    """Class ids of ``data.known`` entries (names or ids), or the default share."""
    if not spec:
        n = len(classes)
        if n < 3:
            raise DataError(
                f"an image folder needs at least 3 classes (2 known, 1 unknown), "
                f"found {n}: {', '.join(classes)}"
            )
        return tuple(range(min(max(2, round(KNOWN_SHARE * n)), n - 1)))
    ids = []
    for entry in spec:
        if isinstance(entry, str):
            if entry not in classes:
                raise DataError(
                    f"'data.known' names class '{entry}', which the folder lacks; "
                    f"its classes are: {', '.join(classes)}"
                )
            ids.append(classes.index(entry))
        elif not 0 <= entry < len(classes):
            raise DataError(
                f"'data.known' entries must be class names or ids in 0..{len(classes) - 1}, "
                f"got {entry}"
            )
        else:
            ids.append(entry)
    if len(set(ids)) != len(ids):
        raise DataError(f"'data.known' names a class twice: {spec}")
    if len(ids) >= len(classes):
        raise DataError(
            "'data.known' names every class of the folder; leave some unknown or set data.unknown"
        )
    return tuple(ids)


def _digest(files: list[Path], root: Path) -> str:
    names = "\n".join(sorted(str(f.relative_to(root)) for f in files))
    return hashlib.sha256(names.encode()).hexdigest()


def read_folder(root: Path, image_size: int, channels: int) -> tuple[RawDataset, dict]:
    """The folder's images as a :class:`RawDataset`, and the record of what was read
    (path, classes, format, partition, image counts, sha256 of the sorted file list)."""
    layout = scan_folder(root)
    files = layout.files
    fmt = native_format(files, f"image folder {root}", image_size, channels)

    def part(name: str) -> ClassImages:
        paths, labels = layout.parts[name]
        images = decode_images(paths, fmt.channels, fmt.size, resize=bool(image_size))
        return ClassImages(images, torch.tensor(labels, dtype=torch.long))

    if "pool" in layout.parts:
        raw = RawDataset(part("pool"), None)
    else:
        raw = RawDataset(part("train"), part("test"))
    record = {
        "source": FOLDER,
        "path": str(root),
        "classes": list(layout.classes),
        "image_size": fmt.size,
        "channels": fmt.channels,
        "resized": bool(image_size),
        "partition": layout.partition,
        "images": {name: len(paths) for name, (paths, _) in layout.parts.items()},
        "files_sha256": _digest(files, root),
    }
    return raw, record


def read_unknown_folder(
    root: Path, target: ImageFormat, image_size: int, channels: int
) -> ClassImages:
    """Every image of the folder ``root`` (unknowns), in the ``target`` format of the
    training data: converted where ``image_size`` / ``channels`` ask, else refused when
    their own format differs."""
    files, labels, _ = list_image_folder(root)
    fmt = native_format(files, f"data.unknown folder {root}", image_size, channels)
    check_same_format(fmt, target)
    images = decode_images(files, fmt.channels, fmt.size, resize=bool(image_size))
    return ClassImages(images, torch.tensor(labels, dtype=torch.long))


def check_same_format(found: ImageFormat, target: ImageFormat) -> None:
    """Refuse unknowns whose format differs from the training data's: the keys that
    would convert them were not set (a set key makes ``found`` match on its axis)."""
    keys = []
    if found.size != target.size:
        keys.append(f"data.image_size={target.size}")
    if found.channels != target.channels:
        keys.append(f"data.channels={target.channels}")
    if keys:
        raise DataError(
            f"{found.what} holds {found.text()} images, {target.what} are {target.text()}; "
            f"set {' and '.join(keys)} to convert them, or use unknowns of the same format"
        )


def channel_mean_std(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation in [0, 1] units of (N, C, H, W) images,
    rounded to 4 decimals (uint8 images: summed exactly, so the same on every CPU)."""
    if images.dtype == torch.uint8:
        values = images.transpose(0, 1).reshape(images.shape[1], -1).long()
        count = values.shape[1]
        sums, squares = values.sum(1).tolist(), (values * values).sum(1).tolist()
        means = [s / count / 255 for s in sums]
        stds = [
            max(q / count / 255**2 - m * m, 0.0) ** 0.5 for q, m in zip(squares, means, strict=True)
        ]
    else:
        flat = images.double().transpose(0, 1).reshape(images.shape[1], -1)
        means, stds = flat.mean(1).tolist(), flat.std(1, unbiased=False).tolist()
    return tuple(round(m, 4) for m in means), tuple(round(s, 4) for s in stds)
