"""The sweep report stack imports without circles: the renderers (HTML page, figures, wandb
summary run, TensorBoard) take their rows from `analyze` and their fronts from `pareto`, and none
of them imports another renderer or hides an import inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import sqzexplore

SWEEP = Path(sqzexplore.__file__).parent / "sweep"
RENDERERS = ("report_html", "figures", "wandb_summary", "tensorboard")
STACK = (
    "analyze",
    "pareto",
    "text_format",
    "metric_table",
    "figure_axes",
    "report",
    "wandb_export",
    *RENDERERS,
)


def _imports(module: str) -> tuple[set[str], list[str]]:
    """(sqzexplore.sweep modules imported at the top level, names imported inside functions)."""
    tree = ast.parse((SWEEP / f"{module}.py").read_text())
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "sqzexplore.sweep":
                top |= {a.name for a in node.names}
            elif node.module.startswith("sqzexplore.sweep."):
                top.add(node.module.rsplit(".", 1)[-1])
    nested = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "sqzexplore"
                ):
                    nested.append(f"{fn.name}: {node.module}")
    return top, nested


def test_the_report_stack_has_no_import_circle_and_no_hidden_imports():
    graph = {m: _imports(m)[0] & set(STACK) for m in STACK}

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(
            n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start]
        )

    circles = [m for m in STACK if reaches(m, m)]
    assert circles == [], f"import circle through {circles}: {graph}"
    for m in STACK:
        assert _imports(m)[1] == [], f"{m} imports sqzexplore modules inside functions"
    # The renderers take their rows from `analyze` and their fronts from `pareto` (through
    # analyze or directly), and never import each other or the report that calls them.
    for renderer in RENDERERS:
        assert not graph[renderer] & ({"report", *RENDERERS} - {renderer}), graph[renderer]
    assert "pareto" in graph["figures"] and "pareto" in graph["analyze"]
