"""Sweep figures (matplotlib, Agg backend: no display, no network), declared by metric name.

- `frontier_scatter`: accuracy vs a size metric, one panel per swept field (points coloured by
  it), mean +- 1 std over seeds as error bars, the Pareto front as a staircase inside a +- 1 std
  band, its best point and knee marked.
- `field_curves`: the paper's Fig. 3 layout: accuracy and fp32 MiB against one swept field, with
  the paper's own values in a panel beside it when the paper ablates that field.
- `error_edfs`: pycls error EDFs, one curve per value of each swept field (the design strategy).

Every title names the sweep, the metric and what it was measured on (dataset and split); every
legend sits outside the axes; log axes get plain tick labels (700k, 1M, 2M). `render` gives PNG
and SVG bytes of a figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from sqzexplore.sweep import sweepdir as sd  # noqa: E402
from sqzexplore.sweep.analyze import frontier_rows, knee_row, row_value  # noqa: E402
from sqzexplore.sweep.metric_table import ACCURACY, metric  # noqa: E402
from sqzexplore.sweep.paper_values import paper_figure  # noqa: E402
from sqzexplore.sweep.params import Categorical  # noqa: E402
from sqzexplore.sweep.space import SweepDefinition  # noqa: E402

MAX_PANELS = 4
MAX_GROUPS = 8
ROTATED_BELOW = -0.42  # legend offset under rotated categorical tick labels and the axis label
BARS = "error bars: mean ± 1 std over seeds (none where a point has one seed)"
matplotlib.rcParams["svg.hashsalt"] = "sqzexplore"  # identical SVG ids from identical data


def _is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _short(key: str) -> str:
    return key.split(".")[-1]


def _display(name: str, row: dict) -> float | None:
    return metric(name).display(row_value(row, name))


def _std(name: str, row: dict) -> float:
    """The displayed +- 1 std of a row's metric; 0 (no bar) for a single seed."""
    std = row.get(f"{name}.std")
    return 0.0 if std is None else std * metric(name).scale


def render(fig) -> dict[str, bytes]:
    """The figure as {'png': bytes, 'svg': bytes} (and closed)."""
    out = {}
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        extra = {"dpi": 110} if fmt == "png" else {"metadata": {"Date": None}}
        fig.savefig(buf, format=fmt, bbox_inches="tight", **extra)
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
    """Log scale with labelled ticks at 1-2-5 (every integer multiple over a narrow range)."""
    lo, hi = min(values), max(values)
    subs = (1.0, 2.0, 5.0) if hi / lo > 4 else tuple(float(k) for k in range(1, 10))
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    axis.set_major_formatter(FuncFormatter(short_number))
    axis.set_minor_formatter(NullFormatter())


def _legend_below(ax, below: float = -0.16, **kw) -> None:
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


def _colour_points(ax, fig, rows, key, xs, ys, errs):
    values = [r[key] for r in rows]
    if _is_numeric(values) and len(set(values)) > MAX_GROUPS:
        sc = ax.scatter(xs, ys, c=values, cmap="viridis", s=36, zorder=3)
        fig.colorbar(sc, ax=ax, label=_short(key))
        ax.errorbar(xs, ys, yerr=errs, fmt="none", ecolor="0.6", zorder=2)
        return
    groups = sorted(set(values), key=lambda v: (str(type(v)), v))
    cmap = plt.get_cmap("tab10")
    for i, g in enumerate(groups):
        idx = [k for k, v in enumerate(values) if v == g]
        ax.errorbar(
            [xs[k] for k in idx],
            [ys[k] for k in idx],
            yerr=[errs[k] for k in idx],
            fmt="o",
            color=cmap(i % 10),
            label=f"{_short(key)}={g}",
            ms=6,
            zorder=3,
            capsize=2,
        )


