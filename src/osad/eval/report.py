"""Writing and printing evaluation results: metrics.json, scores.h5, results.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from osad import __version__
from osad.config import AttackConfig, Config
from osad.eval.protocol import EvalResult

SCORE_LABELS = {
    "msp": "MSP",
    "maxlogit": "MaxLogit",
    "energy": "Energy",
    "odin": "ODIN",
    "mahalanobis": "Mahalanobis",
    "knn": "KNN",
    "openmax": "OpenMax",
    "openmax-bb": "OpenMax (B&B)",
    "reconstruction": "Reconstruction",
}


def metrics_dict(result: EvalResult, config: Config) -> dict[str, Any]:
    """The ``metrics.json`` document."""
    return {
        "osad_version": __version__,
        "seed": config.seed,
        "conditions": {
            c.name: {
                "closed_set_accuracy": c.closed_set_accuracy,
                "auroc": c.auroc,
                "attack": c.attack if c.attack is not None else {"name": "none"},
                "scorer_fit": c.scorer_fit,
            }
            for c in result.conditions
        },
        "counts": {
            "test_known": int((result.test_labels >= 0).sum()),
            "test_unknown": int((result.test_labels < 0).sum()),
        },
        "config": config.to_dict(),
    }


def _attack_text(attack: dict[str, Any] | None) -> str:
    return "none" if attack is None else AttackConfig(**attack).describe()


def results_table(result: EvalResult) -> str:
    """A Markdown table: one row per condition, accuracy and one AUROC column per score."""
    score_names = list(result.conditions[0].auroc)
    header = ["condition", "attack", "closed-set acc"] + [
        f"AUROC {SCORE_LABELS.get(s, s)}" for s in score_names
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for c in result.conditions:
        cells = [c.name, _attack_text(c.attack), f"{c.closed_set_accuracy:.4f}"]
        cells += [f"{c.auroc[s]:.4f}" for s in score_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(result: EvalResult, config: Config, eval_dir: Path, title: str) -> str:
    """Write metrics.json, scores.h5 and results.md into ``eval_dir``; return the table."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "metrics.json").write_text(
        json.dumps(metrics_dict(result, config), indent=2) + "\n"
    )
    with h5py.File(eval_dir / "scores.h5", "w") as f:
        f.attrs["osad_version"] = __version__
        f.attrs["seed"] = config.seed
        n = len(result.test_labels)
        for c in result.conditions:
            g = f.create_group(c.name)
            g.create_dataset("index", data=np.arange(n))
            g.create_dataset("true_class", data=result.test_classes.numpy())
            g.create_dataset("label", data=result.test_labels.numpy())
            g.create_dataset("is_known", data=(result.test_labels >= 0).numpy())
            g.create_dataset("logits", data=c.logits.numpy())
            g.create_dataset("predicted", data=c.logits.argmax(1).numpy())
            for name, values in c.scores.items():
                g.create_dataset(f"score_{name}", data=values.numpy())
            g.attrs["attack"] = json.dumps(c.attack)
    table = results_table(result)
    counts = metrics_dict(result, config)["counts"]
    (eval_dir / "results.md").write_text(
        f"# {title}\n\n{table}\n\n"
        f"{counts['test_known']} known and {counts['test_unknown']} unknown test images; "
        "known images attacked with their true label, unknown images with the predicted label; "
        "AUROC with unknown as the positive class.\n"
    )
    return table
