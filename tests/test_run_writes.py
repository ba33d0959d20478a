"""Results are never lost and a run directory has one writer (issues 15 and 17).

Faults are real: a second process holding the lock, a process killed by SIGKILL,
a full disk simulated by a file-size limit (RLIMIT_FSIZE, the write then fails
with EFBIG as it would with ENOSPC) in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from osad.cli import main
from osad.eval.results import METRICS_FORMAT, read_metrics
from tests.conftest import TINY, one_torch_thread

ROOT = Path(__file__).resolve().parents[1]
QUICK = (*TINY, "eval.figures=false")

# A process that takes a run directory's lock and holds it until killed.
HOLDER = (
    "import sys, time\n"
    "from osad.runlock import run_lock\n"
    "with run_lock(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(600)\n"
)


def _osad(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "osad", *args], capture_output=True, text=True, env=env, **kwargs
    )


def _tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _fake_run(root: Path, trained: bool = True) -> Path:
    """A run directory with the files ``osad test``/``--resume`` look for first."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("format_version: 1\n")
    if trained:
        (root / "model.safetensors").write_bytes(b"weights")
    return root


@pytest.fixture
def holder(tmp_path):
    """Start a process holding the lock of a directory; yields (start, process list)."""
    procs: list[subprocess.Popen] = []

    def start(run: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "locked"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_second_writer_is_refused_with_the_holders_pid(tmp_path, holder, capsys):
    run = _fake_run(tmp_path / "run")
    unfinished = _fake_run(tmp_path / "unfinished", trained=False)
    first = holder(run)
    holder(unfinished)
    for argv in (
        ["test", str(run)],
        ["check", str(run)],
        ["train", "--out", str(run), "--force", *TINY],
        ["train", "--resume", str(unfinished)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is in use by process" in err, argv
    assert main(["test", str(run)]) == 2
    assert f"in use by process {first.pid} " in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == "format_version: 1\n"  # nothing touched


@pytest.mark.slow
def test_lock_of_a_killed_process_is_recovered(tmp_path, holder):
    from osad.runlock import run_lock

    run = tmp_path / "run"
    proc = holder(run)
    with pytest.raises(Exception, match=f"process {proc.pid}"), run_lock(run):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run_lock(run):  # the kernel released the dead holder's lock
        assert (run / ".lock").read_text().strip() == str(os.getpid())


def test_a_refused_lock_leaves_no_directory_behind(tmp_path):
    from osad.runlock import run_lock

    with run_lock(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_force_never_follows_a_symlinked_eval(tmp_path):
    """``train --force`` over a run whose eval/ is a link to a folder elsewhere: the link is
    removed, the folder it points to is not, and nothing is lost before training starts."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    run = _fake_run(tmp_path / "run")
    (run / "checkpoints").mkdir()
    (run / "eval").symlink_to(elsewhere, target_is_directory=True)
    with one_torch_thread():
        assert main(["train", "--out", str(run), "--force", "--no-progress", *QUICK]) == 0
    assert (elsewhere / "keep.txt").read_text() == "keep"
    assert not (run / "eval").exists() and not (run / ".replaced").exists()
    assert (run / "model.safetensors").read_bytes() != b"weights"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny trained run evaluated under clean and pgd only."""
    run = tmp_path_factory.mktemp("writes") / "run"
    with one_torch_thread():
        assert main(["train", "--out", str(run), "--no-progress", *QUICK]) == 0
        assert main(["test", str(run), "--no-progress", "--attacks", "pgd"]) == 0
    return run


def _limited(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_full_disk_during_test_keeps_the_earlier_results(evaluated, tmp_path):
    run = shutil.copytree(evaluated, tmp_path / "run")
    before = _tree(run / "eval")
    proc = _osad("test", str(run), "--no-progress", "--force", preexec_fn=_limited(4096))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("osad: error: cannot write ")
    assert "scores.h5" in lines[0] or "metrics.json" in lines[0]
    assert _tree(run / "eval") == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".eval")) == []
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0


@pytest.mark.slow
def test_killed_test_leaves_results_that_a_rerun_and_report_accept(evaluated, tmp_path):
    run = shutil.copytree(evaluated, tmp_path / "run")
    before = _tree(run / "eval")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "osad", "test", str(run), "--no-progress", "--force"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = run / "eval" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (run / ".eval.partial").exists() or metrics.stat().st_mtime_ns != stamp:
            break  # results are being written
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Killed before the rename: the old results (set aside only for the rename itself);
    # killed after it: the new ones, complete. Never a mix.
    eval_dir = run / "eval" if (run / "eval").exists() else run / ".eval.previous"
    assert set(_tree(eval_dir)) == set(before)
    json.loads((eval_dir / "metrics.json").read_text())
    with one_torch_thread():
        assert main(["test", str(run), "--no-progress"]) == 0  # a rerun works
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert not (run / ".eval.partial").exists() and not (run / ".eval.previous").exists()


@pytest.mark.slow
def test_test_adds_conditions_and_keeps_the_earlier_ones(evaluated, tmp_path, capsys):
    run = shutil.copytree(evaluated, tmp_path / "run")
    first = json.loads((run / "eval" / "metrics.json").read_text())
    with one_torch_thread():
        assert main(["test", str(run), "--no-progress", "--attacks", "fgsm"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert list(metrics["conditions"]) == ["clean", "fgsm", "pgd"]
    assert metrics["conditions"]["pgd"] == first["conditions"]["pgd"]  # reused, not redone
    settings = metrics["conditions"]["fgsm"]["settings"]
    assert settings["attack"]["name"] == "fgsm" and settings["fit"] == "attacked"
    weights = (run / "model.safetensors").read_bytes()
    evaluated_model = metrics["evaluated"]["model"]
    assert evaluated_model == {
        "name": "main",
        "weights": "model.safetensors",
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    assert settings["model_sha256"] == evaluated_model["weights_sha256"]
    data = metrics["evaluated"]["data"]
    assert data["source"]["dataset"] == "digits" and data["source"]["split"] == 0
    assert metrics["config"]["method"] == "osdn"  # the run's whole config
    assert data["sizes"]["test_known"] == metrics["counts"]["test_known"]
    assert len(data["fingerprint"]) == 64

    # The same condition under other settings is refused, with what differs; --out
    # writes the new evaluation elsewhere, --force recomputes in place.
    before = _tree(run / "eval")
    assert main(["test", str(run), "--attacks", "pgd", "eval.attacks.pgd.steps=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "condition 'pgd'" in err and "attack.steps: 3" in err
    assert _tree(run / "eval") == before
    other = tmp_path / "other"
    with one_torch_thread():
        argv = ["test", str(run), "--no-progress", "--attacks", "pgd", "--out", str(other)]
        assert main([*argv, "eval.attacks.pgd.steps=2"]) == 0
    assert (
        json.loads((other / "metrics.json").read_text())["conditions"]["pgd"]["attack"]["steps"]
        == 2
    )
    assert _tree(run / "eval") == before


@pytest.mark.slow
def test_metrics_json_records_its_format_and_a_newer_one_is_kept(evaluated, tmp_path, capsys):
    run = shutil.copytree(evaluated, tmp_path / "run")
    path = run / "eval" / "metrics.json"
    document = json.loads(path.read_text())
    assert document["format_version"] == METRICS_FORMAT
    assert read_metrics(path).format_version == METRICS_FORMAT
    # Results written by a newer osad are neither reused nor overwritten by this one.
    document["format_version"] = METRICS_FORMAT + 1
    path.write_text(json.dumps(document))
    before = _tree(run / "eval")
    assert main(["test", str(run), "--no-progress", "--attacks", "fgsm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "newer than this osad" in err and "--force" in err, err
    assert _tree(run / "eval") == before


@pytest.mark.slow
def test_test_overrides_touch_eval_only(evaluated, capsys):
    for override, message in (
        ("train.lr=0.5", "eval.* overrides only, not 'train.lr'"),
        ("eval.attacks.pgd.steps=-1", "steps"),
        ("eval.batch_size", "malformed override"),
    ):
        assert main(["test", str(evaluated), override]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_every_attack_osad_has_is_nameable():
    from osad.attacks import ATTACK_SPECS
    from osad.config import make_config
    from osad.eval.options import select_evaluation

    config = make_config()
    chosen = select_evaluation(config, attacks=list(ATTACK_SPECS)).eval.attacks
    assert list(chosen) == list(ATTACK_SPECS)
    assert chosen["apgd"].name == "apgd" and chosen["apgd"].eps == config.eval.attacks["pgd"].eps
    assert chosen["square"].name == "square" and chosen["patch"].eps == 255.0


@pytest.mark.slow
def test_check_never_overwrites_without_force(evaluated, tmp_path, capsys):
    run = shutil.copytree(evaluated, tmp_path / "run")
    (run / "check.json").write_text("{}\n")
    assert main(["check", str(run), "--images", "16"]) == 2
    assert "check.json already exists; pass --force" in capsys.readouterr().err
    assert (run / "check.json").read_text() == "{}\n"


def test_full_disk_before_the_first_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    """TensorBoard writes from a thread: a failed write must not print its traceback."""
    import errno

    from tensorboard.summary.writer.record_writer import RecordWriter

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RecordWriter, "write", full)
    thread_errors = []  # what Python would print as a thread's traceback
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    with one_torch_thread():
        assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("osad: error: cannot write ") and "tensorboard" in err
    assert "No space left on device" in err and thread_errors == []


@pytest.mark.slow
def test_test_out_never_replaces_a_folder_that_is_not_an_evaluation(evaluated, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    argv = ["test", str(evaluated), "--attacks", "pgd", "--out", str(mine)]
    for extra in ([], ["--force"]):
        assert main([*argv, *extra]) == 2
        assert "not an osad evaluation" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "years of work"
