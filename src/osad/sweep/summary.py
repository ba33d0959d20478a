"""The sweep's tables: mean and sample standard deviation over splits of every run's
``eval/metrics.json`` (closed-set accuracy and AUROC per condition and score), of
each run's worst case over its attacked conditions, and of the split-by-split
differences between the method pairs the preset compares.

Only finished runs evaluated under the preset's settings enter; a method
with fewer splits than the sweep has says so in its ``splits`` column, and the
header names every missing run and every stale one (evaluated under other
settings, by the check ``osad report`` makes,
:func:`osad.eval.aggregate.settings_mismatches`: it is left out of the tables until
``osad sweep`` re-evaluates it).

Runs are read by :func:`osad.eval.aggregate.load_run` (checked, versioned); the
cells and section titles are ``osad report``'s (:func:`osad.eval.aggregate.mean_std_cell`,
:func:`~osad.eval.aggregate.attack_captions`). ``summary.json`` carries
``format_version`` (:data:`osad.eval.results.SUMMARY_FORMAT`) and is read back by
:func:`osad.eval.results.read_summary`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from osad.eval.aggregate import (
    attack_captions,
    load_run,
    mean_std_cell,
    metric_cells,
    metric_header,
    worst_case,
)
from osad.eval.metrics import MeanStd, mean_std
from osad.eval.report import markdown_table
from osad.eval.results import SUMMARY_FORMAT, RunMetrics
from osad.sweep.runner import expected_settings, is_finished, plan, stale_conditions
from osad.sweep.spec import Sweep

# The pseudo-condition holding, per run and score, the lowest value over the attacks.
WORST = "worst attack"


def _stats(values: list[float]) -> dict[str, Any]:
    summary = mean_std(values)
    std = None if math.isnan(summary.std) else summary.std  # one split: no spread (JSON null)
    return {"mean": summary.mean, "std": std, "n": summary.n, "values": values}


def _append(values: dict[str, Any], name: str, condition: dict[str, Any]) -> None:
    cell = values.setdefault(name, {"closed_set_accuracy": [], "auroc": {}})
    cell["closed_set_accuracy"].append(condition["closed_set_accuracy"])
    for score, value in condition["auroc"].items():
        cell["auroc"].setdefault(score, []).append(value)


def summarize(sweep: Sweep, out: str | Path) -> dict[str, Any]:
    """The ``summary.json`` document of the finished runs of ``sweep`` under ``out``."""
    conditions: list[str] = []
    scores: list[str] = []
    tabulated: list[RunMetrics] = []
    methods: dict[str, Any] = {}
    missing = []
    stale = []
    # (method, split) -> condition -> {"closed_set_accuracy": x, "auroc": {score: x}}
    per_run: dict[tuple[str, int], dict[str, Any]] = {}
    for item in plan(sweep, out):
        if not is_finished(item.run):
            missing.append({"method": item.method.label, "split": item.split})
            continue
        config = sweep.run_config(item.method, item.split)
        mismatches = stale_conditions(item.run, config)
        if mismatches:
            found = {
                m.condition: {
                    "found": m.found,
                    "preset": m.expected,
                    **({"differs": m.what} if m.differences else {}),
                }
                for m in mismatches
            }
            stale.append({"method": item.method.label, "split": item.split, "conditions": found})
            continue
        metrics = load_run(item.run.root)
        tabulated.append(metrics)
        entry = methods.setdefault(item.method.label, {"splits": [], "values": {}})
        entry["splits"].append(item.split)
        run = per_run.setdefault((item.method.label, item.split), {})
        # Only the preset's conditions: one a run has beyond them (an attack added by
        # hand, or dropped from the preset since) is in no other run's results.
        preset = expected_settings(config)
        kept = {n: asdict(c) for n, c in metrics.conditions.items() if n in preset}
        for name, condition in kept.items():
            if name not in conditions:
                conditions.append(name)
            run[name] = condition
            for score in condition["auroc"]:
                if score not in scores:
                    scores.append(score)
        attacked = [c for name, c in kept.items() if name != "clean"]
        if attacked:
            run[WORST] = worst_case(attacked)
        for name, condition in run.items():
            _append(entry["values"], name, condition)
    for entry in methods.values():
        entry["conditions"] = {
            name: {
                "closed_set_accuracy": _stats(values["closed_set_accuracy"]),
                "auroc": {score: _stats(v) for score, v in values["auroc"].items()},
            }
            for name, values in entry.pop("values").items()
        }
    captions = attack_captions(tabulated, conditions)
    if any(WORST in entry["conditions"] for entry in methods.values()):
        captions[WORST] = (
            "per run and score, the lowest accuracy and AUROC over the attacked conditions"
        )
    return {
        "format_version": SUMMARY_FORMAT,
        "sweep": sweep.name,
        "splits": list(sweep.splits),
        "runs": len(sweep.methods) * len(sweep.splits),
        "finished": len(sweep.methods) * len(sweep.splits) - len(missing) - len(stale),
        "missing": missing,
        "stale": stale,
        "conditions": captions,
        "scores": scores,
        "methods": {m.label: methods[m.label] for m in sweep.methods if m.label in methods},
        "paired": [paired_differences(per_run, a, b, sweep.splits) for a, b in sweep.compare],
        "compute": compute_time(Path(out), [m.label for m in sweep.methods]),
    }


def _difference_stats(pairs: list[tuple[int, float]]) -> dict[str, Any]:
    differences = [d for _, d in pairs]
    return {
        **_stats(differences),
        "ahead": sum(d > 0 for d in differences),
        "splits": [split for split, _ in pairs],
    }


def paired_differences(
    per_run: dict[tuple[str, int], dict[str, Any]], a: str, b: str, splits: tuple[int, ...]
) -> dict[str, Any]:
    """``a - b`` on each split both finished, per condition: closed-set accuracy and
    AUROC per score (mean, std, values, and on how many splits ``a`` is ahead). Both
    methods meet the same known/unknown partition on a split, so the pairing removes
    the split's own difficulty from the comparison."""
    # condition -> {"closed_set_accuracy": [(split, a - b)], "auroc": {score: [...]}}
    conditions: dict[str, Any] = {}
    for split in splits:
        if (a, split) not in per_run or (b, split) not in per_run:
            continue
        first, second = per_run[(a, split)], per_run[(b, split)]
        for name in [n for n in first if n in second]:
            cell = conditions.setdefault(name, {"closed_set_accuracy": [], "auroc": {}})
            accuracy = first[name]["closed_set_accuracy"] - second[name]["closed_set_accuracy"]
            cell["closed_set_accuracy"].append((split, accuracy))
            for score in [s for s in first[name]["auroc"] if s in second[name]["auroc"]]:
                difference = first[name]["auroc"][score] - second[name]["auroc"][score]
                cell["auroc"].setdefault(score, []).append((split, difference))
    return {
        "a": a,
        "b": b,
        "conditions": {
            name: {
                "closed_set_accuracy": _difference_stats(cell["closed_set_accuracy"]),
                "auroc": {score: _difference_stats(p) for score, p in cell["auroc"].items()},
            }
            for name, cell in conditions.items()
        },
    }


