"""The metric table: every metric a sweep can optimise, tabulate or plot, declared once by name.

pycls habit: a metric is named (`final.top1`, `complexity.params`), and this table says where it
lives in a run's `result.json`, how to label an axis with it, how to print it and whether higher
is better. Objectives, CSV columns and plots refer to metrics by these names only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Metric:
    """Where a metric lives in result.json and how to show it."""

    name: str
    path: tuple[str, ...]  # keys into result.json
    label: str  # axis / column label, in display units
    fmt: str  # format of the display value
    scale: float = 1.0  # display value = stored value * scale
    higher_is_better: bool | None = None  # None: neither (a cost or a time that is just shown)
    log_axis: bool = False
    transform: Callable[[float], float] | None = None  # derived metrics (error = 1 - top1)
    derive: Callable[[Mapping[str, Any]], float | None] | None = None  # from several fields

    def value(self, result: Mapping[str, Any]) -> float | None:
        """The stored (unscaled) value in a result dict, or None when absent."""
        if self.derive is not None:
            return self.derive(result)
        node: Any = result
        for key in self.path:
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        if node is None or isinstance(node, bool):
            return None
        try:
            value = float(node)
        except (TypeError, ValueError):
            return None
        if self.transform is not None:
            value = self.transform(value)
        return value

    def display(self, value: float | None) -> float | None:
        return None if value is None else value * self.scale

    def format(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return self.fmt.format(value * self.scale)


def _error(top1: float) -> float:
    return 1.0 - top1


def _overhead(result: Mapping[str, Any]) -> float | None:
    """A run's time outside training and compilation: wall - train - compile (set-up, data,
    evaluation, checkpoints, logging). None when a part is missing."""
    parts = [result.get(k) for k in ("wall_time_s", "train_time_s", "compile_time_s")]
    if any(not isinstance(p, (int, float)) or isinstance(p, bool) for p in parts):
        return None
    return max(0.0, float(parts[0]) - float(parts[1]) - float(parts[2]))


_METRICS = [
    Metric("final.top1", ("final", "top1"), "top-1 accuracy (%)", "{:.2f}", 100.0, True),
    Metric("final.top5", ("final", "top5"), "top-5 accuracy (%)", "{:.2f}", 100.0, True),
    Metric("final.loss", ("final", "loss"), "eval loss", "{:.4f}", 1.0, False),
    Metric(
        "final.error",
        ("final", "top1"),
        "top-1 error (%)",
        "{:.2f}",
        100.0,
        False,
        transform=_error,
    ),
    Metric("best.top1", ("best", "top1"), "best top-1 accuracy (%)", "{:.2f}", 100.0, True),
    Metric(
        "complexity.params", ("complexity", "params"), "parameters", "{:,.0f}", 1.0, False, True
    ),
    Metric("complexity.macs", ("complexity", "macs"), "MACs (M)", "{:,.2f}", 1e-6, False, True),
    Metric(
        "complexity.fp32_mib",
        ("complexity", "fp32_mib"),
        "fp32 size (MiB)",
        "{:.3f}",
        1.0,
        False,
        True,
    ),
    Metric(
        "complexity.activations",
        ("complexity", "activations"),
        "activations (M)",
        "{:,.3f}",
        1e-6,
        False,
        True,
    ),
    # Measured on this host (sweep/latency.py): batch 1, ONNX Runtime, one thread; the median.
    Metric("latency.ms", ("latency", "ms"), "latency (ms, batch 1)", "{:.3f}", 1.0, False, True),
    Metric("latency.p90_ms", ("latency", "p90_ms"), "p90 latency (ms)", "{:.3f}", 1.0, False, True),
    Metric("train_time_s", ("train_time_s",), "train time (s)", "{:.1f}", 1.0, None),
    Metric("wall_time_s", ("wall_time_s",), "wall time (s)", "{:.1f}", 1.0, None),
    Metric("compile_time_s", ("compile_time_s",), "compile time (s)", "{:.1f}", 1.0, None),
    Metric("overhead_s", (), "overhead (s)", "{:.1f}", 1.0, None, derive=_overhead),
    Metric("images_per_s", ("images_per_s",), "images/s", "{:,.0f}", 1.0, None),
    Metric("steps", ("steps",), "steps", "{:,.0f}", 1.0, None),
    Metric("epochs", ("epochs",), "epochs", "{:.2f}", 1.0, None),
]

METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}

# Metrics a sweep tabulates per design point (mean and std over seeds), in column order.
RESULT_METRICS = (
    "final.top1",
    "final.top5",
    "final.loss",
    "best.top1",
    "train_time_s",
    "wall_time_s",
    "compile_time_s",
    "overhead_s",
    "images_per_s",
)
# Size metrics: a property of the design point (the same for every seed).
SIZE_METRICS = (
    "complexity.params",
    "complexity.macs",
    "complexity.fp32_mib",
    "complexity.activations",
)
# Measured latency: a property of the design point on the sweep's host, when it measured it.
LATENCY_METRICS = ("latency.ms", "latency.p90_ms")
# The accuracy metric the reports, frontiers and pruning use.
ACCURACY = "final.top1"


def metric(name: str) -> Metric:
    """The table entry for `name`; a clear error lists the known names."""
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return METRICS[name]
