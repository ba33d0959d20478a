"""The run configuration: one typed schema, validated once at the boundary.

A configuration is built from the defaults below (the embedded digits OSDN
setting), then a YAML file, then ``key=value`` overrides such as
``train.epochs=3`` or ``eval.attacks.pgd.steps=20``. Unknown keys, wrong types
and out-of-range values raise :class:`~osad.errors.ConfigError` naming the key
and, for misspellings, the closest valid one.

Attack budgets (``eps``, ``alpha``) are stated in units of 1/255 of the [0, 1]
pixel range, for both norms; :meth:`AttackConfig.eps_unit` converts.

A saved configuration (a run's ``config.yaml``) starts with ``format_version``
and ``osad_version``; a file given with ``--config`` may carry them too (they
are checked, see :mod:`osad.storage`) or leave them out.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from osad import __version__
from osad.errors import ConfigError, did_you_mean
from osad.storage import FORMAT_VERSION, check_format, write_atomic

NORMS = ("linf", "l2")
ATTACK_NAMES = ("fgsm", "fgsm-rs", "pgd")


@dataclass
class AttackConfig:
    """One attack setting. ``eps`` and ``alpha`` are in 1/255 units."""

    name: str = "pgd"
    norm: str = "linf"
    eps: float = 8.0
    alpha: float = 2.0
    steps: int = 10
    restarts: int = 1
    random_start: bool = True

    @property
    def eps_unit(self) -> float:
        """``eps`` in [0, 1] pixel units."""
        return self.eps / 255.0

    @property
    def alpha_unit(self) -> float:
        """``alpha`` in [0, 1] pixel units."""
        return self.alpha / 255.0


@dataclass
class DataConfig:
    """Dataset, open-set split and partition."""

    name: str = "digits"
    split: int = 0
    # 0 keeps the native resolution; any other value resizes (bilinear) to a square.
    image_size: int = 0
    test_fraction: float = 0.3
    val_fraction: float = 0.1
    partition_seed: int = 0
    crop_padding: int = 0
    hflip: bool = False
    root: str = ""
    # Empty: the known classes of ``split`` in the dataset's split table. Otherwise
    # these class ids are known (overriding ``split``) and every other class is unknown.
    known_classes: list[int] = field(default_factory=list)


@dataclass
class ModelConfig:
    """Encoder architecture; the method decides which heads are attached."""

    arch: str = "resnet18"
    width: int = 16
    latent_dim: int = 128
    denoise: str = "gaussian"
    # 0 = after the stem, 1..4 = after residual stage 1..4.
    denoise_places: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])


# Digits budget: 32/255 = two of the 16 gray-level steps of the 8x8 digits. At 24/255
# an undefended model keeps about 60% PGD accuracy; at 32/255 it drops to about 40%
# while clean accuracy stays near 98% (measured, see README).
DIGITS_EPS = 32.0


def _digits_train_attack() -> AttackConfig:
    return AttackConfig(name="pgd", eps=DIGITS_EPS, alpha=DIGITS_EPS / 4, steps=5)


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
    attack: AttackConfig = field(default_factory=_digits_train_attack)


@dataclass
class CheckpointConfig:
    """When training writes checkpoints into ``RUN_DIR/checkpoints`` (see docs/reliability.md).

    SIGINT and SIGTERM always write one before training stops."""

    # Every N optimisation steps (0: never mid-epoch).
    every_steps: int = 0
    # At the end of every N-th epoch and of the last one (0: never at epoch ends).
    every_epochs: int = 1
    # How many of the newest checkpoints are kept.
    keep: int = 2


def _digits_eval_attacks() -> dict[str, AttackConfig]:
    return {
        "fgsm": AttackConfig(
            name="fgsm", eps=DIGITS_EPS, alpha=DIGITS_EPS, steps=1, random_start=False
        ),
        "pgd": AttackConfig(name="pgd", eps=DIGITS_EPS, alpha=DIGITS_EPS / 4, steps=10),
    }


@dataclass
class EvalConfig:
    """The test protocol: attacked conditions and open-set scores."""

    batch_size: int = 256
    attacks: dict[str, AttackConfig] = field(default_factory=_digits_eval_attacks)
    scores: list[str] = field(default_factory=lambda: ["msp", "openmax"])
    openmax_tail: int = 20
    # "attacked": fit OpenMax on training logits under each condition's attack (the
    # paper's protocol); "clean": fit once on clean training logits.
    openmax_fit: str = "attacked"


@dataclass
class Config:
    """A complete, validated run configuration."""

    method: str = "osdn"
    seed: int = 0
    device: str = "auto"
    # Deterministic algorithms only (slower on CUDA); see runtime.deterministic_mode.
    deterministic: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------
# Parsing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the typed value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise TypeError("optional config fields are not supported")
    # bool is an int subclass: refuse it where a number is expected, and refuse
    # strings such as "False" where a bool is expected (a trap of the reference code).
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and is_number and isinstance(value, int):
        return value
    if tp is float and is_number:
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            full_names = [f"{prefix}.{n}" if prefix else n for n in names]
            raise ConfigError(f"unknown config key '{full}'{did_you_mean(full, full_names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is not a section; cannot set '{key}'")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override; the value is read as YAML (``true``, ``[0,1]``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"malformed override '{text}': expected key=value, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed value in override '{text}': {exc.problem}") from None
    return key, value


def _merge_tree(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into ``base``; a file's ``eval.attacks`` replaces the default set."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "attacks":
            out[key] = _merge_tree(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, got {type(data).__name__}"
        )
    return data


def _without_header(tree: dict[str, Any], source: str, required: bool) -> dict[str, Any]:
    """``tree`` without the saved-file header, whose format version must be ours."""
    tree = dict(tree)
    version = tree.pop("format_version", None)
    tree.pop("osad_version", None)
    if version is not None or required:
        check_format(version, source, ConfigError)
    return tree


def make_config(
    file: str | Path | dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Build and validate a :class:`Config` from defaults, a YAML file and overrides."""
    tree = Config().to_dict()
    if file is not None:
        loaded = dict(file) if isinstance(file, dict) else load_yaml(file)
        source = "the configuration" if isinstance(file, dict) else f"config file {file}"
        tree = _merge_tree(tree, _without_header(loaded, source, required=False))
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    config = _build(Config, tree)
    validate(config)
    return config


