"""Data root precedence, checksum-verified downloads and missing-dataset messages."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import urllib.error
from pathlib import Path

import pytest

from osad.config import make_config
from osad.data import load_openset
from osad.data.files import (
    FileSet,
    Remote,
    default_data_root,
    ensure_files,
    resolve_data_root,
)
from osad.errors import DataError


def test_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("OSAD_DATA_ROOT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_root() == tmp_path / "cache" / "osad" / "data"
    assert resolve_data_root("") == default_data_root()
    monkeypatch.setenv("OSAD_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root("") == tmp_path / "env"
    assert resolve_data_root(str(tmp_path / "config")) == tmp_path / "config"
    assert resolve_data_root("~/x") == Path.home() / "x"


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _published(tmp_path: Path, data: bytes, name: str = "set.tar.gz") -> tuple[str, str]:
    """Publish ``data`` at a file:// URL; returns (url, md5)."""
    source = tmp_path / "server" / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(data)
    return source.as_uri(), hashlib.md5(data).hexdigest()


def _archive_set(url: str, md5: str, urls: tuple[str, ...] = ()) -> FileSet:
    return FileSet(
        title="Toy set",
        folder="toy-batches",
        files=("a.bin", "b.bin"),
        remotes=(Remote("set.tar.gz", (*urls, url), md5),),
    )


ARCHIVE = {"toy-batches/a.bin": b"alpha", "toy-batches/b.bin": b"beta"}


def test_download_unpacks_a_verified_archive_into_place(tmp_path):
    url, md5 = _published(tmp_path, _tar_gz(ARCHIVE))
    root = tmp_path / "root"
    folder = ensure_files(_archive_set(url, md5), root, download=True, check=True)
    assert (folder / "a.bin").read_bytes() == b"alpha"
    assert sorted(p.name for p in root.iterdir()) == ["toy-batches"]  # no scratch left


def test_checksum_mismatch_is_refused_and_nothing_is_kept(tmp_path):
    url, md5 = _published(tmp_path, _tar_gz(ARCHIVE))
    root = tmp_path / "root"
    wrong = "0" * 32
    with pytest.raises(DataError, match=f"failed its checksum \\(md5 {md5}, expected {wrong}\\)"):
        ensure_files(_archive_set(url, wrong), root, download=True, check=True)
    assert list(root.iterdir()) == []


def test_mirrors_are_tried_in_order(tmp_path):
    url, md5 = _published(tmp_path, _tar_gz(ARCHIVE))
    dead = (tmp_path / "server" / "missing.tar.gz").as_uri()
    folder = ensure_files(
        _archive_set(url, md5, urls=(dead,)), tmp_path / "root", download=True, check=True
    )
    assert (folder / "b.bin").read_bytes() == b"beta"


def test_plain_files_land_in_their_folder(tmp_path):
    url, md5 = _published(tmp_path, b"payload", "one.bin")
    files = FileSet("One", "one", ("one.bin",), (Remote("one.bin", (url,), md5),), {"one.bin": md5})
    folder = ensure_files(files, tmp_path / "root", download=True, check=True)
    assert (folder / "one.bin").read_bytes() == b"payload"


def test_unsafe_archive_is_refused(tmp_path):
    url, md5 = _published(tmp_path, _tar_gz({"../escape.bin": b"x", "toy-batches/a.bin": b"a"}))
    root = tmp_path / "root"
    with pytest.raises(DataError, match=re.escape("unsafe path '../escape.bin'")):
        ensure_files(_archive_set(url, md5), root, download=True, check=True)
    assert not (tmp_path / "escape.bin").exists() and list(root.iterdir()) == []


def test_existing_files_are_kept_when_the_rest_is_fetched(tmp_path):
    root = tmp_path / "root"
    (root / "toy-batches").mkdir(parents=True)
    (root / "toy-batches" / "a.bin").write_bytes(b"mine")
    url, md5 = _published(tmp_path, _tar_gz(ARCHIVE))
    folder = ensure_files(_archive_set(url, md5), root, download=True, check=True)
    assert (folder / "a.bin").read_bytes() == b"mine"
    assert (folder / "b.bin").read_bytes() == b"beta"


def _offline(url, dest):
    raise urllib.error.URLError("Name or service not known")


def test_no_internet_gives_one_line_naming_files_and_url(tmp_path):
    files = _archive_set("https://example.org/set.tar.gz", "0" * 32)
    with pytest.raises(DataError) as info:
        ensure_files(files, tmp_path, download=True, check=True, fetch=_offline)
    message = str(info.value)
    assert "\n" not in message
    for part in ("Toy set not found", "Name or service not known", "a.bin, b.bin"):
        assert part in message
    assert f"in {tmp_path / 'toy-batches'}" in message
    assert "https://example.org/set.tar.gz (unpacked)" in message


@pytest.mark.parametrize(
    "name,expected",
    [
        ("cifar10", ["cifar-10-batches-py", "data_batch_1", "cifar-10-python.tar.gz"]),
        ("svhn", ["svhn", "train_32x32.mat", "housenumbers/train_32x32.mat"]),
        ("mnist", ["MNIST/raw", "train-images-idx3-ubyte.gz", "ossci-datasets"]),
        ("tinyimagenet", ["tiny-imagenet-200", "wnids.txt", "tiny-imagenet-200.zip"]),
        ("cifar+10", ["cifar-10-batches-py"]),
    ],
)
def test_missing_dataset_names_files_place_and_url(tmp_path, name, expected):
    config = make_config(
        overrides=[f"data.name={name}", f"data.root={tmp_path}", "data.download=false"]
    )
    with pytest.raises(DataError) as info:
        load_openset(config.data)
    message = str(info.value)
    assert "not found" in message and "--data-root" in message and "\n" not in message
    for part in expected:
        assert part in message
    assert list(tmp_path.iterdir()) == []


def test_download_failure_through_the_loader(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("urllib.request.urlopen", refuse)
    config = make_config(overrides=["data.name=svhn", f"data.root={tmp_path}"])
    with pytest.raises(DataError, match=r"could not download train_32x32\.mat: .*no route to host"):
        load_openset(config.data)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_loader_reads_the_environment_root(tmp_path, monkeypatch):
    from tests.data.miniature import write_svhn

    write_svhn(tmp_path)
    monkeypatch.setenv("OSAD_DATA_ROOT", str(tmp_path))
    config = make_config(overrides=["data.name=svhn", "data.verify=false", "data.download=false"])
    assert config.data.root == "" and len(load_openset(config.data).test_labels) == 100
