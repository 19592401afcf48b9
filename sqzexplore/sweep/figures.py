"""Sweep figures (matplotlib, Agg backend: no display, no network), declared by metric name.

- `frontier_scatter`: accuracy vs a size metric, one panel per swept field (points coloured by
  it), mean +- 1 std over seeds as error bars, the Pareto front as a staircase inside a +- 1 std
  band, its best point and knee marked.
- `field_curves`: the paper's Fig. 3 layout: accuracy and fp32 MiB against one swept field, with
  the paper's own values in a panel beside it when the paper ablates that field.
- `error_edfs`: pycls error EDFs, one curve per value of each swept field (the design strategy).
- `learning_curves`: eval top-1 and train loss against the step per design point, mean over
  seeds with a +- 1 std band, labelled by the point's design fields ('sr=0.125 pct=0.5').

Every title names the sweep, the metric and what it was measured on (dataset and split); every
legend sits outside the axes; log axes get plain tick labels over any range (700k, 1M, 2M; or
5M, 7.5M, ... over a narrow one): `figure_axes`, whose `render` (re-exported here) gives PNG, SVG
(text kept as text) and PDF bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sqzexplore.sweep import sweepdir as sd  # noqa: E402
from sqzexplore.sweep.figure_axes import (  # noqa: E402
    BARS,
    ROTATED_BELOW,
    display_value,
    is_numeric,
    legend_below,
    nothing_yet,
    readable_log_axis,
    render,
    short_key,
    short_number,
    std_value,
)
from sqzexplore.sweep.metric_table import ACCURACY, metric  # noqa: E402
from sqzexplore.sweep.paper_values import paper_figure  # noqa: E402
from sqzexplore.sweep.params import Categorical  # noqa: E402
from sqzexplore.sweep.pareto import frontier_rows, knee_row, row_value  # noqa: E402
from sqzexplore.sweep.space import SweepDefinition  # noqa: E402

# The figures, and the axis helpers the tests and the report reach through this module.
__all__ = [
    "error_edfs",
    "field_curves",
    "frontier_scatter",
    "learning_curves",
    "readable_log_axis",
    "render",
    "short_number",
]
MAX_PANELS = 4
MAX_GROUPS = 8


def _colour_points(ax, fig, rows, key, xs, ys, errs):
    values = [r[key] for r in rows]
    if is_numeric(values) and len(set(values)) > MAX_GROUPS:
        sc = ax.scatter(xs, ys, c=values, cmap="viridis", s=36, zorder=3)
        fig.colorbar(sc, ax=ax, label=short_key(key))
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
            label=f"{short_key(key)}={g}",
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
    fx = [display_value(size_metric, r) for r in front]
    fy = [display_value(accuracy, r) for r in front]
    fe = [std_value(accuracy, r) for r in front]
    xs = [display_value(size_metric, r) for r in done]
    ys = [display_value(accuracy, r) for r in done]
    errs = [std_value(accuracy, r) for r in done]
    for ax, key in zip(axes[0], keys, strict=True):
        if done:
            _colour_points(ax, fig, done, key, xs, ys, errs)
        else:
            nothing_yet(ax)
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
                [display_value(size_metric, best)],
                [display_value(accuracy, best)],
                marker="*",
                s=260,
                facecolors="none",
                edgecolors="k",
                zorder=4,
                label="best",
            )
            if knee is not None:
                ax.scatter(
                    [display_value(size_metric, knee)],
                    [display_value(accuracy, knee)],
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
        ax.margins(x=0.1, y=0.12)  # the best point's large star clear of the axis lines
        ax.set_xlabel(metric(size_metric).label)
        ax.set_ylabel(metric(accuracy).label)
        ax.set_title(f"coloured by {short_key(key)}", fontsize=10)
        ax.grid(alpha=0.3)
        legend_below(ax)
    fig.suptitle(
        f"{defn.name}: {metric(accuracy).label} on {where} vs {metric(size_metric).label}\n{BARS}",
        fontsize=10,
    )
    fig.subplots_adjust(top=0.84)
    return fig


def _positions(defn: SweepDefinition, key: str, values: Sequence[Any]):
    """x positions of a field's values: the numbers themselves, or the sweep file's order."""
    order = sorted(set(values), key=lambda v: (str(type(v)), v))
    if is_numeric(values):
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
    against one swept field, as in the paper's Fig. 3, in two panels sharing the field axis (one
    axis each, so their lines never sit on top of each other), and the paper's values beside
    them when the paper ablates the field."""
    done = [r for r in rows if r["state"] == sd.COMPLETE and row_value(r, accuracy) is not None]
    values = [r[key] for r in done]
    order, position, numeric = _positions(defn, key, values)
    paper = paper_figure(key)
    paper_points = {v: p for v, p in (paper.points if paper else {}).items() if p.top1 or p.top5}
    ncols = 2 if paper_points else 1
    fig = plt.figure(figsize=(6.4 * ncols, 6.4))
    grid = fig.add_gridspec(2, ncols, height_ratios=(3, 2), hspace=0.08, wspace=0.35)
    ax = fig.add_subplot(grid[0, 0])
    ax_mib = fig.add_subplot(grid[1, 0], sharex=ax)
    xs = [position[v] for v in values]
    ys = [display_value(accuracy, r) for r in done]
    if not done:
        nothing_yet(ax)
    ax.errorbar(
        xs,
        ys,
        yerr=[std_value(accuracy, r) for r in done],
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
    ax.set_ylabel(metric(accuracy).label)
    ax.tick_params(labelbottom=False)
    ax.grid(alpha=0.3)
    ax.set_title(f"measured: {metric(accuracy).label} on {where}", fontsize=10)
    mib = {}
    for r, v in zip(done, values, strict=True):
        mib.setdefault(v, []).append(display_value("complexity.fp32_mib", r))
    ax_mib.plot(
        line_x,
        [sum(mib[v]) / len(mib[v]) for v in order if v in mib],
        "s-",
        color="C3",
        ms=4,
    )
    ax_mib.set_ylabel(metric("complexity.fp32_mib").label)
    ax_mib.set_xlabel(key)
    ax_mib.grid(alpha=0.3)
    if not numeric:
        _categorical_ticks(ax_mib, order)
    handles, labels = ax.get_legend_handles_labels()
    ax_mib.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.22 if numeric else ROTATED_BELOW - 0.2),
        ncol=2,
        fontsize=7,
        frameon=False,
    )
    if paper_points:
        _paper_panel(fig.add_subplot(grid[:, 1]), paper, paper_points, order, numeric, key)
    fig.suptitle(f"{defn.name}: accuracy and size vs {short_key(key)}\n{BARS}", fontsize=10)
    fig.subplots_adjust(top=0.88)
    return fig


