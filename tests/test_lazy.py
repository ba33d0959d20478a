"""Packages whose public names load on first use (PEP 562):
importing one light submodule loads nothing of its heavy siblings, and every public
name is still there."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import pytest

import osad.config
import osad.eval
import osad.train


def test_a_light_submodule_loads_no_sibling():
    # Before: osad.eval.metrics loaded the protocol, the attacks and the scores
    # (41 osad modules), osad.train.functional the whole training loop, and
    # osad.config.loader the schema with every registry.
    code = (
        "import sys, osad.eval.metrics, osad.train.functional, osad.config.loader\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('osad'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    light = ["osad", "osad.eval", "osad.eval.metrics", "osad.train", "osad.train.functional"]
    config = ["osad.config", "osad.config.loader", "osad.config.strict_yaml"]
    # the foundation modules they import (errors, storage) and osad.lazy may load too
    foundation = {"osad.errors", "osad.storage", "osad.lazy"}
    assert [m for m in loaded if m not in foundation] == sorted([*light, *config])


@pytest.mark.parametrize("package", [osad.config, osad.eval, osad.train])
def test_every_public_name_loads(package):
    # Importing a submodule binds its name on the package: a public name that is also
    # a submodule's would then be the module (osad.config.validate once was).
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
    for name in package.__all__:
        assert not isinstance(getattr(package, name), types.ModuleType), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # noqa: B018
