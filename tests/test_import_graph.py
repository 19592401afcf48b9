"""No import circles in `sqzexplore/` or `benchmarks/`.

The graph is read from the source with `ast`, not by importing anything: an edge for every import
of a project module, wherever it stands (module level, inside a function, under
`if TYPE_CHECKING:`), and for the lazy re-exports of the packages' `__init__.py` (module names
given as strings, imported on first use). A function-level import does not make a circle harmless:
it only moves the failure from import time to call time, and it hides the layering (issue 18).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("sqzexplore", "benchmarks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every module under the roots, by dotted name."""
    return {
        _module_name(path): path
        for root in ROOTS
        for path in sorted((REPO / root).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` refers to: itself, else its nearest enclosing package."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `module` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".")
            for alias in node.names:
                # `from pkg import mod` imports the submodule; `from mod import name` the module.
                found.add(_resolve(f"{base}.{alias.name}", modules) or _resolve(base, modules))
        elif (
            is_package
            and isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value in modules
        ):
            found.add(node.value)  # a lazy re-export: {"name": "package.module"}
    found.discard(None)
    found.discard(module)
    return {m for m in found if m is not None}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One circle through the component, for the failure message: a -> b -> ... -> a."""
    members = set(component)
    start = component[0]
    trail, seen = [start], {start}
    while True:
        nxt = sorted(graph[trail[-1]] & members)
        back = [m for m in nxt if m == start]
        if back and len(trail) > 1:
            return " -> ".join([*trail, start])
        fresh = [m for m in nxt if m not in seen]
        if not fresh:
            return " -> ".join([*trail, "..."])
        trail.append(fresh[0])
        seen.add(fresh[0])


def test_the_graph_is_read():
    """The walk sees the edges it must (so an empty graph cannot pass the test below)."""
    graph = import_graph()
    assert "sqzexplore.checkpoint" in graph["sqzexplore.train.driver"]
    assert "sqzexplore.rundir" in graph["sqzexplore.checkpoint"]
    assert "benchmarks.profile" in graph["benchmarks.step"]
    assert "sqzexplore.checkpoint" in graph["sqzexplore.train"]  # lazy re-export of load_run
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import circles:\n" + "\n".join(_path(graph, c) for c in found)


def test_rundir_is_a_leaf():
    """rundir.py, the run-directory contract every layer uses, imports no project module and
    nothing beyond the standard library (and numpy, which it may use for JSON values)."""
    path = REPO / "sqzexplore" / "rundir.py"
    assert imports_of("sqzexplore.rundir", path, project_modules()) == set()
    tree = ast.parse(path.read_text())
    top = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            top.add((node.module or "").split(".")[0])

    assert top <= set(sys.stdlib_module_names) | {"__future__", "numpy"}, top


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 120


def oversized() -> dict[str, list[str]]:
    """Library modules over `MAX_MODULE_LINES` lines or with a function over
    `MAX_FUNCTION_LINES` (module path -> what is too long)."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "sqzexplore").rglob("*.py")):
        source = path.read_text()
        lines = len(source.splitlines())
        long = [f"{lines} lines"] if lines > MAX_MODULE_LINES else []
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{node.name}() {size} lines")
        if long:
            found[str(path.relative_to(REPO))] = long
    return found


def test_modules_and_functions_stay_small():
    """One job per module: at most 450 lines a module and 120 a function (issue 24)."""
    new = oversized()
    limits = f"{MAX_MODULE_LINES} lines a module or {MAX_FUNCTION_LINES} a function"
    assert not new, f"over {limits}: {new}"
