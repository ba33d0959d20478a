"""The run configuration's schema: typed dataclasses with the defaults of the embedded
digits OSDN setting (see :mod:`osad.config`).

Attack budgets (``eps``, step sizes) are in units of 1/255 of the [0, 1] pixel
range, for both norms. An attack's own parameters live in its ``params`` mapping,
declared by the attack (:mod:`osad.attacks.registry`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from osad.attacks.registry import (
    ATTACK_SPECS,
    SHARED_FIELDS,
    attack_spec,
    describe,
    find_param,
)
from osad.checkpoint import CheckpointConfig
from osad.config.loader import coerce
from osad.errors import ConfigError
from osad.openset import SCORERS, check_scorer_options, scorer_option_types, scorer_options

# Which test images a condition attacks: both kinds, the known only, or the unknown only.
PAIRINGS = ("both", "known", "unknown")
ALL_SCORES = "all"


@dataclass
class AttackConfig:
    """One attack setting: what every attack shares, and the attack's own ``params``.

    ``eps`` is in 1/255 units; ``loss`` unset (``None``) is the attack's default
    (``ce``; ``margin`` for Square). ``params`` holds the attack's parameters
    (:class:`osad.attacks.registry.Param`), e.g. ``{"alpha": 2.0, "steps": 10}`` for
    PGD (step sizes in 1/255); those left out take the attack's defaults, e.g.
    ``alpha`` is ``eps / 4`` for PGD and ``1.25 eps`` for FGSM-RS. :meth:`resolved`
    fills them in. A mapping may also give them flat (``{"name": "pgd", "steps": 20}``),
    as configuration files and format-1 saved runs do.
    """

    name: str = "pgd"
    norm: str = "linf"
    eps: float = 8.0
    restarts: int = 1
    loss: str | None = None
    target: str = "classifier"
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_tree(cls, data: dict[str, Any], key: str = "attack") -> dict[str, Any]:
        """``data`` with the attack's parameters given flat moved into ``params`` and
        typed by the attack's declaration; null ones are unset. One-line
        :class:`ConfigError` for an unknown attack, or a key no attack takes."""
        data = dict(data)
        params = data.pop("params", None) or {}
        if not isinstance(params, dict):
            raise ConfigError(f"'{key}.params' must be a mapping, got {params!r}")
        for name in [k for k in data if k not in SHARED_FIELDS]:
            params[name] = data.pop(name)
        name = data.get("name", cls.name)
        if not isinstance(name, str):  # refused by the loader, which types 'name'
            return {**data, "params": params}
        spec = attack_spec(name, f"{key}.name")
        typed = {}
        for param, value in params.items():
            # Another attack's parameter is typed here and refused by validation,
            # which says whose it is; a name no attack has is refused now.
            declared = spec.params.get(param) or find_param(param)
            if declared is None:
                raise ConfigError(spec.misplaced(param, key))
            if value is not None:
                typed[param] = coerce(value, declared.type, f"{key}.{param}")
        return {**data, "params": typed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackConfig:
        """An AttackConfig from a mapping of either layout (flat or ``params``)."""
        return cls(**cls.from_tree(data))

    @staticmethod
    def reset_on_rename(node: dict[str, Any], given: set[str]) -> None:
        """After an override renamed the attack of the mapping ``node``: keep its budget,
        reset its loss and parameters to the new attack's defaults unless ``given`` (the
        overridden keys under it) sets them, and take a budget the new attack fixes."""
        if "loss" not in given:
            node["loss"] = None
        kept = {k.removeprefix("params.") for k in given} - set(SHARED_FIELDS)
        params = dict(node.pop("params", None) or {})
        for key in [k for k in node if k not in SHARED_FIELDS]:
            params[key] = node.pop(key)
        node["params"] = {k: v for k, v in params.items() if k in kept}
        spec = ATTACK_SPECS.get(node.get("name"))  # an unknown name is refused later
        for key, value in (spec.fixed if spec else {}).items():
            if key not in given:
                node[key] = value

    def resolved(self) -> AttackConfig:
        """A copy with the loss and every parameter stated (defaults filled in)."""
        spec = attack_spec(self.name)
        return dataclasses.replace(
            self,
            loss=spec.loss if self.loss is None else self.loss,
            params=spec.resolved_params(self.params, self.eps),
        )

    def record(self) -> dict[str, Any]:
        """The resolved attack as one flat mapping (shared fields, then its parameters),
        as metrics.json records a condition's attack; :meth:`from_dict` reads it back."""
        resolved = self.resolved()
        shared = {k: getattr(resolved, k) for k in SHARED_FIELDS}
        return {**shared, **resolved.params}

    @property
    def eps_unit(self) -> float:
        """``eps`` in [0, 1] pixel units."""
        return self.eps / 255.0

    def describe(self) -> str:
        """One line for tables, e.g. ``PGD linf eps 8/255, step 2/255, 10 steps``."""
        return describe(self.resolved())


