"""Strict YAML: every YAML file osad reads (configurations, sweeps, saved runs).

:func:`parse_yaml` refuses duplicate and complex keys, alias bombs and deep
nesting, and reads ``1e-3`` as a float (YAML 1.2); :func:`load_yaml` reads a
configuration file, following ``extends:``. Errors are one-line
:class:`~osad.errors.ConfigError`.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml

from osad.errors import ConfigError, shown


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
