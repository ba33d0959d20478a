"""Durable files: atomic writes, checksums and the on-disk format version.

A file osad writes for later reading goes through :func:`write_atomic`: the
bytes go to a temporary file in the target's directory, are flushed and
fsync'ed, the temporary file is renamed over the target (``os.replace`` is
atomic on POSIX and Windows) and the directory is fsync'ed so that the rename
itself survives a power cut. A reader sees the old file or the new one, never a
mix, and a failed write (a full disk) leaves the old file untouched.

:data:`FORMAT_VERSION` numbers the layout of everything else osad writes
(weights files, training checkpoints); ``config.yaml`` has its own number,
:data:`osad.config.CONFIG_FORMAT_VERSION`, and converts older layouts; the results
files ``metrics.json`` and ``summary.json`` are numbered apart, with their own rule
(:mod:`osad.eval.results`), through the same :func:`check_format`. The rule: osad reads
files of its own format version only. An older file is refused with a hint to
re-create it (a format change that can convert old files would add that
conversion here), a newer one with a hint to upgrade osad, a file without a
version because it was not written by a versioned osad.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from osad import __version__
from osad.errors import OsadError, StorageError

FORMAT_VERSION = 1


def check_format(
    found: object,
    source: str,
    error: type[OsadError],
    current: int = FORMAT_VERSION,
    kind: str = "format",
    *,
    oldest: int | None = None,
) -> None:
    """Raise ``error`` unless ``found`` is a version osad reads: ``current`` (this osad's
    :data:`FORMAT_VERSION`, or the version of a file kind numbered apart; ``kind`` names
    it in the message, e.g. ``"metrics format"``: :mod:`osad.eval.results`), or back to
    ``oldest`` for a file whose reader converts older layouts (``config.yaml``, see
    :mod:`osad.config`)."""
    if isinstance(found, str) and found.isdigit():
        found = int(found)
    oldest = current if oldest is None else oldest
    if isinstance(found, int) and not isinstance(found, bool) and oldest <= found <= current:
        return
    ours = f"osad {__version__} reads {kind} {current}"
    if found is None:
        raise error(f"{source} has no format_version: it was not written by osad ({ours})")
    if not isinstance(found, int) or isinstance(found, bool):
        raise error(f"{source} has an invalid format_version {found!r} ({ours})")
    if found > current:
        raise error(f"{source} has {kind} {found}, newer than this osad ({ours}); upgrade osad")
    raise error(f"{source} has {kind} {found}, older than this osad ({ours}); re-create it")


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


def sha256_file(path: Path) -> str:
    """sha256 of the bytes of file ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(tensors: Iterable) -> str:
    """sha256 over the dtype, shape and bytes of each tensor, in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def remove_path(path: Path) -> None:
    """Remove a file, a symbolic link (never what it points to) or a folder tree."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def staging_paths(dest: Path) -> tuple[Path, Path]:
    """(the folder a new ``dest`` is written into, where the previous ``dest`` waits)."""
    return dest.with_name(f".{dest.name}.partial"), dest.with_name(f".{dest.name}.previous")


def recover_dir(dest: Path) -> None:
    """Undo what a process killed inside :func:`replace_dir` left: a half-written new
    folder is removed, a previous folder set aside but not yet replaced is put back."""
    partial, previous = staging_paths(dest)
    if previous.exists() or previous.is_symlink():
        if dest.exists() or dest.is_symlink():
            remove_path(previous)  # the rename into place completed
        else:
            os.rename(previous, dest)
    remove_path(partial)


def interrupted_dir(dest: Path) -> Path | None:
    """The leftover of a :func:`replace_dir` that was killed before completing, or None."""
    for leftover in staging_paths(dest):
        if leftover.exists() or leftover.is_symlink():
            return leftover
    return None


@contextmanager
def replace_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty folder next to ``dest`` to write a complete new ``dest`` into; when
    the ``with`` block ends without an error, it replaces ``dest`` by a rename (a symbolic
    link at ``dest`` is replaced, never followed) and the previous folder is removed.

    On any error (a full disk, an interruption) ``dest`` is left as it was and the new
    folder is removed; an :class:`OSError` becomes a one-line
    :class:`~osad.errors.StorageError` naming the file. A process killed inside leaves
    files that :func:`recover_dir` (called here first) cleans up.
    """
    dest = Path(dest)
    partial, previous = staging_paths(dest)
    try:
        recover_dir(dest)
        partial.mkdir(parents=True)
    except OSError as exc:
        raise storage_error(Path(exc.filename or partial), exc) from None
    try:
        yield partial
        fsync_dir(partial)
        if dest.exists() or dest.is_symlink():
            os.rename(dest, previous)
        os.rename(partial, dest)
        fsync_dir(dest.parent)
    except OSError as exc:
        _undo(dest, partial, previous)
        raise storage_error(Path(exc.filename or dest), exc) from None
    except BaseException:
        _undo(dest, partial, previous)
        raise
    remove_path(previous)


def _undo(dest: Path, partial: Path, previous: Path) -> None:
    if not (dest.exists() or dest.is_symlink()) and (previous.exists() or previous.is_symlink()):
        os.rename(previous, dest)
    remove_path(partial)
