"""A sweep preset: which methods run on which splits, under which settings.

A sweep file is YAML::

    config: ../digits-osdn-pgd.yaml   # base config of every run (relative to this file)
    settings: {eval: {...}}           # merged over it, section by section
    overrides: [train.epochs=10]      # key=value overrides of every run
    splits: [0, 1, 2, 3, 4]
    methods:                          # one run per method and split, in this order
      plain: {overrides: [method=plain]}
      fd: {config: ../cifar10-fd-pgd.yaml}   # a method may start from its own file
    compare: [[fd, plain]]            # fd - plain, split by split, in the summary

A run's configuration is the method's ``config`` (else the sweep's, else the
built-in default), then ``settings``, then the sweep's ``overrides``, then the
method's, then ``data.split``. Methods and attack conditions are data: adding
one is one entry here, no code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osad.config import Config, _merge_tree, load_yaml, make_config
from osad.errors import ConfigError, did_you_mean, shown

_SWEEP_KEYS = (
    "description",
    "config",
    "settings",
    "overrides",
    "splits",
    "methods",
    "figures",
    "compare",
)
_METHOD_KEYS = ("config", "overrides")
_FIGURE_KEYS = ("split", "methods", "score", "attack", "eps")


@dataclass(frozen=True)
class FigureSpec:
    """What the figures show: ROC curves of ``score`` for ``methods`` on ``split``, and
    their accuracy and AUROC under the condition ``attack`` at each budget of ``eps``
    (in 1/255, starting at 0 = clean)."""

    split: int
    methods: tuple[str, ...]
    score: str
    attack: str
    eps: tuple[float, ...]


@dataclass(frozen=True)
class SweepMethod:
    """One row of the comparison: a label and how its runs differ from the sweep's."""

    label: str
    config: Path | None = None
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sweep:
    """A sweep preset as read by :func:`load_sweep`: one run per method and split."""

    name: str
    methods: tuple[SweepMethod, ...]
    splits: tuple[int, ...]
    config: Path | None = None
    settings: dict[str, Any] | None = None
    overrides: tuple[str, ...] = ()
    description: str = ""
    figures: FigureSpec | None = None
    # Pairs (a, b) whose difference a - b the summary gives split by split.
    compare: tuple[tuple[str, str], ...] = ()

    def method(self, label: str) -> SweepMethod:
        for method in self.methods:
            if method.label == label:
                return method
        labels = [m.label for m in self.methods]
        raise ConfigError(
            f"sweep {self.name} has no method '{shown(label, quoted=False)}'"
            f"{did_you_mean(label, labels)}; "
            f"it has {', '.join(labels)}"
        )

    def run_config(self, method: SweepMethod, split: int) -> Config:
        """The validated configuration of ``method`` on ``split``."""
        base = method.config or self.config
        tree = load_yaml(base) if base is not None else {}
        task = tree.get("task", "openset")
        if task != "openset":
            raise ConfigError(
                f"sweep {self.name}, method {method.label}: {base} is a 'task: {task}' "
                "config; sweeps run open-set methods only (for anti-spoofing, "
                "scripts/fas_ablation.py runs methods x seeds x targets)"
            )
        if self.settings:
            tree = _merge_tree(tree, self.settings)
        overrides = [*self.overrides, *method.overrides, f"data.split={split}"]
        try:
            return make_config(tree, overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep {self.name}, method {method.label}: {exc}") from None

    def select(self, labels: list[str] | None = None, splits: list[int] | None = None) -> Sweep:
        """The same sweep narrowed to some methods (in the given order) and splits."""
        methods = self.methods if labels is None else tuple(self.method(x) for x in labels)
        if splits is not None:
            unknown = sorted(set(splits) - set(self.splits))
            if unknown:
                raise ConfigError(
                    f"sweep {self.name} has no split {unknown[0]}; "
                    f"its splits are {', '.join(map(str, self.splits))}"
                )
        chosen = self.splits if splits is None else tuple(splits)
        kept = {m.label for m in methods}
        compare = tuple(pair for pair in self.compare if set(pair) <= kept)
        return dataclasses.replace(self, methods=methods, splits=chosen, compare=compare)


def _check_keys(tree: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in tree:
        if key not in allowed:
            raise ConfigError(
                f"unknown key '{shown(key, quoted=False)}' in {where}"
                f"{did_you_mean(str(key), allowed)}"
            )


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"'{where}' must be a list of key=value strings, got {shown(value)}")
    return tuple(value)


def _config_path(value: Any, folder: Path, where: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"'{where}' must be a config file name, got {shown(value)}")
    path = folder / value
    if not path.is_file():
        raise ConfigError(f"'{where}' names {path}, which does not exist")
    return path


def _figure_spec(tree: Any, sweep: Sweep, where: str) -> FigureSpec | None:
    if tree is None:
        return None
    if not isinstance(tree, dict):
        raise ConfigError(f"'figures' in {where} must be a mapping ({', '.join(_FIGURE_KEYS)})")
    _check_keys(tree, _FIGURE_KEYS, f"'figures' of {where}")
    missing = [key for key in _FIGURE_KEYS if key not in tree]
    if missing:
        raise ConfigError(f"'figures' in {where} needs '{missing[0]}'")
    for key in ("methods", "eps"):
        if not isinstance(tree[key], list) or not tree[key]:
            raise ConfigError(f"'figures.{key}' in {where} must be a non-empty list")
    spec = FigureSpec(
        tree["split"],
        tuple(tree["methods"]),
        tree["score"],
        tree["attack"],
        tuple(float(e) for e in tree["eps"]),
    )
    for label in spec.methods:
        method = sweep.method(label)
        config = sweep.run_config(method, spec.split)
        if spec.score not in config.eval.scores:
            raise ConfigError(f"figures.score '{spec.score}' is not evaluated for {label}")
        if spec.attack not in config.eval.attacks:
            raise ConfigError(f"figures.attack '{spec.attack}' is not an attack of {label}")
    if spec.split not in sweep.splits:
        raise ConfigError(f"figures.split {spec.split} is not one of the sweep's splits")
    if not spec.eps or spec.eps[0] != 0 or list(spec.eps) != sorted(set(spec.eps)):
        raise ConfigError("figures.eps must rise from 0 (clean) without repeats, e.g. [0, 8, 16]")
    return spec


def _comparisons(value: Any, sweep: Sweep, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and pair[0] != pair[1] for pair in value
    ):
        raise ConfigError(
            f"'compare' in {where} must be a list of [method, other method] pairs, "
            f"got {shown(value)}"
        )
    for pair in value:
        for label in pair:
            sweep.method(str(label))
    return tuple((str(a), str(b)) for a, b in value)


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; every run's configuration is validated too, so a
    mistake in any method stops the sweep before the first run starts."""
    path = Path(path)
    tree = load_yaml(path)
    where = f"sweep file {path}"
    _check_keys(tree, _SWEEP_KEYS, where)
    folder = path.parent
    splits = tree.get("splits")
    if (
        not isinstance(splits, list)
        or not splits
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in splits)
        or len(set(splits)) != len(splits)
    ):
        raise ConfigError(f"'splits' in {where} must be a list of distinct split numbers")
    methods_tree = tree.get("methods")
    if not isinstance(methods_tree, dict) or not methods_tree:
        raise ConfigError(f"'methods' in {where} must map each method's label to its settings")
    methods = []
    for label, entry in methods_tree.items():
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            raise ConfigError(
                f"method '{shown(label, quoted=False)}' in {where} must be a mapping "
                "(config, overrides)"
            )
        _check_keys(entry, _METHOD_KEYS, f"method '{label}' of {where}")
        methods.append(
            SweepMethod(
                str(label),
                _config_path(entry.get("config"), folder, f"methods.{label}.config"),
                _string_list(entry.get("overrides"), f"methods.{label}.overrides"),
            )
        )
    settings = tree.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise ConfigError(f"'settings' in {where} must be a mapping of config sections")
    sweep = Sweep(
        name=path.stem,
        methods=tuple(methods),
        splits=tuple(splits),
        config=_config_path(tree.get("config"), folder, "config"),
        settings=settings,
        overrides=_string_list(tree.get("overrides"), "overrides"),
        description=str(tree.get("description", "")),
    )
    for method in sweep.methods:
        for split in sweep.splits:
            sweep.run_config(method, split)
    return dataclasses.replace(
        sweep,
        figures=_figure_spec(tree.get("figures"), sweep, where),
        compare=_comparisons(tree.get("compare"), sweep, where),
    )
