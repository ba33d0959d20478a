"""Packages whose public names load their module on first use (PEP 562).

A package lists ``name -> submodule``; importing one light submodule then does not
load its heavy siblings (the anti-spoofing slice imports ``osad.eval.metrics`` without
the attack protocol, and ``osad.config.loader`` without the registries that check a
configuration).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, modules: Mapping[str, Sequence[str]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` whose submodule ``m`` (a name
    relative to the package) defines the public names ``modules[m]``."""
    exports = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module '{package}' has no attribute {name!r}")
        return getattr(import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return sorted(exports), __getattr__, __dir__
