"""Evaluate any classifier for open-set robustness in one call: :func:`evaluate_model`.

The model is any ``nn.Module`` mapping images in [0, 1] of shape (B, C, H, W)
to logits (B, K) over the K known classes (normalisation inside the model).
Scores that read latent features (Mahalanobis, KNN) need them from a
``features`` callable (images -> (B, D)) or from a forward returning
``(logits, features)``; osad's own :class:`~osad.models.OpenSetNet` gives them
through its ``forward_features``.

The data are tensors or ``torch.utils.data.Dataset``s: known test images with
their labels (0..K-1, the model's output indices), unknown test images, the
training images and labels the scores are fitted on and, optionally,
validation images for the acceptance threshold (else a stratified, seeded 10%
of the training images, not used for the fits).

The evaluation is osad's test protocol (:func:`osad.eval.protocol.evaluate`)
run on an :class:`~osad.data.OpenSetData` built from those inputs, with an
evaluation config built from the arguments; the results are written by the
writers of ``osad test`` (:func:`~osad.eval.report.write_results`,
:func:`~osad.eval.figures.write_figures`). ``metrics.json`` records what was
evaluated (``evaluated``: the model's class, factory and weights digest, the
data source and sizes) and, under ``config``, only the evaluation settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from osad.attacks import eval_mode
from osad.attacks.engine import NORMS
from osad.config import ALL_SCORES, Config, DataConfig
from osad.data import ClassImages, DatasetInfo, OpenSetData, RawDataset, build_openset, to_float
from osad.errors import DataError, InputError, RunDirError, unknown_name
from osad.eval.figures import write_figures
from osad.eval.options import NO_ENSEMBLE, at_eps, select_evaluation
from osad.eval.protocol import ConditionResult, EvalResult, evaluate
from osad.eval.report import metrics_dict, results_table, write_results
from osad.inputs import check_images, check_labels
from osad.openset import SCORERS
from osad.storage import replace_dir

# Run when neither ``attacks`` nor ``version`` is given: the per-sample worst-case
# ensemble (osad.eval.ensemble), beside the paper's PGD-10 whose budget it shares.
DEFAULT_VERSION = "standard"
# Share of the training images held out for the acceptance threshold when no
# validation images are given (stratified, seeded by ``seed``).
VAL_FRACTION = 0.1
# The classifier attacks of osad's evaluation config, whose budget ``eps``/``norm`` replace.
CLASSIFIER_ATTACKS = ("fgsm", "pgd")

Images = Tensor | Dataset


class OpenSetModel(nn.Module):
    """A classifier seen through osad's model interface: ``forward`` gives the logits,
    ``forward_features`` the pair (logits, features (B, D) or None).

    ``tuple_forward``: the wrapped forward returns ``(logits, features)``;
    ``features``: a callable images -> features (run on the same images).
    Features of more than two dimensions are flattened to (B, D).
    """

    def __init__(
        self,
        net: nn.Module,
        features: Callable[[Tensor], Tensor] | None = None,
        tuple_forward: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.feature_fn = features
        self.tuple_forward = tuple_forward

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.net(x)
        if self.tuple_forward:
            logits, features = out[0], out[1]
        else:
            logits = out
            features = None if self.feature_fn is None else self.feature_fn(x)
        return logits, None if features is None else features.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out[0] if self.tuple_forward else out


@dataclass
class ModelEvaluation:
    """What :func:`evaluate_model` returns.

    ``result``: per condition (``clean`` and each attack), per pairing and score,
    every metric and the per-sample scores and logits; ``metrics``: the
    ``metrics.json`` document; ``table``: the Markdown table of ``results.md``;
    ``out``: where the files were written (None if nowhere).
    """

    result: EvalResult
    metrics: dict[str, Any]
    table: str
    out: Path | None

    @property
    def conditions(self) -> list[str]:
        return [c.name for c in self.result.conditions]

    @property
    def scores(self) -> list[str]:
        return list(self.result.conditions[0].auroc)

    def condition(self, name: str) -> ConditionResult:
        for condition in self.result.conditions:
            if condition.name == name:
                return condition
        raise unknown_name("condition", name, self.conditions)

    def metric(
        self, name: str, condition: str = "clean", score: str = "msp", pairing: str = "both"
    ) -> float:
        """One metric (``auroc``, ``fpr95_known_positive``, ``oscr``, ``closed_set_accuracy``,
        ... see docs/scores-and-metrics.md) of ``score`` under ``condition``."""
        pairings = self.condition(condition).pairings
        if pairing not in pairings:
            raise unknown_name(f"pairing of {condition}", pairing, pairings)
        metrics = pairings[pairing].metrics
        if score not in metrics:
            raise unknown_name("score", score, metrics)
        if name not in metrics[score]:
            raise unknown_name("metric", name, metrics[score])
        return metrics[score][name]

    def accuracy(self, condition: str = "clean") -> float:
        """Closed-set accuracy on the known test images (both sides attacked); under an
        adaptive attack the lowest over scores."""
        return self.condition(condition).closed_set_accuracy

    def auroc(self, condition: str = "clean") -> dict[str, float]:
        """AUROC per score, unknown = positive (both sides attacked)."""
        return self.condition(condition).auroc

    def worst_case(self) -> dict[str, Any]:
        """Over the attacked conditions: the lowest closed-set accuracy and, per score, the
        lowest AUROC (possibly a different attack per score); the clean figures when no
        attack ran."""
        from osad.eval.aggregate import worst_case

        conditions = self.metrics["conditions"]
        attacked = [c for name, c in conditions.items() if name != "clean"]
        return worst_case(attacked or [conditions["clean"]])


def evaluate_model(
    model: nn.Module,
    *,
    known_images: Images,
    unknown_images: Images,
    train_images: Images,
    eps: float,
    known_labels: Tensor | None = None,
    train_labels: Tensor | None = None,
    val_images: Images | None = None,
    val_labels: Tensor | None = None,
    features: Callable[[Tensor], Tensor] | None = None,
    norm: str = "linf",
    attacks: Sequence[str] | None = None,
    version: str | None = None,
    scores: Sequence[str] | None = None,
    pairings: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    figures: bool = True,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> ModelEvaluation:
    """Open-set robustness of ``model``: closed-set accuracy and every open-set metric
    per score, clean and under attack.

    Args:
        model: ``nn.Module`` mapping float images (B, C, H, W) in [0, 1] to logits (B, K)
            (or to ``(logits, features)``); put in eval mode while evaluated, its mode
            restored afterwards; no gradient reaches its parameters.
        known_images, known_labels: known-class test images and their labels in 0..K-1.
        unknown_images: test images of classes the model never learned.
        train_images, train_labels: the images the scores are fitted on (OpenMax's
            class means, Mahalanobis, KNN), usually the model's training set.
        val_images, val_labels: clean known images fixing the acceptance threshold
            (95% accepted); default: a stratified 10% of the training images, drawn
            with ``seed`` and left out of the fits.
        Images are tensors (float in [0, 1] or uint8 in 0..255) or Datasets whose
        items are ``(image, label)`` (unknown images: ``image`` or ``(image, ...)``);
        a Dataset's labels replace the ``*_labels`` argument. All images are held in
        memory at once.
        features: callable images -> latent features (B, D), for Mahalanobis and KNN.
        eps: attack budget in 1/255 units for both norms (``eps=8`` is 8/255 in linf;
            an L2 radius of 0.5 in [0, 1] pixel units is ``eps=127.5``).
        norm: ``linf`` or ``l2``.
        attacks: attacks to run besides ``clean``: ``fgsm``, ``pgd`` (10 steps, step
            eps/4), ``adaptive`` (APGD on each score), ``joint`` (APGD on the
            cross-entropy plus each score); default none besides ``version``'s.
        version: the per-sample worst-case ensemble (``fast``, ``standard``, ``plus``;
            docs/evaluation.md), run as condition ``ensemble`` at the ``eps``/``norm``
            budget with the paper's PGD-10 beside it; default ``standard`` when
            ``attacks`` is not given either.
        scores: score names, or ``["all"]``; default every score the model supports.
        pairings: extra pairings ``known``/``unknown``/``all``; ``both`` always runs.
        seed: seeds the attacks and the validation split.
        out: folder to write ``metrics.json``, ``scores.h5``, ``results.md`` and
            ``figures/`` into (as ``osad test``); an existing non-empty folder is
            refused unless ``force``, and replaced only once everything is written.

    Returns:
        :class:`ModelEvaluation`.

    Raises:
        InputError: images, labels, model outputs or a setting are invalid.
        ConfigError: an unknown attack, score or pairing name.
        RunDirError: ``out`` holds files and ``force`` is False.
    """
    known_images, known_labels, known_source = _part(known_images, known_labels, "known_images")
    unknown_images, _, unknown_source = _part(unknown_images, None, "unknown_images")
    train_images, train_labels, train_source = _part(train_images, train_labels, "train_images")
    sources = {"train": train_source, "known_test": known_source, "unknown_test": unknown_source}
    if val_images is not None:
        val_images, val_labels, sources["val"] = _part(val_images, val_labels, "val_images")
    elif val_labels is not None:
        raise InputError("val_labels given without val_images")
    net, model_info = prepare_model(model, features, train_images)
    num_classes = model_info["num_classes"]
    parts = {"known_images": known_images, "unknown_images": unknown_images}
    parts["train_images"] = train_images
    if val_images is not None:
        parts["val_images"] = val_images
    dtype = _common_dtype(parts)
    if dtype != torch.uint8:
        parts = {name: to_float(images) for name, images in parts.items()}
    for name, labels in (
        ("known_labels", known_labels),
        ("train_labels", train_labels),
        ("val_labels", val_labels),
    ):
        if labels is not None:
            _check_class_range(labels, num_classes, name)
    missing = sorted(set(range(num_classes)) - set(train_labels.tolist()))
    if missing:
        raise InputError(
            f"the model outputs {num_classes} logits but train_labels have no image of class "
            f"{missing[0]}: every known class needs training images for the scores' fits"
        )
    data, validation = _openset_data(
        parts, known_labels, train_labels, val_labels, num_classes, seed
    )
    provenance = {
        "model": model_info,
        "data": {
            "source": sources,
            "validation": validation,
            **data_counts(data),
        },
    }
    title = f"{model_info['class']} on {', '.join(sorted(set(sources.values())))}"
    return evaluate_on_data(
        net,
        data,
        provenance,
        title=title,
        eps=eps,
        norm=norm,
        attacks=attacks,
        version=version,
        scores=scores,
        pairings=pairings,
        seed=seed,
        batch_size=batch_size,
        figures=figures,
        out=out,
        force=force,
        progress=progress,
    )


def evaluate_on_data(
    model: nn.Module,
    data: OpenSetData,
    provenance: dict[str, Any],
    *,
    title: str,
    eps: float,
    norm: str = "linf",
    attacks: Sequence[str] | None = None,
    version: str | None = None,
    scores: Sequence[str] | None = None,
    pairings: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    figures: bool = True,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> ModelEvaluation:
    """:func:`evaluate_model` on an :class:`OpenSetData` and a model already prepared by
    :func:`prepare_model`; ``provenance`` is written as ``evaluated`` in metrics.json."""
    out = None if out is None else Path(out)
    if out is not None:
        check_out(out, force)
    num_classes = provenance["model"]["num_classes"]
    if num_classes != data.num_classes:
        raise InputError(
            f"the model outputs {num_classes} logits but the data have {data.num_classes} "
            "known classes: the logits must be those of the known classes, in their order"
        )
    config = evaluation_config(
        model,
        eps=eps,
        norm=norm,
        attacks=attacks,
        version=version,
        scores=scores,
        pairings=pairings,
        seed=seed,
        batch_size=batch_size,
        figures=figures,
    )
    result = evaluate(model, data, config, progress=progress)
    metrics = metrics_dict(result, config, evaluated=provenance)
    if out is None:
        return ModelEvaluation(result, metrics, results_table(result), None)

    def write(folder: Path) -> str:
        table = write_results(result, config, folder, title, evaluated=provenance)
        if config.eval.figures:
            write_figures(result, model, data, config, folder / "figures")
        return table

    with replace_dir(out) as staged:
        table = write(staged)
    return ModelEvaluation(result, metrics, table, out)


def evaluation_config(
    model: nn.Module,
    *,
    eps: float,
    norm: str,
    attacks: Sequence[str] | None,
    version: str | None,
    scores: Sequence[str] | None,
    pairings: Sequence[str] | None,
    seed: int,
    batch_size: int,
    figures: bool,
) -> Config:
    """osad's evaluation config for these arguments (only its ``seed``, ``eval`` and
    ``perf`` sections are used; the others are never written)."""
    if norm not in NORMS:
        raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
        raise InputError(f"eps must be a number > 0 in 1/255 units (8 means 8/255), got {eps!r}")
    if norm == "linf" and eps > 255:
        raise InputError(
            f"eps is in 1/255 units, so at most 255 for linf (8 means 8/255), got {eps:g}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    config = Config(seed=seed)
    config.eval.batch_size = batch_size
    config.eval.figures = figures
    config.eval.eps_sweep = sorted({0.0, eps / 4, eps / 2, float(eps), min(2.0 * eps, 255.0)})
    config.eval.attacks = {
        name: dataclasses.replace(at_eps(config.eval.attacks[name], float(eps)), norm=norm)
        for name in CLASSIFIER_ATTACKS
    }
    if attacks is None and version is None:
        version = DEFAULT_VERSION
    chosen = list(attacks or [])
    if version is not None and not any(a in CLASSIFIER_ATTACKS for a in chosen):
        # The ensemble takes its budget from the paper's classifier attack (PGD-10),
        # which runs as the paper's condition.
        chosen.insert(0, "pgd")
    config = select_evaluation(
        config, attacks=chosen, pairings=pairings, version=version or NO_ENSEMBLE
    )
    config.eval.scores = model_scores(model, scores)
    return config


def model_scores(model: nn.Module, scores: Sequence[str] | None) -> list[str]:
    """``scores`` checked against what ``model`` gives; ``None`` or ``all``: every score
    it supports (feature scores need features, ``reconstruction`` a decoder)."""
    has_features = not isinstance(model, OpenSetModel) or (
        model.tuple_forward or model.feature_fn is not None
    )
    has_decoder = getattr(model, "decoder", None) is not None

    def missing(name: str) -> str | None:
        if name == "reconstruction" and not has_decoder:
            return "an OSDN decoder (model.decoder and model.encode)"
        if SCORERS[name].needs_features and not has_features:
            return "latent features: pass features=... or a forward returning (logits, features)"
        return None

    if scores is None or ALL_SCORES in scores:
        return [name for name in SCORERS if missing(name) is None]
    for name in scores:
        if name not in SCORERS:
            raise unknown_name("score", name, (*SCORERS, ALL_SCORES))
        need = missing(name)
        if need:
            raise InputError(f"score '{name}' needs {need}")
    return list(scores)


def prepare_model(
    model: nn.Module, features: Callable[[Tensor], Tensor] | None, probe_images: Tensor
) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` in osad's interface (see :class:`OpenSetModel`) and its description
    for metrics.json; one forward pass on two ``probe_images`` checks its outputs.

    osad's own :class:`~osad.models.OpenSetNet` is used as it is (its
    ``forward_features`` gives the latent), unless ``features`` is given.
    """
    from osad.models import OpenSetNet

    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if features is not None and not callable(features):
        raise InputError(
            f"features must be a callable images -> (B, D), got {type(features).__name__}"
        )
    parameters = list(model.parameters())
    if not parameters:
        raise InputError("model has no parameters: osad runs the data on the model's device")
    device = parameters[0].device
    x = to_float(probe_images[:2]).to(device)
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x)
            extra = None if features is None else features(x)
    except RuntimeError as exc:  # a shape or dtype the model does not take
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"the model failed on images of shape {tuple(x.shape)} (float in [0, 1]): {first}"
        ) from None
    tuple_forward = isinstance(out, tuple | list)
    if tuple_forward:
        if len(out) != 2 or not all(isinstance(t, Tensor) for t in out):
            raise InputError(
                "model forward must return logits (B, K) or a pair (logits, features), got a "
                f"{type(out).__name__} of {len(out)}"
            )
        if features is not None:
            raise InputError("model forward already returns (logits, features): drop features=")
        out, extra = out
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != len(x):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(f"model must map images (B, C, H, W) to logits (B, K), got {shape}")
    if extra is not None and (not isinstance(extra, Tensor) or extra.shape[0] != len(x)):
        shape = tuple(extra.shape) if isinstance(extra, Tensor) else type(extra).__name__
        raise InputError(f"features must be a tensor (B, D) per image, got {shape}")
    own = isinstance(model, OpenSetNet) and features is None
    net = model if own else OpenSetModel(model, features, tuple_forward)
    cls = type(model)
    info: dict[str, Any] = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "parameters": sum(p.numel() for p in parameters),
        "device": str(device),
        "num_classes": int(out.shape[1]),
        "features": _features_text(own, tuple_forward, features),
    }
    if own or extra is not None:
        with torch.no_grad(), eval_mode(net):
            _, latent = net.forward_features(x)
        info["feature_dim"] = int(latent.shape[1])
    return net, info


