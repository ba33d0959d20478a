"""Face anti-spoofing data: domains of real and attack frames with depth targets.

A *collection* holds several domains (one per camera set-up or public dataset).
Training uses the source domains, each split by video into a training part and
a validation part (which chooses the decision threshold); testing uses the
held-out target domain. Labels: 1 = real (bona fide), 0 = attack. The depth
target is a depth map for real frames and all zeros for attacks.

Collections:

* ``digits``: synthetic camera domains rendered from scikit-learn digits
  (:mod:`osad.fas.digits`), embedded.
* ``lfw-faces``: four capture domains of scikit-image's 100 real LFW face crops
  with print and replay attacks made by image transformations
  (:mod:`osad.fas.faces`), embedded.
* ``faces``: OULU-NPU, CASIA-MFSD, Idiap Replay-Attack and MSU-MFSD read from
  frame lists (:func:`load_frame_lists`; layout in ``docs/anti-spoofing.md``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from osad.data.formats import eight_bit
from osad.errors import DataError, unknown_name
from osad.fas.digits import DOMAINS as DIGIT_DOMAINS
from osad.fas.digits import render_domain
from osad.fas.faces import DOMAINS as FACE_DOMAINS
from osad.fas.faces import render_domain as render_face_domain
from osad.fas.frames import ATTACK, REAL, FasFrames


@dataclass
class FasSource:
    """One source domain, split by video into training and validation frames."""

    name: str
    train: FasFrames
    val: FasFrames


@dataclass
class FasData:
    """The source domains and the held-out target domain of one protocol."""

    collection: str
    sources: list[FasSource]
    target_name: str
    target: FasFrames

    def to(self, device: torch.device | str) -> FasData:
        return FasData(
            self.collection,
            [FasSource(s.name, s.train.to(device), s.val.to(device)) for s in self.sources],
            self.target_name,
            self.target.to(device),
        )


def split_by_video(
    frames: FasFrames, val_fraction: float, seed: int | Sequence[int]
) -> tuple[FasFrames, FasFrames]:
    """(train, val): a seeded ``val_fraction`` of the real videos and of the attack
    videos (at least one of each) goes to validation, with all of its frames, so no
    video is on both sides."""
    rng = np.random.default_rng(seed)
    videos = frames.videos.cpu().numpy()
    labels = frames.labels.cpu().numpy()
    val_videos = []
    for label in (REAL, ATTACK):
        ids = np.unique(videos[labels == label])
        if len(ids) < 2:
            raise DataError(
                f"a source domain needs at least 2 {'real' if label == REAL else 'attack'} "
                f"videos to hold one out for validation, got {len(ids)}"
            )
        count = min(max(1, round(val_fraction * len(ids))), len(ids) - 1)
        val_videos.append(rng.permutation(ids)[:count])
    in_val = torch.from_numpy(np.isin(videos, np.concatenate(val_videos)))
    return (
        frames.subset(torch.nonzero(~in_val).squeeze(1)),
        frames.subset(torch.nonzero(in_val).squeeze(1)),
    )


# ---------------------------------------------------------------------------
# Frame lists of the public sets

# name -> (full name, who distributes it)
FACE_SETS: dict[str, tuple[str, str]] = {
    "oulu": (
        "OULU-NPU",
        "the University of Oulu (https://sites.google.com/site/oulunpudatabase)",
    ),
    "casia": ("CASIA-MFSD", "the Institute of Automation, Chinese Academy of Sciences (CASIA)"),
    "idiap": (
        "Idiap Replay-Attack",
        "the Idiap Research Institute (https://www.idiap.ch/en/scientific-research/data/replayattack)",
    ),
    "msu": ("MSU-MFSD", "Michigan State University (Biometrics Research Group)"),
}
FRAME_LISTS = {REAL: "real.txt", ATTACK: "attack.txt"}
UNKNOWN_VIDEO = "-"


@dataclass(frozen=True)
class _ListEntry:
    frame: Path
    video: str
    depth: Path | None


def _read_list(path: Path, label: int) -> list[_ListEntry]:
    """Entries of one frame list: ``FRAME VIDEO DEPTH`` for real frames,
    ``FRAME VIDEO`` for attacks; paths relative to the list's folder."""
    fields_needed = 3 if label == REAL else 2
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) != fields_needed:
            expected = "FRAME VIDEO DEPTH" if label == REAL else "FRAME VIDEO"
            raise DataError(
                f"{path}:{number}: expected {fields_needed} fields ({expected}), got {len(parts)}"
            )
        depth = path.parent / parts[2] if label == REAL else None
        # "-": the video is unknown, the frame stands for itself at video level.
        video = parts[0] if parts[1] == UNKNOWN_VIDEO else parts[1]
        entries.append(_ListEntry(path.parent / parts[0], video, depth))
    return entries


