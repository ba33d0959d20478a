"""Readers of the official on-disk formats, each returning whole uint8 tensors.

Every reader checks what it reads (keys, dtypes, shapes, label ranges, image
sizes) and raises :class:`~osad.errors.DataError` naming the file on the first
problem, so a truncated or corrupt file is never half-loaded.
"""

from __future__ import annotations

import gzip
import importlib
import os
import pickle
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from osad.data.dataset import ClassImages
from osad.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def _images_and_labels(images: np.ndarray, labels: np.ndarray) -> ClassImages:
    return ClassImages(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels.astype(np.int64)),
    )


def _check_labels(labels: np.ndarray, num_classes: int, source: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{source} has labels outside 0..{num_classes - 1} "
            f"(found {labels.min()}..{labels.max()})"
        )


# ---------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 and downsampled ImageNet: python pickles of
# {"data": (N, 3 * size * size) uint8, labels}


def _numpy_core(module: str) -> object:
    """``numpy._core.<module>`` (numpy 2), or ``numpy.core.<module>`` (numpy 1)."""
    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{module}")


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2, latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _batch_globals() -> dict[tuple[str, str], object]:
    """Every global an official batch file references, under the names of both numpy
    majors: ndarray and dtype reconstruction (``_reconstruct`` up to pickle protocol 4,
    ``_frombuffer`` at protocol 5), and latin-1 bytes of protocol 2 pickles made by
    Python 3. Each one only builds arrays, dtypes or bytes; nothing else is admitted."""
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    admitted: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        admitted[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        admitted[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return admitted


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :func:`_batch_globals`: a crafted file cannot
    name a function (``os.system``, ``builtins.exec``, ...) for the load to call."""

    _admitted = _batch_globals()

    def find_class(self, module: str, name: str) -> object:
        found = self._admitted.get((module, name))
        if found is None:
            raise _RefusedGlobal(f"{module}.{name}"[:100])
        return found


def load_pickled_batch(path: Path) -> object:
    """Unpickle one CIFAR / downsampled-ImageNet batch file without running its code.

    Python 2 strings are decoded as latin-1, as in the official files. Raises
    :class:`DataError` naming ``path`` for an unreadable file, and naming the
    global for one that references anything but numpy arrays and dtypes.
    """
    try:
        with path.open("rb") as f:  # streamed: a training batch of ImageNet64 is 1.5 GB
            return _BatchUnpickler(f, encoding="latin1").load()
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror})") from None
    except _RefusedGlobal as exc:
        raise DataError(
            f"{path} is not a dataset batch: it references {exc}, which no official batch "
            "holds (only numpy arrays, lists, str, int and bytes); refusing to unpickle it"
        ) from None
    except Exception as exc:  # any unpickling failure means a damaged file
        raise DataError(f"{path} is not a readable pickled batch ({exc!r})"[:300]) from None


def read_pickled_batches(
    paths: Sequence[Path],
    label_key: str,
    num_classes: int,
    *,
    size: int = 32,
    first_label: int = 0,
    classes: Collection[int] | None = None,
) -> ClassImages:
    """Concatenate pickled batches; ``label_key`` is ``labels`` or ``fine_labels``.

    Each row of ``data`` holds the red, green and blue ``size x size`` planes in
    order (CIFAR, and the downsampled ImageNet of Chrabaszcz et al. 2017, whose
    labels start at ``first_label`` 1). ``classes`` keeps only the images of
    those (0-based) classes, batch by batch, so a dataset larger than memory
    can be read for a few of its classes. Files are read by
    :func:`load_pickled_batch`, which never runs code a file names.
    """
    images, labels = [], []
    for path in paths:
        batch = load_pickled_batch(path)
        if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
            raise DataError(f"{path} is not a batch: expected keys 'data' and '{label_key}'")
        data = batch["data"]
        row = 3 * size * size
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != row
        ):
            got = (
                f"{data.dtype} {data.shape}"
                if isinstance(data, np.ndarray)
                else type(data).__name__
            )
            raise DataError(f"{path}: 'data' must be uint8 of shape (N, {row}), got {got}")
        if data.shape[0] == 0:
            raise DataError(f"{path} holds no images: 'data' has shape {data.shape}")
        y = _integer_labels(batch[label_key], f"{path}: '{label_key}'") - first_label
        if y.shape != (data.shape[0],):
            raise DataError(f"{path}: {data.shape[0]} images but {y.size} labels")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(
                f"{path} has labels outside {first_label}..{num_classes - 1 + first_label} "
                f"(found {y.min() + first_label}..{y.max() + first_label})"
            )
        if classes is not None:
            keep = np.isin(y, np.fromiter(classes, dtype=np.int64))
            data, y = data[keep], y[keep]
        images.append(data.reshape(-1, 3, size, size))
        labels.append(y)
    return _images_and_labels(np.concatenate(images), np.concatenate(labels))


def _integer_labels(labels: object, source: str) -> np.ndarray:
    """``labels`` (a list or 1-D array of integers) as int64, or a DataError."""
    array = np.asarray(labels) if isinstance(labels, list | np.ndarray) else None
    if array is None or array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        what = (
            f"{array.dtype} of shape {array.shape}" if array is not None else type(labels).__name__
        )
        raise DataError(f"{source} must be a list of integer class ids, got {what}")
    return array.astype(np.int64)


# ---------------------------------------------------------------------------
# SVHN: MATLAB files with X (32, 32, 3, N) uint8 and y (N, 1), digit 0 stored as 10


def read_svhn_mat(path: Path) -> ClassImages:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises many types for a damaged file
        raise DataError(f"{path} is not a readable SVHN .mat file ({exc!r})") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise DataError(f"{path} is not an SVHN file: expected variables 'X' and 'y'")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: 'X' must be uint8 of shape (32, 32, 3, N), got {x.shape}")
    y = y.reshape(-1).astype(np.int64)
    if y.shape[0] != x.shape[3]:
        raise DataError(f"{path}: {x.shape[3]} images but {y.shape[0]} labels")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: SVHN labels must be 1..10, found {y.min()}..{y.max()}")
    y[y == 10] = 0
    return _images_and_labels(x.transpose(3, 2, 0, 1), y)


# ---------------------------------------------------------------------------
# MNIST / Fashion-MNIST: IDX files (big-endian header, then raw bytes), gzipped or not


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array (magic 0x0000 08 ndim, then ndim big-endian uint32 sizes)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} cannot be read ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header is incomplete")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or padded: the header promises {expected} bytes "
            f"of shape {shape}, the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx_pair(images_path: Path, labels_path: Path, num_classes: int) -> ClassImages:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected (N, H, W) images, got shape {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DataError(
            f"{labels_path} holds {labels.size} labels for the {images.shape[0]} "
            f"images of {images_path}"
        )
    _check_labels(labels, num_classes, labels_path)
    return _images_and_labels(images[:, None], labels)


# ---------------------------------------------------------------------------
# Image files (PIL): TinyImageNet and ImageFolder trees


def eight_bit(image, path: Path):
    """``image`` (a PIL image) with 8-bit channels, ready for ``convert("L" / "RGB")``.

    PIL's ``convert`` clips wider pixels to 0..255 instead of scaling them, so a
    16-bit grayscale image (PNG, TIFF: modes ``I;16*``, and ``I`` from a PNG) is
    scaled here, ``round(v / 257)``, 65535 to 255. Pixels of 32-bit integer or
    floating-point images (modes ``I`` and ``F``, e.g. float TIFFs) have no known
    range: they are refused with a :class:`DataError` naming the file.
    """
    from PIL import Image

    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
        pixels = np.asarray(image).astype(np.uint32)
        return Image.fromarray(((pixels + 128) // 257).astype(np.uint8), mode="L")
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise DataError(
            f"{path} has {kind} pixels (PIL mode {image.mode}) of unknown range; "
            "save it as an 8- or 16-bit image (e.g. PNG) with values scaled to that range"
        )
    return image


def _decode(path: Path, mode: str, size: int, resize: bool) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = eight_bit(image, path).convert(mode)
            if image.size != (size, size):
                if not resize:
                    w, h = image.size
                    raise DataError(f"{path} is {w}x{h}; expected {size}x{size}")
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ... for damaged files
        raise DataError(f"{path} is not a readable image ({exc})") from None


def decode_images(
    paths: Sequence[Path], channels: int, size: int, *, resize: bool = True
) -> torch.Tensor:
    """Decode image files into one (N, channels, size, size) uint8 tensor, in parallel.

    ``resize=False`` makes an image of another size an error instead.
    """
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(paths), size, size, channels), dtype=np.uint8)
    workers = min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, array in enumerate(pool.map(lambda p: _decode(p, mode, size, resize), paths)):
            out[i] = array.reshape(size, size, channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def list_image_folder(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of an ImageFolder tree.

    Each first-level subfolder holding images (at any depth) is a class, in
    sorted order; a folder without subfolders is one class of its own images.
    """
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    subfolders = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    groups = [(d.name, _image_files(d)) for d in subfolders]
    groups = [(name, files) for name, files in groups if files]
    if not groups:
        groups = [(folder.name, _image_files(folder))]
    files = [f for _, fs in groups for f in fs]
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}")
    labels = [i for i, (_, fs) in enumerate(groups) for _ in fs]
    return files, labels, [name for name, _ in groups]


def read_image_folder(folder: Path, channels: int, size: int) -> ClassImages:
    """All images of an ImageFolder tree, converted to ``channels`` and resized to ``size``."""
    files, labels, _ = list_image_folder(folder)
    return ClassImages(decode_images(files, channels, size), torch.tensor(labels, dtype=torch.long))


TINYIMAGENET_SIZE = 64


def read_tinyimagenet(folder: Path) -> tuple[ClassImages, ClassImages]:
    """(train, val) of tiny-imagenet-200; class ids follow the sorted wnids.

    Sorted order is the class order of an ImageFolder over ``train/``, the
    order the reference protocol's class permutations index. The official test
    images have no labels; the labelled ``val`` images are the test set.
    """
    wnids_file = folder / "wnids.txt"
    wnids = sorted(line.strip() for line in wnids_file.read_text().splitlines() if line.strip())
    if len(wnids) != 200 or len(set(wnids)) != 200:
        raise DataError(f"{wnids_file} must list 200 distinct class ids, found {len(set(wnids))}")
    index = {w: i for i, w in enumerate(wnids)}

    train_files, train_labels = [], []
    for wnid in wnids:
        files = _image_files(folder / "train" / wnid)
        if not files:
            raise DataError(f"no training images in {folder / 'train' / wnid}")
        train_files += files
        train_labels += [index[wnid]] * len(files)

    val_files, val_labels = [], []
    annotations = folder / "val" / "val_annotations.txt"
    for n, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{annotations} line {n} does not name an image and a known class id")
        path = folder / "val" / "images" / fields[0]
        if not path.is_file():
            raise DataError(f"{annotations} line {n} names {path}, which does not exist")
        val_files.append(path)
        val_labels.append(index[fields[1]])

    def part(files: list[Path], labels: list[int]) -> ClassImages:
        images = decode_images(files, 3, TINYIMAGENET_SIZE, resize=False)
        return ClassImages(images, torch.tensor(labels, dtype=torch.long))

    return part(train_files, train_labels), part(val_files, val_labels)
