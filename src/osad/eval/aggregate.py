"""``osad report RUN_DIR... --out DIR``: one table over runs, mean +- std per group.

Runs are grouped by their configuration without the keys that vary between
repetitions of one experiment (seed, split, partition seed, data root,
device, speed switches and the evaluation settings): every group is one method
and setting, and its runs are its splits and seeds. Each cell is the mean and
sample standard deviation (ddof 1) over the group's runs, from their
``eval/metrics.json``. Attack settings must agree across all runs for every
condition reported; the caption states them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osad.errors import ConfigError, RunDirError
from osad.eval.metrics import MeanStd, mean_std
from osad.eval.report import attack_text, markdown_table, score_label
from osad.rundir import RunDir

# Config keys that differ between repetitions of one experiment.
REPETITION_KEYS = {
    "": ("seed", "device", "perf", "eval"),
    "data": ("split", "partition_seed", "root", "download", "verify"),
}


@dataclass
class RunMetrics:
    path: Path
    metrics: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.metrics["config"]

    @property
    def split(self) -> str:
        data = self.config["data"]
        return str(data["known"] or data["split"])


@dataclass
class Row:
    group: str
    condition: str
    runs: int
    splits: list[str]
    accuracy: MeanStd
    auroc: dict[str, MeanStd]


@dataclass
class Report:
    rows: list[Row]
    scores: list[str]
    attacks: dict[str, str]  # condition -> description
    left_out: list[str]  # conditions some runs lack


def load_run(path: str | Path) -> RunMetrics:
    """The ``eval/metrics.json`` of run ``path``."""
    metrics_path = RunDir(Path(path)).metrics
    if not metrics_path.is_file():
        raise RunDirError(f"{path} has no eval/metrics.json; run 'osad test {path}' first")
    return RunMetrics(Path(path), json.loads(metrics_path.read_text()))


def experiment_key(config: dict[str, Any]) -> str:
    """The configuration without :data:`REPETITION_KEYS`, as canonical JSON."""
    kept = {k: v for k, v in config.items() if k not in REPETITION_KEYS[""]}
    kept["data"] = {k: v for k, v in config["data"].items() if k not in REPETITION_KEYS["data"]}
    return json.dumps(kept, sort_keys=True)


def _group_names(runs: list[RunMetrics]) -> dict[str, str]:
    """A readable name per experiment key: ``method on dataset``, numbered on collisions."""
    names: dict[str, str] = {}
    for run in runs:
        key = experiment_key(run.config)
        if key not in names:
            base = f"{run.config['method']} on {run.config['data']['name']}"
            taken = sum(1 for n in names.values() if n.split(" #")[0] == base)
            names[key] = base if taken == 0 else f"{base} #{taken + 1}"
    return names


def _shared_attacks(runs: list[RunMetrics], conditions: list[str]) -> dict[str, str]:
    attacks = {}
    for condition in conditions:
        seen = {
            json.dumps(r.metrics["conditions"][condition]["attack"], sort_keys=True): r
            for r in runs
        }
        if len(seen) > 1:
            first, second = list(seen.values())[:2]
            raise ConfigError(
                f"runs disagree on attack '{condition}': {first.path} has "
                f"{attack_text(first.metrics['conditions'][condition]['attack'])}, "
                f"{second.path} has "
                f"{attack_text(second.metrics['conditions'][condition]['attack'])}; "
                "report them separately"
            )
        attacks[condition] = attack_text(runs[0].metrics["conditions"][condition]["attack"])
    return attacks


def aggregate(paths: list[str | Path]) -> Report:
    """Mean +- std of accuracy and AUROC per group and condition over the runs ``paths``."""
    runs = [load_run(p) for p in paths]
    per_run = [list(r.metrics["conditions"]) for r in runs]
    conditions = [c for c in per_run[0] if all(c in names for names in per_run)]
    left_out = sorted({c for names in per_run for c in names} - set(conditions))
    scores = [
        s
        for s in runs[0].metrics["conditions"]["clean"]["auroc"]
        if all(s in r.metrics["conditions"]["clean"]["auroc"] for r in runs)
    ]
    attacks = _shared_attacks(runs, conditions)
    names = _group_names(runs)
    groups: dict[str, list[RunMetrics]] = {}
    for run in runs:
        groups.setdefault(names[experiment_key(run.config)], []).append(run)
    rows = []
    for group, members in groups.items():
        for condition in conditions:
            cells = [m.metrics["conditions"][condition] for m in members]
            rows.append(
                Row(
                    group=group,
                    condition=condition,
                    runs=len(members),
                    splits=sorted({m.split for m in members}),
                    accuracy=mean_std([c["closed_set_accuracy"] for c in cells]),
                    auroc={s: mean_std([c["auroc"][s] for c in cells]) for s in scores},
                )
            )
    return Report(rows, scores, attacks, left_out)


def _cell(value: MeanStd) -> str:
    return f"{value.mean:.4f}" if value.n == 1 else f"{value.mean:.4f} ± {value.std:.4f}"


def caption(report: Report) -> str:
    attacks = "; ".join(f"{name}: {text}" for name, text in report.attacks.items())
    text = (
        "Mean ± sample standard deviation over the runs of each group (one value: one run). "
        f"Attacks: {attacks}. AUROC with unknown as the positive class."
    )
    if report.left_out:
        text += f" Not in every run, so left out: {', '.join(report.left_out)}."
    return text


def markdown(report: Report) -> str:
    header = ["group", "condition", "runs", "closed-set acc"]
    header += [f"AUROC {score_label(s)}" for s in report.scores]
    rows = [
        [row.group, row.condition, str(row.runs), _cell(row.accuracy)]
        + [_cell(row.auroc[s]) for s in report.scores]
        for row in report.rows
    ]
    return "\n".join(markdown_table(header, rows)) + "\n\n" + caption(report)


def write_report(report: Report, out: str | Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.csv`` in ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, table = out / "report.md", out / "report.csv"
    md.write_text(markdown(report) + "\n")
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        metrics = ["closed_set_accuracy"] + [f"auroc_{s}" for s in report.scores]
        header = ["group", "condition", "attack", "runs", "splits"]
        writer.writerow(header + [f"{m}_{stat}" for m in metrics for stat in ("mean", "std")])
        for row in report.rows:
            values = [row.accuracy] + [row.auroc[s] for s in report.scores]
            attack = report.attacks[row.condition]
            cells = [row.group, row.condition, attack, row.runs, " ".join(row.splits)]
            writer.writerow(cells + [x for v in values for x in (v.mean, v.std)])
    return md, table
