"""The run configuration: typed schemas, validated once at the boundary.

A configuration is built from the defaults below (the embedded digits OSDN
setting), then a YAML file (which may ``extends:`` another one), then
``key=value`` overrides such as ``train.epochs=3`` or
``eval.attacks.pgd.steps=20``; a field name that only one section has may be
given alone (``split=2`` for ``data.split=2``). Unknown keys, wrong types
and out-of-range values raise :class:`~osad.errors.ConfigError` naming the key
and, for misspellings, the closest valid one.

The top-level ``task`` key selects the schema: ``openset`` (:class:`Config`, the
default) or ``fas`` (:class:`osad.fas.config.FasConfig`, face anti-spoofing);
:func:`make_task_config` dispatches on it.

Attack budgets (``eps``, ``alpha``) are stated in units of 1/255 of the [0, 1]
pixel range, for both norms; :meth:`AttackConfig.eps_unit` converts.

A saved configuration (a run's ``config.yaml``) starts with ``format_version``
and ``osad_version``; a file given with ``--config`` may carry them too (they
are checked, see :mod:`osad.storage`) or leave them out.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from osad import __version__
from osad.errors import ConfigError, did_you_mean, shown
from osad.storage import FORMAT_VERSION, check_format, write_atomic

T = TypeVar("T")

TASKS = ("openset", "fas")
NORMS = ("linf", "l2")
# What an attack maximises: the classifier's loss (the paper's protocol), the score of
# the open-set detector under test (adaptive), or both at once (see docs/evaluation.md).
ATTACK_TARGETS = ("classifier", "score", "joint")
# Which test images a condition attacks: both kinds, the known only, or the unknown only.
PAIRINGS = ("both", "known", "unknown")
ALL_SCORES = "all"


@dataclass(frozen=True)
class AttackKeys:
    """How one attack reads the optional keys of an :class:`AttackConfig`.

    ``alpha`` values here are multiples of ``eps``.
    """

    defaults: dict[str, Any]  # the value a key left unset takes
    fixed: dict[str, Any] = field(default_factory=dict)  # the only value a key may take
    unused: dict[str, str] = field(default_factory=dict)  # why a key does not apply


_SQUARE_ONLY = "it belongs to the square attack"
_PATCH_ONLY = "it belongs to the patch attack"
_NO_STEP = "its step size adapts"
_SQUARE_KEYS = {"queries": _SQUARE_ONLY, "p_init": _SQUARE_ONLY}
_PATCH_KEYS = {"patch_size": _PATCH_ONLY, "candidates": _PATCH_ONLY}
ATTACK_KEYS: dict[str, AttackKeys] = {
    "pgd": AttackKeys(
        defaults={"alpha": 0.25, "steps": 10, "random_start": True, "loss": "ce"},
        unused={**_SQUARE_KEYS, **_PATCH_KEYS},
    ),
    "fgsm": AttackKeys(
        defaults={"random_start": False, "loss": "ce"},
        fixed={"alpha": 1.0, "steps": 1},
        unused={**_SQUARE_KEYS, **_PATCH_KEYS},
    ),
    "fgsm-rs": AttackKeys(
        defaults={"alpha": 1.25, "loss": "ce"},
        fixed={"steps": 1, "random_start": True},
        unused={**_SQUARE_KEYS, **_PATCH_KEYS},
    ),
    "apgd": AttackKeys(
        defaults={"steps": 100, "random_start": True, "loss": "ce"},
        unused={"alpha": _NO_STEP, **_SQUARE_KEYS, **_PATCH_KEYS},
    ),
    "square": AttackKeys(
        defaults={"queries": 5000, "p_init": 0.8, "loss": "margin"},
        unused={
            "alpha": "it takes no gradient steps",
            "steps": "its budget is 'queries'",
            "random_start": "it starts from its own initialisation",
            **_PATCH_KEYS,
        },
    ),
    # Rectangular occlusion (Wu et al. 2020): the patch may take any value in [0, 1],
    # so its budget is the whole range; alpha 0.05 eps = 12.75/255 per step.
    "patch": AttackKeys(
        defaults={
            "alpha": 0.05,
            "steps": 10,
            "random_start": False,
            "loss": "ce",
            "patch_size": 5,
            "candidates": 20,
        },
        fixed={"eps": 255.0, "norm": "linf"},
        unused=_SQUARE_KEYS,
    ),
}
ATTACK_NAMES = tuple(ATTACK_KEYS)
# Attacks that can run inside training (they need gradients; square is an evaluation check).
TRAIN_ATTACK_NAMES = ("fgsm", "fgsm-rs", "pgd", "apgd", "patch")


@dataclass
class AttackConfig:
    """One attack setting. ``eps`` and ``alpha`` are in 1/255 units.

    Keys left unset (``None``) take the attack's default (:data:`ATTACK_KEYS`),
    e.g. ``alpha`` is ``eps / 4`` for PGD and ``1.25 eps`` for FGSM-RS;
    :meth:`resolved` fills them in.
    """

    name: str = "pgd"
    norm: str = "linf"
    eps: float = 8.0
    alpha: float | None = None
    steps: int | None = None
    restarts: int = 1
    random_start: bool | None = None
    loss: str | None = None
    queries: int | None = None
    p_init: float | None = None
    # Patch attack: side of the square patch in pixels, and positions tried exactly.
    patch_size: int | None = None
    candidates: int | None = None
    target: str = "classifier"

    def resolved(self) -> AttackConfig:
        """A copy with every unset key filled with the attack's default."""
        keys = ATTACK_KEYS[self.name]
        filled = {}
        for key, default in {**keys.defaults, **keys.fixed}.items():
            if getattr(self, key) is None:
                filled[key] = default * self.eps if key == "alpha" else default
        return dataclasses.replace(self, **filled)

    @property
    def eps_unit(self) -> float:
        """``eps`` in [0, 1] pixel units."""
        return self.eps / 255.0

    @property
    def alpha_unit(self) -> float:
        """The step size in [0, 1] pixel units (the attack's default if unset)."""
        alpha = self.resolved().alpha
        if alpha is None:
            raise ValueError(f"the {self.name} attack has no step size")
        return alpha / 255.0

    def describe(self) -> str:
        """One line for tables, e.g. ``PGD linf eps 8/255, step 2/255, 10 steps``."""
        c = self.resolved()
        # A score attack has no classification loss, so its APGD carries no loss name.
        apgd = "APGD" if c.target == "score" else f"APGD-{c.loss.upper()}"
        name = {"apgd": apgd, "square": "Square"}.get(c.name, c.name.upper())
        parts = [f"{name} {c.norm} eps {c.eps:g}/255"]
        if c.name == "patch":
            parts = [f"Patch {c.patch_size}x{c.patch_size}, {c.candidates} candidate positions"]
        if c.name in ("pgd", "fgsm-rs", "patch"):
            parts.append(f"step {c.alpha:g}/255")
        if c.name in ("pgd", "apgd", "patch"):
            parts.append(f"{c.steps} steps")
        if c.name == "square":
            parts.append(f"{c.queries} queries, p_init {c.p_init:g}")
        if c.restarts > 1:
            parts.append(f"{c.restarts} restarts")
        if c.name != "apgd" and c.loss != ATTACK_KEYS[c.name].defaults["loss"]:
            parts.append(f"{c.loss} loss")
        if c.target == "score":
            parts.append("on each score")
        elif c.target == "joint":
            parts.append(f"on {c.loss} + each score")
        return ", ".join(parts)


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
    return AttackConfig(name="pgd", eps=DIGITS_EPS, steps=5)


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
            name="fgsm", eps=DIGITS_EPS, alpha=DIGITS_EPS, steps=1, random_start=False, loss="ce"
        ),
        "pgd": AttackConfig(
            name="pgd", eps=DIGITS_EPS, alpha=DIGITS_EPS / 4, steps=10, random_start=True, loss="ce"
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
    openmax_tail: int = 20
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


# ---------------------------------------------------------------------------
# Parsing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        null = ["null"] if type(None) in typing.get_args(tp) else []
        return " or ".join(names + null)
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


# Integers osad passes to torch and NumPy (int64), and seeds (what NumPy's legacy
# generator and scikit-learn's random_state accept).
INT_RANGE = (-(2**63), 2**63 - 1)
SEED_RANGE = (0, 2**32 - 1)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the typed value.

    A scalar where a list is expected is a one-element list (``eval.scores=msp``).
    Every number must be finite, every integer an int64 and every ``*seed`` in
    :data:`SEED_RANGE`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {shown(value)}")
        return _build(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, dict)) and typing.get_origin(item_tp) is not list:
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {shown(value)}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {shown(value)}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        # Optional fields: null means "the default of whatever the field belongs to".
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(inner) < len(typing.get_args(tp)):
            return None
        if len(inner) == 1:  # Optional[X]: X's own message (range, finiteness)
            return _coerce(value, inner[0], key)
        for option in inner:  # e.g. int | str: the first type the value has
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {shown(value)}")
    # bool is an int subclass: refuse it where a number is expected, and refuse
    # strings such as "False" where a bool is expected (a trap of the reference code).
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and is_number and isinstance(value, int):
        low, high = SEED_RANGE if key.rsplit(".", 1)[-1].endswith("seed") else INT_RANGE
        if not low <= value <= high:
            raise ConfigError(f"'{key}' must be in {low}..{high}, got {shown(value)}")
        return value
    if tp is float and is_number:
        number = float(value) if isinstance(value, float) or abs(value) < 2**1000 else math.inf
        if not math.isfinite(number):
            raise ConfigError(f"'{key}' must be a finite number, got {shown(value)}")
        return number
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {shown(value)}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            full_names = [f"{prefix}.{n}" if prefix else n for n in names]
            raise ConfigError(
                f"unknown config key '{shown(full, quoted=False)}'{did_you_mean(full, full_names)}"
            )
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
        raise ConfigError(
            f"malformed override '{shown(text, quoted=False)}': expected key=value, "
            "e.g. train.epochs=3"
        )
    try:
        value = parse_yaml(raw, "it") if raw.strip() else ""
    except ConfigError as exc:
        raise ConfigError(
            f"malformed value in override '{shown(text, quoted=False)}': {exc}"
        ) from None
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