def _read_image(path: Path, mode: str, size: int, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{where}: file not found: {path}")
    try:
        with Image.open(path) as image:
            image = eight_bit(image, path).convert(mode)
            resized = image.resize((size, size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{where}: cannot read image {path}: {exc}") from None
    array = np.asarray(resized, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def load_frame_lists(root: str, name: str, image_size: int, depth_size: int) -> FasFrames:
    """Read the frames of public set ``name`` listed in ``ROOT/name/real.txt`` and
    ``ROOT/name/attack.txt`` (see ``docs/anti-spoofing.md``), resized to
    ``image_size`` (RGB) and their depth maps to ``depth_size`` (gray), as uint8."""
    folder = Path(root or ".") / name
    full_name, owner = FACE_SETS[name]
    missing = [f for f in FRAME_LISTS.values() if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{full_name} not found: {folder} needs {' and '.join(missing)}; the set is "
            f"licensed, so request it from {owner}, extract frames and write the frame "
            "lists as in docs/anti-spoofing.md (set data.root to their parent folder)"
        )
    images, depths, labels, videos = [], [], [], []
    video_index: dict[str, int] = {}
    blank = np.zeros((1, depth_size, depth_size), dtype=np.uint8)
    for label, list_name in FRAME_LISTS.items():
        list_path = folder / list_name
        for number, entry in enumerate(_read_list(list_path, label), start=1):
            where = f"{list_path}:{number}"
            images.append(_read_image(entry.frame, "RGB", image_size, where))
            depths.append(
                blank if entry.depth is None else _read_image(entry.depth, "L", depth_size, where)
            )
            labels.append(label)
            # Real and attack videos never share an id, even if the lists reuse a name.
            key = f"{'real' if label == REAL else 'attack'}/{entry.video}"
            videos.append(video_index.setdefault(key, len(video_index)))
    if not labels:
        raise DataError(f"the frame lists of {full_name} in {folder} are empty")
    return FasFrames(
        images=torch.from_numpy(np.stack(images)),
        labels=torch.tensor(labels, dtype=torch.long),
        depth=torch.from_numpy(np.stack(depths)),
        videos=torch.tensor(videos, dtype=torch.long),
        video_names=tuple(video_index),
    )


# ---------------------------------------------------------------------------
# Collections


@dataclass(frozen=True)
class FasCollection:
    """A set of domains and the function that loads one of them."""

    name: str
    domains: tuple[str, ...]
    # (root, domain, image_size, depth_size) -> frames of that domain
    load_domain: Callable[[str, str, int, int], FasFrames]
    description: str


def _load_digits_domain(root: str, name: str, image_size: int, depth_size: int) -> FasFrames:
    return render_domain(name, image_size, depth_size)


def _load_face_domain(root: str, name: str, image_size: int, depth_size: int) -> FasFrames:
    return render_face_domain(name, image_size, depth_size)


FAS_COLLECTIONS: dict[str, FasCollection] = {
    "digits": FasCollection(
        "digits",
        tuple(DIGIT_DOMAINS),
        _load_digits_domain,
        "synthetic camera domains of real and print/replay digits (embedded)",
    ),
    "lfw-faces": FasCollection(
        "lfw-faces",
        tuple(FACE_DOMAINS),
        _load_face_domain,
        "capture domains of 100 real LFW face crops with print/replay attacks (embedded)",
    ),
    "faces": FasCollection(
        "faces",
        tuple(FACE_SETS),
        load_frame_lists,
        "OULU-NPU, CASIA-MFSD, Idiap Replay-Attack, MSU-MFSD from frame lists (licensed)",
    ),
}


def fas_collection(name: str) -> FasCollection:
    """The registered collection ``name``, or a ConfigError with a suggestion."""
    if name not in FAS_COLLECTIONS:
        raise unknown_name("anti-spoofing dataset", name, FAS_COLLECTIONS)
    return FAS_COLLECTIONS[name]


def load_fas(data_config, depth_size: int) -> FasData:
    """Load the source and target domains of a :class:`~osad.fas.config.FasDataConfig`;
    each source is split by video (seeded by ``partition_seed``)."""
    collection = fas_collection(data_config.name)

    def load(name: str) -> FasFrames:
        return collection.load_domain(data_config.root, name, data_config.image_size, depth_size)

    sources = []
    for name in data_config.sources:
        # Seeded per domain name, so a domain splits alike in every protocol.
        seed = (data_config.partition_seed, zlib.crc32(name.encode()))
        train, val = split_by_video(load(name), data_config.val_fraction, seed)
        sources.append(FasSource(name, train, val))
    return FasData(collection.name, sources, data_config.target, load(data_config.target))
