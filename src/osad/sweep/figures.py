"""The sweep's figures, from finished runs: ROC curves per condition, and closed-set
accuracy and AUROC against the attack budget.

The budget curve evaluates each chosen run again under one of its attacks at
every ``eps`` of the preset's ``figures`` section (eps 0 = clean; the step
scales with eps as in the preset's attack), with the same protocol as
``osad test``; the numbers are cached in ``SWEEP_DIR/figures/eps-<method>-split<k>.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import h5py
from sklearn.metrics import roc_curve

from osad.config import Config
from osad.data import load_openset
from osad.eval import evaluate
from osad.eval.options import at_eps
from osad.eval.report import score_label
from osad.rundir import RunDir
from osad.runtime import resolve_device
from osad.sweep.runner import is_finished, run_dir, stale_conditions
from osad.sweep.spec import FigureSpec, Sweep
from osad.tasks.openset import load_run_model
from osad.workflow import load_run_config
from osad.writers import pyplot


def roc_figure(sweep: Sweep, spec: FigureSpec, out: Path, path: Path) -> None:
    """ROC curves of ``spec.score`` on ``spec.split``: one panel per condition,
    one curve per method (unknown images as positives)."""
    curves: dict[str, dict[str, Any]] = {}
    for label in spec.methods:
        run = run_dir(out, sweep.method(label), spec.split)
        with h5py.File(run.scores, "r") as f:
            for condition in f:
                group = f[condition]
                is_unknown = ~group["is_known"][()]
                fpr, tpr, _ = roc_curve(is_unknown, group[f"score_{spec.score}"][()])
                curves.setdefault(condition, {})[label] = (fpr, tpr)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 4), squeeze=False)
    for ax, (condition, by_method) in zip(axes[0], curves.items(), strict=True):
        for label, (fpr, tpr) in by_method.items():
            ax.plot(fpr, tpr, label=label)
        ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
        ax.set(title=condition, xlabel="false-positive rate (known flagged)")
        ax.set_aspect("equal")
    axes[0][0].set_ylabel("true-positive rate (unknown flagged)")
    axes[0][-1].legend(loc="lower right", fontsize="small")
    fig.suptitle(f"{score_label(spec.score)} ROC, split {spec.split}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def budget_config(config: Config, spec: FigureSpec) -> Config:
    """``config`` whose attacks are ``spec.attack`` at every nonzero eps of ``spec``, the
    step scaled with the budget, and nothing else: no ensemble (``eval.version``), which
    would add a condition at the largest budget, one point more than the curve has."""
    base = config.eval.attacks[spec.attack]
    attacks = {f"eps{eps:g}": at_eps(base, eps) for eps in spec.eps if eps > 0}
    evaluation = dataclasses.replace(config.eval, attacks=attacks, version=None)
    return dataclasses.replace(config, eval=evaluation)


def budget_curve(run: RunDir, spec: FigureSpec, cache: Path) -> dict[str, Any]:
    """Accuracy and AUROC of ``spec.score`` of one run at every eps of ``spec`` (cached)."""
    config = budget_config(load_run_config(run), spec)
    key = {
        "eps": list(spec.eps),
        "score": spec.score,
        "attacks": [a.describe() for a in config.eval.attacks.values()],
        "version": config.eval.version,  # a cache without it held an ensemble point
    }
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if all(k in cached and cached[k] == v for k, v in key.items()):
            return cached
    data = load_openset(config.data)
    model = load_run_model(run, config, data, resolve_device(config.device))
    result = evaluate(model, data, config, progress=False)
    curve = {
        **key,
        "closed_set_accuracy": [c.closed_set_accuracy for c in result.conditions],
        "auroc": [c.auroc[spec.score] for c in result.conditions],
    }
    cache.write_text(json.dumps(curve, indent=2) + "\n")
    return curve


def budget_figure(curves: dict[str, dict[str, Any]], spec: FigureSpec, path: Path) -> None:
    plt = pyplot()
    fig, (acc, roc) = plt.subplots(1, 2, figsize=(9, 4))
    for label, curve in curves.items():
        acc.plot(curve["eps"], curve["closed_set_accuracy"], marker="o", label=label)
        roc.plot(curve["eps"], curve["auroc"], marker="o", label=label)
    score = score_label(spec.score)
    acc.set(xlabel="eps (1/255)", ylabel="closed-set accuracy", ylim=(0, 1))
    roc.set(xlabel="eps (1/255)", ylabel=f"AUROC {score}", ylim=(0, 1))
    roc.axhline(0.5, color="gray", linestyle=":", linewidth=1)
    roc.legend(fontsize="small")
    attack = next(iter(curves.values()))["attacks"][-1].split(" eps ")[0]
    fig.suptitle(f"{attack} against the budget, split {spec.split}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_figures(sweep: Sweep, out: str | Path) -> list[Path]:
    """The preset's figures into ``SWEEP_DIR/figures``, once the runs they show are
    finished; returns the files written (none while a run they need is missing, stale,
    or left out of the sweep by ``--methods``/``--splits``)."""
    spec = sweep.figures
    out = Path(out)
    labels = [m.label for m in sweep.methods]
    if spec is None or spec.split not in sweep.splits or not set(spec.methods) <= set(labels):
        return []
    runs = {label: run_dir(out, sweep.method(label), spec.split) for label in spec.methods}
    if not all(is_finished(run) for run in runs.values()):
        return []
    configs = {label: sweep.run_config(sweep.method(label), spec.split) for label in runs}
    if any(stale_conditions(run, configs[label]) for label, run in runs.items()):
        return []  # drawn again once osad sweep has re-evaluated the stale runs
    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    roc = folder / f"roc-{spec.score}-split{spec.split}.png"
    roc_figure(sweep, spec, out, roc)
    curves = {
        label: budget_curve(run, spec, folder / f"eps-{label}-split{spec.split}.json")
        for label, run in runs.items()
    }
    budget = folder / f"eps-{spec.score}-split{spec.split}.png"
    budget_figure(curves, spec, budget)
    return [roc, budget]
