"""Anti-spoofing runs checkpoint mid-training and continue exactly (issue 19): a resumed
run ends with the same weights and history as an uninterrupted one; a checkpoint that
does not fit, is damaged or missing is refused in one line, losing nothing.

Bit-for-bit comparisons are sound here only because both runs train in this process
on one thread (the ``single_thread`` fixture)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml

from osad.checkpoint import read_weights
from osad.cli import main
from osad.errors import CheckpointError, ConfigError
from osad.fas import trainer
from osad.fas.config import make_fas_config
from osad.fas.data import load_fas
from osad.fas.frames import FasFrames
from osad.fas.trainer import BalancedSampler, train_meta
from osad.rundir import RunDir
from tests.fas.test_cli import FAS_TINY, PRESET

pytestmark = pytest.mark.usefixtures("single_thread")

# Six iterations in three evaluation periods of two; a checkpoint after every iteration.
RESUMABLE = (
    *(o for o in FAS_TINY if not o.startswith("train.iterations")),
    "train.iterations=6",
    "checkpoint.every_steps=1",
    "checkpoint.keep=10",
)


def _train(out: Path, *overrides: str) -> int:
    return main(["train", "--out", str(out), "--config", PRESET, "--no-progress", *overrides])


@pytest.fixture(scope="module")
def reference(single_thread, tmp_path_factory) -> Path:
    """The uninterrupted run, with all six checkpoints kept."""
    out = tmp_path_factory.mktemp("fas-resume") / "reference"
    assert _train(out, *RESUMABLE) == 0
    return out


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def assert_same_training(run: Path, reference: Path) -> None:
    """Bit-identical final weights and identical history (same process and threads)."""
    weights, _ = read_weights(run / "model.safetensors")
    expected, _ = read_weights(reference / "model.safetensors")
    assert weights.keys() == expected.keys()
    for key in expected:
        assert torch.equal(weights[key], expected[key]), key
    assert _history(run) == _history(reference)


def _unfinished_copy(reference: Path, dest: Path) -> Path:
    """The reference run as if killed after its last checkpoint, before the weights."""
    shutil.copytree(reference, dest)
    (dest / "model.safetensors").unlink()
    return dest


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("step", [3, 4], ids=["mid-period", "period-end"])
def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(reference, tmp_path, step):
    run = _unfinished_copy(reference, tmp_path / "run")
    checkpoint = RunDir(run).checkpoint(step)
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["step"] == step and state["batch"] == (1 if step == 3 else 0)
    assert main(["train", "--resume", str(checkpoint), "--no-progress"]) == 0
    assert_same_training(run, reference)


def _scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(iteration, value) of TensorBoard scalar ``tag``, after its purges on resume."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_a_resumed_run_keeps_the_tensorboard_records_before_its_checkpoint(reference, tmp_path):
    # Resumed from iteration 3, the record of iteration 2 stays and those of 4 and 6
    # are logged once (TensorBoard's purge step is an iteration, not a record count).
    run = _unfinished_copy(reference, tmp_path / "run")
    assert main(["train", "--resume", str(RunDir(run).checkpoint(3)), "--no-progress"]) == 0
    for tag in ("val_auc", "train_loss"):
        assert _scalars(run, tag) == _scalars(reference, tag)
        assert [step for step, _ in _scalars(run, tag)] == [2, 4, 6]


def test_sigint_saves_a_checkpoint_exits_130_and_resumes_exactly(
    reference, tmp_path, monkeypatch, capsys
):
    step = trainer.meta_step
    calls = {"n": 0}

    def interrupted_at_the_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer, "meta_step", interrupted_at_the_fifth)
    run = tmp_path / "interrupted"
    assert _train(run, *RESUMABLE, "checkpoint.every_steps=0", "checkpoint.every_epochs=0") == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("osad: interrupted by SIGINT at iteration 5; checkpoint saved to ")
    assert err.rstrip().endswith(f"resume with: osad train --resume {run}")
    assert not (run / "model.safetensors").exists()

    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_training(run, reference)


def _refused(run: Path, argv: list[str], capsys) -> str:
    """Resume ``run`` with ``argv``: exit 2, one line, no file of the run changed."""
    before = _contents(run)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _contents(run) == before  # nothing lost, no weights of an untrained model
    return err


def test_a_changed_configuration_is_refused_in_one_line(reference, tmp_path, capsys):
    run = _unfinished_copy(reference, tmp_path / "run")
    config = run / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    lr = saved["train"]["lr"]
    config.write_text(re.sub(r"(?m)^  lr: .*$", f"  lr: {lr * 2}", config.read_text()))
    err = _refused(run, ["train", "--resume", str(run)], capsys)
    assert f"was written with train.lr={lr}, the run's config.yaml now has {lr * 2}; " in err
    assert "resume with the configuration it was trained with" in err


def test_other_training_data_are_refused(reference, tmp_path):
    run = _unfinished_copy(reference, tmp_path / "run")
    config = make_fas_config(PRESET, RESUMABLE)
    data = load_fas(config.data, config.depth_size)
    data.sources[0].train.images[0] ^= 1
    with pytest.raises(CheckpointError, match="was trained on other data"):
        train_meta(config, data, RunDir(run), False, resume_from=RunDir(run).checkpoint(6))


def test_a_corrupted_checkpoint_is_refused_naming_an_earlier_one(reference, tmp_path, capsys):
    run = _unfinished_copy(reference, tmp_path / "run")
    weights = RunDir(run).checkpoint(6) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    err = _refused(run, ["train", "--resume", str(run)], capsys)
    assert "corrupted" in err
    earlier = RunDir(run).checkpoint(5)
    assert f"an earlier checkpoint may be intact: osad train --resume {earlier}" in err


def test_a_checkpoint_missing_a_file_is_refused(reference, tmp_path, capsys):
    run = _unfinished_copy(reference, tmp_path / "run")
    (RunDir(run).checkpoint(6) / "state.safetensors").unlink()
    err = _refused(run, ["train", "--resume", str(run)], capsys)
    assert f"{RunDir(run).checkpoint(6)} is incomplete: state.safetensors is missing" in err


def test_a_missing_checkpoint_directory_is_refused(reference, tmp_path, capsys):
    run = _unfinished_copy(reference, tmp_path / "run")
    missing = RunDir(run).checkpoint(7)
    err = _refused(run, ["train", "--resume", str(missing)], capsys)
    assert f"checkpoint not found: {missing}; an earlier checkpoint may be intact" in err


def test_a_run_without_checkpoints_says_to_start_again(reference, tmp_path, capsys):
    run = _unfinished_copy(reference, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    err = _refused(run, ["train", "--resume", str(run)], capsys)
    assert f"{run} has no checkpoint yet, nothing to resume; start it again with: " in err
    assert f"osad train --out {run} --force" in err


def test_sampler_queues_that_are_not_the_domains_frames_are_refused():
    labels = torch.tensor([1, 1, 0, 0, 0])
    frames = FasFrames(
        torch.zeros(5, 3, 2, 2, dtype=torch.uint8),
        labels,
        torch.zeros(5, 1, 1, 1, dtype=torch.uint8),
        torch.zeros(5, dtype=torch.int64),
        ("v",),
    )
    sampler = BalancedSampler(frames, 2, torch.Generator().manual_seed(0))
    sampler.draw()
    saved = sampler.state_tensors()
    restored = BalancedSampler(frames, 2, torch.Generator())
    restored.restore_tensors(saved, "checkpoint")
    assert all(torch.equal(a, b) for a, b in zip(restored.queues, sampler.queues, strict=True))
    for bad in ({**saved, "real": torch.tensor([2])}, {"real": saved["real"]}):
        with pytest.raises(CheckpointError, match=r"'(attack|real)' must hold the queued"):
            restored.restore_tensors(bad, "checkpoint")


def test_the_checkpoint_section_is_checked_as_for_open_set_runs():
    with pytest.raises(ConfigError, match=re.escape("'checkpoint.keep' must be >= 1, got 0")):
        make_fas_config(overrides=["checkpoint.keep=0"])


def test_a_non_finite_loss_stops_naming_the_iteration_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys
):
    step = trainer.meta_step
    calls = {"n": 0}

    def nan_at_the_fourth(*args, **kwargs):
        calls["n"] += 1
        out = step(*args, **kwargs)
        if calls["n"] == 4:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer, "meta_step", nan_at_the_fourth)
    run = tmp_path / "run"
    assert _train(run, *RESUMABLE) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "iteration 4" in err
    assert f"the last good checkpoint {RunDir(run).checkpoint(3)} is kept" in err
    assert RunDir(run).checkpoint(3).is_dir() and not RunDir(run).checkpoint(4).exists()
    assert not (run / "model.safetensors").exists()