# YAML 1.2 core-schema floats: PyYAML implements YAML 1.1, which reads 1e-3 (no dot)
# as a string. Added after YAML 1.1's own float rule, which still reads 1_000.5.
_YAML12_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
# The most nodes a document may hold with its aliases expanded: a config file has a
# few hundred; a nested-alias bomb of 342 bytes has 9**9 (and would take every byte
# of memory an echo of it or a deep copy needs).
MAX_YAML_NODES = 10_000
# The deepest nesting of lists and mappings a document may have (a config has 4);
# PyYAML composes and constructs recursively, and scans deep flow nesting in
# quadratic time.
MAX_YAML_DEPTH = 32


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, made strict: a key written twice in one mapping is refused
    (PyYAML would silently keep the last one, hiding a preset's mistake), so is a
    complex key (``? [a, b]``), a document of more than :data:`MAX_YAML_NODES`
    nodes once its aliases are expanded (or a recursive one) and one nested more
    than :data:`MAX_YAML_DEPTH` levels deep; ``1e-3`` is a float (YAML 1.2)."""

    yaml_implicit_resolvers: typing.ClassVar[dict[str, list]] = {
        first: list(resolvers)
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        # Counted while composing, so a long document stops early; aliases are
        # counted expanded by construct_document.
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_YAML_DEPTH or self._nodes > MAX_YAML_NODES:
                deep = self._depth > MAX_YAML_DEPTH
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"it nests lists or mappings more than {MAX_YAML_DEPTH} levels deep"
                    if deep
                    else f"it holds more than {MAX_YAML_NODES} values",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expanded_size(node)
        return super().construct_document(node)


_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+.0123456789"))


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a node graph whose aliases expand to more than :data:`MAX_YAML_NODES`
    nodes, or loop; linear in the graph's size (each shared node is counted once)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in visiting:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to a node that contains it", node.start_mark
            )
        visiting.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"it holds more than {MAX_YAML_NODES} values with its aliases expanded",
                    node.start_mark,
                )
        visiting.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root)


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain name, not a list or mapping", key_node.start_mark
            )
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{shown(key, quoted=False)}' appears twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def parse_yaml(text: str | bytes, source: str) -> Any:
    """The value of one YAML document, read by the strict loader (see
    :class:`_StrictLoader`): every YAML osad reads goes through here.

    ``text`` as bytes must be UTF-8. ``source`` names the text in the one-line
    :class:`~osad.errors.ConfigError` any fault raises, e.g. ``config file a.yaml``.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{source} is not UTF-8 text (byte 0x{text[exc.start]:02x} at offset "
                f"{exc.start}); save it as UTF-8"
            ) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None)
        why = f": {shown(problem, quoted=False)}" if problem else ""
        raise ConfigError(f"{source} is not valid YAML{where}{why}") from None
    except RecursionError:  # aliases nested in aliases beyond Python's stack
        raise ConfigError(f"{source} nests its aliases too deeply") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise ConfigError(
            f"{source} holds a value osad cannot read: {shown(str(exc), quoted=False)}"
        ) from None


