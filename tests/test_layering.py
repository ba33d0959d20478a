"""The package's layering, read from the source with ``ast`` (issue 16, item 6).

A module may import modules of its own layer and of the layers below it, never a
layer above: lazy imports (inside functions) count. The components are the names
right under ``osad`` (``osad.eval.metrics`` is in ``eval``). A new package slots in
by adding its name to one layer; one that is in no layer fails the test.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. cli and workflow on top; train below eval; data, models, attacks,
# openset below both. The configuration sits above the parts whose registries
# (datasets, models, attacks, scores, methods) check its sections, below what runs it.
LAYERS = (
    # foundation: no osad knowledge beyond errors, files and logging
    ("osad", "lazy", "errors", "inputs", "storage", "documents", "runlock", "rundir", "runtime"),
    ("runlog",),
    ("writers",),
    ("data", "models", "attacks", "openset", "distributed", "checkpoint", "modelio"),
    ("methods",),  # training methods from loss terms on the models
    ("config", "perf"),
    ("train",),
    ("eval",),
    # the anti-spoofing slice
    ("fas",),
    ("tasks",),
    ("workflow",),
    ("sweep",),  # runs many workflows
    ("cli", "__main__"),
)
# Imports forbidden even though they go down the layers.
ALSO_FORBIDDEN = {"fas": {"attacks", "openset", "distributed"}}
# Packages whose names loaded on first use (PEP 562) are the public API, any layer:
# ``osad.evaluate_model``.
FACADES = {"osad"}


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "osad_scripts_import_graph", ROOT / "scripts" / "import_graph.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


graph = _load_script()


def _rank(component: str) -> int | None:
    return next((n for n, layer in enumerate(LAYERS) if component in layer), None)


def layering(package: Path) -> tuple[set[tuple[str, str]], set[str]]:
    """The (importer, imported) edges that break the layering, and the components
    of ``package`` (a directory) that are in no layer."""
    modules, edges = graph.read_edges(package)
    unplaced = {graph.component(m) for m in modules if _rank(graph.component(m)) is None}
    violations = set()
    for edge in edges:
        if edge.via:  # the package __init__ an import runs: same component as the import
            continue
        if edge.on_first_use and edge.importer in FACADES:
            continue
        low, high = graph.component(edge.importer), graph.component(edge.imported)
        if low in unplaced or high in unplaced:
            continue
        if _rank(high) > _rank(low) or high in ALSO_FORBIDDEN.get(low, ()):
            violations.add((edge.importer, edge.imported))
    return violations, unplaced


def test_no_layer_imports_a_higher_one():
    violations, unplaced = layering(ROOT / "src" / "osad")
    assert not unplaced, f"add these osad components to a layer in LAYERS: {sorted(unplaced)}"
    assert not violations, f"imports from a lower layer into a higher one: {sorted(violations)}"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "osad" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "osad"


def test_checker_reports_an_upward_import_lazy_relative_or_unplaced(tmp_path):
    package = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "data/__init__.py": "from osad.errors import *\n",
            "data/load.py": """\
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from osad.train import loop  # never runs: not an import
                def load():
                    from ..eval import metrics  # lazy and relative
                """,
            "train/__init__.py": "",
            "train/loop.py": "import osad.eval.metrics\nfrom osad.data import load\n",
            "eval/__init__.py": "",
            "eval/metrics.py": "from osad import cli\n",
            "fas/__init__.py": "from osad.attacks import pgd\n",
            "attacks/__init__.py": "",
            "attacks/pgd.py": "",
            "cli.py": "from osad.fas import *\n",
            "newpkg/__init__.py": "",
            # loads a name on first use (PEP 562) from a higher layer
            "openset/__init__.py": """\
                from osad.lazy import lazy_exports
                _MODULES = {"score": ("scored",)}
                __all__, __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
                """,
            "openset/score.py": "from osad.eval.metrics import auroc\n",
            "lazy.py": "",
            "attacks/score.py": "from osad.openset import scored\n",
        },
    )
    violations, unplaced = layering(package)
    assert violations == {
        ("osad.data.load", "osad.eval.metrics"),
        ("osad.train.loop", "osad.eval.metrics"),
        ("osad.eval.metrics", "osad.cli"),
        ("osad.fas", "osad.attacks.pgd"),
        ("osad.openset.score", "osad.eval.metrics"),
    }
    # the name a lazy package loads on first use is imported from its submodule
    _, edges = graph.read_edges(package)
    assert ("osad.attacks.score", "osad.openset.score") in {(e.importer, e.imported) for e in edges}
    assert unplaced == {"newpkg"}


def test_the_graph_sees_the_names_lazy_packages_load_on_first_use():
    # ``from osad.config import Config`` runs osad.config.schema: an edge the graph
    # must hold, or cycles through the lazy packages go unseen.
    _, edges = graph.read_edges(ROOT / "src" / "osad")
    first_use = {(e.importer, e.imported) for e in edges if e.on_first_use}
    for package, module in [
        ("osad", "osad.eval.any_model"),
        ("osad.config", "osad.config.schema"),
        ("osad.eval", "osad.eval.protocol"),
        ("osad.train", "osad.train.loop"),
    ]:
        assert (package, module) in first_use
    assert ("osad.train.factory", "osad.config.schema") in {(e.importer, e.imported) for e in edges}


def test_import_graph_finds_a_cycle_through_a_lazy_import(tmp_path, capsys):
    files = {
        "__init__.py": "",
        "a.py": "from osad import b\n",
        "b.py": "def f():\n    import osad.c\n",
        "c.py": "from . import d\n",
        "d.py": "",
    }
    package = _tree(tmp_path / "acyclic", files)
    assert graph.main(["--root", str(package)]) == 0
    package = _tree(tmp_path / "cyclic", {**files, "d.py": "from osad.a import x\n"})
    assert graph.main(["--root", str(package)]) == 1
    assert graph.cycles(*graph.read_edges(package)) == [["osad.a", "osad.b", "osad.c", "osad.d"]]
    assert "osad.b -> osad.c  [lazy, line 2]" in capsys.readouterr().out
