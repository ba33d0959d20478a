"""Configurations built, saved and read back: :func:`make_config` (defaults, a YAML
file and overrides, then validation), a run's ``config.yaml`` written and its
header checked."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from osad import __version__
from osad.config.checks import validate
from osad.config.loader import (
    CONFIG_FORMAT_VERSION,
    OLDEST_CONFIG_FORMAT,
    ConfigSource,
    build_config,
    without_header,
)
from osad.config.loader import (
    expand_key as _expand_key,
)
from osad.config.schema import Config
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