# The largest YAML file osad reads: a configuration or sweep file holds a few KB.
MAX_YAML_BYTES = 1 << 20


def read_yaml(path: Path, source: str) -> Any:
    """:func:`parse_yaml` of the file ``path``, refused unread if larger than
    :data:`MAX_YAML_BYTES`."""
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(
            f"{source} holds {size} bytes, more than the {MAX_YAML_BYTES} a configuration may"
        )
    return parse_yaml(path.read_bytes(), source)


def load_yaml(path: str | Path, _extended_by: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config file into a mapping, with one-line errors.

    A file may start from another one: ``extends: other.yaml`` (relative to the
    file) loads that file first and merges this one over it, section by section.
    """
    path = Path(path)
    if not path.is_file():
        by = f" (extended by {_extended_by[-1]})" if _extended_by else ""
        raise ConfigError(f"config file not found: {path}{by}")
    data = read_yaml(path, f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, got {type(data).__name__}"
        )
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"'extends' in {path} must be a file name, got {base!r}")
    chain = (*_extended_by, path.resolve())
    base_path = path.parent / base
    if base_path.resolve() in chain:
        raise ConfigError(f"config files extend each other in a loop: {path} -> {base_path}")
    return _merge_tree(load_yaml(base_path, chain), data)


def _without_header(tree: dict[str, Any], source: str, required: bool) -> dict[str, Any]:
    """``tree`` without the saved-file header, whose format version must be ours."""
    tree = dict(tree)
    version = tree.pop("format_version", None)
    tree.pop("osad_version", None)
    if version is not None or required:
        check_format(version, source, ConfigError)
    return tree


def _section_fields(schema: type) -> dict[str, list[str]]:
    """Field name -> the ``section.field`` keys of ``schema`` that carry it."""
    hints = typing.get_type_hints(schema)
    paths: dict[str, list[str]] = {}
    for section in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[section.name]):
            for f in dataclasses.fields(hints[section.name]):
                paths.setdefault(f.name, []).append(f"{section.name}.{f.name}")
    return paths


def expand_key(key: str, schema: type | None = None) -> str:
    """Expand an undotted override key that names the field of exactly one section.

    ``split=2`` means ``data.split=2`` and ``epochs=3`` means ``train.epochs=3``;
    a name that several sections carry (``batch_size``) must be written in full.
    """
    schema = Config if schema is None else schema
    if "." in key or key in {f.name for f in dataclasses.fields(schema)}:
        return key
    paths = _section_fields(schema).get(key, [])
    if len(paths) > 1:
        raise ConfigError(f"ambiguous key '{key}': write one of {', '.join(paths)}")
    return paths[0] if paths else key


ConfigSource = str | Path | dict[str, Any] | None


def _type_at(schema: type, parts: Sequence[str]) -> Any:
    """The annotated type at a dotted path of ``schema`` (through dataclasses and dicts)."""
    tp: Any = schema
    for part in parts:
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                return None
            tp = hints[part]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    return tp


# Keys whose meaning depends on the attack; the budget (eps, norm, restarts) does not.
ATTACK_SPECIFIC_KEYS = (
    "alpha",
    "steps",
    "random_start",
    "loss",
    "queries",
    "p_init",
    "patch_size",
    "candidates",
)


def _get_dotted(tree: dict[str, Any], parts: Sequence[str]) -> Any:
    node: Any = tree
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def build_config(schema: type[T], file: ConfigSource = None, overrides: Sequence[str] = ()) -> T:
    """An instance of the dataclass ``schema`` from its defaults, a YAML file (or a
    mapping) and ``key=value`` overrides, strictly typed but not range-checked.

    An override that changes an attack's name (``train.attack.name=fgsm-rs``)
    keeps its budget and resets its attack-specific keys (step, steps, start,
    loss, queries) to the new attack's defaults, unless the overrides set them.
    """
    tree = dataclasses.asdict(schema())
    if file is not None:
        loaded = dict(file) if isinstance(file, dict) else load_yaml(file)
        source = "the configuration" if isinstance(file, dict) else f"config file {file}"
        tree = _merge_tree(tree, _without_header(loaded, source, required=False))
    given, renamed = set(), []
    for text in overrides:
        key, value = parse_override(text)
        key = expand_key(key, schema)
        parts = key.split(".")
        if parts[-1] == "name" and _type_at(schema, parts[:-1]) is AttackConfig:
            previous = _get_dotted(tree, parts[:-1])
            if not isinstance(previous, dict) or previous.get("name") != value:
                renamed.append(parts[:-1])
        _set_dotted(tree, key, value)
        given.add(key)
    for parts in renamed:
        attack = _get_dotted(tree, parts)
        for key in ATTACK_SPECIFIC_KEYS:
            if ".".join([*parts, key]) not in given:
                attack[key] = None
        # A budget the new attack fixes (the patch's eps) replaces the old attack's.
        keys = ATTACK_KEYS.get(attack.get("name"))
        for key, value in (keys.fixed if keys else {}).items():
            if key not in ATTACK_SPECIFIC_KEYS and ".".join([*parts, key]) not in given:
                attack[key] = value
    return _build(schema, tree)


def make_config(file: ConfigSource = None, overrides: Sequence[str] = ()) -> Config:
    """Build and validate a :class:`Config` from defaults, a YAML file and overrides."""
    config = build_config(Config, file, overrides)
    validate(config)
    return config


def make_task_config(file: ConfigSource = None, overrides: Sequence[str] = ()) -> Any:
    """The validated configuration of the task named by the top-level ``task`` key
    (in the overrides, else the file, else ``openset``): a :class:`Config` or a
    :class:`~osad.fas.config.FasConfig`."""
    tree = dict(file) if isinstance(file, dict) else load_yaml(file) if file is not None else {}
    task = tree.get("task", "openset")
    for text in overrides:
        key, value = parse_override(text)
        if key == "task":
            task = value
    if task == "fas":
        from osad.fas.config import make_fas_config

        return make_fas_config(tree, overrides)
    if task != "openset":
        from osad.errors import unknown_name

        raise unknown_name("task", str(task), TASKS)
    return make_config(tree, overrides)


def load_saved_config(data: dict[str, Any], source: str) -> Any:
    """Rebuild the configuration of a run from its saved ``config.yaml`` mapping
    (written by :func:`save_config`, whose format version it must carry)."""
    return make_task_config(saved_tree(data, source))


def saved_tree(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A run's saved ``config.yaml`` mapping without its header, whose format version
    must be ours (raises ConfigError naming ``source``)."""
    return _without_header(data, source, required=True)


def resolved_dict(config: Any) -> dict[str, Any]:
    """``config`` as a plain mapping with its attacks resolved: every step size and
    iteration count stated, as a run's saved ``config.yaml`` holds it."""
    tree = config.to_dict()
    if isinstance(config, Config):
        tree["train"]["attack"] = dataclasses.asdict(config.train.attack.resolved())
        tree["eval"]["attacks"] = {
            name: dataclasses.asdict(a.resolved()) for name, a in config.eval.attacks.items()
        }
    return tree


def save_config(config: Any, path: str | Path) -> None:
    """Write a configuration as YAML (:func:`resolved_dict`) after a header with the
    format and osad versions."""
    tree = resolved_dict(config)
    header = {"format_version": FORMAT_VERSION, "osad_version": __version__}
    write_atomic(path, yaml.safe_dump({**header, **tree}, sort_keys=False))


# ---------------------------------------------------------------------------
# Validation


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_device(device: str) -> None:
    """``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (N a GPU index)."""
    _check(
        re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,4})?", device) is not None,
        f"'device' must be auto, cpu, cuda or cuda:N (N a GPU index), got "
        f"'{shown(device, quoted=False)}'",
    )


