"""Writing and printing evaluation results: metrics.json, scores.h5, results.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from osad import __version__
from osad.config import Config
from osad.errors import RunDirError
from osad.eval.protocol import ConditionResult, EvalResult, PairingResult
from osad.eval.results import METRICS_FORMAT, attack_text
from osad.openset import score_label
from osad.storage import write_atomic
from osad.writers import h5_bytes, markdown_table


def _pairing_dict(pairing: PairingResult) -> dict[str, Any]:
    return {
        "closed_set_accuracy": pairing.closed_set_accuracy,
        "auroc": pairing.auroc,
        "metrics": pairing.metrics,
    }


def condition_dict(condition: ConditionResult) -> dict[str, Any]:
    """One condition of ``metrics.json``: the core keys (``closed_set_accuracy``,
    ``auroc``, ``attack``) describe the ``both`` pairing; ``metrics`` holds every
    metric per score, ``pairings`` the extra pairings in the same form."""
    return {
        **_pairing_dict(condition.headline),
        "attack": condition.attack if condition.attack is not None else {"name": "none"},
        "scorer_fit": condition.scorer_fit,
        "nonfinite_gradients": condition.nonfinite_gradients,
        "pairings": {
            name: _pairing_dict(p) for name, p in condition.pairings.items() if name != "both"
        },
        **({} if condition.ensemble is None else {"ensemble": condition.ensemble}),
    }


# The config sections that set an evaluation (the rest describe training and data).
EVALUATION_SECTIONS = ("seed", "eval", "perf")


def metrics_dict(
    result: EvalResult,
    config: Config,
    evaluated: dict[str, Any] | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
    run_config: bool = False,
) -> dict[str, Any]:
    """The ``metrics.json`` document (schema: docs/evaluation.md; read back by
    :func:`osad.eval.results.read_metrics`).

    ``evaluated``: what was evaluated (model file, data). ``settings``: per condition
    name, what produced it (:func:`osad.eval.protocol.condition_settings`).
    ``run_config``: ``config`` is the one that trained the model (``osad test``) and is
    recorded whole; otherwise, with ``evaluated`` (a model and data from outside a run,
    ``osad evaluate``), only its evaluation settings are, never the training or data
    sections of a config that did not produce the model."""
    recorded = config.to_dict()
    if evaluated is not None and not run_config:
        recorded = {k: v for k, v in recorded.items() if k in EVALUATION_SECTIONS}
    conditions = {c.name: condition_dict(c) for c in result.conditions}
    for name, cond in conditions.items():
        if settings and name in settings:
            cond["settings"] = settings[name]
    document = {
        "format_version": METRICS_FORMAT,  # osad.eval.results reads it
        "osad_version": __version__,
        "seed": config.seed,
        # The printed figures depend on the floating-point summation order, which
        # depends on the number of threads torch splits its operations over.
        "torch_threads": torch.get_num_threads(),
        "conditions": conditions,
        "counts": {
            "test_known": int((result.test_labels >= 0).sum()),
            "test_unknown": int((result.test_labels < 0).sum()),
        },
        "config": recorded,
    }
    if evaluated is not None:
        document["evaluated"] = evaluated
    return document


PAIRING_TEXT = {
    "both": "",
    "known": " (known attacked, unknown clean)",
    "unknown": " (known clean, unknown attacked)",
}
METRIC_COLUMNS = {
    "auroc": "AUROC",
    "aupr_in": "AUPR-in",
    "aupr_out": "AUPR-out",
    "fpr95_known_positive": "FPR95 (known +)",
    "fpr95_unknown_positive": "FPR95 (unknown +)",
    "oscr": "OSCR",
    "eer": "EER",
    "closed_set_accuracy": "acc",
    "known_accepted_correct": "known acc+correct",
    "unknown_rejected": "unknown rejected",
    "hter": "HTER",
}


def results_table(result: EvalResult) -> str:
    """A Markdown table: one row per condition and pairing, accuracy and one AUROC column
    per score."""
    score_names = list(result.conditions[0].auroc)
    header = ["condition", "attack", "closed-set acc"] + [
        f"AUROC {score_label(s)}" for s in score_names
    ]
    rows = []
    for c in result.conditions:
        for pairing_name, pairing in c.pairings.items():
            cells = [c.name + PAIRING_TEXT[pairing_name], attack_text(c.attack)]
            cells.append(f"{pairing.closed_set_accuracy:.4f}")
            cells += [f"{pairing.auroc[s]:.4f}" for s in score_names]
            rows.append(cells)
    return "\n".join(markdown_table(header, rows))


def metric_tables(result: EvalResult) -> str:
    """Every metric per score: one Markdown table per condition (the ``both`` pairing)."""
    sections = []
    for c in result.conditions:
        metrics = c.headline.metrics
        keys = [k for k in METRIC_COLUMNS if k in next(iter(metrics.values()))]
        rows = [[score_label(s)] + [f"{m[k]:.4f}" for k in keys] for s, m in metrics.items()]
        table = "\n".join(markdown_table(["score"] + [METRIC_COLUMNS[k] for k in keys], rows))
        sections.append(f"### {c.name}: {attack_text(c.attack)}\n\n{table}")
    return "\n\n".join(sections)


def _write_pairing(group: h5py.Group, pairing: PairingResult) -> None:
    logits = list(pairing.logits.values())
    shared = all(t is logits[0] or torch.equal(t, logits[0]) for t in logits)
    if shared:
        group.create_dataset("logits", data=logits[0].numpy())
        group.create_dataset("predicted", data=logits[0].argmax(1).numpy())
    for name, values in pairing.scores.items():
        group.create_dataset(f"score_{name}", data=values.numpy())
        if not shared:  # adaptive attacks: each score attacked its own images
            group.create_dataset(f"logits_{name}", data=pairing.logits[name].numpy())
            group.create_dataset(f"predicted_{name}", data=pairing.logits[name].argmax(1).numpy())


def write_scores(result: EvalResult, config: Config, path: Path) -> None:
    """``scores.h5``: one group per condition (the ``both`` pairing) and, inside it, one
    subgroup per extra pairing, each with every per-sample score."""

    def build(f: h5py.File) -> None:
        f.attrs["osad_version"] = __version__
        f.attrs["seed"] = config.seed
        n = len(result.test_labels)
        for c in result.conditions:
            g = f.create_group(c.name)
            g.create_dataset("index", data=np.arange(n))
            g.create_dataset("true_class", data=result.test_classes.numpy())
            g.create_dataset("label", data=result.test_labels.numpy())
            g.create_dataset("is_known", data=(result.test_labels >= 0).numpy())
            _write_pairing(g, c.headline)
            for name, pairing in c.pairings.items():
                if name != "both":
                    _write_pairing(g.create_group(name), pairing)
            g.attrs["attack"] = json.dumps(c.attack)

    write_atomic(path, h5_bytes(build))


def _read_pairing(group: h5py.Group, metrics: dict[str, dict[str, float]]) -> PairingResult:
    logits, scores = {}, {}
    for name in metrics:
        key = "logits" if "logits" in group else f"logits_{name}"
        logits[name] = torch.from_numpy(group[key][:])
        scores[name] = torch.from_numpy(group[f"score_{name}"][:])
    return PairingResult(logits, scores, metrics)


def read_conditions(eval_dir: Path, names: list[str]) -> EvalResult:
    """The conditions ``names`` of the evaluation in ``eval_dir`` (its metrics.json and
    scores.h5), as :func:`osad.eval.protocol.evaluate` computed them.

    Raises :class:`~osad.errors.RunDirError` naming the file that cannot be read.
    """
    metrics = json.loads((eval_dir / "metrics.json").read_text())["conditions"]
    path = eval_dir / "scores.h5"
    try:
        with h5py.File(path, "r") as f:
            conditions = []
            for name in names:
                cond, g = metrics[name], f[name]
                pairings = {"both": _read_pairing(g, cond["metrics"])}
                for pairing, values in cond["pairings"].items():
                    pairings[pairing] = _read_pairing(g[pairing], values["metrics"])
                attack = None if cond["attack"].get("name") == "none" else cond["attack"]
                conditions.append(
                    ConditionResult(
                        name,
                        attack,
                        pairings,
                        scorer_fit=cond["scorer_fit"],
                        nonfinite_gradients=cond.get("nonfinite_gradients", {}),
                    )
                )
            first = f[next(iter(f))]
            labels = torch.from_numpy(first["label"][:])
            classes = torch.from_numpy(first["true_class"][:])
    except (OSError, KeyError, TypeError, ValueError, StopIteration) as exc:
        raise RunDirError(
            f"{path} cannot be read back ({type(exc).__name__}); pass --force to recompute "
            "the evaluation"
        ) from None
    return EvalResult(conditions, labels, classes)


def write_results(
    result: EvalResult,
    config: Config,
    eval_dir: Path,
    title: str,
    evaluated: dict[str, Any] | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
    run_config: bool = False,
) -> str:
    """Write scores.h5, results.md and, last, metrics.json (:func:`metrics_dict`) into
    ``eval_dir``; return the table. ``eval_dir`` is meant to be the staging folder of
    :func:`osad.storage.replace_dir`: the files become visible together."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    metrics = metrics_dict(result, config, evaluated, settings, run_config)
    write_scores(result, config, eval_dir / "scores.h5")
    table = results_table(result)
    counts = metrics["counts"]
    write_atomic(
        eval_dir / "results.md",
        f"# {title}\n\n{table}\n\n"
        f"{counts['test_known']} known and {counts['test_unknown']} unknown test images. "
        "Classifier attacks: known images attacked with their true label, unknown images with "
        "the predicted label. Score and joint attacks: each score attacked separately, known "
        "images pushed to look unknown, unknown images to look known (accuracy: the lowest "
        "over scores). Ensemble: per sample the worst point over its attacks and the clean "
        "image, for accuracy and for each score separately (docs/evaluation.md); the "
        "headline robustness. AUROC with unknown as the positive class.\n\n"
        f"## Every metric per score\n\n{metric_tables(result)}\n\n"
        "Thresholded rates at the score accepting 95% of the clean known validation images "
        "(docs/evaluation.md).\n",
    )
    write_atomic(eval_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return table
