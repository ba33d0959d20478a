"""``osad report RUN_DIR... --out DIR``: one table over runs, mean +- std per group.

Runs are grouped by their configuration without the keys that vary between
repetitions of one experiment (seed, split, partition seed, data root,
device, speed switches and the evaluation settings): every group is one method
and setting, and its runs are its splits and seeds. Each cell is the mean and
sample standard deviation (ddof 1) over the group's runs, from their
``eval/metrics.json``. The settings that produced each condition reported (its
attack and every recorded evaluation setting: :func:`settings_mismatches`) must
agree across all runs; the caption states the attacks.

The cells and captions (:func:`mean_std_cell`, :func:`metric_header`,
:func:`metric_cells`, :func:`attack_captions`) are also the sweep summary's
(:mod:`osad.sweep.summary`), and both read runs through :mod:`osad.eval.results`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from osad.documents import DocumentCheck
from osad.errors import ConfigError, RunDirError
from osad.eval.metrics import MeanStd, mean_std
from osad.eval.report import markdown_table, score_label
from osad.eval.results import RunMetrics, attack_text, read_metrics
from osad.eval.settings import Difference, condition_differences, differences_text
from osad.rundir import RunDir
from osad.storage import interrupted_dir, storage_error, write_atomic

Cell = TypeVar("Cell")  # what a table cell is made from: a MeanStd, a summary.json cell

# Config keys that differ between repetitions of one experiment.
REPETITION_KEYS = {
    "": ("seed", "device", "perf", "eval"),
    "data": ("split", "partition_seed", "root", "download", "verify"),
}


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
    """The ``eval/metrics.json`` of run ``path`` (:func:`osad.eval.results.read_metrics`)
    with the configuration keys a report groups by (:func:`check_run_config`); an
    incomplete ``eval/`` (a file missing, or left by an interrupted ``osad test``) is
    refused. Raises :class:`RunDirError`."""
    run = RunDir(Path(path))
    leftover = interrupted_dir(run.eval_dir)
    if leftover is not None:
        raise RunDirError(
            f"{leftover} is left by an interrupted 'osad test'; run 'osad test {path}' again"
        )
    if not run.metrics.is_file():
        raise RunDirError(f"{path} has no eval/metrics.json; run 'osad test {path}' first")
    for needed in (run.scores, run.results):
        if not needed.is_file():
            raise RunDirError(
                f"{run.eval_dir} is incomplete: {needed.name} is missing; run "
                f"'osad test {path} --force' again"
            )
    metrics = read_metrics(run.metrics, run=path)
    check_run_config(metrics.config, str(run.metrics))
    return metrics


def check_run_config(config: dict[str, Any], source: str) -> None:
    """The configuration keys of a run's ``metrics.json`` that a report groups and names
    runs by: ``method`` and ``data.{name,split,known}``. Raises :class:`RunDirError`
    naming ``source`` and the key."""
    check = DocumentCheck(source, RunDirError)
    check.field(config, "method", str, prefix="config.")
    data = check.field(config, "data", dict, prefix="config.")
    check.field(data, "name", str, prefix="config.data.")
    check.field(data, "split", int, prefix="config.data.")
    check.field(data, "known", list, prefix="config.data.")


def experiment_key(config: dict[str, Any]) -> str:
    """The configuration without :data:`REPETITION_KEYS`, as canonical JSON."""
    kept = {k: v for k, v in config.items() if k not in REPETITION_KEYS[""]}
    kept["data"] = {k: v for k, v in config["data"].items() if k not in REPETITION_KEYS["data"]}
    return json.dumps(kept, sort_keys=True)


def _group_names(runs: list[RunMetrics]) -> dict[str, str]:
    """A readable name per experiment key: ``method on dataset``, followed, where several
    groups share that name, by the configuration keys whose values tell them apart."""
    configs: dict[str, dict[str, Any]] = {}
    for run in runs:
        configs.setdefault(experiment_key(run.config), run.config)
    bases = {key: f"{c['method']} on {c['data']['name']}" for key, c in configs.items()}
    names = {}
    for key, base in bases.items():
        rivals = [configs[k] for k, b in bases.items() if b == base]
        if len(rivals) == 1:
            names[key] = base
            continue
        flat = [_flatten(json.loads(experiment_key(c))) for c in rivals]
        differing = [k for k in flat[0] if any(f.get(k) != flat[0][k] for f in flat)]
        differing += sorted({k for f in flat for k in f if k not in flat[0]})
        mine = _flatten(json.loads(key))
        shown = ", ".join(f"{k}={mine.get(k)}" for k in differing[:3])
        more = f", +{len(differing) - 3} more" if len(differing) > 3 else ""
        names[key] = f"{base} ({shown}{more})"
    return names


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}`` (lists and scalars are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class SettingsMismatch:
    """One run whose condition was evaluated under other settings than the reference
    (every recorded setting but :data:`osad.eval.settings.REPETITION_SETTINGS`)."""

    path: Path
    condition: str
    found: str  # the run's attack, described; "absent" when the run lacks the condition
    expected: str  # the reference attack, described
    reference: str  # where the reference comes from: a run path, or the caller's name for it
    # (dotted key, the run's value, the reference's value), sorted; empty when absent
    differences: tuple[Difference, ...] = ()

    @property
    def what(self) -> str:
        """What differs, in words: the keys and both values, or that one lacks it."""
        if self.found == "absent":
            return f"{self.path} lacks it"
        if self.expected == "absent":
            return f"{self.reference} lacks it"
        return differences_text(list(self.differences))


def _described(attack: dict[str, Any] | None) -> str:
    return "absent" if attack is None else attack_text(attack)


def settings_mismatches(
    runs: list[RunMetrics],
    conditions: list[str],
    expected: dict[str, dict[str, Any]] | None = None,
    reference: str = "",
) -> list[SettingsMismatch]:
    """The (run, condition) pairs evaluated under other settings than the reference:
    the attack and every recorded setting (:func:`osad.eval.settings.condition_differences`:
    the scores and their options, the fit, pairings, batch size, precision, the
    ensemble's version; not the seed, weights or data, which tell repetitions apart;
    the attack alone for a condition recorded without settings, by an older osad).

    The reference of a condition is ``expected[condition]`` (settings as
    :func:`osad.eval.protocol.condition_settings` gives them; a condition missing from
    ``expected`` must be missing from the runs too), named ``reference`` in the result;
    without ``expected``, the first run that has the condition. This is the check
    ``osad report`` refuses on and the sweep summary marks stale runs by.
    """
    mismatches = []
    for condition in conditions:
        if expected is not None:
            wanted = expected.get(condition)
            reference_record = None if wanted is None else (wanted, wanted["attack"])
            source = reference
        else:
            first = next(r for r in runs if condition in r.conditions)
            kept = first.conditions[condition]
            reference_record, source = (kept.settings, kept.attack), str(first.path)
        for run in runs:
            found = run.conditions.get(condition)
            if found is None and (expected is None or reference_record is None):
                continue
            found_differences = []
            if found is not None and reference_record is not None:
                found_differences = condition_differences(
                    (found.settings, found.attack), reference_record
                )
                if not found_differences:
                    continue
            mismatches.append(
                SettingsMismatch(
                    run.path,
                    condition,
                    _described(None if found is None else found.attack),
                    _described(None if reference_record is None else reference_record[1]),
                    source,
                    tuple(found_differences),
                )
            )
    return mismatches


def _shared_attacks(runs: list[RunMetrics], conditions: list[str]) -> dict[str, str]:
    mismatches = settings_mismatches(runs, conditions)
    if mismatches:
        m = mismatches[0]
        raise ConfigError(
            f"run {m.path} was evaluated under other settings than {m.reference} for "
            f"condition '{m.condition}' ({m.what}); report them separately, or evaluate "
            "them again alike (osad test RUN --force with the same eval.* settings)"
        )
    return attack_captions(runs, conditions)


def attack_captions(runs: list[RunMetrics], conditions: Iterable[str]) -> dict[str, str]:
    """Each condition's attack, described (:func:`osad.eval.results.attack_text`), as
    the first of ``runs`` that has it records it: the caption of ``osad report`` and
    the section titles of the sweep summary (their runs agree, by
    :func:`settings_mismatches`)."""
    return {
        c: next(r.conditions[c] for r in runs if c in r.conditions).attack_text for c in conditions
    }


def aggregate(paths: list[str | Path]) -> Report:
    """Mean +- std of accuracy and AUROC per group and condition over the runs ``paths``.

    Raises :class:`RunDirError` for a run given twice (it would count as two)."""
    seen: dict[Path, str | Path] = {}
    for path in paths:
        key = Path(path).resolve()
        if key in seen:
            raise RunDirError(
                f"run {path} is given twice (also as {seen[key]}); name each run once"
            )
        seen[key] = path
    runs = [load_run(p) for p in paths]
    per_run = [list(r.conditions) for r in runs]
    conditions = [c for c in per_run[0] if all(c in names for names in per_run)]
    left_out = sorted({c for names in per_run for c in names} - set(conditions))
    scores = [
        s
        for s in runs[0].conditions["clean"].auroc
        if all(s in r.conditions["clean"].auroc for r in runs)
    ]
    attacks = _shared_attacks(runs, conditions)
    names = _group_names(runs)
    groups: dict[str, list[RunMetrics]] = {}
    for run in runs:
        groups.setdefault(names[experiment_key(run.config)], []).append(run)
    rows = []
    for group, members in groups.items():
        for condition in conditions:
            cells = [m.conditions[condition] for m in members]
            rows.append(
                Row(
                    group=group,
                    condition=condition,
                    runs=len(members),
                    splits=sorted({m.split for m in members}),
                    accuracy=mean_std([c.closed_set_accuracy for c in cells]),
                    auroc={s: mean_std([c.auroc[s] for c in cells]) for s in scores},
                )
            )
    return Report(rows, scores, attacks, left_out)


def mean_std_cell(value: MeanStd | None, signed: bool = False) -> str:
    """A table cell: ``mean ± std`` to four decimals, the mean alone for one value, "—"
    for none; ``signed``: the mean with its sign (a difference)."""
    if value is None:
        return "—"
    mean = f"{value.mean:+.4f}" if signed else f"{value.mean:.4f}"
    return mean if value.n == 1 else f"{mean} ± {value.std:.4f}"


def metric_header(scores: Iterable[str]) -> list[str]:
    """The metric columns of a results table: closed-set accuracy, AUROC per score."""
    return ["closed-set acc"] + [f"AUROC {score_label(s)}" for s in scores]


def metric_cells(
    accuracy: Cell | None,
    auroc: Mapping[str, Cell],
    scores: Iterable[str],
    cell: Callable[[Cell | None], str] = mean_std_cell,
) -> list[str]:
    """The cells under :func:`metric_header`, each by ``cell``; a score missing from
    ``auroc`` gives ``cell(None)``."""
    return [cell(accuracy)] + [cell(auroc.get(s)) for s in scores]


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
    header = ["group", "condition", "runs", *metric_header(report.scores)]
    rows = [
        [
            row.group,
            row.condition,
            str(row.runs),
            *metric_cells(row.accuracy, row.auroc, report.scores),
        ]
        for row in report.rows
    ]
    return "\n".join(markdown_table(header, rows)) + "\n\n" + caption(report)


def write_report(report: Report, out: str | Path, force: bool = False) -> tuple[Path, Path]:
    """``report.md`` and ``report.csv`` in ``out``; returns their paths.

    An existing report is replaced only with ``force``, each file atomically
    (:func:`osad.storage.write_atomic`), so a failed write leaves the old one.
    """
    out = Path(out)
    md, table = out / "report.md", out / "report.csv"
    existing = [p for p in (md, table) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise RunDirError(f"{existing[0]} already exists; pass --force to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(out, exc) from None
    rows = io.StringIO(newline="")
    writer = csv.writer(rows)
    metrics = ["closed_set_accuracy"] + [f"auroc_{s}" for s in report.scores]
    header = ["group", "condition", "attack", "runs", "splits"]
    writer.writerow(header + [f"{m}_{stat}" for m in metrics for stat in ("mean", "std")])
    for row in report.rows:
        values = [row.accuracy] + [row.auroc[s] for s in report.scores]
        attack = report.attacks[row.condition]
        cells = [row.group, row.condition, attack, row.runs, " ".join(row.splits)]
        writer.writerow(cells + [x for v in values for x in (v.mean, v.std)])
    write_atomic(table, rows.getvalue())
    write_atomic(md, markdown(report) + "\n")
    return md, table


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
