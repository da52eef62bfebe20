"""The project's import graph has no circles and its floors point one way: a module imports from its own floor
and those below, never from one above (README's Architecture draws the same floors).

The graph is read with `ast`, so it holds every import: top-level, function-local and under TYPE_CHECKING
alike (a circle hidden in a function still ties two modules together). `import a.b.c` from outside package `a`
also runs `a/__init__.py` and `a/b/__init__.py`, so it counts as importing those packages too.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "export", "runtimes", "benchmarks")

# The floors, bottom first. A module stands on the floor of the longest name listed here that it is, or lies under.
FLOORS: dict[str, tuple[str, ...]] = {
    "core": ("compress", "compress.core"),  # `compress` itself: its __init__ runs under every compress.core import
    "runtimes": ("runtimes",),
    "stages": ("compress.stages", "export"),
    "benchmarks": ("benchmarks",),
    "recipe": ("compress.recipe", "compress.gate", "compress.pipeline"),
    "commands": ("compress.run", "benchmarks.run", "benchmarks.compare", "benchmarks.ingest",
                 "benchmarks.against_reference", "benchmarks.search_scaling"),
}


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


def floor_of(module: str, floors: dict[str, tuple[str, ...]] = FLOORS) -> int | None:
    """The index of the module's floor (0 is the ground), or None when no floor names it."""
    named = [(len(name), i) for i, names in enumerate(floors.values()) for name in names
             if module == name or module.startswith(name + ".")]
    return max(named)[1] if named else None


def upward(graph: dict[str, set[str]], floors: dict[str, tuple[str, ...]] = FLOORS) -> list[str]:
    """Every import that runs up a floor, as "importer (its floor) -> imported (its floor)"."""
    names = list(floors)
    return [f"{m} ({names[floor_of(m, floors)]}) -> {t} ({names[floor_of(t, floors)]})"
            for m, targets in sorted(graph.items()) for t in sorted(targets)
            if floor_of(t, floors) > floor_of(m, floors)]


def test_the_floor_check_fails_on_an_import_that_runs_up_a_floor(tmp_path):
    """A synthetic house: `low.base` reaches up into `high.tool` from inside a function; `high` imports `low` (down,
    allowed) and `low.other` sits on its floor alone. The check names the one upward import, and only it."""
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()
    (tmp_path / "low" / "__init__.py").write_text("")
    (tmp_path / "high" / "__init__.py").write_text("")
    (tmp_path / "low" / "base.py").write_text("def f():\n    from high.tool import g\n")
    (tmp_path / "low" / "other.py").write_text("import json\n")
    (tmp_path / "high" / "tool.py").write_text("from low.other import json\n")
    floors = {"ground": ("low",), "top": ("high",)}
    graph = import_graph(tmp_path, ("low", "high"))
    assert upward(graph, floors) == ["low.base (ground) -> high (top)", "low.base (ground) -> high.tool (top)"]
    (tmp_path / "low" / "base.py").write_text("def f():\n    from low import other\n")
    assert upward(import_graph(tmp_path, ("low", "high")), floors) == []


def test_every_module_stands_on_a_floor():
    assert [m for m in import_graph(ROOT) if floor_of(m) is None] == []


def test_no_import_runs_up_a_floor():
    """core -> runtimes -> stages (compress.stages and export) -> benchmarks -> recipe (recipe, gate, pipeline) ->
    commands: what a floor needs from a higher one moves down, or is handed in."""
    assert upward(import_graph(ROOT)) == []
