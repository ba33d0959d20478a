"""``osad report`` aggregates planted runs: mean and sample std per group."""

from __future__ import annotations

import csv
import json
import math

import pytest

from osad.cli import main
from osad.config import make_config
from osad.eval.protocol import condition_settings

PGD = {"name": "pgd", "norm": "linf", "eps": 32.0, "alpha": 8.0, "steps": 10, "restarts": 1}


def plant(
    root,
    name,
    *,
    method="osdn",
    split=0,
    seed=0,
    accuracy,
    auroc,
    eps=32.0,
    overrides=(),
    recorded=False,
):
    """A run directory with an evaluation of conditions clean and pgd; ``recorded``: every
    condition of the config, each with the settings ``osad test`` records (the weights
    and data differ from run to run, as between splits)."""
    keys = [f"method={method}", f"data.split={split}", f"seed={seed}", *overrides]
    config = make_config(overrides=keys)
    conditions = {
        "clean": {"closed_set_accuracy": 0.99, "auroc": {"msp": 0.9}, "attack": {"name": "none"}},
        "pgd": {
            "closed_set_accuracy": accuracy,
            "auroc": {"msp": auroc},
            "attack": {**PGD, "eps": eps},
        },
    }
    if recorded:
        evaluated = {"model": {"weights_sha256": f"{name}{split}"}, "data": {"fingerprint": name}}
        conditions = {
            condition: {
                "closed_set_accuracy": accuracy,
                "auroc": {"msp": auroc},
                "attack": settings["attack"],
                "settings": settings,
            }
            for condition, settings in condition_settings(config, evaluated).items()
        }
    run = root / name
    (run / "eval").mkdir(parents=True)
    metrics = {"conditions": conditions, "config": config.to_dict()}
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    for name in ("scores.h5", "results.md"):  # a complete eval/ holds them too
        (run / "eval" / name).touch()
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
    assert err.count("\n") == 1 and "other settings" in err and "condition 'pgd'" in err
    assert "attack.eps 8.0 vs 32.0" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("override", "condition", "key"),
    [
        ("eval.score_options.openmax.tail_size=10", "clean", "score_options.openmax.tail_size"),
        ("eval.version=standard", "ensemble", "attack.version"),
        ("eval.openmax_fit=clean", "fgsm", "fit"),
        ("eval.attacks.pgd.random_start=false", "pgd", "attack.random_start"),
    ],
)
def test_report_refuses_runs_evaluated_under_other_settings(
    tmp_path, capsys, override, condition, key
):
    # Runs of other splits and seeds (other weights, other data) with equal settings
    # are one experiment's repetitions.
    a = plant(tmp_path, "a", accuracy=0.8, auroc=0.7, recorded=True)
    b = plant(tmp_path, "b", split=1, seed=1, accuracy=0.6, auroc=0.5, recorded=True)
    assert main(["report", a, b, "--out", str(tmp_path / "same")]) == 0
    capsys.readouterr()
    c = plant(tmp_path, "c", split=1, accuracy=0.6, auroc=0.5, recorded=True, overrides=[override])
    assert main(["report", a, c, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"condition '{condition}'" in err
    assert f"run {c} was evaluated under other settings than {a}" in err and key in err
    assert not (tmp_path / "out").exists()


def test_report_needs_evaluated_runs(tmp_path, capsys):
    (tmp_path / "bare").mkdir()
    assert main(["report", str(tmp_path / "bare"), "--out", str(tmp_path / "out")]) == 2
    assert "osad test" in capsys.readouterr().err


def test_report_names_what_tells_groups_apart(tmp_path):
    runs = [
        plant(tmp_path, "a", accuracy=0.8, auroc=0.7),
        plant(tmp_path, "b", accuracy=0.6, auroc=0.5, overrides=["train.lr=0.01"]),
        plant(tmp_path, "c", seed=1, accuracy=0.6, auroc=0.5, overrides=["train.lr=0.01"]),
    ]
    assert main(["report", *runs, "--out", str(tmp_path / "out")]) == 0
    groups = {
        r["group"]: r["runs"] for r in csv.DictReader((tmp_path / "out" / "report.csv").open())
    }
    default_lr = make_config().train.lr
    assert groups == {
        f"osdn on digits (train.lr={default_lr})": "1",
        "osdn on digits (train.lr=0.01)": "2",
    }


def test_report_refuses_an_incomplete_evaluation(tmp_path, capsys):
    run = plant(tmp_path, "a", accuracy=0.8, auroc=0.7)
    (tmp_path / "a" / "eval" / "scores.h5").unlink()
    assert main(["report", run, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scores.h5 is missing" in err
    run = plant(tmp_path, "b", accuracy=0.8, auroc=0.7)
    (tmp_path / "b" / ".eval.partial").mkdir()  # left by an osad test killed mid-write
    assert main(["report", run, "--out", str(tmp_path / "out")]) == 2
    assert ".eval.partial" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_report_never_overwrites_without_force(tmp_path, capsys):
    run = plant(tmp_path, "a", accuracy=0.8, auroc=0.7)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("earlier report\n")
    assert main(["report", run, "--out", str(out)]) == 2
    assert "report.md already exists; pass --force" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "earlier report\n"
    assert main(["report", run, "--out", str(out), "--force"]) == 0
    assert "osdn on digits" in (out / "report.md").read_text()


def _write(text):
    return lambda path, document: path.write_text(text(document))


def _edit(change):
    """Apply ``change`` to the planted document and write it back."""

    def damage(path, document):
        change(document)
        path.write_text(json.dumps(document))

    return damage


METRICS_FAULTS = {
    "truncated": (_write(lambda d: json.dumps(d)[:100]), "is not valid JSON"),
    "empty object": (_write(lambda d: "{}"), "'config' is missing"),
    "a list": (_write(lambda d: "[]"), "must hold a JSON object, got a list"),
    "accuracy as text": (
        _edit(lambda d: d["conditions"]["pgd"].update(closed_set_accuracy="0.8")),
        "'conditions.pgd.closed_set_accuracy' must be a number, got a string",
    ),
    "accuracy above one": (
        _edit(lambda d: d["conditions"]["pgd"].update(closed_set_accuracy=80)),
        "'conditions.pgd.closed_set_accuracy' must be at most 1",
    ),
    "auroc as a list": (
        _edit(lambda d: d["conditions"]["clean"].update(auroc=[0.9])),
        "'conditions.clean.auroc' must be an object",
    ),
    "no clean condition": (
        _edit(lambda d: d["conditions"].pop("clean")),
        "'conditions.clean' is missing",
    ),
    "unknown attack key": (
        _edit(lambda d: d["conditions"]["pgd"]["attack"].update(colour="red")),
        "'conditions.pgd.attack' does not describe an attack",
    ),
    "config without data": (_edit(lambda d: d["config"].pop("data")), "'config.data' is missing"),
    "newer format": (
        _edit(lambda d: d.update(format_version=2)),
        "has metrics format 2, newer than this osad",
    ),
    "format as text": (
        _edit(lambda d: d.update(format_version="two")),
        "invalid format_version 'two'",
    ),
}


@pytest.mark.parametrize("fault", list(METRICS_FAULTS))
def test_report_refuses_a_damaged_metrics_file_naming_the_key(tmp_path, capsys, fault):
    damage, message = METRICS_FAULTS[fault]
    run = plant(tmp_path, "a", accuracy=0.8, auroc=0.7)
    path = tmp_path / "a" / "eval" / "metrics.json"
    damage(path, json.loads(path.read_text()))
    assert main(["report", run, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.json" in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_report_refuses_a_run_given_twice(tmp_path, capsys):
    # `osad report rA rA` counted one run twice: "runs 2, ± 0.0000", a false agreement
    run = plant(tmp_path, "a", accuracy=0.8, auroc=0.7)
    again = str(tmp_path / "." / "a")
    assert main(["report", run, again, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "given twice" in err and not (tmp_path / "out").exists()


def test_report_names_an_anti_spoofing_run_for_what_it_is(tmp_path, capsys):
    # it asked for 'conditions.clean' and advised an `osad test --force` that cannot help
    run = tmp_path / "fas"
    (run / "eval").mkdir(parents=True)
    metrics = {"format_version": 1, "config": {"task": "fas"}, "conditions": {"phone": {}}}
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    for name in ("scores.h5", "results.md"):
        (run / "eval" / name).touch()
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'task: fas' run" in err and "--force" not in err