def _paper_panel(ax, paper, points, order, numeric, key) -> None:
    """The paper's accuracies at every swept value it reports, whether or not the sweep trained
    that value (its dataset, never our axes); the x range covers both."""
    if numeric:
        position = {v: float(v) for v in [*order, *points]}
    else:  # the sweep's order, then the paper's values the sweep did not train
        labels = [*order, *(v for v in points if v not in order)]
        position = {v: i for i, v in enumerate(labels)}
    for name, marker, colour in (("top1", "o", "C2"), ("top5", "^", "C4")):
        xy = sorted(
            (position[v], getattr(p, name) * 100) for v, p in points.items() if getattr(p, name)
        )
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
    ax.set_xlim(*axes_xlim(list(position), position))
    ax.margins(y=0.15)  # room for the value labels
    if not numeric:
        _categorical_ticks(ax, list(position))
    ax.set_xlabel(key)
    ax.set_ylabel(f"{paper.dataset} accuracy (%), the paper's")
    ax.grid(alpha=0.3)
    ax.set_title(f"{paper.label}: {paper.setting}", fontsize=8, wrap=True)
    legend_below(ax, -0.1 if numeric else -0.2)


def axes_xlim(order, position) -> tuple[float, float]:
    xs = [position[v] for v in order] or [0.0]
    pad = 0.08 * ((max(xs) - min(xs)) or 1.0)
    return min(xs) - pad, max(xs) + pad