def validate_attack(
    attack: AttackConfig, key: str, num_classes: int | None = None, image_size: int | None = None
) -> None:
    """Range checks of one attack setting; ``key`` names it in messages.

    ``num_classes`` (the known classes the model separates) enables the check that
    the DLR loss has the three classes it needs; ``image_size`` the check that a
    patch fits the images.
    """
    from osad.attacks.objectives import OBJECTIVES
    from osad.errors import unknown_name

    if attack.name not in ATTACK_NAMES:
        raise unknown_name(f"attack in '{key}.name'", attack.name, ATTACK_NAMES)
    if attack.norm not in NORMS:
        raise unknown_name(f"norm in '{key}.norm'", attack.norm, NORMS)
    _check(attack.eps >= 0, f"'{key}.eps' must be >= 0 (in 1/255 units), got {attack.eps}")
    if attack.norm == "linf":
        _check(attack.eps <= 255, f"'{key}.eps' must be <= 255 (in 1/255 units), got {attack.eps}")
    keys = ATTACK_KEYS[attack.name]
    for name, why in keys.unused.items():
        _check(
            getattr(attack, name) is None,
            f"'{key}.{name}' does not apply to {attack.name} ({why}); remove it",
        )
    for name, fixed in keys.fixed.items():
        value = getattr(attack, name)
        expected = fixed * attack.eps if name == "alpha" else fixed
        fix = "remove it" if name in ATTACK_SPECIFIC_KEYS else f"set it to {expected}"
        _check(
            value is None or value == expected,
            f"'{key}.{name}' is always {expected} for {attack.name}; {fix}, got {value}",
        )
    if attack.alpha is not None:
        _check(attack.alpha > 0, f"'{key}.alpha' must be > 0 (in 1/255 units), got {attack.alpha}")
    if attack.steps is not None:
        _check(attack.steps >= 1, f"'{key}.steps' must be >= 1, got {attack.steps}")
    if attack.queries is not None:
        _check(attack.queries >= 1, f"'{key}.queries' must be >= 1, got {attack.queries}")
    if attack.patch_size is not None:
        _check(attack.patch_size >= 1, f"'{key}.patch_size' must be >= 1, got {attack.patch_size}")
    if attack.candidates is not None:
        _check(attack.candidates >= 1, f"'{key}.candidates' must be >= 1, got {attack.candidates}")
    patch_size = attack.resolved().patch_size if attack.name == "patch" else None
    if patch_size is not None and image_size is not None:
        _check(
            patch_size <= image_size,
            f"'{key}.patch_size' {patch_size} does not fit the {image_size}x{image_size} images",
        )
    if attack.p_init is not None:
        _check(0 < attack.p_init <= 1, f"'{key}.p_init' must be in (0, 1], got {attack.p_init}")
    _check(attack.restarts >= 1, f"'{key}.restarts' must be >= 1, got {attack.restarts}")
    if attack.target not in ATTACK_TARGETS:
        raise unknown_name(f"target in '{key}.target'", attack.target, ATTACK_TARGETS)
    if attack.loss is not None and attack.loss not in OBJECTIVES:
        raise unknown_name(f"loss in '{key}.loss'", attack.loss, OBJECTIVES)
    if attack.resolved().loss == "dlr" and num_classes is not None:
        _check(
            num_classes >= 3,
            f"'{key}.loss' dlr needs at least 3 classes, the split has {num_classes}; use margin",
        )