def frontier_scatter(
    rows: Sequence[dict],
    defn: SweepDefinition,
    size_metric: str,
    where: str,
    accuracy: str = ACCURACY,
):
    """Accuracy vs `size_metric` with the Pareto staircase and its band; a panel per field."""
    done = [
        r
        for r in rows
        if r["state"] == sd.COMPLETE
        and row_value(r, accuracy) is not None
        and row_value(r, size_metric) is not None
    ]
    keys = list(defn.keys[:MAX_PANELS])
    fig, axes = plt.subplots(1, len(keys), figsize=(5.4 * len(keys), 4.6), squeeze=False)
    front = frontier_rows(done, size_metric, accuracy)
    knee = knee_row(front, size_metric, accuracy)
    fx = [_display(size_metric, r) for r in front]
    fy = [_display(accuracy, r) for r in front]
    fe = [_std(accuracy, r) for r in front]
    xs = [_display(size_metric, r) for r in done]
    ys = [_display(accuracy, r) for r in done]
    errs = [_std(accuracy, r) for r in done]
    for ax, key in zip(axes[0], keys, strict=True):
        if done:
            _colour_points(ax, fig, done, key, xs, ys, errs)
        else:
            _nothing_yet(ax)
        if front:
            # The band holds each front point's +- 1 std until the next, larger point.
            band_x = [*fx, fx[-1]]
            ax.fill_between(
                band_x,
                [y - e for y, e in zip(fy, fe, strict=True)] + [fy[-1] - fe[-1]],
                [y + e for y, e in zip(fy, fe, strict=True)] + [fy[-1] + fe[-1]],
                step="post",
                color="k",
                alpha=0.12,
                lw=0,
                label="front ± 1 std",
            )
            ax.step(fx, fy, where="post", color="k", lw=1.2, label="Pareto front", zorder=1)
            best = max(front, key=lambda r: row_value(r, accuracy))
            ax.scatter(
                [_display(size_metric, best)],
                [_display(accuracy, best)],
                marker="*",
                s=260,
                facecolors="none",
                edgecolors="k",
                zorder=4,
                label="best",
            )
            if knee is not None:
                ax.scatter(
                    [_display(size_metric, knee)],
                    [_display(accuracy, knee)],
                    marker="D",
                    s=110,
                    facecolors="none",
                    edgecolors="C3",
                    lw=1.5,
                    zorder=4,
                    label="knee",
                )
        if metric(size_metric).log_axis and xs and min(xs) > 0:
            ax.set_xscale("log")
            readable_log_axis(ax.xaxis, xs)
        ax.set_xlabel(metric(size_metric).label)
        ax.set_ylabel(metric(accuracy).label)
        ax.set_title(f"coloured by {_short(key)}", fontsize=10)
        ax.grid(alpha=0.3)
        _legend_below(ax)
    fig.suptitle(
        f"{defn.name}: {metric(accuracy).label} on {where} vs {metric(size_metric).label}\n{BARS}",
        fontsize=10,
    )
    fig.subplots_adjust(top=0.84)
    return fig


def _nothing_yet(ax) -> None:
    ax.text(0.5, 0.5, "no complete design point yet", transform=ax.transAxes, ha="center")


def _positions(defn: SweepDefinition, key: str, values: Sequence[Any]):
    """x positions of a field's values: the numbers themselves, or the sweep file's order."""
    order = sorted(set(values), key=lambda v: (str(type(v)), v))
    if _is_numeric(values):
        return order, {v: float(v) for v in order}, True
    param = defn.param(key)  # categorical: show the choices in the sweep file's order
    labels = [param.encode(v) for v in param.values] if isinstance(param, Categorical) else []
    listed = [lab for lab in labels if lab in set(values)] or order
    order = listed + [v for v in order if v not in listed]
    return order, {v: i for i, v in enumerate(order)}, False


def _categorical_ticks(ax, order) -> None:
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([str(v) for v in order], rotation=30, ha="right", fontsize=8)


def field_curves(
    rows: Sequence[dict], defn: SweepDefinition, key: str, where: str, accuracy: str = ACCURACY
):
    """Accuracy (mean +- std per point; the line is the best point per value) and fp32 MiB
    against one swept field, as in the paper's Fig. 3, and the paper's values beside them."""
    done = [r for r in rows if r["state"] == sd.COMPLETE and row_value(r, accuracy) is not None]
    values = [r[key] for r in done]
    order, position, numeric = _positions(defn, key, values)
    paper = paper_figure(key)
    paper_points = {v: paper.point(v) for v in order} if paper else {}
    paper_points = {v: p for v, p in paper_points.items() if p and (p.top1 or p.top5)}
    ncols = 2 if paper_points else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.4 * ncols, 4.6), squeeze=False)
    ax = axes[0][0]
    xs = [position[v] for v in values]
    ys = [_display(accuracy, r) for r in done]
    if not done:
        _nothing_yet(ax)
    ax.errorbar(
        xs,
        ys,
        yerr=[_std(accuracy, r) for r in done],
        fmt="o",
        color="C0",
        alpha=0.7,
        capsize=3,
        label="design points (mean ± 1 std)",
    )
    best = {}
    for v, y in zip(values, ys, strict=True):
        best[v] = max(best.get(v, -math.inf), y)
    line_x = [position[v] for v in order if v in best]
    ax.plot(line_x, [best[v] for v in order if v in best], "-", color="C0", lw=1.5, label="best")
    ax.set_xlabel(key)
    ax.set_ylabel(metric(accuracy).label, color="C0")
    if not numeric:
        _categorical_ticks(ax, order)
    mib = {}
    for r, v in zip(done, values, strict=True):
        mib.setdefault(v, []).append(_display("complexity.fp32_mib", r))
    ax2 = ax.twinx()
    ax2.plot(
        line_x,
        [sum(mib[v]) / len(mib[v]) for v in order if v in mib],
        "s--",
        color="C3",
        ms=4,
        label="fp32 MiB",
    )
    ax2.set_ylabel(metric("complexity.fp32_mib").label, color="C3")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(
        handles[0] + handles2[0],
        handles[1] + handles2[1],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16 if numeric else ROTATED_BELOW),
        ncol=3,
        fontsize=7,
        frameon=False,
    )
    ax.set_title(f"measured: {metric(accuracy).label} on {where}", fontsize=10)
    if paper_points:
        _paper_panel(axes[0][1], paper, paper_points, order, position, numeric, key)
    fig.suptitle(f"{defn.name}: accuracy and size vs {_short(key)}\n{BARS}", fontsize=10)
    fig.subplots_adjust(top=0.84, wspace=0.45)
    return fig


