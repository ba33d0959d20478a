"""The schema-agnostic configuration loader: a dataclass schema's defaults, then a
YAML file (or a mapping), then ``key=value`` overrides, strictly typed.

Types come from the dataclass annotations (:func:`coerce`); a dataclass may
declare a classmethod ``from_tree(data, key)`` that rewrites its mapping before
it is typed (e.g. to accept an older spelling), and ``reset_on_rename(node,
given)`` to reset its keys when an override changes its ``name``. Errors are
one-line :class:`~osad.errors.ConfigError` naming the key and, for misspellings,
the closest valid one.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from osad.config.strict_yaml import _merge_tree, load_yaml, parse_yaml
from osad.errors import ConfigError, did_you_mean, shown
from osad.storage import check_format

T = TypeVar("T")
# The layout of a configuration file (a run's config.yaml): 2 holds each attack's own
# parameters under 'params' and score options under 'eval.score_options'; 1 held them
# flat and had 'eval.openmax_tail', and still loads (the schema converts it).
CONFIG_FORMAT_VERSION = 2
OLDEST_CONFIG_FORMAT = 1
ConfigSource = str | Path | dict[str, Any] | None


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


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the typed value.

    A scalar where a list is expected is a one-element list (``eval.scores=msp``).
    Every number must be finite, every integer an int64 and every ``*seed`` in
    :data:`SEED_RANGE`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
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
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {shown(value)}")
        _, val_tp = typing.get_args(tp)
        return {str(k): coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        # Optional fields: null means "the default of whatever the field belongs to".
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(inner) < len(typing.get_args(tp)):
            return None
        if len(inner) == 1:  # Optional[X]: X's own message (range, finiteness)
            return coerce(value, inner[0], key)
        for option in inner:  # e.g. int | str: the first type the value has
            try:
                return coerce(value, option, key)
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
    if hasattr(cls, "from_tree"):
        data = cls.from_tree(data, prefix)
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
        kwargs[key] = coerce(value, hints[key], full)
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


def without_header(
    tree: dict[str, Any], source: str, required: bool, version: int, oldest: int
) -> dict[str, Any]:
    """``tree`` without the saved-file header, whose format version must be in
    ``oldest..version`` (a file that states none is refused only if ``required``)."""
    tree = dict(tree)
    found = tree.pop("format_version", None)
    tree.pop("osad_version", None)
    if found is not None or required:
        check_format(found, source, ConfigError, current=version, oldest=oldest)
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


def expand_key(key: str, schema: type) -> str:
    """Expand an undotted override key that names the field of exactly one section.

    ``split=2`` means ``data.split=2`` and ``epochs=3`` means ``train.epochs=3``;
    a name that several sections carry (``batch_size``) must be written in full.
    """
    if "." in key or key in {f.name for f in dataclasses.fields(schema)}:
        return key
    paths = _section_fields(schema).get(key, [])
    if len(paths) > 1:
        raise ConfigError(f"ambiguous key '{key}': write one of {', '.join(paths)}")
    return paths[0] if paths else key


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


def _get_dotted(tree: dict[str, Any], parts: Sequence[str]) -> Any:
    node: Any = tree
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def build_config(
    schema: type[T],
    file: ConfigSource = None,
    overrides: Sequence[str] = (),
    *,
    version: int = CONFIG_FORMAT_VERSION,
    oldest: int = OLDEST_CONFIG_FORMAT,
) -> T:
    """An instance of the dataclass ``schema`` from its defaults, a YAML file (or a
    mapping) and ``key=value`` overrides, strictly typed but not range-checked.

    A file's header (``format_version``) must lie in ``oldest..version``. An override
    that changes the ``name`` of a section whose type has ``reset_on_rename`` (an
    attack: ``train.attack.name=fgsm-rs``) lets it reset the keys the overrides do not
    set.
    """
    tree = dataclasses.asdict(schema())
    if file is not None:
        loaded = dict(file) if isinstance(file, dict) else load_yaml(file)
        source = "the configuration" if isinstance(file, dict) else f"config file {file}"
        header = without_header(loaded, source, False, version, oldest)
        tree = _merge_tree(tree, header)
    given, renamed = set(), []
    for text in overrides:
        key, value = parse_override(text)
        key = expand_key(key, schema)
        parts = key.split(".")
        if parts[-1] == "name" and hasattr(_type_at(schema, parts[:-1]), "reset_on_rename"):
            previous = _get_dotted(tree, parts[:-1])
            if not isinstance(previous, dict) or previous.get("name") != value:
                renamed.append(parts[:-1])
        _set_dotted(tree, key, value)
        given.add(key)
    for parts in renamed:
        prefix = ".".join(parts) + "."
        own = {key[len(prefix) :] for key in given if key.startswith(prefix)}
        _type_at(schema, parts).reset_on_rename(_get_dotted(tree, parts), own)
    return _build(schema, tree)
