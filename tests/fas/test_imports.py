"""The anti-spoofing slice stands alone: importing any of ``osad.fas`` loads nothing from
``osad.attacks``, ``osad.openset`` or ``osad.distributed`` (issue 16), directly or
through a package ``__init__``. Each check runs in a fresh interpreter, so that
``sys.modules`` holds only what the import itself loaded."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import osad.fas

FORBIDDEN = ("osad.attacks", "osad.openset", "osad.distributed")
MODULES = sorted(m.name for m in pkgutil.iter_modules(osad.fas.__path__, "osad.fas."))


def forbidden_loaded(modules: list[str]) -> list[str]:
    """The modules under :data:`FORBIDDEN` a fresh interpreter holds after importing
    ``modules``."""
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules)
    code += "print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert set(modules) <= set(loaded)  # the listing is the interpreter's
    return forbidden(loaded)


def forbidden(names: list[str]) -> list[str]:
    """The names of ``names`` that are, or are under, a :data:`FORBIDDEN` package."""
    return [m for m in names if any(m == p or m.startswith(p + ".") for p in FORBIDDEN)]


def test_forbidden_names_a_package_and_its_modules_only():
    names = ["osad.attacks", "osad.openset.msp", "osad.attacksx", "osad.fas", "osad"]
    assert forbidden(names) == ["osad.attacks", "osad.openset.msp"]


def test_every_module_of_the_slice_is_checked():
    expected = {"config", "data", "digits", "evaluate", "frames", "methods", "model"}
    expected |= {"task", "trainer"}
    assert {f"osad.fas.{m}" for m in expected} <= set(MODULES)


def test_the_slice_loads_no_attack_score_or_distributed_module():
    # One interpreter imports them all: if the union loads nothing forbidden, neither
    # does any one of them.
    modules = ["osad.fas", *MODULES]
    assert forbidden_loaded(modules) == []
