"""``osad report`` aggregates planted runs: mean and sample std per group."""

from __future__ import annotations

import csv
import json
import math

import pytest

from osad.cli import main
from osad.config import make_config

PGD = {"name": "pgd", "norm": "linf", "eps": 32.0, "alpha": 8.0, "steps": 10, "restarts": 1}


def plant(root, name, *, method="osdn", split=0, seed=0, accuracy, auroc, eps=32.0):
    config = make_config(overrides=[f"method={method}", f"data.split={split}", f"seed={seed}"])
    conditions = {
        "clean": {"closed_set_accuracy": 0.99, "auroc": {"msp": 0.9}, "attack": {"name": "none"}},
        "pgd": {
            "closed_set_accuracy": accuracy,
            "auroc": {"msp": auroc},
            "attack": {**PGD, "eps": eps},
        },
    }
    run = root / name
    (run / "eval").mkdir(parents=True)
    metrics = {"conditions": conditions, "config": config.to_dict()}
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return str(run)


def test_report_gives_mean_and_std_per_method(tmp_path, capsys):
    runs = [
        plant(tmp_path, "a", split=0, accuracy=0.8, auroc=0.7),
        plant(tmp_path, "b", split=1, accuracy=0.6, auroc=0.5),
        plant(tmp_path, "c", method="plain", accuracy=0.1, auroc=0.2),
    ]
    assert main(["report", *runs, "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    osdn = next(r for r in rows if r["group"] == "osdn on digits" and r["condition"] == "pgd")
    assert osdn["runs"] == "2" and osdn["splits"] == "0 1"
    assert float(osdn["closed_set_accuracy_mean"]) == pytest.approx(0.7)
    assert float(osdn["closed_set_accuracy_std"]) == pytest.approx(math.sqrt(0.02))
    assert float(osdn["auroc_msp_mean"]) == pytest.approx(0.6)
    plain = next(r for r in rows if r["group"] == "plain on digits" and r["condition"] == "pgd")
    assert plain["runs"] == "1" and math.isnan(float(plain["closed_set_accuracy_std"]))
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| osdn on digits | pgd | 2 | 0.7000 ± 0.1414 | 0.6000 ± 0.1414 |" in markdown
    assert "pgd: PGD linf eps 32/255, step 8/255, 10 steps" in markdown
    assert markdown.split("\n\n")[0] in capsys.readouterr().out


def test_report_refuses_runs_with_different_attacks(tmp_path, capsys):
    runs = [
        plant(tmp_path, "a", accuracy=0.8, auroc=0.7),
        plant(tmp_path, "b", split=1, accuracy=0.6, auroc=0.5, eps=8.0),
    ]
    assert main(["report", *runs, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runs disagree on attack 'pgd'" in err
    assert "eps 8/255" in err and not (tmp_path / "out").exists()


def test_report_needs_evaluated_runs(tmp_path, capsys):
    (tmp_path / "bare").mkdir()
    assert main(["report", str(tmp_path / "bare"), "--out", str(tmp_path / "out")]) == 2
    assert "osad test" in capsys.readouterr().err