def compute_time(out: Path, methods: Sequence[str] = ()) -> dict[str, Any]:
    """Seconds spent on the logged steps of the sweep (``sweep.jsonl``), in all and per
    method (``methods`` first, in that order, then others in log order: a log written by
    ``--jobs`` in the order runs finished tabulates as one written run after run), and
    when the last one finished."""
    log = out / "sweep.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    per_method: dict[str, dict[str, float]] = {}
    logged = {record["method"] for record in records}
    for label in methods:
        if label in logged:
            per_method[label] = {"steps": 0, "seconds": 0.0}
    for record in records:
        entry = per_method.setdefault(record["method"], {"steps": 0, "seconds": 0.0})
        entry["steps"] += 1
        entry["seconds"] = round(entry["seconds"] + record["seconds"], 1)
    return {
        "steps": len(records),
        "seconds": round(sum(r["seconds"] for r in records), 1),
        "last_finished": records[-1]["finished"] if records else None,
        "per_method": per_method,
    }


def _compute_markdown(compute: dict[str, Any]) -> list[str]:
    rows = [
        [label, str(e["steps"]), f"{e['seconds']:.0f}", f"{e['seconds'] / e['steps']:.0f}"]
        for label, e in compute["per_method"].items()
    ]
    return [
        "",
        "## compute",
        "",
        f"{compute['steps']} steps logged in sweep.jsonl (training and/or evaluation of one "
        f"run each), {compute['seconds']:.0f} s in all, the last finished at "
        f"{compute['last_finished']}.",
        "",
        *markdown_table(["method", "steps", "seconds", "seconds per step"], rows),
    ]