def _paper_panel(ax, paper, points, order, position, numeric, key) -> None:
    """The paper's accuracies at the swept values it reports (its dataset, never our axes)."""
    for name, marker, colour in (("top1", "o", "C2"), ("top5", "^", "C4")):
        xy = [(position[v], getattr(p, name) * 100) for v, p in points.items() if getattr(p, name)]
        if xy:
            ax.plot(
                [x for x, _ in xy],
                [y for _, y in xy],
                marker + "-",
                color=colour,
                label=f"paper: {paper.dataset} {name.replace('top', 'top-')} (%)",
            )
            for x, y in xy:
                ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7)  # fmt: skip
    ax.set_xlim(*axes_xlim(order, position))
    ax.margins(y=0.15)  # room for the value labels
    if not numeric:
        _categorical_ticks(ax, order)
    ax.set_xlabel(key)
    ax.set_ylabel(f"{paper.dataset} accuracy (%), the paper's")
    ax.grid(alpha=0.3)
    ax.set_title(f"{paper.label}: {paper.setting}", fontsize=8, wrap=True)
    _legend_below(ax, -0.16 if numeric else ROTATED_BELOW)


def axes_xlim(order, position) -> tuple[float, float]:
    xs = [position[v] for v in order] or [0.0]
    pad = 0.08 * ((max(xs) - min(xs)) or 1.0)
    return min(xs) - pad, max(xs) + pad


def _groups_for(rows: Sequence[dict], key: str) -> dict[str, list[dict]]:
    values = [r[key] for r in rows]
    distinct = sorted(set(values), key=lambda v: (str(type(v)), v))
    if len(distinct) <= MAX_GROUPS or not _is_numeric(values):
        return {f"{_short(key)}={v}": [r for r in rows if r[key] == v] for v in distinct}
    # A continuous field: three quantile bins.
    ordered = sorted(values)
    edges = [ordered[len(ordered) // 3], ordered[2 * len(ordered) // 3]]
    bins = {
        f"{_short(key)} < {edges[0]:.3g}": [r for r in rows if r[key] < edges[0]],
        f"{edges[0]:.3g} <= {_short(key)} < {edges[1]:.3g}": [
            r for r in rows if edges[0] <= r[key] < edges[1]
        ],
        f"{_short(key)} >= {edges[1]:.3g}": [r for r in rows if r[key] >= edges[1]],
    }
    return {k: v for k, v in bins.items() if v}


def error_edfs(
    samples: Sequence[dict], defn: SweepDefinition, where: str, error: str = "final.error"
):
    """pycls-style EDFs of top-1 error over trained models (one sample per finished run, with
    its design fields): F(e) = share of models with error at most e, one curve per value of each
    swept field (continuous fields in three quantile bins)."""
    keys = list(defn.keys[:MAX_PANELS])
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.4), squeeze=False)
    scale = metric(error).scale

    def edf(ax, errors, **style):
        e = sorted(v * scale for v in errors)
        # Start each curve at zero so a group with one model still shows its step.
        xs = [e[0], *e]
        ys = [0.0, *[(k + 1) / len(e) for k in range(len(e))]]
        ax.step(xs, ys, where="post", **style)

    for ax, key in zip(axes[0], keys, strict=True):
        if samples:
            edf(
                ax,
                [s["error"] for s in samples],
                color="0.5",
                lw=2.5,
                alpha=0.5,
                label=f"all ({len(samples)})",
            )
        for i, (label, group) in enumerate(_groups_for(samples, key).items()):
            edf(
                ax,
                [s["error"] for s in group],
                color=plt.get_cmap("tab10")(i % 10),
                label=f"{label} ({len(group)})",
            )
        ax.set_xlabel(metric(error).label)
        ax.set_ylabel("cumulative fraction of trained models")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        _legend_below(ax)
        ax.set_title(f"error EDF by {_short(key)}", fontsize=10)
    fig.suptitle(
        f"{defn.name}: {metric(error).label} on {where}, every trained model (seeds counted "
        "separately)",
        fontsize=10,
    )
    fig.subplots_adjust(top=0.86)
    return fig
