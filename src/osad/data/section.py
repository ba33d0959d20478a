"""Checks of a run's ``data`` section (:class:`osad.config.DataConfig`) against the
dataset catalog, next to the datasets they name."""

from __future__ import annotations

from typing import Any

from osad.data import DATASETS, FOLDER, DatasetInfo, dataset_info, is_folder_path
from osad.errors import ConfigError, require, shown, unknown_name


def check_data_section(d: Any) -> DatasetInfo | None:
    """Check the ``data`` section ``d``; one-line :class:`ConfigError` if wrong. Returns
    the dataset's :class:`DatasetInfo`, or None for an image folder (described by its
    files, checked when it is read)."""
    require(
        not is_folder_path(d.name),
        f"'data.name' is a dataset, not a path; for the image folder {d.name} set "
        f"data.name=folder data.root={d.name}",
    )
    # An image folder is described by its files, checked when it is read.
    info = None if d.name == FOLDER else dataset_info(d.name)
    if info is None:
        require(
            d.split == 0,
            f"'data.split' must be 0 for data.name=folder (one default split), got {d.split}; "
            "choose other known classes with data.known",
        )
    elif d.known:
        _check_known(d.known, d.unknown, info)
    else:
        require(
            info.num_splits > 0,
            f"{d.name} has no split table; name its known classes, e.g. data.known=[0,1,2,3,4]",
        )
        require(
            0 <= d.split < info.num_splits,
            f"'data.split' must be in 0..{info.num_splits - 1} for {d.name}, got {d.split}",
        )
    if d.unknown and not is_folder_path(d.unknown):
        other = dataset_info(d.unknown) if d.unknown in DATASETS else None
        if other is None:
            error = unknown_name("dataset in 'data.unknown'", d.unknown, DATASETS)
            raise ConfigError(f"{error}, or a path to an image folder (containing '/')")
        require(other.name != d.name, f"'data.unknown' must be another dataset than {d.name}")
    require(d.image_size >= 0, f"'data.image_size' must be >= 0 (0 = native), got {d.image_size}")
    require(
        d.channels in (0, 1, 3),
        f"'data.channels' must be 0 (native), 1 (gray) or 3 (RGB), got {d.channels}",
    )
    require(
        0 < d.test_fraction < 1, f"'data.test_fraction' must be in (0, 1), got {d.test_fraction}"
    )
    require(0 <= d.val_fraction < 1, f"'data.val_fraction' must be in [0, 1), got {d.val_fraction}")
    require(d.crop_padding >= 0, f"'data.crop_padding' must be >= 0, got {d.crop_padding}")

    return info


def _check_known(known: list[int | str], unknown: str, info: DatasetInfo) -> None:
    require(
        all(isinstance(c, int) and 0 <= c < info.num_classes for c in known),
        f"'data.known' entries must be class ids in 0..{info.num_classes - 1}, got {shown(known)}",
    )
    require(len(set(known)) == len(known), f"'data.known' has duplicates: {shown(known)}")
    require(len(known) >= 2, f"'data.known' needs at least 2 classes, got {shown(known)}")
    require(
        bool(unknown) or len(known) < info.num_classes,
        "'data.known' names every class; leave some unknown or set data.unknown",
    )