def config_from_dict(
    data: dict[str, Any], source: str = "the configuration", require_version: bool = False
) -> Config:
    """Rebuild a config saved by :func:`save_config` (strict: unknown keys fail).

    With ``require_version`` the header's format version must be present (a run's own file).
    """
    config = _build(Config, _without_header(data, source, require_version))
    validate(config)
    return config


def save_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as YAML, after a header with the format and osad versions."""
    header = {"format_version": FORMAT_VERSION, "osad_version": __version__}
    write_atomic(path, yaml.safe_dump({**header, **config.to_dict()}, sort_keys=False))


# ---------------------------------------------------------------------------
# Validation


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_attack(attack: AttackConfig, key: str) -> None:
    """Range checks of one attack setting; ``key`` names it in messages."""
    from osad.errors import unknown_name

    if attack.name not in ATTACK_NAMES:
        raise unknown_name(f"attack in '{key}.name'", attack.name, ATTACK_NAMES)
    if attack.norm not in NORMS:
        raise unknown_name(f"norm in '{key}.norm'", attack.norm, NORMS)
    _check(attack.eps >= 0, f"'{key}.eps' must be >= 0 (in 1/255 units), got {attack.eps}")
    if attack.norm == "linf":
        _check(attack.eps <= 255, f"'{key}.eps' must be <= 255 (in 1/255 units), got {attack.eps}")
    _check(attack.alpha > 0, f"'{key}.alpha' must be > 0 (in 1/255 units), got {attack.alpha}")
    _check(attack.steps >= 1, f"'{key}.steps' must be >= 1, got {attack.steps}")
    _check(attack.restarts >= 1, f"'{key}.restarts' must be >= 1, got {attack.restarts}")


def _validate_known_classes(known: list[int], dataset: str, num_classes: int) -> None:
    outside = [c for c in known if not 0 <= c < num_classes]
    _check(
        not outside,
        f"'data.known_classes' names {outside}, but {dataset} has classes 0..{num_classes - 1}",
    )
    repeated = sorted({c for c in known if known.count(c) > 1})
    _check(not repeated, f"'data.known_classes' lists {repeated} more than once")
    _check(
        len(known) >= 2,
        f"'data.known_classes' needs at least 2 classes to classify, got {known}",
    )
    _check(
        len(known) < num_classes,
        f"'data.known_classes' lists all {num_classes} classes of {dataset}: "
        "none is left to be unknown",
    )


def validate(config: Config) -> None:
    """Check names against the registries and every value against its range."""
    from osad.data import dataset_info
    from osad.errors import unknown_name
    from osad.models import DENOISERS, ENCODERS
    from osad.openset import SCORERS
    from osad.train import METHODS

    if config.method not in METHODS:
        raise unknown_name("method", config.method, METHODS)
    _check(
        config.device in ("auto", "cpu", "cuda") or config.device.startswith("cuda:"),
        f"'device' must be auto, cpu, cuda or cuda:N, got '{config.device}'",
    )

    d = config.data
    info = dataset_info(d.name)
    _check(
        0 <= d.split < info.num_splits,
        f"'data.split' must be in 0..{info.num_splits - 1} for {d.name}, got {d.split}",
    )
    _check(d.image_size >= 0, f"'data.image_size' must be >= 0 (0 = native), got {d.image_size}")
    _check(
        0 < d.test_fraction < 1, f"'data.test_fraction' must be in (0, 1), got {d.test_fraction}"
    )
    _check(0 <= d.val_fraction < 1, f"'data.val_fraction' must be in [0, 1), got {d.val_fraction}")
    _check(d.crop_padding >= 0, f"'data.crop_padding' must be >= 0, got {d.crop_padding}")
    if d.known_classes:
        _validate_known_classes(d.known_classes, d.name, info.num_classes)

    m = config.model
    if m.arch not in ENCODERS:
        raise unknown_name("model.arch", m.arch, ENCODERS)
    if m.denoise not in DENOISERS:
        raise unknown_name("model.denoise", m.denoise, DENOISERS)
    _check(m.width >= 2, f"'model.width' must be >= 2, got {m.width}")
    _check(m.latent_dim >= 1, f"'model.latent_dim' must be >= 1, got {m.latent_dim}")
    _check(
        all(0 <= p <= 4 for p in m.denoise_places),
        f"'model.denoise_places' entries must be in 0..4, got {m.denoise_places}",
    )
    _check(
        len(set(m.denoise_places)) == len(m.denoise_places),
        f"'model.denoise_places' has duplicates: {m.denoise_places}",
    )

    t = config.train
    _check(t.epochs >= 1, f"'train.epochs' must be >= 1, got {t.epochs}")
    _check(t.batch_size >= 1, f"'train.batch_size' must be >= 1, got {t.batch_size}")
    _check(t.lr > 0, f"'train.lr' must be > 0, got {t.lr}")
    _check(t.weight_decay >= 0, f"'train.weight_decay' must be >= 0, got {t.weight_decay}")
    if t.optimizer not in ("adam", "sgd"):
        raise unknown_name("train.optimizer", t.optimizer, ("adam", "sgd"))
    _check(t.reconstruction_weight >= 0, "'train.reconstruction_weight' must be >= 0")
    _check(t.rotation_weight >= 0, "'train.rotation_weight' must be >= 0")
    validate_attack(t.attack, "train.attack")

    c = config.checkpoint
    _check(c.every_steps >= 0, f"'checkpoint.every_steps' must be >= 0, got {c.every_steps}")
    _check(c.every_epochs >= 0, f"'checkpoint.every_epochs' must be >= 0, got {c.every_epochs}")
    _check(c.keep >= 1, f"'checkpoint.keep' must be >= 1, got {c.keep}")

    e = config.eval
    _check(e.batch_size >= 1, f"'eval.batch_size' must be >= 1, got {e.batch_size}")
    for name, attack in e.attacks.items():
        _check(name != "clean", "'eval.attacks' may not define 'clean': it is always evaluated")
        validate_attack(attack, f"eval.attacks.{name}")
    _check(len(e.scores) >= 1, "'eval.scores' must name at least one score")
    for name in e.scores:
        if name not in SCORERS:
            raise unknown_name("score in 'eval.scores'", name, SCORERS)
    _check(e.openmax_tail >= 2, f"'eval.openmax_tail' must be >= 2, got {e.openmax_tail}")
    if e.openmax_fit not in ("attacked", "clean"):
        raise unknown_name("eval.openmax_fit", e.openmax_fit, ("attacked", "clean"))
