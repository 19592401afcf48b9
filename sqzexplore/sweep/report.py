"""`sqz sweep report DIR`: tables, figures and one self-contained HTML page from a sweep's files.

Writes to DIR/report/ (or --out):
    results.csv   one row per design point: design fields, params, MACs, MiB, each metric's mean
                  and std over seeds, times
    frontier.csv  the Pareto-optimal points for accuracy vs params and accuracy vs MACs
    *.png         accuracy vs size (Pareto line, coloured by each swept field), per-field curves
                  (paper Fig. 3 layout), error EDFs per design choice (pycls)
    report.html   all of it with the figures embedded (base64 PNG): no network needed, plus the
                  sweep definition, machine info, wall times and the sweep efficiency
                  (sum of the trials' train_time_s / sweep wall time)
and prints the frontier tables. With wandb mode offline/online it also logs the results table, the
frontier and an accuracy-vs-params scatter to a summary run in the sweep's wandb group.
"""

from __future__ import annotations

import base64
import collections
import csv
import html
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import (
    collect_runs,
    format_duration,
    format_table,
    frontier_rows,
    point_rows,
    row_value,
    skipped_points,
    status,
    sweep_times,
)
from sqzexplore.sweep.metric_table import ACCURACY, RESULT_METRICS, SIZE_METRICS, metric
from sqzexplore.sweep.space import SweepDefinition

FRONT_SIZES = ("complexity.params", "complexity.macs")


def result_columns(defn: SweepDefinition) -> list[str]:
    cols = ["point", "trial_number", "state", "seeds", "seeds_complete", *defn.keys]
    cols += list(SIZE_METRICS)
    for name in RESULT_METRICS:
        cols += [f"{name}.mean", f"{name}.std"]
    return [*cols, "train_time_s.sum", "trials"]


def frontier_columns(defn: SweepDefinition) -> list[str]:
    return [
        "front",
        "rank",
        "point",
        *defn.keys,
        f"{ACCURACY}.mean",
        f"{ACCURACY}.std",
        "complexity.params",
        "complexity.macs",
        "complexity.fp32_mib",
        "seeds_complete",
    ]


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})


