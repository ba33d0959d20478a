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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from osad import __version__
from osad.checkpoint import load_model
from osad.data.augment import to_float
from osad.documents import DocumentCheck, load_document
from osad.errors import RunDirError
from osad.eval.metrics import auroc, eer, far_frr
from osad.eval.settings import check_evaluation_overrides, reusable
from osad.fas.config import FasConfig, make_fas_config
from osad.fas.data import FasData, fas_collection, load_fas
from osad.fas.frames import REAL, FasFrames
from osad.rundir import RunDir
from osad.runtime import eval_mode
from osad.storage import (
    check_format,
    replace_dir,
    sha256_file,
    tensors_sha256,
    write_atomic,
)
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


@dataclass
class SourceValidation:
    """Scores of the source domains' validation frames and videos: what chooses the
    threshold of every target (the EER threshold of these scores)."""

    scores: Tensor
    labels: Tensor
    video_scores: Tensor
    video_labels: Tensor


def source_validation(
    model: torch.nn.Module, data: FasData, batch_size: int, progress: bool = False
) -> SourceValidation:
    """Score the validation frames of every source domain (and average them per video)."""
    frame_parts, label_parts, video_parts, video_label_parts = [], [], [], []
    for source in data.sources:
        desc = f"score {source.name} val" if progress else ""
        s = frame_scores(model, source.val, batch_size, desc)
        v_score, v_label, _ = video_scores(s, source.val)
        frame_parts.append(s)
        label_parts.append(source.val.labels.cpu())
        video_parts.append(v_score)
        video_label_parts.append(v_label)
    return SourceValidation(
        torch.cat(frame_parts),
        torch.cat(label_parts),
        torch.cat(video_parts),
        torch.cat(video_label_parts),
    )