def _features_text(own: bool, tuple_forward: bool, features: Callable | None) -> str | None:
    if own:
        return "forward_features (osad model)"
    if tuple_forward:
        return "forward returns (logits, features)"
    if features is None:
        return None
    return f"callable {getattr(features, '__qualname__', type(features).__qualname__)}"


def _part(images: Images, labels: Tensor | None, name: str) -> tuple[Tensor, Tensor | None, str]:
    """(images, labels, source) of one input: a tensor with its labels, or a Dataset."""
    labelled = name != "unknown_images"
    label_name = name.replace("images", "labels")
    if isinstance(images, Dataset):
        if labels is not None:
            raise InputError(f"{name} is a Dataset, which holds the labels: drop {label_name}")
        source = f"Dataset {type(images).__qualname__}"
        images, labels = _materialize(images, name, labelled)
    elif isinstance(images, Tensor):
        source = "tensors"
    else:
        raise InputError(
            f"{name} must be a torch.Tensor or a torch.utils.data.Dataset, "
            f"got {type(images).__name__}"
        )
    if images.dtype == torch.uint8:
        if images.dim() != 4:
            raise InputError(f"{name} must have shape (batch, C, H, W), got {tuple(images.shape)}")
    else:
        check_images(images, name=name)
    if len(images) == 0:
        raise InputError(f"{name} is empty")
    if labelled:
        if labels is None:
            raise InputError(f"{name} is a tensor: pass {label_name} as well (class indices)")
        check_labels(labels, len(images), name=label_name)
    return images, labels.long().cpu() if labels is not None else None, source


