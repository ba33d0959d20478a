"""The import graph of a Python package, read with ``ast`` (nothing is imported).

Reads every module under ``src/osad`` (or ``--root``), collects its imports of
the package's own modules, prints the graph between the package's top-level
components (``osad.eval``, ``osad.config``, ...) and every cycle between modules,
and exits 1 if a cycle exists (issue 16: "an import graph with no cycle, lazy
imports counted").

Two kinds of import are counted separately:

- **top**: runs when the module is imported (module body, including ``try``/``if``
  blocks and class bodies);
- **lazy**: runs when a function is called (an ``import`` inside a function, or
  ``importlib.import_module("literal")``); a package that loads names on first use
  (PEP 562, through ``osad.lazy.lazy_exports`` and its table) lazily imports
  each module of its table, and ``from package import name`` imports the module
  that name comes from. Such a table's edges are left out of cycles (importing the
  package runs none of them).

Imports under ``if TYPE_CHECKING:`` never run and are left out. Importing
``a.b.c`` also runs the package ``a.b``'s ``__init__``, so such an import is an
edge to ``a.b.c`` and to ``a.b`` (unless the importer is inside ``a.b`` already).
In the component graph, ``osad`` stands for the root package's own ``__init__``.
A cycle is a strongly connected component of more than one module (Tarjan), or a
module that imports itself; lazy edges count.

    python scripts/import_graph.py                 # summary, component graph, cycles
    python scripts/import_graph.py --edges         # also every module-level edge
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "osad"


@dataclass(frozen=True)
class Edge:
    """``importer`` imports ``imported`` (dotted module names) on ``line``.

    ``lazy``: inside a function. ``via``: the module named in the import statement
    when this edge is to a package whose ``__init__`` that import runs, else ``""``.
    ``on_first_use``: a name the importer loads from ``imported`` on first access
    (:func:`_lazy_names`); no import of the importer runs it, so it is in no cycle.
    """

    importer: str
    imported: str
    line: int
    lazy: bool
    via: str = ""
    on_first_use: bool = False


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file for every ``.py`` file under the package directory ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.Module):
    """(node, lazy) for every import statement and ``import_module`` call that can run."""
    stack = [(tree, False)]
    while stack:
        node, lazy = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend((child, lazy) for child in node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom | ast.Call):
            yield node, lazy
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


def _known(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of ``name`` that is a module of the package (``name`` if none)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return name


def _lazy_names(name: str, tree: ast.Module, modules: dict[str, Path]) -> dict[str, str]:
    """Name -> module of the package ``name`` that loads names on first use (PEP 562)
    through :func:`osad.lazy.lazy_exports`: ``lazy_exports(__name__, TABLE)``, TABLE a
    dict literal (or a module-level name bound to one) of submodules, relative to the
    package, to tuples of the names they define."""
    tables = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    table = {}
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", "") == "lazy_exports"
            and len(node.args) == 2
        ):
            continue
        mapping = node.args[1]
        mapping = tables.get(mapping.id) if isinstance(mapping, ast.Name) else mapping
        if not isinstance(mapping, ast.Dict):
            continue
        for key, names in zip(mapping.keys, mapping.values, strict=True):
            if not (isinstance(key, ast.Constant) and isinstance(names, ast.Tuple | ast.List)):
                continue
            target = _known(f"{name}.{key.value}", modules)
            if target in modules:
                table.update({n.value: target for n in names.elts if isinstance(n, ast.Constant)})
    return table


def _targets(node: ast.AST, importer: str, is_package: bool, modules, lazy_names):
    """The dotted names of the package's modules that ``node`` imports (``lazy_names``:
    module -> its names loaded on first use, see :func:`_lazy_names`)."""
    package = importer.split(".")[0]
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = importer.split(".") if is_package else importer.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        # ``from a import b``: the module ``a.b`` if there is one, else the module
        # that ``a`` loads b from on first use, else the name b in ``a``.
        names = [
            f"{module}.{a.name}"
            if f"{module}.{a.name}" in modules
            else lazy_names.get(module, {}).get(a.name, module)
            for a in node.names
        ]
    else:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        args = node.args
        if called != "import_module" or not args or not isinstance(args[0], ast.Constant):
            return []
        names = [args[0].value] if isinstance(args[0].value, str) else []
    return sorted({_known(n, modules) for n in names if n.split(".")[0] == package})


def read_edges(root: Path = ROOT) -> tuple[dict[str, Path], list[Edge]]:
    """Every module of the package at ``root`` and every edge between its modules."""
    modules = module_names(root)
    trees = {
        name: ast.parse(path.read_text(), filename=str(path)) for name, path in modules.items()
    }
    lazy_names = {name: _lazy_names(name, tree, modules) for name, tree in trees.items()}
    edges = [
        Edge(name, target, 0, lazy=True, on_first_use=True)
        for name, table in lazy_names.items()
        for target in set(table.values())
    ]
    for importer, tree in trees.items():
        is_package = modules[importer].name == "__init__.py"
        for node, lazy in _statements(tree):
            for target in _targets(node, importer, is_package, modules, lazy_names):
                parts = target.split(".")
                edges.append(Edge(importer, target, node.lineno, lazy))
                # Importing a.b.c runs a.b's __init__ first (the root package's too,
                # but every module is inside it).
                for end in range(2, len(parts)):
                    parent = ".".join(parts[:end])
                    if not f"{importer}.".startswith(f"{parent}."):
                        edges.append(Edge(importer, parent, node.lineno, lazy, via=target))
    return modules, sorted(set(edges), key=lambda e: (e.importer, e.line, e.imported))


def component(module: str) -> str:
    """The top-level component of a module: ``osad.eval.metrics`` -> ``eval``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(nodes, edges: list[Edge]) -> list[list[str]]:
    """The modules of every import cycle (Tarjan's strongly connected components).

    An SCC counts when it has more than one module or a module imports itself.
    Lazy edges count. Sorted, each cycle's modules sorted.
    """
    graph = defaultdict(set)
    for edge in edges:
        if not edge.on_first_use:
            graph[edge.importer].add(edge.imported)
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(root):  # iterative Tarjan: the package's depth must not hit the recursion limit
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                scc = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    scc.append(member)
                    if member == node:
                        break
                if len(scc) > 1 or node in graph[node]:
                    found.append(sorted(scc))

    for node in sorted(set(nodes) | set(graph)):
        if node not in index:
            visit(node)
    return sorted(found)


