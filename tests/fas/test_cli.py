"""End-to-end face anti-spoofing runs through the command line and the seed's main.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from osad.cli import main
from osad.eval.metrics import auroc, hter
from osad.fas.config import make_fas_config
from osad.fas.data import load_fas
from osad.fas.trainer import train_meta

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[2]
PRESET = str(ROOT / "configs" / "fas-digits.yaml")
# A run small enough for a few seconds.
FAS_TINY = (
    "data.image_size=8",
    "model.stem_width=4",
    "model.blocks=[[4]]",
    "model.depth_widths=[4]",
    "model.learner_widths=[4]",
    "train.iterations=4",
    "train.eval_every=2",
    "train.batch_size=4",
)


@pytest.fixture(scope="module")
def fas_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fas") / "run"
    assert main(["train", "--out", str(out), "--config", PRESET, "--no-progress", *FAS_TINY]) == 0
    assert main(["test", str(out), "--no-progress"]) == 0
    return out


def test_train_and_test_write_the_run_directory(fas_run):
    for name in ("config.yaml", "model.safetensors", "history.jsonl", "eval/results.md"):
        assert (fas_run / name).is_file(), name
    assert (fas_run / "eval" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert any((fas_run / "tensorboard").iterdir())
    assert yaml.safe_load((fas_run / "config.yaml").read_text())["task"] == "fas"
    history = [json.loads(line) for line in (fas_run / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [2, 4]
    assert {"train_cls_train", "train_cls_test", "train_depth_test", "val_auc"} <= set(history[0])
    results = (fas_run / "eval" / "results.md").read_text()
    assert "| frame |" in results and "| video |" in results and "phone" in results


def test_metrics_agree_with_the_per_frame_scores(fas_run):
    metrics = json.loads((fas_run / "eval" / "metrics.json").read_text())
    assert metrics["target"] == "phone" and metrics["sources"] == ["studio", "webcam", "cctv"]
    with h5py.File(fas_run / "eval" / "scores.h5") as f:
        score, label, video = f["score"][:], f["label"][:], f["video"][:]
        video_score = f["video_level/score"][:]
        video_ids = f["video_level/video"][:]
        assert len(f["video_names"]) == video.max() + 1
    frame = metrics["conditions"]["phone"]["frame"]
    assert frame["count"] == len(score) and set(np.unique(label)) == {0, 1}
    assert frame["auc"] == pytest.approx(auroc(score, label == 1))
    assert frame["hter_at_val_threshold"] == pytest.approx(
        hter(score, label, frame["val_threshold"])
    )
    # a video's score is the mean of its frames'
    first = video_ids[0]
    assert video_score[0] == pytest.approx(score[video == first].mean(), rel=1e-5)
    assert metrics["conditions"]["phone"]["video"]["count"] == len(video_ids)


def test_same_seed_gives_the_same_model_and_history():
    config = make_fas_config(overrides=list(FAS_TINY))
    data = load_fas(config.data, config.depth_size)
    first = train_meta(config, data, progress=False)
    second = train_meta(config, data, progress=False)
    assert first.history == second.history
    second_state = second.model.state_dict()
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second_state[key]), key


def test_missing_licensed_set_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--config", str(ROOT / "configs" / "fas-oci-to-m.yaml")]
    assert main([*argv, f"data.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("osad: error: OULU-NPU not found")
    assert "docs/anti-spoofing.md" in err
    assert not out.exists()


def test_bad_fas_override_is_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "a"), "task=fas", "method=rfmta"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'rfmeta'" in err


@pytest.mark.slow
def test_seed_entry_point_runs_the_fas_task(tmp_path):
    run_dir = tmp_path / "main-fas"
    common = [sys.executable, str(ROOT / "main.py"), "--run_dir", str(run_dir), "--no-progress"]
    # one intra-op thread, as for the in-process tests of this module
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = subprocess.run(
        [*common, "--training_type", "Train", "--config", PRESET, *FAS_TINY],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert train.returncode == 0, train.stderr
    test = subprocess.run(
        [*common, "--training_type", "Test"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert test.returncode == 0, test.stderr
    assert "| frame |" in test.stdout and (run_dir / "eval" / "scores.h5").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "RUN"], "osad check applies to open-set runs, not face anti-spoofing"),
        (
            ["test", "RUN", "--attacks", "pgd", "--out", "RUN/other"],
            "--attacks apply to open-set runs, not face anti-spoofing",
        ),
    ],
)
def test_what_the_task_does_not_support_is_one_line(fas_run, capsys, args, message):
    before = sorted(p.relative_to(fas_run) for p in fas_run.rglob("*"))
    capsys.readouterr()
    assert main([a.replace("RUN", str(fas_run)) for a in args]) == 2
    err = capsys.readouterr().err
    assert message.replace("RUN", str(fas_run)) in err and "Traceback" not in err
    assert sorted(p.relative_to(fas_run) for p in fas_run.rglob("*")) == before


def test_several_processes_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    from osad.distributed import World
    from osad.errors import ConfigError
    from osad.workflow import train_run

    monkeypatch.setattr("osad.workflow.world", lambda: World(rank=0, size=2))
    message = "face anti-spoofing (task: fas) trains and tests in one process; run it without"
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_run(make_fas_config(overrides=list(FAS_TINY)), tmp_path / "run")
    assert not (tmp_path / "run").exists()
