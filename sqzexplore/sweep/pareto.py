"""Pareto fronts of a sweep's design points: dominance, the fronts per size, the knee, key points.

Pure functions of the per-point rows (`analyze.point_rows`): no files, no Optuna. The report, its
figures, the wandb summary and `sqz sweep status` all take their fronts from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.metric_table import ACCURACY, metric
from sqzexplore.sweep.space import SweepDefinition


def row_value(row: dict[str, Any], name: str) -> float | None:
    """A metric of a point row: sizes directly, run metrics as their seed mean."""
    value = row.get(name, row.get(f"{name}.mean"))
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """`a` is at least as good as `b` in every objective and better in one."""
    better = False
    for x, y, up in zip(a, b, maximize, strict=True):
        if (x < y) if up else (x > y):
            return False
        if x != y:
            better = True
    return better


def pareto_front(values: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the non-dominated points among `values` (any number of objectives; O(n^2),
    plenty for the thousands of points a sweep trains)."""
    return [
        i
        for i, v in enumerate(values)
        if not any(dominates(other, v, maximize) for j, other in enumerate(values) if j != i)
    ]


def frontier_rows(
    rows: Sequence[dict[str, Any]], size_metric: str, accuracy_metric: str = ACCURACY
) -> list[dict[str, Any]]:
    """Complete points on the accuracy-vs-`size_metric` Pareto front, smallest first."""
    candidates = [
        r
        for r in rows
        if r["state"] == sd.COMPLETE
        and row_value(r, accuracy_metric) is not None
        and row_value(r, size_metric) is not None
    ]
    points = [(row_value(r, accuracy_metric), row_value(r, size_metric)) for r in candidates]
    front = pareto_front(points, (True, False))
    front.sort(key=lambda i: (points[i][1], -points[i][0]))
    return [candidates[i] for i in front]


def knee_row(front: Sequence[dict[str, Any]], size_metric: str, accuracy_metric: str = ACCURACY):
    """The knee of a front (smallest first): the point farthest above the straight line from
    the smallest to the most accurate point, with size on a log scale when the metric plots on
    one and both axes scaled to [0, 1] (Kneedle's rule). None for fronts of fewer than 3."""
    if len(front) < 3:
        return None
    log = metric(size_metric).log_axis and all(row_value(r, size_metric) > 0 for r in front)
    xs = [row_value(r, size_metric) for r in front]
    xs = [math.log(x) for x in xs] if log else xs
    ys = [row_value(r, accuracy_metric) for r in front]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    nx = [(x - xs[0]) / span_x for x in xs]
    ny = [(y - ys[0]) / span_y for y in ys]
    # Distance above the chord from the first to the last point (both normalised).
    dx, dy = nx[-1] - nx[0], ny[-1] - ny[0]
    gaps = [(dx * (y - ny[0]) - dy * (x - nx[0])) for x, y in zip(nx, ny, strict=True)]
    best = max(range(1, len(front) - 1), key=lambda i: gaps[i])
    return front[best] if gaps[best] > 0 else None


FRONT_SIZES = ("complexity.params", "complexity.macs")
LATENCY = "latency.ms"  # a third front where the sweep measured latency (sweep/latency.py)


def front_sizes(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The sizes the report draws fronts for: params and MACs, and latency when measured."""
    measured = any(row_value(r, LATENCY) is not None for r in rows)
    return (*FRONT_SIZES, LATENCY) if measured else FRONT_SIZES


def front_name(size: str) -> str:
    """'params', 'macs', 'latency': a front's name in tables and figure file names."""
    return "latency" if size.startswith("latency.") else size.split(".")[-1]


def key_size(defn: SweepDefinition) -> str:
    """The size the sweep trades accuracy against: its first size (or latency) objective, else
    params."""
    for o in defn.objectives:
        if o.metric in (*FRONT_SIZES, LATENCY):
            return o.metric
    return FRONT_SIZES[0]


def fronts(
    rows: Sequence[dict[str, Any]], sizes: Sequence[str] = FRONT_SIZES
) -> dict[str, list[dict[str, Any]]]:
    """Size metric -> its Pareto front rows (with 'front', 'rank' and 'role' added)."""
    out = {}
    for size in sizes:
        front = frontier_rows(rows, size)
        best = max(front, key=lambda r: row_value(r, ACCURACY)) if front else None
        knee = knee_row(front, size)
        out[size] = [
            {
                **r,
                "front": front_name(size),
                "rank": i + 1,
                "role": " ".join(
                    name for name, pick in (("best", best), ("knee", knee)) if pick is r
                ),
            }
            for i, r in enumerate(front)
        ]
    return out


def merged_front(front_by_size: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """Every point on any front, once, smallest first, with the fronts it is on."""
    by_point: dict[str, dict[str, Any]] = {}
    for size, front in front_by_size.items():
        for r in front:
            row = by_point.setdefault(r["point"], {**r, "fronts": [], "roles": []})
            row["fronts"].append(front_name(size))
            row["roles"] += [f"{role} ({r['front']})" for role in r["role"].split()]
    return sorted(by_point.values(), key=lambda r: (r["complexity.params"], r["complexity.macs"]))


def key_points(
    rows: Sequence[dict[str, Any]], front_by_size: dict[str, list[dict]], size: str
) -> list[dict[str, Any]]:
    """The rows a reader looks for first: the most accurate point, the knee of the sweep's own
    front (where accuracy stops paying for size), and the front's smallest point."""
    front = front_by_size[size]
    if not front:
        return []
    label = metric(size).label
    picks = [("best: highest mean top-1", max(front, key=lambda r: row_value(r, ACCURACY)))]
    knee = next((r for r in front if "knee" in r["role"].split()), None)
    picks.append((f"knee of the {label} front", knee))
    picks.append((f"smallest on the {label} front", front[0]))
    return [{**r, "role": name} for name, r in picks if r is not None]