def _validate_known(known: list[int | str], unknown: str, info) -> None:
    _check(
        all(isinstance(c, int) and 0 <= c < info.num_classes for c in known),
        f"'data.known' entries must be class ids in 0..{info.num_classes - 1}, got {shown(known)}",
    )
    _check(len(set(known)) == len(known), f"'data.known' has duplicates: {shown(known)}")
    _check(len(known) >= 2, f"'data.known' needs at least 2 classes, got {shown(known)}")
    _check(
        bool(unknown) or len(known) < info.num_classes,
        "'data.known' names every class; leave some unknown or set data.unknown",
    )


def validate(config: Config) -> None:
    """Check names against the registries and every value against its range."""
    from osad.data import DATASETS, FOLDER, dataset_info, is_folder_path
    from osad.errors import unknown_name
    from osad.models import DENOISERS, ENCODERS
    from osad.models.denoise import denoise_forms
    from osad.openset import SCORERS
    from osad.train import METHODS

    _check(
        config.task == "openset",
        f"'task' is '{config.task}'; build it with make_task_config, not make_config",
    )
    if config.method not in METHODS:
        raise unknown_name("method", config.method, METHODS)
    validate_device(config.device)

    d = config.data
    _check(
        not is_folder_path(d.name),
        f"'data.name' is a dataset, not a path; for the image folder {d.name} set "
        f"data.name=folder data.root={d.name}",
    )
    # An image folder is described by its files, checked when it is read.
    info = None if d.name == FOLDER else dataset_info(d.name)
    if info is None:
        _check(
            d.split == 0,
            f"'data.split' must be 0 for data.name=folder (one default split), got {d.split}; "
            "choose other known classes with data.known",
        )
    elif d.known:
        _validate_known(d.known, d.unknown, info)
    else:
        _check(
            info.num_splits > 0,
            f"{d.name} has no split table; name its known classes, e.g. data.known=[0,1,2,3,4]",
        )
        _check(
            0 <= d.split < info.num_splits,
            f"'data.split' must be in 0..{info.num_splits - 1} for {d.name}, got {d.split}",
        )
    if d.unknown and not is_folder_path(d.unknown):
        other = dataset_info(d.unknown) if d.unknown in DATASETS else None
        if other is None:
            error = unknown_name("dataset in 'data.unknown'", d.unknown, DATASETS)
            raise ConfigError(f"{error}, or a path to an image folder (containing '/')")
        _check(other.name != d.name, f"'data.unknown' must be another dataset than {d.name}")
    _check(d.image_size >= 0, f"'data.image_size' must be >= 0 (0 = native), got {d.image_size}")
    _check(
        d.channels in (0, 1, 3),
        f"'data.channels' must be 0 (native), 1 (gray) or 3 (RGB), got {d.channels}",
    )
    _check(
        0 < d.test_fraction < 1, f"'data.test_fraction' must be in (0, 1), got {d.test_fraction}"
    )
    _check(0 <= d.val_fraction < 1, f"'data.val_fraction' must be in [0, 1), got {d.val_fraction}")
    _check(d.crop_padding >= 0, f"'data.crop_padding' must be >= 0, got {d.crop_padding}")

    m = config.model
    if m.arch not in ENCODERS:
        raise unknown_name("model.arch", m.arch, ENCODERS)
    forms = denoise_forms(m.denoise)
    for form in forms:
        if form not in DENOISERS:
            raise unknown_name("denoising form in 'model.denoise'", form, DENOISERS)
    _check(
        len(set(forms)) == len(forms),
        f"'model.denoise' repeats a form: {shown(m.denoise, quoted=False)}",
    )
    _check(m.width >= 2, f"'model.width' must be >= 2, got {m.width}")
    _check(m.latent_dim >= 1, f"'model.latent_dim' must be >= 1, got {m.latent_dim}")
    _check(
        all(0 <= p <= 4 for p in m.denoise_places),
        f"'model.denoise_places' entries must be in 0..4, got {shown(m.denoise_places)}",
    )
    _check(
        len(set(m.denoise_places)) == len(m.denoise_places),
        f"'model.denoise_places' has duplicates: {shown(m.denoise_places)}",
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
    _check(t.mutual_weight >= 0, f"'train.mutual_weight' must be >= 0, got {t.mutual_weight}")
    _check(
        t.mutual_temperature > 0,
        f"'train.mutual_temperature' must be > 0, got {t.mutual_temperature}",
    )
    _check(
        t.grad_accumulation >= 1,
        f"'train.grad_accumulation' must be >= 1, got {t.grad_accumulation}",
    )
    _check(
        t.attack.name not in ATTACK_NAMES or t.attack.name in TRAIN_ATTACK_NAMES,
        f"'train.attack.name' {t.attack.name} is a black-box evaluation attack; training "
        f"needs a gradient attack: {', '.join(TRAIN_ATTACK_NAMES)}",
    )
    if info is None:  # an image folder: its classes and size are known once it is read
        num_known, side = len(d.known) or None, d.image_size or None
    else:
        num_known = len(d.known) if d.known else len(info.known_splits[d.split])
        side = d.image_size or info.image_size
    validate_attack(t.attack, "train.attack", num_known, side)
    _check(
        t.attack.target == "classifier",
        f"'train.attack.target' must be classifier, got {t.attack.target}: training attacks "
        "the classifier (score and joint targets are evaluation attacks)",
    )

    p = config.perf
    _check(
        not p.cuda_graphs or p.compile,
        "'perf.cuda_graphs' works through torch.compile: set perf.compile=true as well",
    )
    if config.device == "cpu":
        check_perf_device(p, config.device)

    c = config.checkpoint
    _check(c.every_steps >= 0, f"'checkpoint.every_steps' must be >= 0, got {c.every_steps}")
    _check(c.every_epochs >= 0, f"'checkpoint.every_epochs' must be >= 0, got {c.every_epochs}")
    _check(c.keep >= 1, f"'checkpoint.keep' must be >= 1, got {c.keep}")

    e = config.eval
    _check(e.batch_size >= 1, f"'eval.batch_size' must be >= 1, got {e.batch_size}")
    for name, attack in e.attacks.items():
        _check(name != "clean", "'eval.attacks' may not define 'clean': it is always evaluated")
        _check(
            name != "ensemble",
            "'eval.attacks' may not define 'ensemble': it is the condition of 'eval.version'",
        )
        validate_attack(attack, f"eval.attacks.{name}", num_known, side)
    _check(len(e.scores) >= 1, "'eval.scores' must name at least one score")
    if e.scores != [ALL_SCORES]:
        for name in e.scores:
            if name not in SCORERS:
                raise unknown_name("score in 'eval.scores'", name, (*SCORERS, ALL_SCORES))
    _check(
        "reconstruction" not in e.scores or has_decoder(config),
        "score 'reconstruction' in 'eval.scores' needs the OSDN decoder: use method=osdn "
        "with train.reconstruction=true, or drop the score",
    )
    _check(e.openmax_tail >= 2, f"'eval.openmax_tail' must be >= 2, got {e.openmax_tail}")
    if e.openmax_fit not in ("attacked", "clean"):
        raise unknown_name("eval.openmax_fit", e.openmax_fit, ("attacked", "clean"))
    _check(
        all(0 <= eps <= 255 for eps in e.eps_sweep),
        f"'eval.eps_sweep' values must be in [0, 255] (1/255 units), got {shown(e.eps_sweep)}",
    )
    if e.version is not None:
        from osad.eval.ensemble import get_version

        get_version(e.version)
    for name in e.pairings:
        if name not in PAIRINGS:
            raise unknown_name("pairing in 'eval.pairings'", name, PAIRINGS)
    _check(
        "both" in e.pairings,
        f"'eval.pairings' must include both (the paper's pairing and the headline numbers), "
        f"got {shown(e.pairings)}",
    )


def has_decoder(config: Config) -> bool:
    """Whether the run's model has the OSDN decoder (needed by the reconstruction score)."""
    from osad.train import METHODS

    return METHODS[config.method].decoder and config.train.reconstruction


def score_names(config: Config) -> list[str]:
    """The scores ``eval.scores`` names, with ``all`` expanded to every score the model supports."""
    from osad.openset import SCORERS

    if config.eval.scores != [ALL_SCORES]:
        return list(config.eval.scores)
    return [name for name in SCORERS if name != "reconstruction" or has_decoder(config)]


def check_perf_device(perf: PerfConfig, device: str) -> None:
    """Refuse the CUDA-only switches on another device (``device`` as resolved)."""
    if device.startswith("cuda"):
        return
    _check(
        not perf.bf16,
        f"'perf.bf16' needs a CUDA device, this run uses {device}: bf16 autocast is slower "
        "than fp32 on most CPUs; set perf.bf16=false",
    )
    _check(
        not perf.cuda_graphs,
        f"'perf.cuda_graphs' needs a CUDA device, this run uses {device}; "
        "set perf.cuda_graphs=false",
    )
