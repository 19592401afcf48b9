"""Building blocks of the sweep figures: rendering to PNG/SVG/PDF, readable log axes, legends.

Shared by every figure in `figures` (and the tests of its axes): tick labels a person reads at a
glance (700k, 1M, 2M; 5M, 7.5M, ... over a narrow range), legends under the axes, a metric's
displayed value and spread, and `render`, which gives the three file formats with text kept as
text.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from sqzexplore.sweep.metric_table import metric  # noqa: E402
from sqzexplore.sweep.pareto import row_value  # noqa: E402

matplotlib.rcParams["svg.hashsalt"] = "sqzexplore"  # identical SVG ids from identical data


BARS = "error bars: mean ± 1 std over seeds (none where a point has one seed)"


ROTATED_BELOW = -0.42  # legend offset under rotated categorical tick labels and the axis label


def is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def short_key(key: str) -> str:
    return key.split(".")[-1]


def display_value(name: str, row: dict) -> float | None:
    return metric(name).display(row_value(row, name))


def std_value(name: str, row: dict) -> float:
    """The displayed +- 1 std of a row's metric; 0 (no bar) for a single seed."""
    std = row.get(f"{name}.std")
    return 0.0 if std is None else std * metric(name).scale


FORMATS = ("png", "svg", "pdf")


SAVE_OPTIONS = {
    "png": {"dpi": 110},
    # Undated, so identical data give identical files.
    "svg": {"metadata": {"Date": None}},
    "pdf": {"metadata": {"CreationDate": None}},
}


def render(fig) -> dict[str, bytes]:
    """The figure as {'png': bytes, 'svg': bytes, 'pdf': bytes} (and closed). SVG text stays
    text (editable in Inkscape or Illustrator, searchable), PDF fonts are embedded as TrueType
    (Type 42), which journals' checkers accept and editors can change."""
    out = {}
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        for fmt in FORMATS:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, bbox_inches="tight", **SAVE_OPTIONS[fmt])
            out[fmt] = buf.getvalue()
    plt.close(fig)
    return out


def short_number(value: float, _pos: Any = None) -> str:
    """A tick label a person reads at a glance: 700k, 1M, 2.5M, 50, 0.5."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:g}{suffix}"
    return f"{value:g}"


def readable_log_axis(axis, values: Sequence[float]) -> None:
    """Labelled ticks on a log axis over any range of (positive) `values`: 1-2-5 per decade
    when at least three such marks fall inside the data, else 3-6 evenly stepped round numbers
    across the data (5M, 7.5M, ... 17.5M), so a narrow range is labelled end to end, not only at
    one decade mark."""
    lo, hi = min(values), max(values)
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    one_two_five = [m * 10.0**e for e in decades for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    if len(one_two_five) >= 3:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    else:
        axis.set_major_locator(FixedLocator(round_ticks(lo, hi)))
    axis.set_major_formatter(FuncFormatter(short_number))
    axis.set_minor_formatter(NullFormatter())


def round_ticks(lo: float, hi: float) -> list[float]:
    """Round, evenly stepped tick values covering [lo, hi] (at least 3 inside it, the outer
    ones within one step of each end)."""
    if hi <= lo:
        lo, hi = lo * 0.9, hi * 1.1
    for nbins in (5, 8, 12):
        ticks = MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        inside = [t for t in ticks if lo <= t <= hi and t > 0]
        if len(inside) >= 3:
            break
    step = ticks[1] - ticks[0]
    return [float(t) for t in ticks if t > 0 and lo - step < t < hi + step]


def legend_below(ax, below: float = -0.16, **kw) -> None:
    """The legend under the axes (below their tick labels and axis label), never on the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, below),
            ncol=min(2, len(handles)),
            fontsize=7,
            frameon=False,
            **kw,
        )


def nothing_yet(ax) -> None:
    ax.text(0.5, 0.5, "no complete design point yet", transform=ax.transAxes, ha="center")