def _materialize(dataset: Dataset, name: str, labelled: bool) -> tuple[Tensor, Tensor | None]:
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"{name}: the Dataset must have a length (map-style)") from None
    images, labels = [], []
    for i in range(size):
        item = dataset[i]
        image = item[0] if isinstance(item, tuple | list) else item
        if not isinstance(image, Tensor):
            raise InputError(
                f"{name}[{i}] holds a {type(image).__name__}; the Dataset must return image "
                "tensors (C, H, W), float in [0, 1] or uint8 (give it a transform)"
            )
        images.append(image)
        if labelled:
            if not isinstance(item, tuple | list) or len(item) < 2:
                raise InputError(f"{name}[{i}] must be a pair (image, label)")
            labels.append(int(item[1]))
    try:
        stacked = torch.stack(images)
    except RuntimeError:
        raise InputError(f"{name}: the Dataset's images differ in shape") from None
    return stacked, torch.tensor(labels, dtype=torch.long) if labelled else None


def _common_dtype(parts: dict[str, Tensor]) -> torch.dtype:
    shapes = {name: tuple(images.shape[1:]) for name, images in parts.items()}
    first = next(iter(shapes))
    for name, shape in shapes.items():
        if shape != shapes[first]:
            raise InputError(
                f"{name} are {shape} (C, H, W) images but {first} are {shapes[first]}: "
                "every part must have one image format"
            )
    if all(images.dtype == torch.uint8 for images in parts.values()):
        return torch.uint8
    return torch.float32


