"""scripts/fas_ablation.py: the inner-step grid (train.inner_lr x train.inner_reduction)
against the no-meta baseline, paired by seed and target, resumable from its JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from osad.fas.config import make_fas_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("single_thread")


def _script():
    spec = importlib.util.spec_from_file_location(
        "osad_scripts_fas_ablation", ROOT / "scripts" / "fas_ablation.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


GRID = [
    "--config", str(ROOT / "configs" / "fas-faces.yaml"),
    "--methods", "rfmeta", "no-meta",
    "--inner-lrs", "0.01", "0.5",
    "--inner-reductions", "sum",
    "--seeds", "3",
    "--targets", "cctv",
    "--threads", "1",
    "train.iterations=2",
    "train.eval_every=2",
]  # fmt: skip


@pytest.mark.slow
def test_the_grid_pairs_each_setting_with_one_baseline_and_resumes(tmp_path, capsys, monkeypatch):
    script = _script()
    out, table = tmp_path / "study.json", tmp_path / "study.md"
    args = [*GRID, "--out", str(out), "--markdown", str(table)]
    assert script.main(args) == 0
    printed = capsys.readouterr().out
    runs = json.loads(out.read_text())
    # two rfmeta settings, one no-meta run shared by both (it has no inner step)
    assert sorted((r["method"], r["inner_lr"]) for r in runs) == [
        ("no-meta", None),
        ("rfmeta", 0.01),
        ("rfmeta", 0.5),
    ]
    assert {(r["seed"], r["target"], r["inner_reduction"]) for r in runs} == {(3, "cctv", "sum")}
    assert table.read_text() == printed
    baseline = next(r for r in runs if r["method"] == "no-meta")
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if "rfmeta minus" in line)
    names = _cells(lines[header])
    rows = [_cells(line) for line in lines[header + 2 :] if line.startswith("|")]
    assert [row[:3] for row in rows] == [["0.01", "sum", "no-meta"], ["0.5", "sum", "no-meta"]]
    for row in rows:
        ahead = next(r for r in runs if r["method"] == "rfmeta" and f"{r['inner_lr']:g}" == row[0])
        for key, label in script.COLUMNS.items():
            if key in script.PAIRED:
                difference = ahead[key] - baseline[key]
                # one pair: the difference alone (no spread is known, not a spread of 0)
                assert row[names.index(label)] == f"{difference:.3f}", (row, key)
        assert row[-2:] == ["1", f"{int(ahead['auc'] > baseline['auc'])} of 1"]

    # A second call trains nothing and prints the same tables from the JSON.
    def no_training(*_args, **_kwargs):
        raise AssertionError("a saved run was trained again")

    monkeypatch.setattr(script, "train_meta", no_training)
    assert script.main(args) == 0
    assert capsys.readouterr().out == printed
    assert json.loads(out.read_text()) == runs
    # --load with options none of the saved runs was made with: one line, not empty tables
    assert script.main([*GRID, "--seeds", "9", "--load", str(out)]) == 2
    assert "none of the 3 saved runs matches the options" in capsys.readouterr().err


def test_bad_saved_runs_or_settings_stop_with_one_line(tmp_path, capsys):
    script = _script()
    out = tmp_path / "study.json"
    out.write_text('{"not": "a list"}')
    assert script.main([*GRID, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"fas_ablation: error: {out}: not a list of runs written by fas_ablation.py --out\n"
    )
    assert out.read_text() == '{"not": "a list"}'
    assert script.main([*GRID, "--inner-reductions", "avg"]) == 2
    assert capsys.readouterr().err.startswith(
        "fas_ablation: error: unknown train.inner_reduction 'avg'"
    )


def test_a_diverged_run_is_saved_listed_and_not_retried(tmp_path, capsys, monkeypatch):
    """A non-finite loss is a result of the setting: the run is kept in the JSON as
    diverged, named under the tables and left out of them, and not trained again."""
    from osad.train.step import NonFiniteLossError

    script = _script()
    calls = []

    def diverging(config, *_args, **_kwargs):
        calls.append(config.train.inner_lr)
        raise NonFiniteLossError("training stopped: non-finite loss (nan) at iteration 2")

    monkeypatch.setattr(script, "train_meta", diverging)
    out = tmp_path / "study.json"
    args = [*GRID, "--methods", "rfmeta", "--inner-lrs", "0.5", "--out", str(out)]
    assert script.main(args) == 0
    assert script.main(args) == 0
    assert calls == [0.5]
    (run,) = json.loads(out.read_text())
    assert run["diverged"].endswith("non-finite loss (nan) at iteration 2") and "auc" not in run
    printed = capsys.readouterr().out
    assert (
        printed.count(
            "diverged, left out of both tables: rfmeta (inner_lr 0.5, sum), target cctv, seed 3: "
        )
        == 2
    )
    assert "| cctv | rfmeta" not in printed


@pytest.mark.slow
def test_jobs_train_the_runs_in_separate_processes(tmp_path):
    """--jobs 2 runs the script's own run_one in spawned workers and saves every run."""
    out = tmp_path / "study.json"
    args = [a for a in GRID if a != "0.5"] + ["--jobs", "2", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fas_ablation.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(out.read_text())
    assert sorted(r["method"] for r in runs) == ["no-meta", "rfmeta"]
    assert all(0 <= r["auc"] <= 1 and r["cpu_seconds"] > 0 for r in runs)
    assert "| 0.01 | sum | no-meta |" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # a key the script sets per run was recorded as an override and silently replaced
        (["data.target=phone"], "the script sets data.target"),
        (["train.inner_lr=0.5"], "use --methods, --seeds"),
        # nargs="+" swallowed the override as a method name
        (["--methods", "rfmeta", "train.iterations=2"], "read as one of --methods"),
    ],
)
def test_overrides_the_script_would_ignore_or_misread_are_refused(capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        _script().main(args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


STUDY = [
    "--config", "configs/fas-faces.yaml",  # as the runs record it: run from the root
    "--methods", "rfmeta", "no-meta",
    "--inner-lrs", "0.001", "0.01", "0.1", "0.5",
    "--inner-reductions", "mean", "sum",
    "--seeds", "0", "1", "2", "3", "4", "5",
]  # fmt: skip


def test_the_committed_inner_step_study_tables_are_the_generated_ones(
    tmp_path, capsys, monkeypatch
):
    # docs/anti-spoofing.md holds the tables the study's 240 runs render, not typed ones
    monkeypatch.chdir(ROOT)
    runs_file = ROOT / "docs" / "anti-spoofing" / "inner-step.json"
    runs = json.loads(runs_file.read_text())
    assert len(runs) == 240 and not any(r.get("diverged") for r in runs)
    assert {r["seed"] for r in runs} == set(range(6))
    generated = tmp_path / "study.md"
    assert _script().main([*STUDY, "--load", str(runs_file), "--markdown", str(generated)]) == 0
    capsys.readouterr()
    committed = (ROOT / "docs" / "anti-spoofing" / "inner-step.md").read_text()
    assert generated.read_text() == committed
    page = (ROOT / "docs" / "anti-spoofing.md").read_text()
    rows = [line for line in committed.splitlines() if line.startswith("|")]
    assert len(rows) > 50 and all(row in page for row in rows)
    # the chosen default is the setting with the largest paired gain in target AUC
    paired = [_cells(row) for row in rows if row.startswith(("| 0.", "| 1"))]
    paired = [row for row in paired if row[2] == "no-meta"]
    best = max(paired, key=lambda row: float(row[3].split(" ± ")[0]))
    default = make_fas_config().train
    assert (float(best[0]), best[1]) == (default.inner_lr, default.inner_reduction)