def _describe(edge: Edge) -> str:
    if edge.on_first_use:
        return f"{edge.importer} -> {edge.imported}  [lazy, on first use of a name]"
    kind = "lazy" if edge.lazy else "top"
    via = f" (package __init__, importing {edge.via})" if edge.via else ""
    return f"{edge.importer} -> {edge.imported}  [{kind}, line {edge.line}]{via}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="package directory (src/osad)")
    parser.add_argument("--edges", action="store_true", help="print every module-level edge")
    args = parser.parse_args(argv)
    modules, edges = read_edges(args.root)
    direct = [e for e in edges if not e.via]
    print(
        f"{len(modules)} modules, {sum(not e.lazy for e in direct)} top-level and "
        f"{sum(e.lazy for e in direct)} lazy imports between them"
    )
    between = defaultdict(lambda: [0, 0])
    for edge in direct:
        a, b = component(edge.importer), component(edge.imported)
        if a != b:
            between[a, b][edge.lazy] += 1
    print("\ncomponent graph (importer -> imported: top-level/lazy import statements):")
    for name in sorted({a for a, _ in between}):
        targets = sorted((b, n) for (a, b), n in between.items() if a == name)
        print(f"  {name} -> " + ", ".join(f"{b} {top}/{lazy}" for b, (top, lazy) in targets))
    if args.edges:
        print("\nedges:")
        for edge in edges:
            print(f"  {_describe(edge)}")
    found = cycles(modules, edges)
    print(f"\n{len(found)} import cycle(s) between modules (lazy imports counted)")
    for number, scc in enumerate(found, 1):
        members = set(scc)
        print(f"\ncycle {number}: {len(scc)} modules: {', '.join(scc)}")
        for edge in edges:
            if edge.importer in members and edge.imported in members:
                print(f"  {_describe(edge)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
