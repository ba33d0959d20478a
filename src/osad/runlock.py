"""One writer per run directory: an exclusive advisory lock on ``RUN_DIR/.lock``.

``osad train`` (from the directory's creation), ``osad train --resume``,
``osad test`` and ``osad check`` hold the lock for as long as they write into
the run; a second writer is refused with one line naming the holder's process
id. The lock is :func:`fcntl.flock` on an open file: the kernel releases it
when the holder exits for any reason (SIGKILL included), so a lock left by a
killed process is never stale; the pid written inside only serves the message.
The file itself stays (removing it would let two writers lock two different
files of one name).

POSIX only (Linux, macOS); where ``fcntl`` does not exist the lock is not taken.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from osad.errors import RunDirError
from osad.storage import storage_error

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


def lock_path(root: str | Path) -> Path:
    """The lock file of run directory ``root``."""
    return Path(root) / LOCK_NAME


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


@contextmanager
def run_lock(root: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of run directory ``root`` (created if missing) inside the
    ``with`` block; yields the directory.

    Raises :class:`~osad.errors.RunDirError` naming the holder's pid when another
    process holds it, :class:`~osad.errors.StorageError` when the lock file cannot be
    written. A directory this call created is removed again if it holds nothing but
    the lock at the end (a refused command leaves nothing behind).
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise RunDirError(f"run directory {root} exists and is not a directory")
    created = not root.exists()
    path = lock_path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise storage_error(path, exc) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirError(
                    f"{root} is in use by {_holder(fd)} (it holds {path}); wait for it to "
                    "finish, or use another run directory"
                ) from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as exc:
                raise storage_error(path, exc) from None
        try:
            yield root
        finally:
            if created and [p.name for p in root.iterdir()] == [LOCK_NAME]:
                path.unlink()
                root.rmdir()
    finally:
        os.close(fd)  # releases the flock
