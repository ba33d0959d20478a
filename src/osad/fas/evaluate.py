"""Face anti-spoofing evaluation on the held-out target domain.

The leave-one-domain-out protocol of Shao, Lan and Yuen, AAAI 2020
(https://arxiv.org/abs/1911.10771): train on the source domains, report AUC
and HTER on the unseen target domain.

Scores are ``sigmoid(M(F(x)))``, the probability that a frame shows a real
face; a frame is accepted as real when its score is >= the threshold. Reported
at frame level and at video level (a video's score is the mean of its frames'):

* AUC, with real frames as positives;
* HTER = (FAR + FRR) / 2 at the threshold chosen on the *source domains'*
  validation frames (their EER threshold): the honest operating point, since
  it never looks at the target;
* the target's EER, i.e. the HTER at the target's own EER threshold: an
  oracle operating point, reported beside it because many papers report it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from osad import __version__
from osad.data.augment import to_float
from osad.eval.metrics import auroc, eer, far_frr
from osad.fas.config import FasConfig
from osad.fas.data import FasData
from osad.fas.frames import REAL, FasFrames
from osad.runtime import eval_mode
from osad.storage import write_atomic
from osad.writers import h5_bytes, markdown_table, pyplot


@torch.no_grad()
def frame_scores(
    model: torch.nn.Module, frames: FasFrames, batch_size: int, desc: str = ""
) -> Tensor:
    """Probability of a real face for every frame (model in eval mode), on the CPU;
    a progress bar when ``desc`` is given."""
    device = next(model.parameters()).device
    out = []
    starts = range(0, len(frames), batch_size)
    with eval_mode(model):
        for i in tqdm(starts, desc=desc, disable=not desc, leave=False, dynamic_ncols=True):
            x = to_float(frames.images[i : i + batch_size].to(device))
            out.append(torch.sigmoid(model(x)).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def video_scores(scores: Tensor, frames: FasFrames) -> tuple[Tensor, Tensor, Tensor]:
    """(score, label, video index) per video present in ``frames``: the mean score
    of its frames."""
    videos = frames.videos.cpu()
    ids, inverse = torch.unique(videos, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(ids)).double()
    means = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, scores.double())
    labels = torch.zeros(len(ids), dtype=torch.long).index_copy_(0, inverse, frames.labels.cpu())
    return (means / counts).float(), labels, ids


@dataclass
class LevelResult:
    """Metrics at one level (frames or videos) of the target domain."""

    count: int
    auc: float
    val_threshold: float  # EER threshold of the source domains' validation data
    far_at_val_threshold: float
    frr_at_val_threshold: float
    hter_at_val_threshold: float
    target_eer: float  # = HTER at the target's own EER threshold (oracle)
    target_eer_threshold: float


def level_result(
    scores: Tensor, labels: Tensor, val_scores: Tensor, val_labels: Tensor
) -> LevelResult:
    """AUC, HTER at the validation EER threshold, and the target EER."""
    _, val_threshold = eer(val_scores, val_labels)
    far, frr = far_frr(scores, labels, val_threshold)
    target_eer, target_threshold = eer(scores, labels)
    return LevelResult(
        count=len(labels),
        auc=auroc(scores, labels == REAL),
        val_threshold=val_threshold,
        far_at_val_threshold=far,
        frr_at_val_threshold=frr,
        hter_at_val_threshold=(far + frr) / 2,
        target_eer=target_eer,
        target_eer_threshold=target_threshold,
    )


@dataclass
class FasEvalResult:
    target: str
    frame: LevelResult
    video: LevelResult
    scores: Tensor
    labels: Tensor
    videos: Tensor
    video_names: tuple[str, ...]
    video_score: Tensor
    video_label: Tensor
    video_index: Tensor
    val_scores: Tensor
    val_labels: Tensor
    val_auc: float
    val_eer: float


def evaluate_fas(
    model: torch.nn.Module, data: FasData, config: FasConfig, progress: bool = False
) -> FasEvalResult:
    """Score the target domain and choose thresholds on the sources' validation frames."""
    bs = config.eval.batch_size
    val_frame_scores, val_frame_labels, val_video_scores, val_video_labels = [], [], [], []
    for source in data.sources:
        s = frame_scores(model, source.val, bs, f"score {source.name} val" if progress else "")
        v_score, v_label, _ = video_scores(s, source.val)
        val_frame_scores.append(s)
        val_frame_labels.append(source.val.labels.cpu())
        val_video_scores.append(v_score)
        val_video_labels.append(v_label)
    val_scores, val_labels = torch.cat(val_frame_scores), torch.cat(val_frame_labels)
    target = data.target
    scores = frame_scores(model, target, bs, f"score {data.target_name}" if progress else "")
    labels = target.labels.cpu()
    v_score, v_label, v_index = video_scores(scores, target)
    return FasEvalResult(
        target=data.target_name,
        frame=level_result(scores, labels, val_scores, val_labels),
        video=level_result(
            v_score, v_label, torch.cat(val_video_scores), torch.cat(val_video_labels)
        ),
        scores=scores,
        labels=labels,
        videos=target.videos.cpu(),
        video_names=target.video_names,
        video_score=v_score,
        video_label=v_label,
        video_index=v_index,
        val_scores=val_scores,
        val_labels=val_labels,
        val_auc=auroc(val_scores, val_labels == REAL),
        val_eer=eer(val_scores, val_labels)[0],
    )


