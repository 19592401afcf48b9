"""`sqz sweep report DIR`: tables, figures and one self-contained HTML page from a sweep's files.

Writes to DIR/report/ (or --out):
    results.csv   one row per design point: design fields, params, MACs, MiB, each metric's mean
                  and std over seeds (std empty for one seed), n and a 95% interval for the
                  accuracies, per-trial train / compile / overhead times
    frontier.csv  the Pareto-optimal points for accuracy vs params and accuracy vs MACs, and vs
                  measured latency when the sweep measured it (one row per point and front,
                  with its rank; sweep/latency.py)
    *.png, *.svg, *.pdf  accuracy vs size (Pareto front with its +- 1 std band, best point and
                  knee), per-field curves (paper Fig. 3 layout, the paper's values beside them
                  where the paper ablates the field), error EDFs per design choice (pycls),
                  learning curves per point (mean and band over seeds); SVG text stays text
    report.html   all of it with the figures embedded (base64 PNG): no network needed; while the
                  sweep runs, `--watch` rewrites it and the page reloads itself
and prints one frontier table with the best point and the knee. Every accuracy is a mean over
seeds with its n; one seed shows no spread rather than a made-up 0. With wandb mode
offline/online it also logs a summary run, one per sweep state (`wandb_summary`); with
`tensorboard` each trial's metrics.jsonl is mirrored as TensorBoard event files under
DIR/tensorboard/, one HParams row per design point (`tensorboard.py`).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqzexplore.rundir import write_bytes
from sqzexplore.sweep import figures
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import (
    collect_runs,
    error_samples,
    evaluated_on,
    frontier_columns,
    point_curves,
    point_rows,
    result_columns,
    skipped_points,
    status,
    sweep_times,
)
from sqzexplore.sweep.dashboards import effective_mode, read_settings
from sqzexplore.sweep.metric_table import ACCURACY, metric
from sqzexplore.sweep.pareto import (
    FRONT_SIZES,
    front_name,
    front_sizes,
    fronts,
    key_points,
    key_size,
    merged_front,
)
from sqzexplore.sweep.report_html import render_html
from sqzexplore.sweep.space import SweepDefinition
from sqzexplore.sweep.tensorboard import write_tensorboard
from sqzexplore.sweep.text_format import accuracy_text, format_table, interval_text
from sqzexplore.sweep.wandb_summary import log_summary_run


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})


def frontier_text(defn: SweepDefinition, rows: Sequence[dict[str, Any]], title: str) -> str:
    columns: list[tuple[str, Callable[[dict], str]]] = [("", lambda r: r.get("role", ""))]
    columns += [(key.split(".")[-1], lambda r, k=key: str(r[k])) for key in defn.keys]
    columns += [
        (f"{metric(ACCURACY).label} mean ± std", accuracy_text),
        ("95% interval", interval_text),
        ("params", lambda r: metric("complexity.params").format(r["complexity.params"])),
        ("MACs (M)", lambda r: metric("complexity.macs").format(r["complexity.macs"])),
        ("MiB", lambda r: metric("complexity.fp32_mib").format(r["complexity.fp32_mib"])),
    ]
    if any(r.get("latency.ms") is not None for r in rows):
        columns.append(("latency (ms)", lambda r: metric("latency.ms").format(r["latency.ms"])))
    if not rows:
        return f"{title}\n(no complete design points yet)"
    return f"{title}\n{format_table(rows, columns)}"


def _figures(rows, defn, runs, where: str, curves) -> dict[str, dict[str, bytes]]:
    out = {}
    for size in front_sizes(rows):
        out[f"accuracy_vs_{front_name(size)}"] = figures.render(
            figures.frontier_scatter(rows, defn, size, where)
        )
    for key in defn.keys:
        out[f"field_{key.replace('.', '_')}"] = figures.render(
            figures.field_curves(rows, defn, key, where)
        )
    out["error_edf"] = figures.render(figures.error_edfs(error_samples(runs), defn, where))
    out["learning_curves"] = figures.render(figures.learning_curves(curves, defn, where))
    return out


def build_report(
    sweep_dir: sd.SweepDir,
    out_dir: str | os.PathLike | None = None,
    *,
    wandb_mode: str | None = None,
    refresh_s: float | None = None,
    tensorboard: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the report files; return their paths and the numbers the page shows.

    `refresh_s`: while the sweep is unfinished the page reloads itself this often (--watch)."""
    state = sweep_dir.state()
    defn = sweep_dir.definition()
    out = Path(out_dir) if out_dir else sweep_dir.report
    out.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(sweep_dir)
    rows = point_rows(runs, defn)
    sizes = front_sizes(rows)
    front_by_size = fronts(rows, sizes)
    merged = merged_front(front_by_size)
    size = key_size(defn) if key_size(defn) in sizes else FRONT_SIZES[0]
    keys = key_points(rows, front_by_size, size)
    st = status(sweep_dir)
    finished = not (st["counts"][sd.PENDING] or st["counts"][sd.RUNNING])
    where = evaluated_on(state, runs)

    write_csv(out / "results.csv", rows, result_columns(defn))
    front_rows = [r for s in sizes for r in front_by_size[s]]
    write_csv(out / "frontier.csv", front_rows, frontier_columns(defn))

    images = _figures(rows, defn, runs, where, point_curves(sweep_dir, runs))
    for name, formats in images.items():
        for fmt, data in formats.items():
            (out / f"{name}.{fmt}").write_bytes(data)

    title = f"{metric(ACCURACY).label} on {where}"
    text = (
        frontier_text(defn, keys, f"Key points ({title}; mean ± std over seeds)")
        + "\n\n"
        + frontier_text(
            defn,
            [{**r, "role": ", ".join(r["fronts"])} for r in merged],
            f"Pareto front ({len(merged)} points; first column: the fronts it is on, "
            f"accuracy vs {' and/or vs '.join(front_name(s) for s in sizes)})",
        )
    )
    lat = next((r.latency for r in runs if r.latency), None)
    if lat:  # what the latency numbers are only valid on
        text += (
            f"\n\nlatency: median of {lat['repeats']} timed batch-1 calls, {lat['runtime']}, "
            f"{lat['threads']} thread(s), on {lat['host']} ({lat['cpu']}); sweep/latency.py"
        )
    echo(text)

    page = render_html(
        sweep_dir=sweep_dir,
        state=state,
        defn=defn,
        rows=rows,
        merged_front=merged,
        key_rows=keys,
        skipped=skipped_points(sweep_dir),
        times=sweep_times(sweep_dir, runs),
        st=st,
        images=images,
        runs=runs,
        where=where,
        refresh_s=None if finished else refresh_s,
    )
    # Atomic: a browser reloading mid-write sees the old page or the new one.
    write_bytes(out / "report.html", page.encode())

    tb_dir = write_tensorboard(sweep_dir, runs) if tensorboard else None

    mode = wandb_mode or effective_mode(sweep_dir, state)
    wandb_url = None
    # While watching, the summary run is logged once, when the sweep has finished.
    logged = mode in ("offline", "online") and (finished or not refresh_s)
    if logged:
        wandb_url = log_summary_run(
            state,
            defn,
            rows,
            merged,
            mode,
            out,
            images={name: formats["png"] for name, formats in images.items()},
            settings=read_settings(sweep_dir),
        )
    return {
        "out_dir": str(out),
        "results_csv": str(out / "results.csv"),
        "frontier_csv": str(out / "frontier.csv"),
        "report_html": str(out / "report.html"),
        "figures": [str(out / f"{n}.png") for n in images],
        "svg": [str(out / f"{n}.svg") for n in images],
        "pdf": [str(out / f"{n}.pdf") for n in images],
        "points": len(rows),
        "fronts": {s: len(f) for s, f in front_by_size.items()},
        "finished": finished,
        "counts": st["counts"],
        "text": text,
        "efficiency": st["efficiency"],
        "efficiency_per_worker": st["efficiency_per_worker"],
        "max_parallel_workers": st["max_parallel"],
        "tensorboard": str(tb_dir) if tb_dir else None,
        "wandb": wandb_url,
        "wandb_mode": mode if logged else None,
    }


def watch(
    sweep_dir: sd.SweepDir,
    build: Callable[[bool], dict[str, Any]],
    interval_s: float,
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Rebuild the report every `interval_s` until the sweep has nothing pending or running;
    `build(first)` builds once. Returns the last build's summary."""
    first = True
    while True:
        out = build(first)
        c = out["counts"]
        done = c[sd.COMPLETE] + c[sd.FAILED] + c[sd.STOPPED] + c[sd.SKIPPED]
        total = done + c[sd.PENDING] + c[sd.RUNNING]
        echo(
            f"{time.strftime('%H:%M:%S')} report updated: {done}/{total} trials finished, "
            f"{c[sd.RUNNING]} running"
        )
        if out["finished"]:
            return out
        first = False
        sleep(interval_s)
