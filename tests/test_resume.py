"""Interrupted runs continue exactly: SIGKILL, SIGTERM, SIGINT, full disk, non-finite loss."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from osad import storage
from osad.checkpoint import CheckpointStore, read_weights
from osad.cli import main
from osad.rundir import RunDir
from osad.train import TrainObjective
from tests.conftest import RESUMABLE

ROOT = Path(__file__).resolve().parents[1]


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def assert_same_training(run: Path, reference: Path) -> None:
    """Bit-identical final weights and identical per-epoch metrics."""
    weights, _ = read_weights(run / "model.safetensors")
    expected, _ = read_weights(reference / "model.safetensors")
    assert weights.keys() == expected.keys()
    for key in expected:
        assert torch.equal(weights[key], expected[key]), key
    assert _history(run) == _history(reference)


def _spawn_train(out: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "osad", "train", "--out", str(out), "--no-progress", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    """Poll until ``path`` exists; fail if the process ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path} appeared: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.002)


def _state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state.json").read_text())


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(finished_run, tmp_path):
    run = tmp_path / "killed"
    proc = _spawn_train(run, *RESUMABLE)
    _wait_for(run / "checkpoints" / "latest", proc)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "model.safetensors").exists()
    checkpoint = CheckpointStore(RunDir(run), keep=3).latest()
    state = _state(checkpoint)
    assert state["epoch"] == 1 and 0 < state["batch"] < 6  # killed in the middle of epoch 1

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_training(run, finished_run)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(finished_run, tmp_path):
    run = tmp_path / "terminated"
    # No periodic checkpoints: the one that exists after SIGTERM is the one it saved.
    proc = _spawn_train(run, *RESUMABLE, "checkpoint.every_steps=0", "checkpoint.every_epochs=0")
    _wait_for(run / "tensorboard", proc)  # the handlers are installed before this appears
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143
    line = err.strip().splitlines()[-1]
    assert line.startswith("osad: interrupted by SIGTERM at epoch 1, step ")
    assert line.endswith(f"resume with: osad train --resume {run}")
    checkpoint = CheckpointStore(RunDir(run), keep=2).latest()
    assert str(checkpoint) in line
    assert f"step {_state(checkpoint)['step']};" in line

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_training(run, finished_run)


def _objective_calling(action, at_call: int, monkeypatch):
    """Make TrainObjective run ``action(losses, model)`` on its ``at_call``-th call."""
    original = TrainObjective.__call__
    calls = {"n": 0}

    def patched(self, model, x, y):
        calls["n"] += 1
        out = original(self, model, x, y)
        return action(out, model) if calls["n"] == at_call else out

    monkeypatch.setattr(TrainObjective, "__call__", patched)


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_exits_130_and_resumes_exactly(
    finished_run, tmp_path, monkeypatch, capsys
):
    def interrupt(out, model):
        os.kill(os.getpid(), signal.SIGINT)
        return out

    _objective_calling(interrupt, at_call=8, monkeypatch=monkeypatch)  # epoch 2, batch 2
    # Whatever the process had: Python's default, or SIG_IGN under a shell's background job.
    handler_before = signal.getsignal(signal.SIGINT)
    run = tmp_path / "interrupted"
    argv = ["train", "--out", str(run), "--no-progress", *RESUMABLE, "checkpoint.every_steps=0"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("osad: interrupted by SIGINT at epoch 2, step 8; checkpoint saved to ")
    assert _state(RunDir(run).checkpoint(8))["batch"] == 2
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored

    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_training(run, finished_run)


def test_full_disk_keeps_the_previous_checkpoint_and_reports_one_line(
    tmp_path, monkeypatch, capsys
):
    write = storage.write_synced

    def disk_full_on_third_checkpoint(path: Path, data: bytes) -> None:
        if path.parent.name == ".tmp-step-00000003":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, data)

    monkeypatch.setattr(storage, "write_synced", disk_full_on_third_checkpoint)
    run = tmp_path / "full"
    assert main(["train", "--out", str(run), "--no-progress", *RESUMABLE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"osad: error: cannot write checkpoint {run / 'checkpoints'}")
    assert "No space left on device" in err
    previous = RunDir(run).checkpoint(2)
    assert f"the previous checkpoint {previous} is intact" in err
    store = CheckpointStore(RunDir(run), keep=3)
    assert store.latest() == previous and store.steps() == [1, 2]
    assert store.read(previous)  # verifies every file against the manifest
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert not (run / "model.safetensors").exists()


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys
):
    def poison(out, model):
        out.loss = out.loss * float("nan")
        return out

    _objective_calling(poison, at_call=4, monkeypatch=monkeypatch)
    run = tmp_path / "nan"
    assert main(["train", "--out", str(run), "--no-progress", *RESUMABLE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "non-finite loss (nan) at epoch 1, step 4 (batch 4 of 6)" in err
    last = RunDir(run).checkpoint(3)
    assert f"the last good checkpoint {last} is kept" in err
    store = CheckpointStore(RunDir(run), keep=3)
    assert store.latest() == last and store.steps() == [1, 2, 3]
    weights, _ = read_weights(last / "model.safetensors")
    assert all(t.isfinite().all() for t in weights.values() if t.is_floating_point())


@pytest.mark.slow
def test_resume_from_an_older_checkpoint_discards_newer_ones(finished_run, tmp_path):
    import shutil

    run = tmp_path / "older"
    shutil.copytree(finished_run, run)
    (run / "model.safetensors").unlink()
    oldest = RunDir(run).checkpoint(10)
    assert main(["train", "--resume", str(oldest), "--no-progress"]) == 0
    assert_same_training(run, finished_run)
    assert CheckpointStore(RunDir(run), keep=3).steps() == [10, 11, 12]


def test_deterministic_mode_sets_and_restores_torch_flags():
    from osad.runtime import deterministic_mode

    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_mode(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    assert torch.are_deterministic_algorithms_enabled() == before


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch, capsys):
    def corrupt(out, model):
        # After the loss is computed, before the update; through .data so that autograd,
        # like a real overflow, does not notice.
        model.classifier.weight.data[0, 0] = float("inf")
        return out

    _objective_calling(corrupt, at_call=2, monkeypatch=monkeypatch)
    run = tmp_path / "inf"
    assert main(["train", "--out", str(run), "--no-progress", *RESUMABLE]) == 2
    err = capsys.readouterr().err
    first = RunDir(run).checkpoint(1)
    assert "non-finite weights at epoch 1, step 2; not saved" in err
    assert f"the last good checkpoint {first} is kept" in err
    assert CheckpointStore(RunDir(run), keep=3).steps() == [1]


@pytest.mark.slow
def test_deterministic_mode_changes_no_bit_on_cpu(finished_run, tmp_path):
    run = tmp_path / "deterministic"
    argv = ["train", "--out", str(run), "--no-progress", *RESUMABLE, "deterministic=true"]
    assert main(argv) == 0
    assert_same_training(run, finished_run)
    assert not torch.are_deterministic_algorithms_enabled()  # restored afterwards