# The cells of a condition a method (or pair) has no value for: "—".
_ABSENT: dict[str, Any] = {"closed_set_accuracy": None, "auroc": {}}


def _mean_std(stats: dict[str, Any] | None) -> MeanStd | None:
    """A summary.json cell (``mean``, ``std`` null for one value, ``n``) as a MeanStd."""
    if stats is None:
        return None
    std = math.nan if stats["std"] is None else stats["std"]
    return MeanStd(stats["mean"], std, stats["n"])


def _cell(stats: dict[str, Any] | None) -> str:
    return mean_std_cell(_mean_std(stats))


def _difference_cell(stats: dict[str, Any] | None) -> str:
    """A paired difference: signed mean ± std, and on how many splits ``a`` is ahead."""
    if stats is None:
        return "—"
    text = mean_std_cell(_mean_std(stats), signed=True)
    return f"{text} ({stats['ahead']}/{stats['n']})"


def _paired_markdown(summary: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## paired differences",
        "",
        "a - b on each split both finished (same known/unknown classes), mean ± std over "
        "those splits; in brackets, on how many of them a is ahead.",
    ]
    header = ["a - b", *metric_header(summary["scores"])]
    for name in summary["conditions"]:
        rows = []
        for pair in summary["paired"]:
            condition = pair["conditions"].get(name, _ABSENT)
            cells = metric_cells(
                condition["closed_set_accuracy"],
                condition["auroc"],
                summary["scores"],
                _difference_cell,
            )
            rows.append([f"{pair['a']} - {pair['b']}", *cells])
        lines += ["", f"### {name}", "", *markdown_table(header, rows)]
    return lines


def summary_markdown(summary: dict[str, Any]) -> str:
    """One Markdown table per condition: a row per method, accuracy and AUROC per score."""
    splits = ", ".join(map(str, summary["splits"]))
    lines = [
        f"# Sweep {summary['sweep']}: mean ± std over splits {splits}",
        "",
        f"{summary['finished']} of {summary['runs']} runs finished. Mean ± sample standard "
        "deviation (ddof 1) over the splits in the 'splits' column; closed-set accuracy on "
        "the attacked known test images, AUROC with unknown images as positives.",
    ]
    if summary["missing"]:
        names = ", ".join(f"{m['method']} split {m['split']}" for m in summary["missing"])
        lines += ["", f"**PARTIAL**: not finished: {names}."]
    if summary["stale"]:
        names = "; ".join(
            f"{s['method']} split {s['split']} ("
            + ", ".join(
                (
                    f"{name}: {c['differs']}, the run's vs the preset's"
                    if "differs" in c  # absent: the run lacks it, or an older summary
                    else f"{name}: {c['found']}, the preset: {c['preset']}"
                )
                for name, c in s["conditions"].items()
            )
            + ")"
            for s in summary["stale"]
        )
        lines += [
            "",
            f"**STALE**, left out: evaluated under other settings than the preset: {names}. "
            "Run osad sweep again (without --summary-only) to re-evaluate them.",
        ]
    header = ["method", "splits", *metric_header(summary["scores"])]
    for name, attack in summary["conditions"].items():
        rows = []
        for label, method in summary["methods"].items():
            condition = method["conditions"].get(name, _ABSENT)
            cells = metric_cells(
                condition["closed_set_accuracy"], condition["auroc"], summary["scores"], _cell
            )
            rows.append([label, ",".join(map(str, method["splits"])), *cells])
        lines += ["", f"## {name}: {attack}", "", *markdown_table(header, rows)]
    if summary["paired"]:
        lines += _paired_markdown(summary)
    if summary["compute"]["steps"]:
        lines += _compute_markdown(summary["compute"])
    return "\n".join(lines) + "\n"


def write_summary(sweep: Sweep, out: str | Path) -> str:
    """Write ``summary.json`` and ``results.md`` into ``out``; return the Markdown."""
    out = Path(out)
    summary = summarize(sweep, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = summary_markdown(summary)
    (out / "results.md").write_text(text)
    return text
