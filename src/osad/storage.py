"""Durable files: atomic writes, checksums and the on-disk format version.

A file osad writes for later reading goes through :func:`write_atomic`: the
bytes go to a temporary file in the target's directory, are flushed and
fsync'ed, the temporary file is renamed over the target (``os.replace`` is
atomic on POSIX and Windows) and the directory is fsync'ed so that the rename
itself survives a power cut. A reader sees the old file or the new one, never a
mix, and a failed write (a full disk) leaves the old file untouched.

:data:`FORMAT_VERSION` numbers the layout of everything osad writes
(``config.yaml``, weights files, training checkpoints). The rule: osad reads
files of its own format version only. An older file is refused with a hint to
re-create it (a format change that can convert old files would add that
conversion here), a newer one with a hint to upgrade osad, a file without a
version because it was not written by a versioned osad.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from osad import __version__
from osad.errors import OsadError, StorageError

FORMAT_VERSION = 1


def check_format(found: object, source: str, error: type[OsadError]) -> None:
    """Raise ``error`` unless ``found`` is this osad's :data:`FORMAT_VERSION`."""
    if isinstance(found, str) and found.isdigit():
        found = int(found)
    if found == FORMAT_VERSION:
        return
    ours = f"osad {__version__} reads format {FORMAT_VERSION}"
    if found is None:
        raise error(f"{source} has no format_version: it was not written by osad ({ours})")
    if not isinstance(found, int) or isinstance(found, bool):
        raise error(f"{source} has an invalid format_version {found!r} ({ours})")
    if found > FORMAT_VERSION:
        raise error(f"{source} has format {found}, newer than this osad ({ours}); upgrade osad")
    raise error(f"{source} has format {found}, older than this osad ({ours}); re-create it")


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to the disk (every durable write ends here)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (new names, renames) durable."""
    if os.name == "nt":  # Windows cannot open a directory; NTFS journals renames itself.
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(path: Path, exc: OSError) -> StorageError:
    """A one-line :class:`StorageError` for a failed write of ``path``."""
    return StorageError(f"cannot write {path}: {exc.strerror or exc}")


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace ``path`` by ``data`` atomically; on failure the old file is untouched."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_synced(tmp, payload)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(path, exc) from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