def _check_class_range(labels: Tensor, num_classes: int, name: str) -> None:
    if len(labels) and int(labels.max()) >= num_classes:
        raise InputError(
            f"{name} hold class {int(labels.max())} but the model outputs {num_classes} "
            f"logits: labels must be the model's output indices 0..{num_classes - 1}"
        )


def _openset_data(
    parts: dict[str, Tensor],
    known_labels: Tensor,
    train_labels: Tensor,
    val_labels: Tensor | None,
    num_classes: int,
    seed: int,
) -> tuple[OpenSetData, str]:
    """The OpenSetData of the inputs: class ``num_classes`` stands for every unknown image
    (its ``test_classes``); the validation split is osad's (:func:`build_openset`)."""
    known, unknown = parts["known_images"], parts["unknown_images"]
    train = ClassImages(parts["train_images"], train_labels)
    test = ClassImages(
        torch.cat([known, unknown]),
        torch.cat([known_labels, torch.full((len(unknown),), num_classes, dtype=torch.long)]),
    )
    info = DatasetInfo(
        name="in-memory",
        num_classes=num_classes + 1,
        channels=int(known.shape[1]),
        image_size=int(known.shape[-1]),
        mean=(),
        std=(),
        known_splits=(),
        read=lambda _root: RawDataset(train, test),
    )
    given = "val_images" in parts
    try:
        data = build_openset(
            info,
            train,
            test,
            tuple(range(num_classes)),
            (num_classes,),
            val_fraction=0.0 if given else VAL_FRACTION,
            partition_seed=seed,
        )
    except DataError:
        raise InputError(
            f"{len(train_labels)} training images are too few for a stratified "
            f"{VAL_FRACTION:.0%} validation split over {num_classes} classes; "
            "pass val_images and val_labels"
        ) from None
    if given:
        data = dataclasses.replace(data, val_images=parts["val_images"], val_labels=val_labels)
        return data, "given"
    return data, (
        f"{VAL_FRACTION:.0%} of the training images, stratified by class, seed {seed}; "
        "the scores are fitted on the other images"
    )


