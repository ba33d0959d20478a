"""``torchrun --nproc_per_node=2 -m osad run`` against one process, on CPU with Gloo."""

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from osad.cli import main
from tests.conftest import one_torch_thread
from tests.distributed.test_train_parallel import OVERRIDES

# Two epochs of 6 steps (the last one uneven: 39 images), SyncBatchNorm, no
# randomness in the steps (see OVERRIDES), a checkpoint at the end of each epoch.
# Even L2 PGD magnifies rounding where a sample's input gradient is near zero
# (g / ||g|| turns its noise into the step), so the runs drift apart after some
# 15 steps; 12 stay within 1e-6.
RUN = [*OVERRIDES, "train.sync_batchnorm=true", "train.batch_size=128", "train.epochs=2"]


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={nproc}", "-m", "osad", *args, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun") / "run"
    done = torchrun("run", "--out", str(out), *RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_only_rank_0_prints(two_process_run):
    _, done = two_process_run
    assert done.stdout.count("trained osdn into") == 1
    assert done.stdout.count("| clean |") == 1


def _assert_same_training(run, expected) -> None:
    weights, want = load_file(run / "model.safetensors"), load_file(expected / "model.safetensors")
    assert weights.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-5, msg=key)
    history, want_history = (
        [json.loads(line) for line in (r / "history.jsonl").read_text().splitlines()]
        for r in (run, expected)
    )
    assert [r["step"] for r in want_history] == [6, 12]
    assert len(history) == len(want_history)
    for record, want_record in zip(history, want_history, strict=True):
        assert record == pytest.approx(want_record, rel=1e-4)


def test_two_process_training_equals_one_process(two_process_run, tmp_path):
    out, _ = two_process_run
    single = tmp_path / "single"
    with one_torch_thread():
        assert main(["train", "--out", str(single), "--no-progress", *RUN]) == 0
    _assert_same_training(out, single)


def test_a_two_process_checkpoint_resumes_in_one_process(two_process_run, tmp_path):
    out, _ = two_process_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("eval"))
    (resumed / "model.safetensors").unlink()  # as if stopped before the end
    checkpoint = resumed / "checkpoints" / "step-00000006"  # written by rank 0 after epoch 1
    with one_torch_thread():
        assert main(["train", "--resume", str(checkpoint), "--no-progress"]) == 0
    _assert_same_training(resumed, out)


def test_two_process_evaluation_writes_the_single_process_results(two_process_run, tmp_path):
    out, _ = two_process_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("eval"))
    with one_torch_thread():
        assert main(["test", str(copy), "--no-progress"]) == 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics == json.loads((copy / "eval" / "metrics.json").read_text())
    with (
        h5py.File(out / "eval" / "scores.h5") as got,
        h5py.File(copy / "eval" / "scores.h5") as want,
    ):
        assert sorted(got) == sorted(want) == ["clean", "fgsm", "pgd"]
        for condition in want:
            assert sorted(got[condition]) == sorted(want[condition])
            for name, values in want[condition].items():
                np.testing.assert_array_equal(got[condition][name][()], values[()])


def test_a_refusal_on_rank_0_stops_every_process(two_process_run):
    out, _ = two_process_run
    done = torchrun("train", "--out", str(out), *RUN)
    assert done.returncode != 0
    assert "already exists" in done.stderr or "--force" in done.stderr
