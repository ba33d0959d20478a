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
:func:`osad.tasks.make_task_config` dispatches on it.

Attack budgets (``eps``, ``alpha``) are stated in units of 1/255 of the [0, 1]
pixel range, for both norms; :meth:`AttackConfig.eps_unit` converts.

A saved configuration (a run's ``config.yaml``) starts with ``format_version``
and ``osad_version``; a file given with ``--config`` may carry them too (they
are checked, see :mod:`osad.storage`) or leave them out.

The package: :mod:`~osad.config.strict_yaml` (the YAML reader),
:mod:`~osad.config.loader` (schema-agnostic typing of defaults, file and overrides),
:mod:`~osad.config.schema` (the dataclasses) and :mod:`~osad.config.validate`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from osad import __version__
from osad.config.loader import (
    CONFIG_FORMAT_VERSION,
    INT_RANGE,
    OLDEST_CONFIG_FORMAT,
    SEED_RANGE,
    ConfigSource,
    build_config,
    coerce,
    parse_override,
    without_header,
)
from osad.config.loader import (
    expand_key as _expand_key,
)
from osad.config.schema import (
    ALL_SCORES,
    DIGITS_EPS,
    PAIRINGS,
    AttackConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    PerfConfig,
    TrainConfig,
)
from osad.config.strict_yaml import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    _merge_tree,
    load_yaml,
    parse_yaml,
    read_yaml,
)
from osad.config.validate import (
    _check,
    check_perf_device,
    has_decoder,
    score_names,
    validate,
    validate_attack,
    validate_device,
)
from osad.storage import write_atomic


def expand_key(key: str, schema: type = Config) -> str:
    """Expand an undotted override key that names the field of exactly one section of
    ``schema`` (default :class:`Config`): ``split=2`` means ``data.split=2``."""
    return _expand_key(key, schema)


def make_config(file: ConfigSource = None, overrides: Sequence[str] = ()) -> Config:
    """Build and validate a :class:`Config` from defaults, a YAML file and overrides."""
    config = build_config(Config, file, overrides)
    validate(config)
    return config


def saved_tree(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A run's saved ``config.yaml`` mapping without its header, whose format version
    must be one this osad reads (raises ConfigError naming ``source``)."""
    return without_header(data, source, True, CONFIG_FORMAT_VERSION, OLDEST_CONFIG_FORMAT)


def resolved_dict(config: Any) -> dict[str, Any]:
    """``config`` as a plain mapping with its attacks resolved: every parameter and
    loss stated, as a run's saved ``config.yaml`` holds it."""
    tree = config.to_dict()
    if isinstance(config, Config):
        tree["train"]["attack"] = dataclasses.asdict(config.train.attack.resolved())
        tree["eval"]["attacks"] = {
            name: dataclasses.asdict(a.resolved()) for name, a in config.eval.attacks.items()
        }
    return tree


def save_config(config: Any, path: str | Path) -> None:
    """Write a configuration as YAML (:func:`resolved_dict`) after a header with the
    config format (:data:`CONFIG_FORMAT_VERSION`) and osad versions."""
    tree = resolved_dict(config)
    header = {"format_version": CONFIG_FORMAT_VERSION, "osad_version": __version__}
    write_atomic(path, yaml.safe_dump({**header, **tree}, sort_keys=False))


__all__ = [
    "ALL_SCORES",
    "CONFIG_FORMAT_VERSION",
    "DIGITS_EPS",
    "INT_RANGE",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "PAIRINGS",
    "SEED_RANGE",
    "AttackConfig",
    "CheckpointConfig",
    "Config",
    "ConfigSource",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "PerfConfig",
    "TrainConfig",
    "_check",
    "_merge_tree",
    "build_config",
    "check_perf_device",
    "coerce",
    "expand_key",
    "has_decoder",
    "load_yaml",
    "make_config",
    "parse_override",
    "parse_yaml",
    "read_yaml",
    "resolved_dict",
    "save_config",
    "saved_tree",
    "score_names",
    "validate",
    "validate_attack",
    "validate_device",
]
