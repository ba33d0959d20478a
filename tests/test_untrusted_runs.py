"""A run directory may come from someone else: nothing in it runs code, chooses the
data osad reads, reaches outside it, or gets past validation as garbage."""

from __future__ import annotations

import pickle
import shutil

import pytest
import yaml

from osad.cli import main
from tests.data import miniature


def _rewrite_config(run, **data):
    path = run / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["data"].update(data)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


class _Touch:
    """Unpickling this calls ``os.system('touch MARKER')``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def crafted_root(tmp_path):
    """A data root whose CIFAR-10 test batch runs ``touch marker`` when unpickled."""
    root = tmp_path / "crafted"
    folder = miniature.write_cifar10(root)
    marker = tmp_path / "executed"
    batch = pickle.loads((folder / "test_batch").read_bytes(), encoding="latin1")
    for name in ("test_batch", *(f"data_batch_{i}" for i in range(1, 6))):
        (folder / name).write_bytes(pickle.dumps({**batch, "labels": _Touch(marker)}, protocol=2))
    return root, marker


@pytest.fixture
def foreign_run(finished_run, tmp_path):
    run = tmp_path / "foreign"
    shutil.copytree(finished_run, run)
    return run


def test_a_run_config_cannot_point_osad_test_at_crafted_data(foreign_run, crafted_root, capsys):
    root, marker = crafted_root
    _rewrite_config(foreign_run, name="cifar10", root=str(root), verify=False)
    for argv in (["test", str(foreign_run), "--no-progress"], ["check", str(foreign_run)]):
        assert main(argv) == 2
        assert not marker.exists()
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "records data.root=" in err and "--data-root" in err


def test_crafted_data_confirmed_on_the_command_line_runs_no_code(foreign_run, crafted_root, capsys):
    root, marker = crafted_root
    _rewrite_config(foreign_run, name="cifar10")
    argv = ["test", str(foreign_run), "--no-progress", "--data-root", str(root), "--no-verify"]
    assert main(argv) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to unpickle" in err and "posix.system" in err


def test_a_run_config_cannot_turn_checksums_off(foreign_run, capsys):
    _rewrite_config(foreign_run, verify=False)
    assert main(["test", str(foreign_run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.verify=false" in err and "--no-verify" in err
    assert not (foreign_run / "eval").exists()


def test_a_recorded_root_that_is_the_default_one_needs_no_flag(foreign_run, tmp_path, monkeypatch):
    """$OSAD_DATA_ROOT written out in config.yaml names the folder the default
    resolution picks anyway: nothing to confirm."""
    from osad.rundir import RunDir
    from osad.workflow import confirm_data_source, load_run_config

    monkeypatch.setenv("OSAD_DATA_ROOT", str(tmp_path / "data"))
    _rewrite_config(foreign_run, root=str(tmp_path / "data" / "."))
    run = RunDir(foreign_run)
    config = load_run_config(run)
    confirm_data_source(config, run, None, True)
    assert config.data.verify
    _rewrite_config(foreign_run, root=str(tmp_path / "elsewhere"))
    config = load_run_config(run)
    confirm_data_source(config, run, str(tmp_path / "mine"), False)
    assert config.data.root == str(tmp_path / "mine") and not config.data.verify


# ---------------------------------------------------------------------------
# Names read from a run directory stay inside it.


def _store(root):
    from osad.checkpoint import CheckpointStore
    from osad.rundir import RunDir

    store = CheckpointStore(RunDir(root), keep=3)
    store.save(1, {"a.bin": b"inside" * 10})
    return store


def _list_in_manifest(checkpoint, name, data):
    """Make ``manifest.json`` list ``name`` with the size and sha256 of ``data``: a
    consistent manifest, as someone crafting the run directory would write it."""
    import hashlib
    import json

    manifest = json.loads((checkpoint / "manifest.json").read_text())
    entry = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest["files"] = {name: entry}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def _outside_names(checkpoint, outside):
    import os

    return {
        "relative": os.path.relpath(outside, checkpoint),
        "absolute": str(outside),
        "dot-dot": "..",
        "nested": "sub/a.bin",
    }


@pytest.mark.parametrize("kind", ["relative", "absolute", "dot-dot", "nested", "symlink"])
def test_a_manifest_entry_cannot_reach_outside_the_checkpoint(tmp_path, kind):
    """Refused whether the outside file exists, matches the manifest or not: the
    message is the same, so it tells nothing about files outside the run."""
    from osad.errors import OsadError

    store = _store(tmp_path / "run")
    checkpoint = store.latest()
    messages = set()
    for exists in (True, False):
        outside = tmp_path / f"secret-{exists}"
        if exists:
            outside.write_bytes(b"outside")
        name = _outside_names(checkpoint, outside).get(kind, "link.bin")
        if kind == "symlink":
            (checkpoint / name).unlink(missing_ok=True)
            (checkpoint / name).symlink_to(outside)
        _list_in_manifest(checkpoint, name, b"outside")
        with pytest.raises(OsadError) as info:
            store.read(checkpoint)
        message = str(info.value)
        assert "\n" not in message and "not a file name inside" in message
        messages.add(message.replace(str(exists), "X"))
    assert len(messages) == 1


def test_a_manifest_naming_etc_hostname_with_its_sha256_is_refused(tmp_path):
    from pathlib import Path

    from osad.errors import OsadError

    hostname = Path("/etc/hostname")
    if not hostname.is_file():
        pytest.skip("no /etc/hostname on this machine")
    store = _store(tmp_path / "run")
    checkpoint = store.latest()
    name = "../../../" * 20 + "etc/hostname"
    _list_in_manifest(checkpoint, name, hostname.read_bytes())
    with pytest.raises(OsadError, match="not a file name inside"):
        store.read(checkpoint)


@pytest.mark.parametrize("kind", ["relative", "absolute", "symlinked checkpoint", "symlinked"])
def test_latest_cannot_point_outside_the_run(tmp_path, kind):
    from osad.errors import OsadError

    other = _store(tmp_path / "other").latest()
    store = _store(tmp_path / "run")
    pointer = store.run.latest_checkpoint
    if kind == "relative":
        pointer.write_text(f"../../other/checkpoints/{other.name}\n")
    elif kind == "absolute":
        pointer.write_text(f"{other}\n")
    elif kind == "symlinked checkpoint":
        (store.run.checkpoints / "step-00000007").symlink_to(other)
        pointer.write_text("step-00000007\n")
    else:  # the pointer file itself leads out
        pointer.unlink()
        pointer.symlink_to(tmp_path / "other" / "checkpoints" / "latest")
    with pytest.raises(OsadError, match="not a file name inside"):
        store.latest()


def test_resume_refuses_a_latest_pointer_into_another_run(finished_run, tmp_path, capsys):
    """``osad train --resume RUN`` whose ``latest`` names another run's checkpoint:
    one line, exit 2, nothing trained."""
    other, run = tmp_path / "other", tmp_path / "run"
    shutil.copytree(finished_run, other)
    shutil.copytree(finished_run, run)
    (run / "model.safetensors").unlink()
    history = (run / "history.jsonl").read_text()
    name = (other / "checkpoints" / "latest").read_text().strip()
    (run / "checkpoints" / "latest").write_text(f"../../other/checkpoints/{name}\n")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a file name inside" in err
    assert not (run / "model.safetensors").exists()
    assert (run / "history.jsonl").read_text() == history
