"""Checking JSON documents read back from files, which may be damaged or crafted.

A :class:`DocumentCheck` is bound to one file and one error type; each of its
getters returns a value of the expected JSON type and range or raises that
error naming the file and the dotted key, so a reader validates its file kind
in one function (``state.json``: :mod:`osad.train.state`; ``metrics.json`` and
``summary.json``: :mod:`osad.eval.results`; an anti-spoofing ``metrics.json``:
:mod:`osad.fas.evaluate`) and never indexes a document it has not checked;
:func:`load_document` reads the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from osad.errors import OsadError, RunDirError

_KIND_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def kind_of(value: Any) -> str:
    """How a JSON value is described in a message: its kind, never its (unbounded) text."""
    for kind, name in _KIND_NAMES.items():
        if type(value) is kind:
            return name
    return type(value).__name__


@dataclass(frozen=True)
class DocumentCheck:
    """Typed access to the document of ``source`` (e.g. ``"checkpoint X/state.json"``);
    every refusal is an ``error`` (an :class:`OsadError` subclass)."""

    source: str
    error: type[OsadError]

    def fail(self, key: str, problem: str) -> NoReturn:
        raise self.error(f"{self.source}: '{key}' {problem}")

    def value(
        self,
        value: Any,
        key: str,
        kinds: type | tuple[type, ...],
        *,
        low: float | None = None,
        high: float | None = None,
        finite: bool = True,
    ) -> Any:
        """``value`` if it is one of ``kinds`` and within ``low..high``.

        ``bool`` is not an ``int`` here; ``float`` admits integers, and only
        finite numbers unless ``finite=False``.
        """
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        accepted = kinds + ((int,) if float in kinds else ())
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, accepted):
            expected = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            self.fail(key, f"must be {expected}, got {kind_of(value)}")
        if isinstance(value, float) and finite and not math.isfinite(value):
            self.fail(key, f"must be finite, got {value}")
        if low is not None and isinstance(value, int | float) and value < low:
            self.fail(key, f"must be at least {low}, got {value}")
        if high is not None and isinstance(value, int | float) and value > high:
            self.fail(key, f"must be at most {high}, got {value}")
        return value

    def field(
        self,
        mapping: dict[str, Any],
        key: str,
        kinds: type | tuple[type, ...],
        *,
        prefix: str = "",
        **bounds: Any,
    ) -> Any:
        """``mapping[key]`` checked by :meth:`value`; ``prefix`` dots the key's parents."""
        if key not in mapping:
            self.fail(f"{prefix}{key}", "is missing")
        return self.value(mapping[key], f"{prefix}{key}", kinds, **bounds)

    def mapping(self, value: Any, key: str, keys: Collection[str] | None = None) -> dict:
        """``value`` if it is a JSON object, holding exactly ``keys`` when given."""
        self.value(value, key, dict)
        if keys is not None and set(value) != set(keys):
            odd = sorted(set(value) ^ set(keys))[0]
            problem = "is missing" if odd in keys else "is not a known key"
            self.fail(f"{key}.{odd}" if key else odd, problem)
        return value

    def numbers(self, value: Any, key: str, *, finite: bool = True) -> dict[str, float]:
        """``value`` if it maps names to numbers (a metrics record)."""
        for name, number in self.value(value, key, dict).items():
            self.value(number, f"{key}.{name}", float, finite=finite)
        return value


def load_document(path: Path, hint: str) -> Any:
    """The JSON value in ``path``; :class:`RunDirError` naming it and ``hint`` when it
    cannot be read or parsed."""
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise RunDirError(f"{path} cannot be read ({exc.strerror}); {hint}") from None
    except ValueError:
        raise RunDirError(f"{path} is not valid JSON (truncated?); {hint}") from None
