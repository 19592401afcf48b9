"""Sweep figures (matplotlib, Agg backend: no display, no network), declared by metric name.

- `frontier_scatter`: accuracy vs a size metric, one panel per swept field (points coloured by
  it), seed std as error bars, the Pareto front as a staircase.
- `field_curves`: the paper's Fig. 3 layout: accuracy and fp32 MiB against one swept field.
- `error_edfs`: pycls error EDFs, one curve per value of each swept field (the design strategy).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sqzexplore.sweep import sweepdir as sd  # noqa: E402
from sqzexplore.sweep.analyze import frontier_rows, row_value  # noqa: E402
from sqzexplore.sweep.metric_table import ACCURACY, metric  # noqa: E402
from sqzexplore.sweep.params import Categorical  # noqa: E402
from sqzexplore.sweep.space import SweepDefinition  # noqa: E402

MAX_PANELS = 4
MAX_GROUPS = 8


def _is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _short(key: str) -> str:
    return key.split(".")[-1]


def _display(name: str, row: dict) -> float | None:
    return metric(name).display(row_value(row, name))


def _std(name: str, row: dict) -> float:
    std = row.get(f"{name}.std")
    return 0.0 if std is None else std * metric(name).scale


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


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
            label=str(g),
            ms=6,
            zorder=3,
            capsize=2,
        )
    ax.legend(title=_short(key), fontsize=7, title_fontsize=8, loc="lower right")


def frontier_scatter(
    rows: Sequence[dict], defn: SweepDefinition, size_metric: str, accuracy: str = ACCURACY
):
    """Accuracy vs `size_metric` with the Pareto staircase; one panel per swept field."""
    done = [
        r
        for r in rows
        if r["state"] == sd.COMPLETE
        and row_value(r, accuracy) is not None
        and row_value(r, size_metric) is not None
    ]
    keys = list(defn.keys[:MAX_PANELS])
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.2), squeeze=False)
    front = frontier_rows(done, size_metric, accuracy)
    fx = [_display(size_metric, r) for r in front]
    fy = [_display(accuracy, r) for r in front]
    for ax, key in zip(axes[0], keys, strict=True):
        xs = [_display(size_metric, r) for r in done]
        ys = [_display(accuracy, r) for r in done]
        errs = [_std(accuracy, r) for r in done]
        if done:
            _colour_points(ax, fig, done, key, xs, ys, errs)
        if front:
            ax.step(fx, fy, where="post", color="k", lw=1.2, label="Pareto front", zorder=1)
            ax.scatter(fx, fy, facecolors="none", edgecolors="k", s=110, zorder=4)
        if metric(size_metric).log_axis and xs and min(xs) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(metric(size_metric).label)
        ax.set_ylabel(metric(accuracy).label)
        ax.set_title(f"coloured by {_short(key)}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{defn.name}: {metric(accuracy).label} vs {metric(size_metric).label}")
    return fig


def field_curves(rows: Sequence[dict], defn: SweepDefinition, key: str, accuracy: str = ACCURACY):
    """Accuracy (mean +- std per point; the line is the best point per value) and fp32 MiB
    against one swept field, as in the paper's Fig. 3."""
    done = [r for r in rows if r["state"] == sd.COMPLETE and row_value(r, accuracy) is not None]
    values = [r[key] for r in done]
    numeric = _is_numeric(values)
    order = sorted(set(values), key=lambda v: (str(type(v)), v))
    if numeric:
        position = {v: float(v) for v in order}
    else:
        param = defn.param(key)  # categorical: show the choices in the sweep file's order
        labels = [param.encode(v) for v in param.values] if isinstance(param, Categorical) else []
        listed = [lab for lab in labels if lab in set(values)] or order
        order = listed + [v for v in order if v not in listed]
        position = {v: i for i, v in enumerate(order)}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [position[v] for v in values]
    ys = [_display(accuracy, r) for r in done]
    ax.errorbar(
        xs,
        ys,
        yerr=[_std(accuracy, r) for r in done],
        fmt="o",
        color="C0",
        alpha=0.6,
        capsize=2,
        label="design points",
    )
    best = {}
    for v, y in zip(values, ys, strict=True):
        best[v] = max(best.get(v, -math.inf), y)
    line_x = [position[v] for v in order if v in best]
    ax.plot(
        line_x,
        [best[v] for v in order if v in best],
        "-",
        color="C0",
        lw=1.5,
        label="best per value",
    )
    ax.set_xlabel(key)
    ax.set_ylabel(metric(accuracy).label, color="C0")
    if not numeric:
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([str(v) for v in order], rotation=30, ha="right", fontsize=8)
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
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8, loc="lower right")
    ax.set_title(f"{defn.name}: accuracy and size vs {_short(key)}")
    return fig


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


def error_edfs(samples: Sequence[dict], defn: SweepDefinition, error: str = "final.error"):
    """pycls-style EDFs of top-1 error over trained models (one sample per finished run, with
    its design fields): F(e) = share of models with error at most e, one curve per value of each
    swept field (continuous fields in three quantile bins)."""
    keys = list(defn.keys[:MAX_PANELS])
    fig, axes = plt.subplots(1, len(keys), figsize=(5.0 * len(keys), 3.8), squeeze=False)
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
        if samples:
            ax.legend(fontsize=7)
        ax.set_title(f"error EDF by {_short(key)}", fontsize=10)
    fig.suptitle(f"{defn.name}: error EDFs per design choice")
    return fig
