"""One writer per run directory: an exclusive advisory lock on ``RUN_DIR/.lock``.

``osad train`` (from the directory's creation), ``osad train --resume``,
``osad test`` and ``osad check`` hold the lock for as long as they write into
the run; a second writer is refused with one line naming the holder's process
id. The lock is :func:`fcntl.flock` on an open file: the kernel releases it
when the holder exits for any reason (SIGKILL included), so a lock left by a
killed process is never stale; the pid written inside only serves the message.
The holder removes the file on release while still holding the lock, and a new
holder checks that the file it locked is still the one at that path (else it
retries), so two writers never lock two different files of one name.

POSIX only (Linux, macOS); where ``fcntl`` does not exist the lock is not taken.
"""

from __future__ import annotations

import contextlib
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


def _acquire(root: Path, path: Path) -> int:
    """An open descriptor of ``path`` holding its flock; the lock file is created if missing."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise storage_error(path, exc) from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunDirError(
                f"{root} is in use by {holder} (it holds {path}); wait for it to finish, "
                "or use another run directory"
            ) from None
        # The holder before us removes the file on release: a lock on a removed file
        # excludes nobody, so lock the file that is there now.
        try:
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def run_lock(root: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of run directory ``root`` (created if missing) inside the
    ``with`` block; yields the directory.

    Raises :class:`~osad.errors.RunDirError` naming the holder's pid when another
    process holds it, :class:`~osad.errors.StorageError` when the lock file cannot be
    written. The lock file is removed on release, and so is a directory this call
    created if nothing else was written into it: a refused command leaves nothing.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise RunDirError(f"run directory {root} exists and is not a directory")
    created = not root.exists()
    path = lock_path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(root, exc) from None
    try:
        fd = _acquire(root, path)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                root.rmdir()
        raise
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            raise storage_error(path, exc) from None
        yield root
    finally:
        path.unlink(missing_ok=True)  # while still locked: see _acquire
        os.close(fd)  # releases the flock
        if created and not any(root.iterdir()):
            root.rmdir()
