"""The face anti-spoofing configuration (``task: fas``): a second typed schema.

It is parsed by the same strict machinery as the open-set schema
(:func:`osad.config.build_config`): defaults below (the embedded face domains
``lfw-faces``, held-out domain ``phone``; equal to ``configs/fas-faces.yaml``), then a
YAML file, then ``key=value`` overrides. ``osad train --config configs/fas-oci-to-m.yaml`` and
``osad test RUN_DIR`` select it through the top-level ``task: fas`` key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from osad.checkpoint import CheckpointConfig, check_checkpoint_section
from osad.config.loader import ConfigSource, build_config
from osad.errors import require, shown, unknown_name
from osad.fas.methods import META_METHODS
from osad.runtime import validate_device

# train.inner_reduction: how the losses of one domain's batch are reduced over its frames.
INNER_REDUCTIONS = ("mean", "sum")


@dataclass
class FasDataConfig:
    """Which domains train (sources) and which one tests (target)."""

    # "lfw-faces": capture domains of scikit-image's 100 real LFW face crops with
    # print/replay attacks made by image transformations (embedded, the default);
    # "digits": synthetic camera domains built from scikit-learn digits (embedded);
    # "faces": the public sets, read from frame lists under ``root``.
    name: str = "lfw-faces"
    root: str = ""
    sources: list[str] = field(default_factory=lambda: ["studio", "webcam", "cctv"])
    target: str = "phone"
    image_size: int = 32
    # Share of each source domain's videos held out to choose the decision threshold.
    val_fraction: float = 0.2
    partition_seed: int = 0


@dataclass
class FasModelConfig:
    """Feature extractor F, depth estimator D, meta learner M (``fas/model.py``)."""

    # The tiny default; the paper's sizes are in configs/fas-*-to-*.yaml.
    stem_width: int = 8
    # One list per downsampling block of F: the widths of its 3x3 convs; the depth map
    # is image_size / 2**len(blocks) on a side.
    blocks: list[list[int]] = field(default_factory=lambda: [[16], [24]])
    depth_widths: list[int] = field(default_factory=lambda: [16])
    learner_widths: list[int] = field(default_factory=lambda: [32, 32])


@dataclass
class MetaTrainConfig:
    """Meta-learning across the source domains (``fas/trainer.py``)."""

    iterations: int = 400
    # Real frames and, as many, attack frames per source domain per iteration.
    batch_size: int = 12
    lr: float = 1e-3
    weight_decay: float = 0.0
    # The inner step: 0.1 on summed losses, the setting of the inner-step study
    # (docs/anti-spoofing.md) with the largest paired gain of rfmeta over no-meta on the
    # embedded faces; the authors' 1e-3 on averaged losses is configs/fas-faces-authors.yaml.
    inner_lr: float = 0.1
    # How every loss is reduced over a batch's frames: "mean" (the authors' code) or
    # "sum" (the paper's equations; the inner step is then batch-size times larger).
    # See INNER_REDUCTIONS and osad.fas.trainer.meta_step.
    inner_reduction: str = "sum"
    depth_weight: float = 10.0
    meta_test_weight: float = 1.0
    eval_every: int = 100


@dataclass
class FasEvalConfig:
    batch_size: int = 256
    # Held-out domains tested on besides data.target (never a source); osad test adds
    # one to an evaluated run without recomputing the others (osad.fas.evaluate).
    targets: list[str] = field(default_factory=list)


@dataclass
class FasConfig:
    """A complete, validated face anti-spoofing run configuration."""

    task: str = "fas"
    method: str = "rfmeta"
    seed: int = 0
    device: str = "auto"
    data: FasDataConfig = field(default_factory=FasDataConfig)
    model: FasModelConfig = field(default_factory=FasModelConfig)
    train: MetaTrainConfig = field(default_factory=MetaTrainConfig)
    eval: FasEvalConfig = field(default_factory=FasEvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_name(self) -> str:
        """The default run-directory name."""
        return f"fas-{self.data.name}-{self.method}-to-{self.data.target}"

    @property
    def depth_size(self) -> int:
        return self.data.image_size >> len(self.model.blocks)


def make_fas_config(file: ConfigSource = None, overrides: Sequence[str] = ()) -> FasConfig:
    """Build and validate a :class:`FasConfig` from defaults, a YAML file and overrides."""
    config = build_config(FasConfig, file, overrides)
    validate_fas(config)
    return config


def _positive_widths(widths: list[int], key: str) -> None:
    require(len(widths) >= 1, f"'{key}' must list at least one width")
    require(all(w >= 1 for w in widths), f"'{key}' entries must be >= 1, got {shown(widths)}")


def validate_fas(config: FasConfig) -> None:
    """Check names against the registries and every value against its range."""
    from osad.fas.data import fas_collection

    require(config.task == "fas", f"'task' must be 'fas' for this schema, got '{config.task}'")
    if config.method not in META_METHODS:
        raise unknown_name("method", config.method, META_METHODS)
    validate_device(config.device)

    d = config.data
    collection = fas_collection(d.name)
    for name in [*d.sources, d.target]:
        if name not in collection.domains:
            raise unknown_name(f"{d.name} domain", name, collection.domains)
    require(
        len(set(d.sources)) == len(d.sources), f"'data.sources' has duplicates: {shown(d.sources)}"
    )
    require(
        d.target not in d.sources,
        f"'data.target' {d.target} is also a source; hold out a domain that is not trained on",
    )
    for name in config.eval.targets:
        if name not in collection.domains:
            raise unknown_name(f"{d.name} domain", name, collection.domains)
        role = "data.target" if name == d.target else "a source (data.sources)"
        require(
            name not in d.sources and name != d.target,
            f"'eval.targets' lists {name}, which is {role}; list held-out domains besides "
            "data.target",
        )
    require(
        len(set(config.eval.targets)) == len(config.eval.targets),
        f"'eval.targets' has duplicates: {shown(config.eval.targets)}",
    )
    needed = 1 if not META_METHODS[config.method].meta else 2
    require(
        len(d.sources) >= needed,
        f"method {config.method} needs at least {needed} source domains, got {shown(d.sources)}",
    )
    require(0 < d.val_fraction < 1, f"'data.val_fraction' must be in (0, 1), got {d.val_fraction}")

    m = config.model
    require(m.stem_width >= 1, f"'model.stem_width' must be >= 1, got {m.stem_width}")
    require(len(m.blocks) >= 1, "'model.blocks' must list at least one block")
    for i, block in enumerate(m.blocks):
        _positive_widths(block, f"model.blocks[{i}]")
    _positive_widths(m.depth_widths, "model.depth_widths")
    _positive_widths(m.learner_widths, "model.learner_widths")
    scale = 2 ** len(m.blocks)
    require(
        d.image_size >= scale and d.image_size % scale == 0,
        f"'data.image_size' must be a multiple of 2**len(model.blocks) = {scale}, "
        f"got {d.image_size}",
    )

    t = config.train
    require(t.iterations >= 1, f"'train.iterations' must be >= 1, got {t.iterations}")
    # BatchNorm in training mode needs two samples per class and domain.
    require(t.batch_size >= 2, f"'train.batch_size' must be >= 2, got {t.batch_size}")
    require(t.lr > 0, f"'train.lr' must be > 0, got {t.lr}")
    require(t.weight_decay >= 0, f"'train.weight_decay' must be >= 0, got {t.weight_decay}")
    require(t.inner_lr > 0, f"'train.inner_lr' must be > 0, got {t.inner_lr}")
    if t.inner_reduction not in INNER_REDUCTIONS:
        raise unknown_name("train.inner_reduction", t.inner_reduction, INNER_REDUCTIONS)
    require(t.depth_weight >= 0, f"'train.depth_weight' must be >= 0, got {t.depth_weight}")
    require(
        t.meta_test_weight >= 0, f"'train.meta_test_weight' must be >= 0, got {t.meta_test_weight}"
    )
    require(t.eval_every >= 1, f"'train.eval_every' must be >= 1, got {t.eval_every}")
    require(
        config.eval.batch_size >= 1, f"'eval.batch_size' must be >= 1, got {config.eval.batch_size}"
    )
    check_checkpoint_section(config.checkpoint)