@dataclass
class DataConfig:
    """Dataset, open-set split, partition, augmentation and where the files are."""

    name: str = "digits"
    split: int = 0
    # Explicit known classes (original ids; for data.name=folder also class names)
    # instead of the split's; the rest are unknown.
    known: list[int | str] = field(default_factory=list)
    # "" = the split's held-out classes; a dataset name or an image-folder path =
    # out-of-distribution unknowns (that dataset's test set, or every image of the folder).
    unknown: str = ""
    # 0 keeps the native resolution; any other value resizes (bilinear) to a square.
    image_size: int = 0
    # 0 keeps the native channels; 1 (gray) or 3 (RGB) converts every image to them.
    channels: int = 0
    # Only for datasets without an official test set (digits).
    test_fraction: float = 0.3
    val_fraction: float = 0.1
    partition_seed: int = 0
    crop_padding: int = 0
    hflip: bool = False
    # "" = $OSAD_DATA_ROOT, else ~/.cache/osad/data; --data-root overrides it.
    root: str = ""
    # Fetch missing files from the official URLs (MD5-verified).
    download: bool = True
    # Check present files against their official MD5 (false for re-packed copies).
    verify: bool = True


@dataclass
class ModelConfig:
    """Encoder architecture; the method decides which heads are attached."""

    arch: str = "resnet18"
    width: int = 16
    latent_dim: int = 128
    # One form of DENOISERS, or several joined by '+' (applied in order at each place),
    # e.g. "gaussian+cbam".
    denoise: str = "gaussian"
    # 0 = after the stem, 1..4 = after residual stage 1..4.
    denoise_places: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])


# Digits budget: 32/255 = two of the 16 gray-level steps of the 8x8 digits. At 24/255
# an undefended model keeps about 60% PGD accuracy; at 32/255 it drops to about 40%
# while clean accuracy stays near 98% (measured, see README).
DIGITS_EPS = 32.0


def _digits_train_attack() -> AttackConfig:
    # alpha unset: eps/4 for PGD, and 1.25 eps after `train.attack.name=fgsm-rs`.
    return AttackConfig(name="pgd", eps=DIGITS_EPS, params={"steps": 5})


@dataclass
class TrainConfig:
    """Optimisation and the training attack."""

    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    # OSDN ablations: drop the decoder, or drop the rotation self-supervision.
    reconstruction: bool = True
    self_supervision: bool = True
    reconstruction_weight: float = 1.0
    rotation_weight: float = 1.0
    # OSDN: run the encoder once over [x_adv; x_r_adv] (BatchNorm statistics of the
    # 2B images together), or once per branch as the authors' code does.
    fused_branches: bool = True
    # OSDN-CAML mutual learning: weight of each KL term (2 in the paper) and the
    # softmax temperature (the authors' code uses none, i.e. 1).
    mutual_weight: float = 2.0
    mutual_temperature: float = 1.0
    # batch_size is the global batch of one optimiser step, whatever the number of
    # processes; each process splits its share into this many micro-batches, whose
    # gradients add up before the step (less memory; BatchNorm sees micro-batches).
    grad_accumulation: int = 1
    # Under torchrun: BatchNorm statistics of the whole global batch (all processes)
    # instead of each process's shard. See docs/distributed.md.
    sync_batchnorm: bool = False
    attack: AttackConfig = field(default_factory=_digits_train_attack)


