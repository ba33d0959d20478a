"""Reading evaluation results back: a run's ``metrics.json`` and a sweep's ``summary.json``.

Both files carry ``format_version`` (:data:`METRICS_FORMAT`, :data:`SUMMARY_FORMAT`;
numbered apart from :data:`osad.storage.FORMAT_VERSION`, which numbers config.yaml,
weights and checkpoints). A file without it was written before the field existed
and reads as version 1; a newer one is refused with one line naming both versions.
Each reader checks every key it returns with :class:`osad.documents.DocumentCheck`
(one line naming the file and the dotted key, never a traceback) and returns a
typed record: :func:`read_metrics` a :class:`RunMetrics`, :func:`read_summary` a
:class:`SweepSummary`. ``osad report`` (:mod:`osad.eval.aggregate`), the sweep
(:mod:`osad.sweep`) and ``osad test``'s reuse of stored conditions read through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osad.config import AttackConfig
from osad.documents import DocumentCheck, kind_of, load_document
from osad.errors import OsadError, RunDirError
from osad.eval.ensemble import describe as describe_ensemble
from osad.storage import check_format

# The layout of metrics.json (osad.eval.report.metrics_dict) and of summary.json
# (osad.sweep.summary.summarize). Bump on a change a reader of the old layout misreads.
METRICS_FORMAT = 1
SUMMARY_FORMAT = 1
# What a file without format_version reads as: written before the field existed.
UNVERSIONED = 1
# Keys of summary.json added before format_version was: a file without the version may
# lack them, and reads them as none (no paired comparison, no run found stale).
SUMMARY_LATER_KEYS = ("paired", "stale")


def attack_text(attack: dict[str, Any] | None) -> str:
    """One line describing a condition's ``attack`` entry of metrics.json."""
    if attack is None or attack.get("name") == "none":
        return "none"
    if attack.get("name") == "ensemble":
        base = AttackConfig(norm=attack["norm"], eps=attack["eps"])
        return describe_ensemble(attack["version"], base)
    return AttackConfig.from_dict(attack).describe()


@dataclass(frozen=True)
class ConditionMetrics:
    """The core keys of one condition of metrics.json (the ``both`` pairing) and the
    settings that produced it."""

    closed_set_accuracy: float  # in [0, 1]
    auroc: dict[str, float]  # per score, unknown = positive; NaN allowed
    attack: dict[str, Any]  # as metrics.json records it; {"name": "none"} for clean
    # What produced it (osad.eval.protocol.condition_settings); None: an older osad.
    settings: dict[str, Any] | None = None

    @property
    def attack_text(self) -> str:
        return attack_text(self.attack)


@dataclass(frozen=True)
class RunMetrics:
    """A checked ``metrics.json``: its version, its conditions' core keys (``clean``
    first among them as written), the recorded configuration (the run's whole config
    for ``osad test``, its evaluation sections for ``osad evaluate``) and the whole
    document for the keys this record does not type."""

    path: Path  # the run directory it belongs to, or the file itself
    format_version: int
    conditions: dict[str, ConditionMetrics]
    config: dict[str, Any]
    document: dict[str, Any]

    @property
    def split(self) -> str:
        """The run's split (its known classes where it names them): needs ``config.data``."""
        data = self.config["data"]
        return str(data["known"] or data["split"])


def _versioned(document: Any, source: str, current: int, kind: str, hint: str) -> int:
    """The document's ``format_version`` (:data:`UNVERSIONED` when absent); refuses a
    non-object and a version this osad does not read."""
    if not isinstance(document, dict):
        raise RunDirError(f"{source} must hold a JSON object, got {kind_of(document)}; {hint}")
    version = document.get("format_version", UNVERSIONED)
    try:
        check_format(version, source, RunDirError, current=current, kind=kind)
    except RunDirError as exc:
        raise RunDirError(f"{exc}; {hint}") from None
    return version


def read_metrics(
    path: str | Path, run: str | Path | None = None, remedy: str | None = None
) -> RunMetrics:
    """The ``metrics.json`` at ``path`` (schema: docs/evaluation.md), checked by
    :func:`check_metrics`. ``run``: the run directory it belongs to, the record's
    ``path`` (default: ``path``). ``remedy``: what a refusal tells to do (default:
    evaluate ``run`` again with ``osad test RUN --force``).

    Raises :class:`RunDirError` (one line: the file, the key or version, the remedy).
    """
    path = Path(path)
    hint = remedy or f"evaluate the run again with 'osad test {run or 'RUN'} --force'"
    document = load_document(path, hint)
    config = document.get("config") if isinstance(document, dict) else None
    task = config.get("task", "openset") if isinstance(config, dict) else "openset"
    if task != "openset":  # e.g. anti-spoofing results: no open-set conditions
        raise RunDirError(
            f"{path} holds the results of a 'task: {task}' run; osad report and sweeps "
            "tabulate open-set runs only (its own tables are in its results.md)"
        )
    version = _versioned(document, str(path), METRICS_FORMAT, "metrics format", hint)
    try:
        conditions = check_metrics(document, str(path))
    except RunDirError as exc:
        if "format_version" not in document:
            hint = f"it has no format_version, so an older osad wrote it; {hint}"
        raise RunDirError(f"{exc}; {hint}") from None
    owner = path if run is None else Path(run)
    return RunMetrics(owner, version, conditions, document["config"], document)


