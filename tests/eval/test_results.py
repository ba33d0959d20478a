"""The results reader (osad.eval.results) and the one table path of ``osad report`` and the
sweep summary, on planted runs (metrics.json written by hand, no training)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from osad.cli import main
from osad.config import make_config
from osad.errors import RunDirError
from osad.eval.aggregate import aggregate, markdown
from osad.eval.protocol import condition_settings
from osad.eval.results import METRICS_FORMAT, SUMMARY_FORMAT, read_metrics, read_summary
from osad.sweep import load_sweep, summarize, summary_markdown, write_summary
from osad.sweep.runner import plan

ROOT = Path(__file__).resolve().parents[2]

PRESET = """\
description: planted runs for the results tests
overrides:
  - eval.scores=[msp,openmax]
  - eval.version=null
splits: [0, 1]
methods:
  plain: {overrides: [method=plain]}
  osdn: {}
compare: [[osdn, plain]]
"""
# (method, split) -> condition -> (closed-set accuracy, AUROC msp, AUROC openmax)
VALUES = {
    ("plain", 0): {
        "clean": (0.99, 0.91, 0.93),
        "fgsm": (0.31, 0.42, 0.55),
        "pgd": (0.02, 0.11, 0.25),
    },
    ("plain", 1): {"clean": (0.98, 0.89, 0.9), "fgsm": (0.35, 0.4, 0.5), "pgd": (0.04, 0.15, 0.2)},
    ("osdn", 0): {"clean": (0.97, 0.92, 0.94), "fgsm": (0.71, 0.7, 0.75), "pgd": (0.6, 0.65, 0.7)},
    ("osdn", 1): {"clean": (0.96, 0.9, 0.95), "fgsm": (0.69, 0.66, 0.8), "pgd": (0.58, 0.61, 0.72)},
}


def plant_sweep(folder: Path, values=VALUES, text=PRESET, recorded=None):
    """The preset's four runs, each with a metrics.json as osad test writes its core keys
    (no format_version: as before it existed) under the preset's attack settings.

    ``recorded``: overrides per (method, split) of the preset's config; each condition
    of that config (values from ``values``, else 0.5) then records the settings
    ``osad test`` gives it, on weights and data of its own."""
    preset = folder / "planted.yaml"
    preset.write_text(text)
    sweep, out = load_sweep(preset), folder / "out"
    for item in plan(sweep, out):
        config = sweep.run_config(item.method, item.split)
        run_values = values[(item.method.label, item.split)]
        settings = {}
        if recorded is not None:
            changed = recorded.get((item.method.label, item.split), [])
            evaluated = {
                "model": {"weights_sha256": str(item.run.root)},
                "data": {"fingerprint": str(item.split)},
            }
            settings = condition_settings(make_config(config.to_dict(), changed), evaluated)
            run_values = {name: run_values.get(name, (0.5,) * 3) for name in settings}
        conditions = {
            name: {
                "closed_set_accuracy": accuracy,
                "auroc": {"msp": msp, "openmax": openmax},
                "attack": settings[name]["attack"] if settings else expected_attack(config, name),
                **({"settings": settings[name]} if settings else {}),
            }
            for name, (accuracy, msp, openmax) in run_values.items()
        }
        item.run.eval_dir.mkdir(parents=True)
        document = {"conditions": conditions, "config": config.to_dict()}
        item.run.metrics.write_text(json.dumps(document))
        item.run.scores.touch()
        item.run.results.touch()
    return sweep, out, [str(item.run.root) for item in plan(sweep, out)]


def expected_attack(config, name: str) -> dict:
    """The attack entry metrics.json records for condition ``name`` of ``config``."""
    return condition_settings(config)[name]["attack"]


# Both texts as main's code (3d1b74b, before the shared reader) wrote them for plant_sweep.
MAIN_REPORT = "\n".join(
    [
        "| group | condition | runs | closed-set acc | AUROC MSP | AUROC OpenMax |",
        "|---|---|---|---|---|---|",
        "| plain on digits | clean | 2 | 0.9850 ± 0.0071 | 0.9000 ± 0.0141 | 0.9150 ± 0.0212 |",
        "| plain on digits | fgsm | 2 | 0.3300 ± 0.0283 | 0.4100 ± 0.0141 | 0.5250 ± 0.0354 |",
        "| plain on digits | pgd | 2 | 0.0300 ± 0.0141 | 0.1300 ± 0.0283 | 0.2250 ± 0.0354 |",
        "| osdn on digits | clean | 2 | 0.9650 ± 0.0071 | 0.9100 ± 0.0141 | 0.9450 ± 0.0071 |",
        "| osdn on digits | fgsm | 2 | 0.7000 ± 0.0141 | 0.6800 ± 0.0283 | 0.7750 ± 0.0354 |",
        "| osdn on digits | pgd | 2 | 0.5900 ± 0.0141 | 0.6300 ± 0.0283 | 0.7100 ± 0.0141 |",
        "",
        "Mean ± sample standard deviation over the runs of each group (one value: one "
        "run). Attacks: clean: none; fgsm: FGSM linf eps 32/255; pgd: PGD linf eps "
        "32/255, step 8/255, 10 steps. AUROC with unknown as the positive class.",
    ]
)

MAIN_SUMMARY = "\n".join(
    [
        "# Sweep planted: mean ± std over splits 0, 1",
        "",
        "4 of 4 runs finished. Mean ± sample standard deviation (ddof 1) over the "
        "splits in the 'splits' column; closed-set accuracy on the attacked known test "
        "images, AUROC with unknown images as positives.",
        "",
        "## clean: none",
        "",
        "| method | splits | closed-set acc | AUROC MSP | AUROC OpenMax |",
        "|---|---|---|---|---|",
        "| plain | 0,1 | 0.9850 ± 0.0071 | 0.9000 ± 0.0141 | 0.9150 ± 0.0212 |",
        "| osdn | 0,1 | 0.9650 ± 0.0071 | 0.9100 ± 0.0141 | 0.9450 ± 0.0071 |",
        "",
        "## fgsm: FGSM linf eps 32/255",
        "",
        "| method | splits | closed-set acc | AUROC MSP | AUROC OpenMax |",
        "|---|---|---|---|---|",
        "| plain | 0,1 | 0.3300 ± 0.0283 | 0.4100 ± 0.0141 | 0.5250 ± 0.0354 |",
        "| osdn | 0,1 | 0.7000 ± 0.0141 | 0.6800 ± 0.0283 | 0.7750 ± 0.0354 |",
        "",
        "## pgd: PGD linf eps 32/255, step 8/255, 10 steps",
        "",
        "| method | splits | closed-set acc | AUROC MSP | AUROC OpenMax |",
        "|---|---|---|---|---|",
        "| plain | 0,1 | 0.0300 ± 0.0141 | 0.1300 ± 0.0283 | 0.2250 ± 0.0354 |",
        "| osdn | 0,1 | 0.5900 ± 0.0141 | 0.6300 ± 0.0283 | 0.7100 ± 0.0141 |",
        "",
        "## worst attack: per run and score, the lowest accuracy and AUROC over the "
        "attacked conditions",
        "",
        "| method | splits | closed-set acc | AUROC MSP | AUROC OpenMax |",
        "|---|---|---|---|---|",
        "| plain | 0,1 | 0.0300 ± 0.0141 | 0.1300 ± 0.0283 | 0.2250 ± 0.0354 |",
        "| osdn | 0,1 | 0.5900 ± 0.0141 | 0.6300 ± 0.0283 | 0.7100 ± 0.0141 |",
        "",
        "## paired differences",
        "",
        "a - b on each split both finished (same known/unknown classes), mean ± std "
        "over those splits; in brackets, on how many of them a is ahead.",
        "",
        "### clean",
        "",
        "| a - b | closed-set acc | AUROC MSP | AUROC OpenMax |",
        "|---|---|---|---|",
        "| osdn - plain | -0.0200 ± 0.0000 (0/2) | +0.0100 ± 0.0000 (2/2) | +0.0300 ± "
        "0.0283 (2/2) |",
        "",
        "### fgsm",
        "",
        "| a - b | closed-set acc | AUROC MSP | AUROC OpenMax |",
        "|---|---|---|---|",
        "| osdn - plain | +0.3700 ± 0.0424 (2/2) | +0.2700 ± 0.0141 (2/2) | +0.2500 ± "
        "0.0707 (2/2) |",
        "",
        "### pgd",
        "",
        "| a - b | closed-set acc | AUROC MSP | AUROC OpenMax |",
        "|---|---|---|---|",
        "| osdn - plain | +0.5600 ± 0.0283 (2/2) | +0.5000 ± 0.0566 (2/2) | +0.4850 ± "
        "0.0495 (2/2) |",
        "",
        "### worst attack",
        "",
        "| a - b | closed-set acc | AUROC MSP | AUROC OpenMax |",
        "|---|---|---|---|",
        "| osdn - plain | +0.5600 ± 0.0283 (2/2) | +0.5000 ± 0.0566 (2/2) | +0.4850 ± "
        "0.0495 (2/2) |",
        "",
    ]
)


def test_report_and_summary_text_is_unchanged(tmp_path):
    sweep, out, runs = plant_sweep(tmp_path)
    assert markdown(aggregate(runs)) == MAIN_REPORT
    assert summary_markdown(summarize(sweep, out)) == MAIN_SUMMARY


def _cells(table: str, first: str) -> dict[str, list[str]]:
    """Per section (a condition's ``## name: attack`` in results.md, or the condition
    column of report.md), the metric cells of the row that starts with ``first``."""
    cells: dict[str, list[str]] = {}
    section = None
    for line in table.splitlines():
        if line.startswith("## "):
            section = line[3:].split(":")[0]
        row = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and row[0] == first:
            if section is None:  # report.md: group, condition, runs, cells
                cells[row[1]] = row[3:]
            else:  # results.md: method, splits, cells
                cells.setdefault(section, row[2:])
    return cells


@pytest.mark.parametrize("nan", [False, True])
def test_report_and_summary_give_the_same_cells_for_the_same_runs(tmp_path, nan):
    values = json.loads(json.dumps({"|".join(map(str, k)): v for k, v in VALUES.items()}))
    values = {(k.split("|")[0], int(k.split("|")[1])): v for k, v in values.items()}
    if nan:  # a score undefined on one split (an AUROC is NaN): main's tables disagreed
        values[("osdn", 1)]["pgd"][1] = math.nan
    sweep, out, runs = plant_sweep(tmp_path, values)
    report = markdown(aggregate(runs))
    summary = summary_markdown(summarize(sweep, out))
    for label in ("plain", "osdn"):
        from_report = _cells(report, f"{label} on digits")
        from_summary = _cells(summary.split("## paired differences")[0], label)
        assert list(from_report) == ["clean", "fgsm", "pgd"]
        for condition, cells in from_report.items():
            assert from_summary[condition] == cells, (label, condition)
    if nan:
        assert "| osdn on digits | pgd | 2 | 0.5900 ± 0.0141 | nan ± nan |" in report


def test_summary_json_records_its_version_and_reads_back(tmp_path):
    sweep, out, _ = plant_sweep(tmp_path)
    text = write_summary(sweep, out)
    assert json.loads((out / "summary.json").read_text())["format_version"] == SUMMARY_FORMAT
    summary = read_summary(out / "summary.json")
    assert summary.format_version == SUMMARY_FORMAT and summary.sweep == "planted"
    assert list(summary.methods) == ["plain", "osdn"] and summary.scores == ["msp", "openmax"]
    assert summary_markdown(summary.document) == text


def test_files_without_a_version_read_as_version_one(tmp_path):
    _, _, runs = plant_sweep(tmp_path)
    metrics = read_metrics(Path(runs[0]) / "eval" / "metrics.json", run=runs[0])
    assert metrics.format_version == 1 and metrics.path == Path(runs[0])
    assert list(metrics.conditions) == ["clean", "fgsm", "pgd"]
    assert metrics.conditions["pgd"].attack_text == "PGD linf eps 32/255, step 8/255, 10 steps"
    # The digits sweep of commit 41086c1 (40 runs, kept as a fixture) predates the field
    # and the 'stale' key; its tables render as they were written then.
    old = Path(__file__).parent / "data" / "digits-41086c1"
    committed = read_summary(old / "summary.json")
    assert "format_version" not in committed.document and committed.format_version == 1
    assert committed.sweep == "digits" and committed.document["stale"] == []
    written = (old / "results.md").read_text()
    assert summary_markdown(committed.document) == written


@pytest.mark.parametrize("sweep,finished,min_rows", [("mnist", 20, 40), ("digits", 40, 80)])
def test_the_committed_sweep_tables_are_the_generated_ones(sweep, finished, min_rows):
    # docs/results-<sweep>.md holds the tables the finished sweep rendered, not typed ones
    committed = read_summary(ROOT / "docs" / f"results-{sweep}" / "summary.json")
    document = committed.document
    assert committed.sweep == sweep and document["finished"] == finished
    assert document["missing"] == [] and document["stale"] == []
    written = (ROOT / "docs" / f"results-{sweep}" / "results.md").read_text()
    assert summary_markdown(document) == written
    page = (ROOT / "docs" / f"results-{sweep}.md").read_text()
    rows = [line for line in written.splitlines() if line.startswith("|")]
    assert len(rows) > min_rows and all(row in page for row in rows)


def _set_version(path: Path, version) -> None:
    document = json.loads(path.read_text())
    document["format_version"] = version
    path.write_text(json.dumps(document))


def test_a_newer_metrics_file_is_refused_with_one_line(tmp_path, capsys):
    _, _, runs = plant_sweep(tmp_path)
    _set_version(Path(runs[0]) / "eval" / "metrics.json", METRICS_FORMAT + 1)
    assert main(["report", *runs, "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"has metrics format {METRICS_FORMAT + 1}, newer than this osad" in err
    assert f"reads metrics format {METRICS_FORMAT}" in err and "upgrade osad" in err
    assert not (tmp_path / "report").exists()


def test_a_newer_or_damaged_summary_is_refused_with_one_line(tmp_path):
    sweep, out, _ = plant_sweep(tmp_path)
    write_summary(sweep, out)
    path = out / "summary.json"
    _set_version(path, SUMMARY_FORMAT + 1)
    with pytest.raises(RunDirError) as newer:
        read_summary(path)
    message = str(newer.value)
    assert f"summary format {SUMMARY_FORMAT + 1}, newer" in message and "\n" not in message
    assert f"reads summary format {SUMMARY_FORMAT}" in message
    document = json.loads(path.read_text())
    document["format_version"] = SUMMARY_FORMAT
    document["methods"]["osdn"]["conditions"]["pgd"]["auroc"]["msp"]["std"] = "wide"
    path.write_text(json.dumps(document))
    with pytest.raises(RunDirError, match=re.escape("methods.osdn.conditions.pgd.auroc.msp.std")):
        read_summary(path)


@pytest.mark.parametrize(
    ("override", "condition", "key"),
    [
        ("eval.score_options.openmax.tail_size=10", "clean", "score_options.openmax.tail_size"),
        ("eval.version=standard", "ensemble", "attack.version"),
        ("eval.pairings=[both,known]", "fgsm", "pairings"),
    ],
)
def test_runs_evaluated_under_other_settings_are_stale_and_refused(
    tmp_path, capsys, override, condition, key
):
    # Two runs differing only in one evaluation setting (beyond their weights and data)
    # are marked stale by the summary and refused by osad report, by one check.
    text = PRESET.replace("eval.version=null", "eval.version=fast")
    sweep, out, runs = plant_sweep(tmp_path, text=text, recorded={("osdn", 1): [override]})
    summary = summarize(sweep, out)
    assert [(s["method"], s["split"]) for s in summary["stale"]] == [("osdn", 1)]
    stale = summary["stale"][0]["conditions"]
    assert condition in stale and key in stale[condition]["differs"]
    assert summary["finished"] == 3 and summary["methods"]["osdn"]["splits"] == [0]
    assert "ensemble" in summary["conditions"]  # the preset's ensemble is tabulated
    assert f"osdn split 1 ({condition}: {key}" in summary_markdown(summary)
    osdn = [run for run in runs if "osdn" in run]
    assert main(["report", *osdn, "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"condition '{condition}'" in err and key in err
    # The same settings on other weights and data: nothing stale, the report is written.
    (tmp_path / "same").mkdir()
    sweep, out, runs = plant_sweep(tmp_path / "same", text=text, recorded={})
    assert summarize(sweep, out)["stale"] == []
    assert main(["report", *runs, "--out", str(tmp_path / "same" / "report")]) == 0
