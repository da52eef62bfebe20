"""The project's import graph has no circles and its layers point one way.

The graph is read with `ast`, so it holds every import: top-level, function-local and under TYPE_CHECKING
alike (a circle hidden in a function still ties two modules together). `import a.b.c` from outside package `a`
also runs `a/__init__.py` and `a/b/__init__.py`, so it counts as importing those packages too.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "export", "runtimes", "benchmarks")


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    files = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names a module imports; `from x import y` gives both x and x.y (y may be a submodule)."""
    here = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    files = module_files(root, packages)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        for name in imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                inside = module == target or module.startswith(target + ".")  # its own packages run first anyway
                if target in files and not inside:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each with a path round it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_sees_a_circle_through_a_function_local_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub import b\n")
    (pkg / "a.py").write_text("from pkg.sub.b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg import a\n")
    (pkg / "c.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from . import a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}  # the package's __init__ runs too
    assert graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub", "pkg.sub.b"]]


def test_the_project_has_no_import_circle():
    graph = import_graph(ROOT)
    assert len(graph) > 40  # the whole project was read
    assert cycles(graph) == []


def test_core_and_runtimes_import_nothing_above_them():
    """compress.core and runtimes are the bottom layers: they never reach for a stage, a benchmark or the recipe."""
    graph = import_graph(ROOT)
    bottom = ("compress.core", "runtimes")
    upward = {m: sorted(t for t in targets if not t.startswith(bottom) and t != "compress")
              for m, targets in graph.items() if m.startswith(bottom)}
    assert {m: t for m, t in upward.items() if t} == {}
