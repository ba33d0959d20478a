"""Packages whose public names load their module on first use (PEP 562).

A package lists ``name -> submodule``; importing one light submodule then does not
load its heavy siblings (the anti-spoofing slice imports ``osad.eval.metrics`` without
the attack protocol, and ``osad.config.loader`` without the registries that check a
configuration).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public name ``n`` is defined in
    its submodule ``exports[n]`` (a name relative to the package)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module '{package}' has no attribute {name!r}")
        return getattr(import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