def target_result(
    model: torch.nn.Module,
    name: str,
    target: FasFrames,
    validation: SourceValidation,
    batch_size: int,
    progress: bool = False,
) -> FasEvalResult:
    """Score the held-out domain ``name`` (frames ``target``) at the threshold that
    ``validation`` chooses."""
    scores = frame_scores(model, target, batch_size, f"score {name}" if progress else "")
    labels = target.labels.cpu()
    v_score, v_label, v_index = video_scores(scores, target)
    val_scores, val_labels = validation.scores, validation.labels
    return FasEvalResult(
        target=name,
        frame=level_result(scores, labels, val_scores, val_labels),
        video=level_result(v_score, v_label, validation.video_scores, validation.video_labels),
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


def evaluate_fas(
    model: torch.nn.Module, data: FasData, config: FasConfig, progress: bool = False
) -> FasEvalResult:
    """Score the target domain and choose thresholds on the sources' validation frames."""
    bs = config.eval.batch_size
    validation = source_validation(model, data, bs, progress)
    return target_result(model, data.target_name, data.target, validation, bs, progress)


# ---------------------------------------------------------------------------
# Incremental evaluation: one result per held-out domain, each with its settings

# The layout of an anti-spoofing metrics.json (below); a file without it was written
# before results were kept per target, and records no settings.
FAS_METRICS_FORMAT = 1


def target_settings(
    config: FasConfig, target: str, model_sha256: str, data_fingerprint: str
) -> dict[str, Any]:
    """Everything the result on held-out domain ``target`` depends on: the domain, the
    source validation split that chooses its threshold, the image size, the batch size,
    the sha256 of the weights file and a sha256 fingerprint of the frames scored (the
    sources' validation frames and the target's; :func:`osad.storage.tensors_sha256`).
    Equal settings give the same numbers (on the same thread count), so an incremental
    ``osad test`` reuses the result."""
    d = config.data
    return {
        "target": target,
        "data": {
            "name": d.name,
            "sources": list(d.sources),
            "val_fraction": d.val_fraction,
            "partition_seed": d.partition_seed,
            "image_size": d.image_size,
        },
        "batch_size": config.eval.batch_size,
        "model_sha256": model_sha256,
        "data_fingerprint": data_fingerprint,
    }


def read_fas_conditions(path: Path, remedy: str) -> dict[str, dict[str, Any]]:
    """The results per held-out domain of an anti-spoofing ``metrics.json`` (each with
    its ``frame``, ``video``, ``source_validation`` and ``settings``); a file written
    before results were kept per target gives its one target without settings.
    Raises :class:`RunDirError` (one line: the file, the key or version, ``remedy``)."""
    document = load_document(path, remedy)
    check = DocumentCheck(str(path), RunDirError)
    try:
        check.value(document, "the document", dict)
        if "conditions" not in document:  # one target, written before the settings record
            return {str(document.get("target")): {}}
        check_format(
            document.get("format_version"),
            str(path),
            RunDirError,
            current=FAS_METRICS_FORMAT,
            kind="anti-spoofing metrics format",
        )
        conditions = check.field(document, "conditions", dict)
        for name, condition in conditions.items():
            check.value(condition, f"conditions.{name}", dict)
            for key in ("frame", "video", "source_validation", "settings"):
                check.field(condition, key, dict, prefix=f"conditions.{name}.")
    except RunDirError as exc:
        raise RunDirError(f"{exc}; {remedy}") from None
    return conditions


def evaluate_fas_run(
    run: RunDir,
    config: FasConfig,
    dest: Path,
    device: torch.device,
    *,
    force: bool = False,
    progress: bool = False,
    overrides: Sequence[str] = (),
) -> str:
    """Evaluate run ``run`` on ``data.target`` and every domain of ``eval.targets``
    (``overrides``: ``eval.*`` keys) into ``dest``; returns the result table.

    Incremental, as the open-set ``osad test`` (:func:`osad.eval.settings.reusable`):
    a target stored in ``dest`` under identical settings (:func:`target_settings`) is
    reused (its entry in metrics.json, its scores and ROC figure are copied unchanged),
    new ones are computed, stored ones not asked for are kept; one asked for under other
    settings is refused unless ``force``, which recomputes everything. When every
    target is stored, nothing is written. The folder is replaced atomically
    (:func:`osad.storage.replace_dir`).

    Raises :class:`~osad.errors.ConfigError` (an override), :class:`RunDirError`.
    """
    check_evaluation_overrides(overrides, FasConfig)
    if overrides:
        config = make_fas_config(config.to_dict(), overrides)
    data = load_fas(config.data, config.depth_size)
    targets = {data.target_name: data.target}
    collection = fas_collection(config.data.name)
    for name in config.eval.targets:
        d = config.data
        targets[name] = collection.load_domain(d.root, name, d.image_size, config.depth_size)
    weights = sha256_file(run.model)
    validation_frames = [t for s in data.sources for t in (s.val.images, s.val.labels)]
    settings = {
        name: target_settings(
            config,
            name,
            weights,
            tensors_sha256([*validation_frames, frames.images, frames.labels, frames.videos]),
        )
        for name, frames in targets.items()
    }
    settings = json.loads(json.dumps(settings))
    reused, kept = reusable(dest, settings, force, read_fas_conditions)
    stored = read_fas_conditions(dest / "metrics.json", "") if reused or kept else {}
    order = [*settings, *kept]
    if len(reused) == len(settings):  # everything asked for is stored already
        return fas_results_table({name: stored[name] for name in order})
    model = load_model(run.model, device)
    bs = config.eval.batch_size
    validation = source_validation(model, data, bs, progress)
    fresh = {
        name: target_result(model, name, frames, validation, bs, progress)
        for name, frames in targets.items()
        if name not in reused
    }
    conditions = {
        name: fas_condition_dict(fresh[name], settings[name]) if name in fresh else stored[name]
        for name in order
    }
    with replace_dir(dest) as staged:
        return write_fas_results(
            conditions, fresh, config, staged, previous=dest, roc=run.roc_figure.name
        )


# ---------------------------------------------------------------------------
# Reports


def fas_results_table(conditions: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per held-out domain and level (frames, videos), from
    the results as metrics.json records them."""
    header = [
        "target",
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
            level,
            str(condition[level]["count"]),
            f"{condition[level]['auc']:.4f}",
            f"{condition[level]['hter_at_val_threshold']:.4f}",
            f"{condition[level]['val_threshold']:.4f}",
            f"{condition[level]['target_eer']:.4f}",
        ]
        for name, condition in conditions.items()
        for level in ("frame", "video")
    ]
    return "\n".join(markdown_table(header, rows))


def fas_condition_dict(result: FasEvalResult, settings: dict[str, Any]) -> dict[str, Any]:
    """One held-out domain's entry of metrics.json: both levels, the source validation
    that chose the threshold, and the settings that produced it."""
    return {
        "frame": asdict(result.frame),
        "video": asdict(result.video),
        "source_validation": {
            "frames": len(result.val_labels),
            "auc": result.val_auc,
            "eer": result.val_eer,
        },
        "settings": settings,
    }


def fas_metrics_dict(conditions: dict[str, dict[str, Any]], config: FasConfig) -> dict[str, Any]:
    """The ``metrics.json`` document: per held-out domain (``data.target`` first, named
    by ``target``) its :func:`fas_condition_dict`."""
    return {
        "format_version": FAS_METRICS_FORMAT,
        "osad_version": __version__,
        "seed": config.seed,
        "torch_threads": torch.get_num_threads(),
        "task": "fas",
        "method": config.method,
        "sources": list(config.data.sources),
        "target": config.data.target,
        "conditions": conditions,
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


# Where scores.h5 holds the frames of a held-out domain: data.target at the top (the
# authors' format), each other one under targets/NAME.
TARGETS_GROUP = "targets"
SOURCE_VALIDATION = "source_validation"


def _h5_place(name: str, config: FasConfig) -> str:
    return "/" if name == config.data.target else f"{TARGETS_GROUP}/{name}"


def _roc_file(eval_dir: Path, roc: str, name: str, config: FasConfig) -> Path:
    """``roc`` (``roc.png``) for data.target, ``roc-NAME.png`` for the other targets."""
    if name == config.data.target:
        return eval_dir / roc
    stem, dot, suffix = roc.rpartition(".")
    return eval_dir / f"{stem}-{name}{dot}{suffix}"


def _write_target(group: h5py.Group, result: FasEvalResult) -> None:
    group.create_dataset("score", data=result.scores.numpy())
    group.create_dataset("label", data=result.labels.numpy())
    group.create_dataset("video", data=result.videos.numpy())
    group.create_dataset(
        "video_names",
        data=np.array(result.video_names, dtype=object),
        dtype=h5py.string_dtype(),
    )
    g = group.create_group("video_level")
    g.create_dataset("score", data=result.video_score.numpy())
    g.create_dataset("label", data=result.video_label.numpy())
    g.create_dataset("video", data=result.video_index.numpy())


def write_fas_results(
    conditions: dict[str, dict[str, Any]],
    fresh: dict[str, FasEvalResult],
    config: FasConfig,
    eval_dir: Path,
    previous: Path | None = None,
    roc: str = "roc.png",
) -> str:
    """Write metrics.json, scores.h5, results.md and a ROC figure per held-out domain
    into ``eval_dir``; return the table.

    ``conditions``: every result to write, as metrics.json records it (in order);
    ``fresh``: those computed now (at least one), the others copied unchanged (their
    scores and ROC figure) from the evaluation folder ``previous``."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    sources = ", ".join(config.data.sources)
    copied = [name for name in conditions if name not in fresh]
    any_result = next(iter(fresh.values()))

    def build(f: h5py.File) -> None:
        f.attrs["osad_version"] = __version__
        f.attrs["seed"] = config.seed
        f.attrs["target"] = config.data.target
        f.attrs["score"] = "probability of a real face; label 1 = real, 0 = attack"
        old = h5py.File(previous / "scores.h5", "r") if copied else None
        try:
            for name in conditions:
                place = _h5_place(name, config)
                if name in fresh:
                    _write_target(f.require_group(place), fresh[name])
                elif place == "/":
                    for key in old:
                        if key not in (TARGETS_GROUP, SOURCE_VALIDATION):
                            old.copy(old[key], f, key)
                else:
                    old.copy(old[place], f.require_group(TARGETS_GROUP), name)
        finally:
            if old is not None:
                old.close()
        g = f.create_group(SOURCE_VALIDATION)
        g.create_dataset("score", data=any_result.val_scores.numpy())
        g.create_dataset("label", data=any_result.val_labels.numpy())

    write_atomic(eval_dir / "scores.h5", h5_bytes(build))
    for name in conditions:
        path = _roc_file(eval_dir, roc, name, config)
        if name in fresh:
            save_roc_figure(fresh[name], path, f"{config.method}: {sources} to {name}")
        else:
            write_atomic(path, _roc_file(previous, roc, name, config).read_bytes())
    table = fas_results_table(conditions)
    title = f"{config.method}: {sources} to {', '.join(conditions)}"
    write_atomic(
        eval_dir / "results.md",
        f"# {title}\n\n{table}\n\n"
        f"Trained on {sources}; tested on the held-out {', '.join(conditions)}. Scores are "
        "the probability of a real face; a video's score is the mean of its frames'. The "
        "threshold is the EER threshold of the source domains' validation data (never the "
        "target's); the target EER is the HTER at the target's own EER threshold, an "
        "oracle operating point.\n",
    )
    # metrics.json last: its presence says the folder is complete.
    write_atomic(
        eval_dir / "metrics.json", json.dumps(fas_metrics_dict(conditions, config), indent=2) + "\n"
    )
    return table