def check_metrics(document: dict[str, Any], source: str) -> dict[str, ConditionMetrics]:
    """The conditions of a ``metrics.json`` document, every key a reader relies on of
    the right type: ``config`` an object, a ``clean`` condition, and per condition the
    attack, closed-set accuracy in [0, 1], AUROC per score and, where recorded, the
    settings (an object).
    Raises :class:`RunDirError` naming ``source`` and the key."""
    check = DocumentCheck(source, RunDirError)
    check.field(document, "config", dict)
    conditions = check.field(document, "conditions", dict)
    check.field(conditions, "clean", dict, prefix="conditions.")
    checked = {}
    for name, condition in conditions.items():
        key = f"conditions.{name}"
        check.value(condition, key, dict)
        accuracy = check.field(
            condition, "closed_set_accuracy", float, prefix=f"{key}.", low=0, high=1
        )
        check.field(condition, "auroc", dict, prefix=f"{key}.")
        auroc = check.numbers(condition["auroc"], f"{key}.auroc", finite=False)
        attack = check.field(condition, "attack", dict, prefix=f"{key}.")
        check.field(attack, "name", str, prefix=f"{key}.attack.")
        try:
            attack_text(attack)
        except (TypeError, ValueError, KeyError, OsadError):
            check.fail(f"{key}.attack", "does not describe an attack")
        settings = None
        if "settings" in condition:  # absent: written before the record existed
            settings = check.field(condition, "settings", dict, prefix=f"{key}.")
        checked[name] = ConditionMetrics(accuracy, auroc, attack, settings)
    return checked


@dataclass(frozen=True)
class SweepSummary:
    """A checked ``summary.json`` (:func:`osad.sweep.summary.summarize` documents its
    keys); ``document`` is the whole file, as :func:`osad.sweep.summary_markdown` takes it."""

    path: Path
    format_version: int
    sweep: str
    splits: list[int]
    conditions: dict[str, str]  # condition -> its attack, described
    scores: list[str]
    methods: dict[str, Any]  # label -> {"splits", "conditions": {name: cell}}
    document: dict[str, Any]


def read_summary(path: str | Path) -> SweepSummary:
    """The ``summary.json`` at ``path``: every key the tables read, checked (each cell
    ``{"mean", "std", "n", "values"}``, ``std`` null for one split).

    Raises :class:`RunDirError` (one line: the file, the key or version, the remedy).
    """
    path = Path(path)
    hint = "write it again with 'osad sweep PRESET --out DIR --summary-only'"
    document = load_document(path, hint)
    version = _versioned(document, str(path), SUMMARY_FORMAT, "summary format", hint)
    if "format_version" not in document:
        document = {key: [] for key in SUMMARY_LATER_KEYS} | document
    check = DocumentCheck(str(path), RunDirError)
    try:
        check.field(document, "sweep", str)
        splits = check.field(document, "splits", list)
        for i, split in enumerate(splits):
            check.value(split, f"splits.{i}", int)
        for key in ("runs", "finished"):
            check.field(document, key, int, low=0)
        for key in ("missing", "stale", "paired"):
            check.field(document, key, list)
        conditions = check.field(document, "conditions", dict)
        for name, text in conditions.items():
            check.value(text, f"conditions.{name}", str)
        scores = check.field(document, "scores", list)
        for i, score in enumerate(scores):
            check.value(score, f"scores.{i}", str)
        methods = check.field(document, "methods", dict)
        for label, method in methods.items():
            key = f"methods.{label}"
            check.value(method, key, dict)
            check.field(method, "splits", list, prefix=f"{key}.")
            cells = check.field(method, "conditions", dict, prefix=f"{key}.")
            for name, cell in cells.items():
                where = f"{key}.conditions.{name}"
                check.value(cell, where, dict)
                check.field(cell, "closed_set_accuracy", dict, prefix=f"{where}.")
                check.field(cell, "auroc", dict, prefix=f"{where}.")
                _check_stats(check, cell["closed_set_accuracy"], f"{where}.closed_set_accuracy")
                for score, stats in cell["auroc"].items():
                    _check_stats(check, stats, f"{where}.auroc.{score}")
        check.field(document, "compute", dict)
    except RunDirError as exc:
        raise RunDirError(f"{exc}; {hint}") from None
    return SweepSummary(
        path, version, document["sweep"], splits, conditions, scores, methods, document
    )


def _check_stats(check: DocumentCheck, stats: Any, key: str) -> None:
    """A summary cell: mean, std (null for one value), count and the values."""
    check.value(stats, key, dict)
    check.field(stats, "mean", float, prefix=f"{key}.", finite=False)
    check.field(stats, "std", (float, type(None)), prefix=f"{key}.", finite=False)
    check.field(stats, "n", int, prefix=f"{key}.", low=1)
    check.field(stats, "values", list, prefix=f"{key}.")
