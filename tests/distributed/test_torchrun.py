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
# randomness in the steps (see OVERRIDES), a checkpoint at the end of each epoch and
# one at step 10.
#
# The training attack has budget 0 here: it runs (forward, backward, projection) but
# its images equal the clean ones. Any budget makes the runs depend discontinuously
# on float32 rounding, which differs between 1 and 2 processes and between kernel
# paths: L2 PGD's g / ||g|| turns the rounding noise of a near-zero input gradient
# into a whole step. Measured max |weight difference| after 12 steps, 2 processes vs
# 1 (ATEN_CPU_CAPABILITY=avx2 with ONEDNN_MAX_CPU_ISA=AVX2, and =default on an
# AVX-512 CPU): eps 128/255 gives 8.7e-3 on AVX2 (history 1.1%) and 5.4e-7 on AVX-512;
# eps 1/255 gives 9.6e-3 and 1.0e-2; eps 0 gives 3.6e-7 and 3.0e-7 (history 7.4e-8
# and 1.2e-7 relative), far inside the tolerances of _assert_same_training. The
# attacked steps under 2 processes are compared in float64 by
# test_train_parallel.py::test_two_process_steps_equal_one_process_steps.
# Every test spawns torchrun processes that train or evaluate.
pytestmark = pytest.mark.slow

RUN = [
    *OVERRIDES,
    "train.attack.eps=0",
    "train.attack.alpha=1",  # steps of 1/255, projected back onto the clean images
    # Every score but OpenMax's two: the Weibull fit refuses this clean-trained 12-step
    # model ("class 0 has 1" distinct distance, the degenerate fit of issue 15 item
    # 10); sharded OpenMax is compared in test_eval_sharded.py.
    "eval.scores=[msp,maxlogit,energy,odin,mahalanobis,knn,reconstruction]",
    "train.sync_batchnorm=true",
    "train.batch_size=128",
    "train.epochs=2",
    "checkpoint.every_steps=10",
]


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
        # Measured: 3.6e-7 (AVX2), 3.0e-7 (AVX-512), see RUN.
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
    # Written by rank 0 at step 10, in the middle of epoch 2. Two steps in one process
    # from it differ from the 2-process ones by 1.2e-7 on both kernel paths; six steps
    # from the end of epoch 1 differed by 2.6e-3 on AVX2 (3e-7 on AVX-512) although
    # the training attack is inactive: a discontinuity of the 1-process continuation
    # from that checkpoint, not identified (resuming the 1-process checkpoint is exact).
    checkpoint = resumed / "checkpoints" / "step-00000010"
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