def fronts(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Size metric -> its Pareto front rows (with 'front' and 'rank' added)."""
    out = {}
    for size in FRONT_SIZES:
        front = frontier_rows(rows, size)
        out[size] = [
            {**r, "front": size.split(".")[-1], "rank": i + 1} for i, r in enumerate(front)
        ]
    return out


def error_samples(runs) -> list[dict[str, Any]]:
    """(design fields, top-1 error) of every complete run: the models the EDFs count."""
    out = []
    for r in runs:
        top1 = metric(ACCURACY).value(r.result or {})
        if r.state == sd.COMPLETE and top1 is not None:
            out.append({**r.design, "error": 1.0 - top1})
    return out


def frontier_text(defn: SweepDefinition, front: Sequence[dict[str, Any]], size: str) -> str:
    acc = metric(ACCURACY)
    columns: list[tuple[str, Callable[[dict], str]]] = [
        (key.split(".")[-1], lambda r, k=key: str(r[k])) for key in defn.keys
    ]
    columns += [
        (
            acc.label,
            lambda r: (
                f"{acc.format(row_value(r, ACCURACY))} +- {acc.format(r.get(ACCURACY + '.std'))}"
            ),
        ),
        ("params", lambda r: metric("complexity.params").format(r["complexity.params"])),
        ("MACs (M)", lambda r: metric("complexity.macs").format(r["complexity.macs"])),
        ("MiB", lambda r: metric("complexity.fp32_mib").format(r["complexity.fp32_mib"])),
        ("seeds", lambda r: str(r["seeds_complete"])),
    ]
    title = f"Pareto front: {acc.label} vs {metric(size).label} ({len(front)} points)"
    if not front:
        return f"{title}\n(no complete design points yet)"
    return f"{title}\n{format_table(front, columns)}"


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


def build_report(
    sweep_dir: sd.SweepDir,
    out_dir: str | os.PathLike | None = None,
    *,
    wandb_mode: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the report files; return their paths and the numbers the page shows."""
    from sqzexplore.sweep import figures

    state = sweep_dir.state()
    defn = sweep_dir.definition()
    out = Path(out_dir) if out_dir else sweep_dir.report
    out.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(sweep_dir)
    rows = point_rows(runs, defn)
    front_by_size = fronts(rows)
    skipped = skipped_points(sweep_dir)
    times = sweep_times(sweep_dir, runs)
    st = status(sweep_dir)

    write_csv(out / "results.csv", rows, result_columns(defn))
    front_rows = [r for size in FRONT_SIZES for r in front_by_size[size]]
    write_csv(out / "frontier.csv", front_rows, frontier_columns(defn))

    images: dict[str, bytes] = {}
    for size in FRONT_SIZES:
        images[f"accuracy_vs_{size.split('.')[-1]}.png"] = figures.figure_png(
            figures.frontier_scatter(rows, defn, size)
        )
    for key in defn.keys:
        images[f"field_{key.replace('.', '_')}.png"] = figures.figure_png(
            figures.field_curves(rows, defn, key)
        )
    images["error_edf.png"] = figures.figure_png(figures.error_edfs(error_samples(runs), defn))
    for name, png in images.items():
        (out / name).write_bytes(png)

    text = "\n\n".join(frontier_text(defn, front_by_size[s], s) for s in FRONT_SIZES)
    echo(text)

    page = render_html(state, defn, rows, front_by_size, skipped, times, st, images, runs)
    (out / "report.html").write_text(page)

    mode = wandb_mode or (state.get("base_config", {}).get("wandb", {}) or {}).get("mode")
    wandb_url = None
    if mode in ("offline", "online"):
        wandb_url = log_to_wandb(state, defn, rows, front_by_size, mode, out)
    return {
        "out_dir": str(out),
        "results_csv": str(out / "results.csv"),
        "frontier_csv": str(out / "frontier.csv"),
        "report_html": str(out / "report.html"),
        "figures": [str(out / n) for n in images],
        "points": len(rows),
        "fronts": {s: len(f) for s, f in front_by_size.items()},
        "efficiency": times["efficiency"],
        "efficiency_per_worker": times["efficiency_per_worker"],
        "max_parallel_workers": times["max_parallel"],
        "wandb": wandb_url,
    }


# ------------------------------------------------------------------------------ HTML
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f0f0f0} td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
pre{background:#f7f7f7;padding:0.8em;overflow-x:auto;font-size:12px}
.kv td:first-child{text-align:left;font-weight:600}
"""


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, Callable]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(fn(r)))}</td>" for _, fn in columns) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv(pairs: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td class='l'>{html.escape(str(v))}</td></tr>"
        for k, v in pairs.items()
    )
    return f"<table class='kv'>{body}</table>"


def _metric_columns(defn: SweepDefinition, with_state: bool) -> list[tuple[str, Callable]]:
    cols: list[tuple[str, Callable]] = [("point", lambda r: r["point"])]
    if with_state:
        cols.append(("state", lambda r: r["state"]))
    cols += [(k, lambda r, k=k: r[k]) for k in defn.keys]
    for name in ("final.top1", "final.top5"):
        m = metric(name)
        cols.append(
            (
                m.label,
                lambda r, m=m, n=name: (
                    f"{m.format(r.get(n + '.mean'))} ± {m.format(r.get(n + '.std'))}"
                ),
            )
        )
    for name in SIZE_METRICS[:3]:
        cols.append((metric(name).label, lambda r, n=name: metric(n).format(r.get(n))))
    cols.append(("seeds done", lambda r: f"{r['seeds_complete']}/{r['seeds']}"))
    cols.append(
        ("train time (s)", lambda r: metric("train_time_s").format(r.get("train_time_s.sum")))
    )
    return cols


def render_html(state, defn, rows, front_by_size, skipped, times, st, images, runs) -> str:
    def img(name: str) -> str:
        data = base64.b64encode(images[name]).decode()
        return f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"

    c = st["counts"]
    summary = {
        "sweep": defn.name,
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
        "sum of trials' wall_time_s": format_duration(times["run_wall_time_s"]),
        "SWEEP EFFICIENCY (train time / wall time)": f"{times['efficiency']:.3f}"
        if times["efficiency"] == times["efficiency"]
        else "-",
        "sweep efficiency per worker (train / (wall x workers at once))": (
            f"{times['efficiency_per_worker']:.3f}"
            if times["efficiency_per_worker"] == times["efficiency_per_worker"]
            else "-"
        ),
        "workers": f"{times['workers']} sessions, at most {times['max_parallel']} at once",
        "sweep directory": state.get("source", {}).get("sweep_file") or "-",
        "report generated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>sweep {html.escape(defn.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Sweep <code>{html.escape(defn.name)}</code></h1>",
        f"<pre>{html.escape(defn.question or '(no question)')}</pre>",
        "<h2>Summary</h2>",
        _kv(summary),
        "<h2>Machine</h2>",
        _kv(machine_info(runs)),
    ]
    for size in FRONT_SIZES:
        short = size.split(".")[-1]
        parts += [
            f"<h2>Accuracy vs {html.escape(metric(size).label)}</h2>",
            img(f"accuracy_vs_{short}.png"),
            f"<h3>Pareto front ({len(front_by_size[size])} points)</h3>",
            _table(front_by_size[size], _metric_columns(defn, with_state=False)),
        ]
    parts.append("<h2>Per-field curves</h2>")
    parts += [img(f"field_{k.replace('.', '_')}.png") for k in defn.keys]
    parts += ["<h2>Error EDFs</h2>", img("error_edf.png")]
    parts += [
        f"<h2>All design points ({len(rows)})</h2>",
        _table(rows, _metric_columns(defn, with_state=True)),
    ]
    if skipped:
        parts += [
            f"<h2>Design points not trained ({len(skipped)})</h2>",
            _table(
                skipped,
                [
                    ("trial #", lambda s: s.get("number")),
                    ("kind", lambda s: s.get("kind")),
                    ("design", lambda s: json.dumps(s.get("params"))),
                    ("reason", lambda s: s.get("reason")),
                ],
            ),
        ]
    parts += [
        "<h2>Sweep definition</h2>",
        f"<pre>{html.escape(json.dumps(state.get('definition'), indent=2))}</pre>",
        "<details><summary>Base config</summary>",
        f"<pre>{html.escape(json.dumps(state.get('base_config'), indent=2))}</pre></details>",
        "</body></html>",
    ]
    return "\n".join(parts)


# ------------------------------------------------------------------------------ wandb
def log_to_wandb(state, defn, rows, front_by_size, mode: str, out: Path) -> str | None:
    """Log the results and frontier tables and an accuracy-vs-params scatter to a summary run."""
    import wandb

    wb = state.get("base_config", {}).get("wandb", {}) or {}
    run = wandb.init(
        project=wb.get("project") or "sqzexplore",
        entity=wb.get("entity"),
        group=defn.name,
        name=f"{defn.name}-report",
        job_type="sweep-report",
        tags=["sweep-report", defn.name, *defn.tags],
        config={"sweep": state.get("definition")},
        mode=mode,
        dir=os.environ.get("WANDB_DIR") or str(out),
    )
    try:
        columns = result_columns(defn)
        table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        front_columns = frontier_columns(defn)
        front_table = wandb.Table(
            columns=front_columns,
            data=[[r.get(c) for c in front_columns] for f in front_by_size.values() for r in f],
        )
        run.log(
            {
                "results": table,
                "frontier": front_table,
                "accuracy_vs_params": wandb.plot.scatter(
                    table,
                    "complexity.params",
                    f"{ACCURACY}.mean",
                    title=f"{defn.name}: top-1 vs params",
                ),
            }
        )
        url = getattr(run, "url", None)
    finally:
        run.finish()
    return url