# ---------------------------------------------------------------------------
# Reports


def fas_results_table(result: FasEvalResult) -> str:
    """A Markdown table: one row per level (frames, videos)."""
    header = [
        "level",
        "count",
        "AUC",
        "HTER @ source-val threshold",
        "threshold",
        "target EER (oracle HTER)",
    ]
    rows = [
        [
            name,
            str(level.count),
            f"{level.auc:.4f}",
            f"{level.hter_at_val_threshold:.4f}",
            f"{level.val_threshold:.4f}",
            f"{level.target_eer:.4f}",
        ]
        for name, level in (("frame", result.frame), ("video", result.video))
    ]
    return "\n".join(markdown_table(header, rows))


def fas_metrics_dict(result: FasEvalResult, config: FasConfig) -> dict[str, Any]:
    """The ``metrics.json`` document."""
    return {
        "osad_version": __version__,
        "seed": config.seed,
        "task": "fas",
        "method": config.method,
        "sources": list(config.data.sources),
        "target": result.target,
        "frame": asdict(result.frame),
        "video": asdict(result.video),
        "source_validation": {
            "frames": len(result.val_labels),
            "auc": result.val_auc,
            "eer": result.val_eer,
        },
        "config": config.to_dict(),
    }


def save_roc_figure(result: FasEvalResult, path: Path, title: str) -> None:
    """ROC curves of the target (frames and videos), marking the operating point
    of the source-validation threshold."""
    from sklearn.metrics import roc_curve

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    levels = (
        ("frames", result.scores, result.labels, result.frame),
        ("videos", result.video_score, result.video_label, result.video),
    )
    for name, scores, labels, level in levels:
        far, tpr, _ = roc_curve(labels.numpy() == REAL, scores.numpy())
        (line,) = ax.plot(far, tpr, label=f"{name}: AUC {level.auc:.3f}")
        ax.plot(
            level.far_at_val_threshold,
            1 - level.frr_at_val_threshold,
            "o",
            color=line.get_color(),
            label=f"{name}: HTER {level.hter_at_val_threshold:.3f} @ val threshold",
        )
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
    ax.set_xlabel("false acceptance rate (attacks accepted)")
    ax.set_ylabel("1 - false rejection rate (real accepted)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_fas_results(
    result: FasEvalResult, config: FasConfig, eval_dir: Path, roc_path: Path, title: str
) -> str:
    """Write metrics.json, scores.h5, results.md and the ROC figure; return the table."""
    eval_dir.mkdir(parents=True, exist_ok=True)

    def build(f: h5py.File) -> None:
        f.attrs["osad_version"] = __version__
        f.attrs["seed"] = config.seed
        f.attrs["target"] = result.target
        f.attrs["score"] = "probability of a real face; label 1 = real, 0 = attack"
        f.create_dataset("score", data=result.scores.numpy())
        f.create_dataset("label", data=result.labels.numpy())
        f.create_dataset("video", data=result.videos.numpy())
        f.create_dataset(
            "video_names",
            data=np.array(result.video_names, dtype=object),
            dtype=h5py.string_dtype(),
        )
        g = f.create_group("video_level")
        g.create_dataset("score", data=result.video_score.numpy())
        g.create_dataset("label", data=result.video_label.numpy())
        g.create_dataset("video", data=result.video_index.numpy())
        g = f.create_group("source_validation")
        g.create_dataset("score", data=result.val_scores.numpy())
        g.create_dataset("label", data=result.val_labels.numpy())

    write_atomic(eval_dir / "scores.h5", h5_bytes(build))
    save_roc_figure(result, roc_path, title)
    table = fas_results_table(result)
    sources = ", ".join(config.data.sources)
    write_atomic(
        eval_dir / "results.md",
        f"# {title}\n\n{table}\n\n"
        f"Trained on {sources}; tested on {result.target}. Scores are the probability of "
        "a real face; a video's score is the mean of its frames'. The threshold is the EER "
        "threshold of the source domains' validation data (never the target's); the target "
        "EER is the HTER at the target's own EER threshold, an oracle operating point.\n",
    )
    # metrics.json last: its presence says the folder is complete.
    write_atomic(
        eval_dir / "metrics.json", json.dumps(fas_metrics_dict(result, config), indent=2) + "\n"
    )
    return table