def _groups_for(rows: Sequence[dict], key: str) -> dict[str, list[dict]]:
    values = [r[key] for r in rows]
    distinct = sorted(set(values), key=lambda v: (str(type(v)), v))
    if len(distinct) <= MAX_GROUPS or not is_numeric(values):
        return {f"{short_key(key)}={v}": [r for r in rows if r[key] == v] for v in distinct}
    # A continuous field: three quantile bins.
    ordered = sorted(values)
    edges = [ordered[len(ordered) // 3], ordered[2 * len(ordered) // 3]]
    bins = {
        f"{short_key(key)} < {edges[0]:.3g}": [r for r in rows if r[key] < edges[0]],
        f"{edges[0]:.3g} <= {short_key(key)} < {edges[1]:.3g}": [
            r for r in rows if edges[0] <= r[key] < edges[1]
        ],
        f"{short_key(key)} >= {edges[1]:.3g}": [r for r in rows if r[key] >= edges[1]],
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
        ax.set_ylim(-0.04, 1.04)  # the curves' ends (0 and 1) off the axis lines
        ax.grid(alpha=0.3)
        legend_below(ax)
        ax.set_title(f"error EDF by {short_key(key)}", fontsize=10)
    fig.suptitle(
        f"{defn.name}: {metric(error).label} on {where}, every trained model (seeds counted "
        "separately)",
        fontsize=10,
    )
    fig.subplots_adjust(top=0.86)
    return fig


MAX_CURVES = 12  # points drawn in the learning-curve figure (the first, in trial order)


def learning_curves(curves: Sequence[dict], defn: SweepDefinition, where: str):
    """Learning curves per design point (`analyze.point_curves`): eval top-1 and train loss
    against the step, the mean over seeds as a line and +- 1 std over seeds as a band, one
    colour per point, labelled by its design fields."""
    shown = list(curves[:MAX_CURVES])
    series = [
        ("eval/top1", f"eval {metric(ACCURACY).label}", 100.0),
        ("train/loss", "train loss", 1.0),
    ]
    fig, axes = plt.subplots(1, len(series), figsize=(6.0 * len(series), 4.8), squeeze=False)
    cmap = plt.get_cmap("tab20" if len(shown) > 10 else "tab10")
    for ax, (name, label, scale) in zip(axes[0], series, strict=True):
        for i, point in enumerate(shown):
            c = point["curves"].get(name) or {"step": []}
            if not c["step"]:
                continue
            mean = [m * scale for m in c["mean"]]
            colour = cmap(i % cmap.N)
            ax.plot(
                c["step"],
                mean,
                color=colour,
                lw=1.4,
                marker="o" if len(mean) <= 20 else None,  # sparse eval points stay visible
                ms=3,
                label=f"{point['label']} (n={point['seeds']})",
            )
            banded = [
                (k, m, sd_ * scale)
                for k, m, sd_ in zip(c["step"], mean, c["std"], strict=True)
                if sd_ is not None
            ]
            if banded:
                ax.fill_between(
                    [k for k, _, _ in banded],
                    [m - e for _, m, e in banded],
                    [m + e for _, m, e in banded],
                    color=colour,
                    alpha=0.18,
                    lw=0,
                )
        if not shown:
            nothing_yet(ax)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_title(label, fontsize=10)
    legend_below(axes[0][0], -0.14)
    more = f"; the first {MAX_CURVES} of {len(curves)} points" if len(curves) > MAX_CURVES else ""
    fig.suptitle(
        f"{defn.name}: learning curves on {where} (line: mean over seeds, band: ± 1 std{more})",
        fontsize=10,
    )
    fig.subplots_adjust(top=0.86)
    return fig
