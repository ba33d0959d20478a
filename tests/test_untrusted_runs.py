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