def data_source(d: DataConfig) -> dict[str, Any]:
    """Which of osad's datasets, classes and split ``d`` reads, for metrics.json."""
    source: dict[str, Any] = {"dataset": d.name}
    source.update({"known": d.known} if d.known else {"split": d.split})
    if d.unknown:
        source["unknown"] = d.unknown
    source.update(partition_seed=d.partition_seed, image_size=d.image_size)
    return source


def data_counts(data: OpenSetData) -> dict[str, Any]:
    """Sizes and image format of ``data`` for metrics.json."""
    return {
        "image_shape": list(data.train_images.shape[1:]),
        "image_dtype": str(data.train_images.dtype).removeprefix("torch."),
        "num_known_classes": data.num_classes,
        "sizes": {
            "train": len(data.train_images),
            "val": len(data.val_images),
            "test_known": int(data.test_known.sum()),
            "test_unknown": int((~data.test_known).sum()),
        },
    }


def check_out(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, or a folder holding files without ``force``."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} is a file; --out must name a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RunDirError(
            f"{out} already holds files; pass --force (force=True) to replace them once the "
            "new results are written"
        )


def evaluate_factory(
    model: str,
    weights: str | Path,
    data_config: DataConfig,
    *,
    device: str = "auto",
    **options: Any,
) -> ModelEvaluation:
    """``osad evaluate``: the model that the factory ``model`` (``module:function`` or
    ``file.py:function``, see :mod:`osad.modelio`) builds, with the safetensors
    ``weights``, on the open-set split of ``data_config`` (any dataset osad reads,
    split as ``osad train`` splits it). ``options``: those of :func:`evaluate_on_data`.
    """
    from osad.data import load_openset
    from osad.modelio import build_model, load_weights_file
    from osad.runtime import resolve_device

    network = build_model(model)
    digest = load_weights_file(network, weights)
    network = network.to(resolve_device(device))
    data = load_openset(data_config)
    prepared, info = prepare_model(network, None, data.train_images)
    info.update(factory=model, weights=str(weights), weights_sha256=digest)
    d = data_config
    provenance = {
        "model": info,
        "data": {
            "source": data_source(d),
            "known_classes": list(data.known_classes),
            "unknown_classes": list(data.unknown_classes),
            "validation": (
                f"{d.val_fraction:g} of the training images, stratified by class, partition "
                f"seed {d.partition_seed} (osad's split); the scores are fitted on the others"
            ),
            **data_counts(data),
        },
    }
    split = f"known classes {','.join(map(str, d.known))}" if d.known else f"split {d.split}"
    title = f"{info['class']} ({model}) on {d.name} {split}"
    return evaluate_on_data(prepared, data, provenance, title=title, **options)
