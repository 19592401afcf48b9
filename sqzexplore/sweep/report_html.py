"""The sweep report's HTML page: one self-contained file (figures embedded as base64 PNG, each
with a link to its SVG beside the page), readable offline in any browser.

Every accuracy is a mean over seeds shown with its n ("97.80 ± 0.45 (n=3)"); every table and
figure says what was measured on what (dataset, split, metric). While a sweep is unfinished and
the report is being watched, the page carries a meta refresh so that an open tab follows the
sweep.
"""

from __future__ import annotations

import base64
import collections
import html
import importlib.metadata
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import TIME_METRICS
from sqzexplore.sweep.latency import wanted as latency_wanted
from sqzexplore.sweep.metric_table import ACCURACY, SIZE_METRICS, metric
from sqzexplore.sweep.paper_values import paper_figure
from sqzexplore.sweep.params import Categorical
from sqzexplore.sweep.pareto import FRONT_SIZES, LATENCY, front_name
from sqzexplore.sweep.text_format import accuracy_text, format_duration, interval_text

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em}
caption{caption-side:top;text-align:left;font-size:13px;padding:0.3em 0;color:#444}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
td{white-space:nowrap} .scroll{overflow-x:auto;max-width:100%}
th{max-width:14em} .kv td.l{white-space:normal;overflow-wrap:anywhere}
th{background:#f0f0f0} td.l,th.l{text-align:left}
figure{margin:1em 0} figcaption{font-size:12px;color:#555}
img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:0.8em;overflow-x:auto;font-size:12px;white-space:pre-wrap}
.kv td:first-child{text-align:left;font-weight:600}
.live{background:#fff6d5;padding:0.5em;border:1px solid #e6d27a}
.paper{background:#eef6ff}
"""

Column = tuple[str, Callable[[dict], Any]]


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(fn(r)))}</td>" for _, fn in columns) + "</tr>"
        for r in rows
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<div class='scroll'><table>{cap}<tr>{head}</tr>{body}</table></div>"


def _kv(pairs: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td class='l'>{html.escape(str(v))}</td></tr>"
        for k, v in pairs.items()
    )
    return f"<div class='scroll'><table class='kv'>{body}</table></div>"


def _time_columns() -> list[Column]:
    """Per-trial means, side by side: training, compilation and everything else."""
    return [
        (
            f"{metric(name).label.replace(' time (s)', '').replace(' (s)', '')} s/trial",
            lambda r, n=name: metric(n).format(r.get(f"{n}.mean")),
        )
        for name in TIME_METRICS
    ]


def point_columns(defn, *, with_state: bool, lead: Column | None = None) -> list[Column]:
    cols: list[Column] = [lead] if lead else []
    cols.append(("design point", lambda r: r["label"]))
    cols.append(("id", lambda r: r["point"]))
    if with_state:
        cols.append(("state", lambda r: r["state"]))
    cols += [(k.split(".")[-1], lambda r, k=k: r[k]) for k in defn.keys]
    cols += [
        ("top-1 (%) mean ± std (n)", accuracy_text),
        ("top-1 95% interval", interval_text),
        ("top-5 (%) mean ± std (n)", lambda r: accuracy_text(r, "final.top5")),
    ]
    for name, label in zip(SIZE_METRICS[:3], ("params", "MACs (M)", "fp32 MiB"), strict=True):
        cols.append((label, lambda r, n=name: metric(n).format(r.get(n))))
    if latency_wanted(defn):
        cols.append(("latency (ms)", lambda r: metric(LATENCY).format(r.get(LATENCY))))
    cols.append(("seeds done", lambda r: f"{r['seeds_complete']}/{r['seeds']}"))
    return cols + _time_columns()


def machine_info(runs) -> dict[str, Any]:
    devices = collections.Counter(
        f"{r.result.get('device_count', '?')} x {r.result.get('device_kind', '?')}"
        for r in runs
        if r.result
    )
    versions = {}
    for package in ("jax", "flax", "optuna"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "-"
    return {
        "trial devices": ", ".join(f"{k} ({n} trials)" for k, n in devices.items()) or "-",
        "report host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
    }


def _per_trial(runs, name: str) -> list[float]:
    values = [metric(name).value(r.result) for r in runs if r.result]
    return [v for v in values if v is not None]


def summary_pairs(sweep_dir, state, defn, st, times, runs, where) -> dict[str, Any]:
    c = st["counts"]
    compile_s, overhead_s = _per_trial(runs, "compile_time_s"), _per_trial(runs, "overhead_s")

    def ratio(x: float) -> str:
        return f"{x:.3f}" if x == x else "-"

    source = state.get("source", {}) or {}
    return {
        "sweep": defn.name,
        "sweep directory": str(sweep_dir.root.resolve()),
        "sweep file": source.get("sweep_file") or "-",
        "measured on": f"{where}; metric {metric(ACCURACY).label}, mean over seeds",
        "sampler": f"{defn.sampler} ({st['planned_points']} points x {len(defn.seeds)} seeds)",
        "objectives": ", ".join(f"{o.direction} {o.metric}" for o in defn.objectives),
        "trials": f"{c['complete']} complete, {c['running']} running, {c['pending']} pending, "
        f"{c['failed']} failed, {c['stopped']} stopped early, {c['skipped']} skipped",
        "design points not trained": ", ".join(
            f"{v} {k}" for k, v in st["skipped_points"].items() if v
        )
        or "none",
        "sweep wall time": format_duration(times["wall_time_s"]),
        "sum of trials' train_time_s": format_duration(times["train_time_s"]),
        "sum of trials' compile_time_s": format_duration(sum(compile_s)),
        "sum of trials' overhead (wall - train - compile)": format_duration(sum(overhead_s)),
        "median overhead per trial": (
            f"{statistics.median(overhead_s):.1f} s" if overhead_s else "-"
        ),
        "sum of trials' wall_time_s": format_duration(times["run_wall_time_s"]),
        "SWEEP EFFICIENCY (train time / wall time)": ratio(times["efficiency"]),
        "sweep efficiency per worker (train / (wall x workers at once))": ratio(
            times["efficiency_per_worker"]
        ),
        "workers": f"{times['workers']} worker session(s), at most {times['max_parallel']} at once",
        "report generated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def paper_tables(defn, rows: Sequence[dict[str, Any]], where: str) -> list[str]:
    """Measured against the paper, one table per swept field the paper ablates."""
    parts = []
    for key in defn.keys:
        paper = paper_figure(key)
        if paper is not None:
            parts += _paper_table(defn, key, paper, rows, where)
    return parts


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}"


def _paper_table(defn, key: str, paper, rows: Sequence[dict[str, Any]], where: str) -> list[str]:
    def paper_value(row: dict[str, Any], field: str) -> Any:
        point = paper.point(row[key])
        return getattr(point, field) if point else None

    others = [k for k in defn.keys if k != key]
    done = sorted(
        (r for r in rows if r["state"] == sd.COMPLETE),
        key=lambda r: [_order(defn, k, r[k]) for k in (key, *others)],
    )
    mib = metric("complexity.fp32_mib")
    cols: list[Column] = [(key, lambda r: r[key])]
    # The paper varies one field; the sweep's other fields say which of its points is which.
    cols += [(k.split(".")[-1], lambda r, k=k: r[k]) for k in others]
    cols += [
        (f"measured top-1 (%), {where}", accuracy_text),
        (f"measured top-5 (%), {where}", lambda r: accuracy_text(r, "final.top5")),
        ("measured fp32 MiB", lambda r: mib.format(r.get("complexity.fp32_mib"))),
        (f"paper top-1 (%), {paper.dataset}", lambda r: _percent(paper_value(r, "top1"))),
        (f"paper top-5 (%), {paper.dataset}", lambda r: _percent(paper_value(r, "top5"))),
        ("paper size", lambda r: paper_value(r, "size") or "-"),
        ("paper note", lambda r: paper_value(r, "note") or ""),
    ]
    return [
        f"<h3>{html.escape(key)}: measured here vs {html.escape(paper.label)}</h3>",
        f"<p class='paper'>The paper ({html.escape(paper.source)}, {paper.dataset}; "
        f"{html.escape(paper.setting)}): {html.escape(paper.summary)}. Its numbers are "
        f"{paper.dataset} accuracies of a full-size network, shown beside this sweep's "
        f"({html.escape(where)}), not on the same scale; values from docs/paper.md.</p>",
        table(
            done,
            cols,
            caption=f"{defn.name}: {metric(ACCURACY).label} on {where} (mean ± std over seeds, "
            f"n per point) against {paper.label}",
        ),
    ]


def _order(defn, key: str, value: Any) -> tuple:
    """Sort key of a swept value: numbers by value, choices in the sweep file's order."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    param = defn.param(key)
    labels = [param.encode(v) for v in param.values] if isinstance(param, Categorical) else []
    return (1, labels.index(value) if value in labels else len(labels), str(value))


def _figure(images: dict[str, dict[str, bytes]], name: str, caption: str) -> str:
    data = base64.b64encode(images[name]["png"]).decode()
    return (
        f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(caption)} (<a href='{name}.svg'>SVG</a>, "
        f"<a href='{name}.png'>PNG</a>, <a href='{name}.pdf'>PDF</a>)</figcaption></figure>"
    )


def render_html(
    *,
    sweep_dir,
    state,
    defn,
    rows,
    merged_front,
    key_rows,
    skipped,
    times,
    st,
    images,
    runs,
    where: str,
    refresh_s: float | None,
) -> str:
    """The whole page, section by section."""
    parts = _head(defn, refresh_s)
    parts += _summary_section(sweep_dir, state, defn, st, times, runs, where, key_rows)
    parts += _front_section(defn, images, merged_front, where, _latency_note(runs))
    comparison = paper_tables(defn, rows, where)
    if comparison:
        parts += ["<h2>Against the paper</h2>", *comparison]
    parts += _figure_section(defn, images, where)
    parts += _points_section(defn, rows, skipped, where)
    parts += _closing_section(defn, state, runs)
    return "\n".join(parts)


def _head(defn, refresh_s: float | None) -> list[str]:
    """The page head, the title and, while the sweep runs, the reload notice."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'>"]
    if refresh_s:
        parts.append(f"<meta http-equiv='refresh' content='{max(1, round(refresh_s))}'>")
    parts += [
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>sweep {html.escape(defn.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Sweep <code>{html.escape(defn.name)}</code></h1>",
    ]
    if refresh_s:
        parts.append(
            f"<p class='live'>The sweep is still running: this page reloads every "
            f"{round(refresh_s)} s while <code>sqz sweep report --watch</code> rewrites it.</p>"
        )
    return parts


def _summary_section(sweep_dir, state, defn, st, times, runs, where, key_rows) -> list[str]:
    acc = metric(ACCURACY).label
    paragraphs = (defn.question or "").strip().split("\n\n")
    return [
        f"<pre>{html.escape(paragraphs[0] or '(no question)')}</pre>",
        "<h2>Summary</h2>",
        _kv(summary_pairs(sweep_dir, state, defn, st, times, runs, where)),
        "<h2>Key points</h2>",
        table(
            key_rows,
            point_columns(defn, with_state=False, lead=("role", lambda r: r["role"])),
            caption=f"{acc} on {where}: mean ± std over seeds (n per point); 95% interval of "
            "the mean (Student's t)",
        ),
    ]


def _latency_note(runs) -> str:
    """Where the sweep's latency was measured (sweep/latency.py), for the latency figure."""
    lat = next((r.latency for r in runs if r.latency), None)
    if not lat:
        return ""
    return (
        f" (median of {lat['repeats']} batch-1 calls, {lat['runtime']}, {lat['threads']} "
        f"thread(s), on {lat['host']}, {lat['cpu']})"
    )


def _front_section(defn, images, merged_front, where, latency_note="") -> list[str]:
    """Accuracy against each size with the fronts, then the table of every front point."""
    acc = metric(ACCURACY).label
    parts = [
        _figure(
            images,
            f"accuracy_vs_{front_name(size)}",
            f"{defn.name}: {acc} on {where} vs {metric(size).label}"
            f"{latency_note if size == LATENCY else ''}; error bars and the "
            "front's band: ± 1 std over seeds",
        )
        for size in (*FRONT_SIZES, LATENCY)
        if f"accuracy_vs_{front_name(size)}" in images  # latency: where the sweep measured it
    ]
    lead = ("front", lambda r: " + ".join(r["fronts"]))
    return [
        *parts,
        f"<h2>Pareto front ({len(merged_front)} points)</h2>",
        table(
            merged_front,
            point_columns(defn, with_state=False, lead=lead)
            + [("role", lambda r: ", ".join(r["roles"]))],
            caption=f"{acc} on {where} vs parameters, vs MACs (and vs measured latency): "
            "every point on any front, once (front: which)",
        ),
    ]


def _figure_section(defn, images, where) -> list[str]:
    acc = metric(ACCURACY).label
    parts = ["<h2>Per-field curves</h2>"]
    parts += [
        _figure(
            images,
            f"field_{k.replace('.', '_')}",
            f"{defn.name}: {acc} on {where} and fp32 size vs {k}",
        )
        for k in defn.keys
    ]
    return parts + [
        "<h2>Learning curves</h2>",
        _figure(
            images,
            "learning_curves",
            f"{defn.name}: eval {acc} and train loss per step on {where}, per design point: "
            "mean over seeds, band ± 1 std",
        ),
        "<h2>Error EDFs</h2>",
        _figure(images, "error_edf", f"{defn.name}: top-1 error EDFs on {where}"),
    ]


def _points_section(defn, rows, skipped, where) -> list[str]:
    """Every design point, and those never trained with the reason."""
    parts = [
        f"<h2>All design points ({len(rows)})</h2>",
        table(
            rows,
            point_columns(defn, with_state=True),
            caption=f"{metric(ACCURACY).label} on {where}; times are per-trial means: train, "
            "compile and overhead (wall - train - compile) side by side",
        ),
    ]
    if skipped:
        parts += [
            f"<h2>Design points not trained ({len(skipped)})</h2>",
            table(
                skipped,
                [
                    ("trial #", lambda s: s.get("number")),
                    ("kind", lambda s: s.get("kind")),
                    ("design", lambda s: json.dumps(s.get("params"))),
                    ("reason", lambda s: s.get("reason")),
                ],
            ),
        ]
    return parts


def _closing_section(defn, state, runs) -> list[str]:
    """The machine, the sweep file's own description, the definition and the base config."""
    parts = ["<h2>Machine</h2>", _kv(machine_info(runs))]
    if len((defn.question or "").strip().split("\n\n")) > 1:
        parts += [
            "<details><summary>The sweep file's description (written before this run; the "
            "numbers above are this run's own)</summary>",
            f"<pre>{html.escape(defn.question)}</pre></details>",
        ]
    return parts + [
        "<h2>Sweep definition</h2>",
        f"<pre>{html.escape(json.dumps(state.get('definition'), indent=2))}</pre>",
        "<details><summary>Base config</summary>",
        f"<pre>{html.escape(json.dumps(state.get('base_config'), indent=2))}</pre></details>",
        "</body></html>",
    ]
