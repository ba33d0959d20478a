"""Figures of an open-set evaluation (matplotlib, Agg backend, PNG) in ``eval/figures/``:

* ``roc_<condition>.png``: ROC curves of every score, unknown = positive;
* ``hist_<score>.png``: the score of known and unknown test images, clean and
  under each attack (the ``both`` pairing);
* ``eps_sweep.png``: closed-set accuracy and AUROC per score against eps, under
  the run's ``pgd`` attack (else its largest classifier attack) at each budget
  of ``eval.eps_sweep``, scores fitted on the clean training images;
* ``reconstructions.png`` (models with a decoder): known test images, clean and
  attacked, each beside the decoder's reconstruction from its latent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_curve
from torch import nn
from tqdm.auto import tqdm

from osad.attacks import eval_mode
from osad.attacks.outputs import outputs_under_attack
from osad.config import Config
from osad.data import OpenSetData, to_float
from osad.distributed import is_main
from osad.eval.metrics import auroc, closed_set_accuracy
from osad.eval.options import at_eps, paper_budget
from osad.eval.protocol import EvalResult, make_scorers, score_outputs
from osad.eval.report import score_label
from osad.writers import pyplot

RECONSTRUCTED_IMAGES = 8


def save_roc_curves(result: EvalResult, figures_dir: Path) -> list[Path]:
    """One ROC figure per condition (the ``both`` pairing), a curve per score."""
    plt = pyplot()
    is_unknown = (result.test_labels < 0).numpy()
    paths = []
    for condition in result.conditions:
        fig, ax = plt.subplots(figsize=(4.8, 4.6))
        for score, values in condition.scores.items():
            fpr, tpr, _ = roc_curve(is_unknown, values.numpy())
            ax.plot(fpr, tpr, label=f"{score_label(score)}: {condition.auroc[score]:.3f}")
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
        ax.set_xlabel("false positive rate (known flagged unknown)")
        ax.set_ylabel("true positive rate (unknown flagged)")
        ax.set_title(f"ROC, {condition.name} (AUROC in legend)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        paths.append(_save(fig, figures_dir / f"roc_{condition.name}.png"))
    return paths


def save_histograms(result: EvalResult, figures_dir: Path) -> list[Path]:
    """One figure per score: known vs unknown scores, a panel per condition."""
    plt = pyplot()
    known = (result.test_labels >= 0).numpy()
    paths = []
    for score in result.conditions[0].scores:
        n = len(result.conditions)
        fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
        for ax, condition in zip(axes[0], result.conditions, strict=True):
            values = condition.scores[score].numpy()
            bins = np.histogram_bin_edges(values, bins=30)
            ax.hist(values[known], bins=bins, alpha=0.6, density=True, label="known")
            ax.hist(values[~known], bins=bins, alpha=0.6, density=True, label="unknown")
            ax.set_title(f"{condition.name}: AUROC {condition.auroc[score]:.3f}", fontsize=9)
            ax.set_xlabel(f"{score_label(score)} (higher = more unknown)", fontsize=8)
        axes[0][0].legend(fontsize=7)
        paths.append(_save(fig, figures_dir / f"hist_{score}.png"))
    return paths


def eps_sweep(
    model: nn.Module, data: OpenSetData, config: Config, progress: bool = False
) -> dict[str, Any]:
    """Accuracy and AUROC per score at each eps of ``eval.eps_sweep`` (1/255 units) under
    the paper's attack at that budget; scores fitted once on the clean training images.
    ``progress``: a bar over the budgets (with an ETA) and one per attack pass."""
    device = next(model.parameters()).device
    data = data.to(device)
    bs, seed = config.eval.batch_size, config.seed
    scorers = make_scorers(config, model)
    keep_images = any(s.needs_images for s in scorers.values())
    show = progress and is_main()
    train = outputs_under_attack(
        model,
        data.train_images,
        data.train_labels,
        None,
        batch_size=bs,
        seed=seed,
        desc="eps sweep: score fit",
        progress=show,
    )
    for scorer in scorers.values():
        scorer.fit(train.logits, train.features, data.train_labels)
    base = paper_budget(config)
    known = data.test_known
    sweep: dict[str, Any] = {"attack": base.describe(), "eps": [], "accuracy": [], "auroc": {}}
    budgets = tqdm(config.eval.eps_sweep, desc="eps sweep figure", unit="eps", disable=not show)
    for eps in budgets:
        attack = at_eps(base, eps) if eps > 0 else None
        budgets.set_postfix_str(f"eps {eps:g}/255")
        test = outputs_under_attack(
            model,
            data.test_images,
            data.test_labels,
            attack,
            batch_size=bs,
            seed=seed,
            keep_images=keep_images,
            desc=f"eps {eps:g} test",
            progress=show,
        )
        sweep["eps"].append(eps)
        sweep["accuracy"].append(closed_set_accuracy(test.logits[known], data.test_labels[known]))
        for name, scorer in scorers.items():
            area = auroc(score_outputs(scorer, model, test, bs), ~known.cpu())
            sweep["auroc"].setdefault(name, []).append(area)
    return sweep


def save_eps_sweep(sweep: dict[str, Any], figures_dir: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    left.plot(sweep["eps"], sweep["accuracy"], "o-")
    left.set_ylabel("closed-set accuracy")
    for score, values in sweep["auroc"].items():
        right.plot(sweep["eps"], values, "o-", label=score_label(score))
    right.set_ylabel("AUROC")
    right.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.set_xlabel("eps (1/255)")
        ax.set_ylim(-0.02, 1.02)
    fig.suptitle(f"{sweep['attack'].split(' eps ')[0]} at each eps", fontsize=9)
    return _save(fig, figures_dir / "eps_sweep.png")


def save_reconstructions(
    model: nn.Module, data: OpenSetData, config: Config, figures_dir: Path
) -> Path:
    """Known test images, clean and under the paper's attack, above the decoder's
    reconstruction from each one's latent."""
    device = next(model.parameters()).device
    known = data.test_known.nonzero().squeeze(1)[:RECONSTRUCTED_IMAGES].to(data.test_images.device)
    images = to_float(data.test_images[known].to(device))
    labels = data.test_labels[known].to(device)
    attacked = outputs_under_attack(
        model,
        images,
        labels,
        paper_budget(config),
        batch_size=len(images),
        seed=config.seed,
        keep_images=True,
    ).images
    rows = {"clean": images, "attacked": attacked}
    with torch.no_grad(), eval_mode(model):
        for name in list(rows):
            rows[f"{name}: reconstruction"] = model.decoder(model.encode(rows[name]))
    plt = pyplot()
    fig, axes = plt.subplots(
        len(rows), len(images), figsize=(1.1 * len(images), 1.25 * len(rows)), squeeze=False
    )
    for r, (name, batch) in enumerate(rows.items()):
        for c, image in enumerate(batch.clamp(0, 1).cpu()):
            ax = axes[r][c]
            ax.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(name, fontsize=7)
    fig.suptitle(f"decoder reconstructions, {paper_budget(config).describe()}", fontsize=8)
    return _save(fig, figures_dir / "reconstructions.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    # Under torchrun every process computed the same figure; rank 0 alone writes it.
    if is_main():
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(
    result: EvalResult,
    model: nn.Module,
    data: OpenSetData,
    config: Config,
    figures_dir: Path,
    progress: bool = False,
) -> list[Path]:
    """Every figure of the module docstring; returns their paths. ``progress``: bars on
    stderr for the attacks of the eps sweep."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = save_roc_curves(result, figures_dir) + save_histograms(result, figures_dir)
    paths.append(save_eps_sweep(eps_sweep(model, data, config, progress), figures_dir))
    if getattr(model, "decoder", None) is not None:
        paths.append(save_reconstructions(model, data, config, figures_dir))
    return paths