def _digits_eval_attacks() -> dict[str, AttackConfig]:
    return {
        "fgsm": AttackConfig(
            name="fgsm",
            eps=DIGITS_EPS,
            loss="ce",
            params={"alpha": DIGITS_EPS, "steps": 1, "random_start": False},
        ),
        "pgd": AttackConfig(
            name="pgd",
            eps=DIGITS_EPS,
            loss="ce",
            params={"alpha": DIGITS_EPS / 4, "steps": 10, "random_start": True},
        ),
    }


@dataclass
class EvalConfig:
    """The test protocol: attacked conditions and open-set scores."""

    batch_size: int = 256
    attacks: dict[str, AttackConfig] = field(default_factory=_digits_eval_attacks)
    # "all": every score the model supports (reconstruction needs the decoder).
    scores: list[str] = field(default_factory=lambda: [ALL_SCORES])
    # Pairings reported for each attack; "both" (the paper's) is the headline.
    pairings: list[str] = field(default_factory=lambda: ["both"])
    # Options of each score by name, as its class takes them, e.g.
    # {"openmax": {"tail_size": 10}} (eval.score_options.openmax.tail_size=10).
    score_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # "attacked": fit OpenMax on training logits under each condition's attack (the
    # paper's protocol); "clean": fit once on clean training logits.
    openmax_fit: str = "attacked"
    # ROC curves, score histograms, accuracy/AUROC against eps, reconstructions.
    figures: bool = True
    # Budgets (1/255) of the accuracy/AUROC-against-eps figure, for the paper's attack.
    eps_sweep: list[float] = field(default_factory=lambda: [0.0, 8.0, 16.0, 32.0, 64.0])
    # The per-sample worst-case ensemble (osad.eval.ensemble) run as the condition
    # "ensemble" at the paper's budget: fast, standard, plus, or null for none.
    version: str | None = "fast"

    @classmethod
    def from_tree(cls, data: dict[str, Any], key: str = "eval") -> dict[str, Any]:
        """``data`` with ``score_options`` checked against each score's options and
        typed; a format-1 ``openmax_tail`` becomes the ``tail_size`` of every score
        that has one (both OpenMax variants)."""
        data = dict(data)
        options = data.get("score_options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"'{key}.score_options' must be a mapping, got {options!r}")
        options = {name: dict(values or {}) for name, values in options.items()}
        if "openmax_tail" in data:
            tail = data.pop("openmax_tail")
            for name in SCORERS:
                if "tail_size" in scorer_options(name):
                    options.setdefault(name, {}).setdefault("tail_size", tail)
        typed = {}
        for name, values in options.items():
            where = f"{key}.score_options.{name}"
            if not isinstance(values, dict):
                raise ConfigError(f"'{where}' must be a mapping, got {values!r}")
            check_scorer_options(name, values, f"{key}.score_options")
            types = scorer_option_types(name)
            typed[name] = {k: coerce(v, types[k], f"{where}.{k}") for k, v in values.items()}
        return {**data, "score_options": typed}


@dataclass
class PerfConfig:
    """Speed switches for training and evaluation, all off by default.

    None changes the math beyond floating-point rounding, except ``bf16``
    (bfloat16 autocast: convolutions and matrix products in bf16). See
    docs/performance.md for what each buys.
    """

    channels_last: bool = False
    # bf16 autocast on CUDA only: refused on CPU, where it is slower than fp32 on most CPUs.
    bf16: bool = False
    # torch.compile of the encoder and decoder (first steps pay the compilation).
    compile: bool = False
    # CUDA graphs through torch.compile's "reduce-overhead" mode; needs compile and CUDA.
    cuda_graphs: bool = False


@dataclass
class Config:
    """A complete, validated run configuration."""

    task: str = "openset"
    method: str = "osdn"
    seed: int = 0
    device: str = "auto"
    # Deterministic algorithms only (slower on CUDA); see runtime.deterministic_mode.
    deterministic: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_name(self) -> str:
        """The default run-directory name."""
        return f"{self.data.name}-{self.method}-split{self.data.split}"
