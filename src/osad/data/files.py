"""Where dataset files live, how they are checked, and how missing ones are fetched.

The data root is chosen by precedence: ``--data-root`` (the CLI writes it into
``data.root``), then ``data.root`` of the config, then the environment variable
``OSAD_DATA_ROOT``, then ``$XDG_CACHE_HOME/osad/data`` (``~/.cache/osad/data``).

Every downloaded file is checked against its official MD5 before it is used;
archives are unpacked into a scratch folder first and moved into place only
once complete, so an interrupted download never leaves a half-written dataset.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from osad.errors import DataError

ROOT_ENV = "OSAD_DATA_ROOT"
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


def default_data_root() -> Path:
    """``$XDG_CACHE_HOME/osad/data``, or ``~/.cache/osad/data``."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "osad" / "data"


def resolve_data_root(root: str = "") -> Path:
    """The data root: ``root`` (config or flag), else ``$OSAD_DATA_ROOT``, else the default."""
    chosen = root or os.environ.get(ROOT_ENV, "")
    return Path(chosen).expanduser() if chosen else default_data_root()


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Remote:
    """One official file: its mirrors (tried in order) and its MD5."""

    filename: str
    urls: tuple[str, ...]
    md5: str

    @property
    def is_archive(self) -> bool:
        return self.filename.endswith((".tar.gz", ".tgz", ".zip"))


@dataclass(frozen=True)
class FileSet:
    """The files of one dataset under the data root.

    ``folder`` is relative to the data root and ``files`` relative to ``folder``.
    A ``.gz`` name is also satisfied by its uncompressed twin (as IDX files are
    often stored). ``md5`` holds the official checksum of the files that have one.
    ``remotes`` are either archives that unpack to ``folder`` or files that
    belong in it.
    """

    title: str
    folder: str
    files: tuple[str, ...]
    remotes: tuple[Remote, ...]
    md5: dict[str, str] = field(default_factory=dict)
    # How to get files that cannot be fetched automatically (no ``remotes``).
    manual: str = ""

    def locate(self, root: Path, name: str) -> Path | None:
        """The path of ``name`` under ``root``, or None when absent."""
        path = root / self.folder / name
        if path.is_file():
            return path
        if name.endswith(".gz") and path.with_suffix("").is_file():
            return path.with_suffix("")
        return None

    def missing(self, root: Path) -> list[str]:
        return [name for name in self.files if self.locate(root, name) is None]

    def how_to_get(self, root: Path) -> str:
        what = ", ".join(self.files)
        if not self.remotes:
            return (
                f"expected {what} in {root / self.folder}; {self.manual}, "
                f"or pass --data-root (or set {ROOT_ENV}) to where they are"
            )
        urls = " and ".join(r.urls[0] for r in self.remotes)
        unpack = " (unpacked)" if any(r.is_archive for r in self.remotes) else ""
        return (
            f"expected {what} in {root / self.folder}; get them from {urls}{unpack}, "
            f"or pass --data-root (or set {ROOT_ENV}) to where they are"
        )


Fetch = Callable[[str, Path], None]


def _urlopen_to(url: str, dest: Path) -> None:
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, dest.open("wb") as f:
        size = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"download {dest.stem}") as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                bar.update(len(chunk))


def download(remote: Remote, dest: Path, fetch: Fetch = _urlopen_to) -> None:
    """Fetch ``remote`` to ``dest``, verified against its MD5; nothing is left on failure.

    Mirrors are tried in order; a file whose checksum differs is refused (its
    bytes are deleted) with a :class:`DataError`.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in remote.urls:
        try:
            fetch(url, part)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            part.unlink(missing_ok=True)
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
            continue
        got = md5sum(part)
        if got != remote.md5:
            part.unlink()
            raise DataError(
                f"download of {url} failed its checksum (md5 {got}, expected {remote.md5}); "
                "the transfer was corrupted or the file changed upstream, nothing was kept"
            )
        part.replace(dest)
        return
    raise DataError(f"could not download {remote.filename}: " + "; ".join(errors))


def _safe_members(names: list[str], archive: Path) -> None:
    for name in names:
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts:
            raise DataError(f"{archive} holds an unsafe path '{name}'; refusing to unpack it")


def unpack(archive: Path, into: Path) -> None:
    """Unpack a .tar.gz or .zip archive into ``into`` (no path may leave it)."""
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                _safe_members(z.namelist(), archive)
                z.extractall(into)
        else:
            with tarfile.open(archive) as t:
                members = t.getmembers()
                _safe_members([m.name for m in members], archive)
                if any(not (m.isfile() or m.isdir()) for m in members):
                    raise DataError(f"{archive} holds links or devices; refusing to unpack it")
                # The "data" filter (Python >= 3.10.12) also strips unsafe modes.
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                t.extractall(into, members=members, **safe)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{archive} is not a readable archive ({exc})") from None


def _move_missing(src: Path, dst: Path) -> None:
    """Move every file of ``src`` that ``dst`` lacks into ``dst`` (existing files are kept)."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            path.replace(target)


def fetch_files(files: FileSet, root: Path, fetch: Fetch = _urlopen_to) -> None:
    """Download every remote of ``files`` into ``root`` (archives unpacked), verified."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".osad-download-", dir=root) as scratch:
        scratch = Path(scratch)
        for remote in files.remotes:
            target = scratch / remote.filename
            download(remote, target, fetch)
            if remote.is_archive:
                unpack(target, scratch / "unpacked")
                target.unlink()
            else:
                (scratch / "unpacked" / files.folder).mkdir(parents=True, exist_ok=True)
                target.replace(scratch / "unpacked" / files.folder / remote.filename)
        _move_missing(scratch / "unpacked", root)


def verify(files: FileSet, root: Path) -> None:
    """Check every present file that has an official MD5; a mismatch is a DataError."""
    for name, expected in files.md5.items():
        path = files.locate(root, name)
        if path is None or path.name != Path(name).name:
            continue  # an uncompressed twin has no official checksum; its shape is checked
        got = md5sum(path)
        if got != expected:
            raise DataError(
                f"{path} fails its checksum (md5 {got}, expected {expected}): the file is "
                "corrupt or truncated; delete it to download it again, or set "
                "data.verify=false for a re-packed copy"
            )


def ensure_files(
    files: FileSet, root: Path, *, download: bool, check: bool, fetch: Fetch = _urlopen_to
) -> Path:
    """Make sure ``files`` are under ``root`` (downloading them if allowed); return their folder.

    Missing files without ``download`` (or when the download fails) raise one
    :class:`DataError` line naming the files, the folder and the official URL.
    """
    if files.missing(root):
        if not download or not files.remotes:
            raise DataError(f"{files.title} not found: {files.how_to_get(root)}")
        try:
            fetch_files(files, root, fetch)
        except DataError as exc:
            raise DataError(
                f"{files.title} not found and {exc}; {files.how_to_get(root)}"
            ) from None
        if files.missing(root):
            raise DataError(
                f"{files.title}: the download did not provide {', '.join(files.missing(root))}"
            )
    if check:
        verify(files, root)
    return root / files.folder
