"""The sweep's tables: mean and sample standard deviation over splits of every run's
``eval/metrics.json`` (closed-set accuracy and AUROC per condition and score), and
of each run's worst case over its attacked conditions.

Only finished runs enter; a method with fewer splits than the sweep has says so
in its ``splits`` column, and the header names every missing run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from osad.config import AttackConfig
from osad.eval.metrics import mean_std
from osad.eval.report import SCORE_LABELS
from osad.sweep.runner import is_finished, plan
from osad.sweep.spec import Sweep

# The pseudo-condition holding, per run and score, the lowest value over the attacks.
WORST = "worst attack"


def attack_text(attack: dict[str, Any]) -> str:
    """The one-line description of a condition's attack as metrics.json records it."""
    return "none" if attack.get("name") == "none" else AttackConfig(**attack).describe()


def _stats(values: list[float]) -> dict[str, Any]:
    summary = mean_std(values)
    std = None if math.isnan(summary.std) else summary.std  # one split: no spread (JSON null)
    return {"mean": summary.mean, "std": std, "n": summary.n, "values": values}


def worst_case(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    """The lowest closed-set accuracy and, per score, the lowest AUROC over ``conditions``
    (metrics.json entries): what a run keeps against the strongest of the attacks tried,
    which may be a different attack for each score."""
    scores = {score for c in conditions for score in c["auroc"]}
    return {
        "closed_set_accuracy": min(c["closed_set_accuracy"] for c in conditions),
        "auroc": {
            score: min(c["auroc"][score] for c in conditions if score in c["auroc"])
            for score in sorted(scores)
        },
    }


def _append(values: dict[str, Any], name: str, condition: dict[str, Any]) -> None:
    cell = values.setdefault(name, {"closed_set_accuracy": [], "auroc": {}})
    cell["closed_set_accuracy"].append(condition["closed_set_accuracy"])
    for score, value in condition["auroc"].items():
        cell["auroc"].setdefault(score, []).append(value)


def summarize(sweep: Sweep, out: str | Path) -> dict[str, Any]:
    """The ``summary.json`` document of the finished runs of ``sweep`` under ``out``."""
    conditions: dict[str, str] = {}
    scores: list[str] = []
    methods: dict[str, Any] = {}
    missing = []
    for item in plan(sweep, out):
        if not is_finished(item.run):
            missing.append({"method": item.method.label, "split": item.split})
            continue
        metrics = json.loads(item.run.metrics.read_text())
        entry = methods.setdefault(item.method.label, {"splits": [], "values": {}})
        entry["splits"].append(item.split)
        for name, condition in metrics["conditions"].items():
            conditions.setdefault(name, attack_text(condition["attack"]))
            _append(entry["values"], name, condition)
            for score in condition["auroc"]:
                if score not in scores:
                    scores.append(score)
        attacked = [c for name, c in metrics["conditions"].items() if name != "clean"]
        if attacked:
            _append(entry["values"], WORST, worst_case(attacked))
    for entry in methods.values():
        entry["conditions"] = {
            name: {
                "closed_set_accuracy": _stats(values["closed_set_accuracy"]),
                "auroc": {score: _stats(v) for score, v in values["auroc"].items()},
            }
            for name, values in entry.pop("values").items()
        }
    if any(WORST in entry["conditions"] for entry in methods.values()):
        conditions[WORST] = (
            "per run and score, the lowest accuracy and AUROC over the attacked conditions"
        )
    return {
        "sweep": sweep.name,
        "splits": list(sweep.splits),
        "runs": len(sweep.methods) * len(sweep.splits),
        "finished": len(sweep.methods) * len(sweep.splits) - len(missing),
        "missing": missing,
        "conditions": conditions,
        "scores": scores,
        "methods": {m.label: methods[m.label] for m in sweep.methods if m.label in methods},
        "compute": compute_time(Path(out)),
    }


def compute_time(out: Path) -> dict[str, Any]:
    """Seconds spent on the logged steps of the sweep (``sweep.jsonl``), in all and per
    method, and when the last one finished."""
    log = out / "sweep.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    per_method: dict[str, dict[str, float]] = {}
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
    lines = [
        "",
        "## compute",
        "",
        f"{compute['steps']} steps logged in sweep.jsonl (training and/or evaluation of one "
        f"run each), {compute['seconds']:.0f} s in all, the last finished at "
        f"{compute['last_finished']}.",
        "",
        "| method | steps | seconds | seconds per step |",
        "|---|---|---|---|",
    ]
    for label, entry in compute["per_method"].items():
        per_step = entry["seconds"] / entry["steps"]
        lines.append(f"| {label} | {entry['steps']} | {entry['seconds']:.0f} | {per_step:.0f} |")
    return lines


def _cell(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "—"
    if stats["std"] is None:
        return f"{stats['mean']:.4f}"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


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
    header = ["method", "splits", "closed-set acc"]
    header += [f"AUROC {SCORE_LABELS.get(s, s)}" for s in summary["scores"]]
    for name, attack in summary["conditions"].items():
        lines += ["", f"## {name}: {attack}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for label, method in summary["methods"].items():
            condition = method["conditions"].get(name)
            cells = [label, ",".join(map(str, method["splits"]))]
            cells.append(_cell(condition and condition["closed_set_accuracy"]))
            cells += [_cell(condition and condition["auroc"].get(s)) for s in summary["scores"]]
            lines.append("| " + " | ".join(cells) + " |")
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
