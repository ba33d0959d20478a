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


def test_resume_takes_the_data_settings_from_the_command_line_too(
    finished_run, tmp_path, crafted_root, capsys
):
    root, marker = crafted_root
    run = tmp_path / "unfinished"
    shutil.copytree(finished_run, run)
    (run / "model.safetensors").unlink()
    _rewrite_config(run, name="cifar10", root=str(root), verify=False)
    history = (run / "history.jsonl").read_text()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "records data.root=" in err
    assert (run / "history.jsonl").read_text() == history


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


# ---------------------------------------------------------------------------
# Structured files read back are validated: state.json, the weights recipe, metrics.json.


def _resumable_copy(finished_run, tmp_path):
    """A copy of ``finished_run`` that has not saved its weights yet: resumable."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "model.safetensors").unlink()
    return run


def _rewrite_checkpoint_file(checkpoint, name, data):
    """Replace one file of a checkpoint and make the manifest consistent again."""
    import hashlib
    import json

    (checkpoint / name).write_bytes(data)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    entry = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest["files"][name] = entry
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


STATE_FAULTS = {
    "without context": (lambda d: d.pop("context"), "'context' must be an object"),
    "negative epoch": (lambda d: d.update(epoch=-3), "'epoch' must be at least 1"),
    "epoch past the end": (
        lambda d: d.update(epoch=9, history=[{}] * 8),
        "'epoch' must be at most 3",
    ),
    "batch past the end": (
        lambda d: d.update(epoch=2, batch=7, history=[{}]),
        "'batch' must be at most 6",
    ),
    "history as a string": (lambda d: d.update(history="x" * 10**4), "'history' must be a list"),
    "history too short": (lambda d: d.update(history=[]), "'history' must hold one record"),
    "garbage python rng": (
        lambda d: d["rng"].update(python="garbage"),
        "'rng.python' must be a list",
    ),
    "garbage numpy rng": (
        lambda d: d["rng"]["numpy"].__setitem__(1, [1, 2]),
        "'rng.numpy[1]' must hold 624",
    ),
    "rng word out of range": (
        lambda d: d["rng"]["numpy"][1].__setitem__(0, -1),
        "'rng.numpy[1]' must be at least 0",
    ),
    "unknown generator kind": (
        lambda d: d["rng"]["numpy"].__setitem__(0, "PCG64"),
        "random generator state that cannot be restored",
    ),
    "meter with another key": (
        lambda d: d["meter"].update(extra=1),
        "'meter.extra' is not a known key",
    ),
    "optimizer state keyed by name": (
        lambda d: d["optimizer"]["state"].update(w={}),
        "must be keyed by parameter index",
    ),
    "a list at top level": (lambda d: [d], "must hold a JSON object, got a list"),
}


@pytest.mark.parametrize("fault", list(STATE_FAULTS))
def test_a_crafted_state_json_is_refused_naming_the_key(finished_run, tmp_path, capsys, fault):
    import json

    edit, message = STATE_FAULTS[fault]
    run = _resumable_copy(finished_run, tmp_path)
    checkpoint = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    document = json.loads((checkpoint / "state.json").read_text())
    edited = edit(document)
    document = edited if isinstance(edited, list) else document
    _rewrite_checkpoint_file(checkpoint, "state.json", json.dumps(document).encode())
    history = (run / "history.jsonl").read_text()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "state.json" in err and message in err, err
    assert len(err) < 1000  # no unbounded value echoed
    assert (run / "history.jsonl").read_text() == history
    assert not (run / "model.safetensors").exists()


@pytest.mark.parametrize("damage", ["out of range", "repeated", "too short", "float"])
def test_a_crafted_epoch_permutation_is_refused(finished_run, tmp_path, capsys, damage):
    import torch

    from osad.checkpoint import parse_tensors, tensors_bytes

    run = _resumable_copy(finished_run, tmp_path)
    checkpoint = run / "checkpoints" / "step-00000010"  # mid-epoch: has a permutation
    tensors, _ = parse_tensors((checkpoint / "state.safetensors").read_bytes(), "x")
    order = tensors["epoch.permutation"]
    order = {
        "out of range": order + 10**6,
        "repeated": torch.zeros_like(order),
        "too short": order[:-1],
        "float": order.double(),
    }[damage]
    tensors["epoch.permutation"] = order
    _rewrite_checkpoint_file(checkpoint, "state.safetensors", tensors_bytes(tensors, {}))
    assert main(["train", "--resume", str(checkpoint), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'epoch.permutation' must be a permutation" in err
    assert (run / "checkpoints" / "step-00000012").is_dir()  # nothing discarded


def _with_recipe(weights, kwargs_text):
    """Rewrite a weights file with the recipe ``kwargs_text``, digest made consistent."""
    from osad.checkpoint import parse_tensors, tensors_bytes

    tensors, metadata = parse_tensors(weights.read_bytes(), "x")
    metadata = {k: v for k, v in metadata.items() if k in ("model_name",)}
    weights.write_bytes(tensors_bytes(tensors, {**metadata, "model_kwargs": kwargs_text}))


def _recipe_faults(recipe):
    import json

    return {
        "unknown keyword": (json.dumps({**recipe, "colour": "red"}), "unexpected keyword"),
        "not JSON": ("{width: 2", "'model_kwargs' is not JSON"),
        "a list": ("[1, 2]", "must be a JSON object"),
        "width of a TB model": (
            json.dumps({**recipe, "width": 100000}),
            "parameters, over the limit",
        ),
        "negative width": (json.dumps({**recipe, "width": -2}), "cannot build"),
    }


@pytest.mark.parametrize(
    "fault", ["unknown keyword", "not JSON", "a list", "width of a TB model", "negative width"]
)
def test_a_crafted_weights_recipe_is_refused_before_building(finished_run, tmp_path, fault):
    """``load_model`` (osad check, anti-spoofing runs, the API) builds the model the
    recipe names: a keyword the constructor lacks, a recipe that is not a JSON object
    or one whose model would take terabytes is refused without allocating it."""
    from osad.checkpoint import load_model, read_recipe
    from osad.errors import CheckpointError

    weights = tmp_path / "model.safetensors"
    shutil.copy(finished_run / "model.safetensors", weights)
    text, message = _recipe_faults(read_recipe(weights)[1])[fault]
    _with_recipe(weights, text)
    with pytest.raises(CheckpointError) as info:
        load_model(weights)
    assert "\n" not in str(info.value) and "model.safetensors" in str(info.value)
    assert message in str(info.value)


def test_osad_check_refuses_a_crafted_recipe_with_one_line(finished_run, tmp_path, capsys):
    import json

    from osad.checkpoint import read_recipe

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    recipe = read_recipe(run / "model.safetensors")[1]
    _with_recipe(run / "model.safetensors", json.dumps({**recipe, "width": 100000}))
    assert main(["check", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "over the limit" in err
    assert not (run / "check.json").exists()
