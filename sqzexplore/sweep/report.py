"""`sqz sweep report DIR`: tables, figures and one self-contained HTML page from a sweep's files.

Writes to DIR/report/ (or --out):
    results.csv   one row per design point: design fields, params, MACs, MiB, each metric's mean
                  and std over seeds (std empty for one seed), n and a 95% interval for the
                  accuracies, per-trial train / compile / overhead times
    frontier.csv  the Pareto-optimal points for accuracy vs params and accuracy vs MACs (one row
                  per point and front, with its rank)
    *.png, *.svg  accuracy vs size (Pareto front with its +- 1 std band, best point and knee),
                  per-field curves (paper Fig. 3 layout, the paper's values beside them where the
                  paper ablates the field), error EDFs per design choice (pycls)
    report.html   all of it with the figures embedded (base64 PNG): no network needed; while the
                  sweep runs, `--watch` rewrites it and the page reloads itself
and prints one frontier table with the best point and the knee. Every accuracy is a mean over
seeds with its n; one seed shows no spread rather than a made-up 0. With wandb mode
offline/online it also logs a summary run (`wandb_export.log_summary_run`); with `tensorboard`
each trial's metrics.jsonl is mirrored as TensorBoard event files under DIR/tensorboard/.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqzexplore.rundir import write_bytes
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import (
    INTERVAL_METRICS,
    collect_runs,
    format_table,
    frontier_rows,
    knee_row,
    point_rows,
    row_value,
    skipped_points,
    status,
    sweep_times,
)
from sqzexplore.sweep.metric_table import ACCURACY, RESULT_METRICS, SIZE_METRICS, metric
from sqzexplore.sweep.space import SweepDefinition

FRONT_SIZES = ("complexity.params", "complexity.macs")
TIME_METRICS = ("train_time_s", "compile_time_s", "overhead_s", "wall_time_s")


def result_columns(defn: SweepDefinition) -> list[str]:
    cols = ["point", "trial_number", "state", "seeds", "seeds_complete", *defn.keys]
    cols += list(SIZE_METRICS)
    for name in RESULT_METRICS:
        cols += [f"{name}.mean", f"{name}.std"]
        if name in INTERVAL_METRICS:
            cols += [f"{name}.n", f"{name}.ci95"]
    return [*cols, "train_time_s.sum", "trials"]


def frontier_columns(defn: SweepDefinition) -> list[str]:
    return [
        "front",
        "rank",
        "role",
        "point",
        *defn.keys,
        f"{ACCURACY}.mean",
        f"{ACCURACY}.std",
        f"{ACCURACY}.n",
        f"{ACCURACY}.ci95",
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


def key_size(defn: SweepDefinition) -> str:
    """The size the sweep trades accuracy against: its first size objective, else params."""
    for o in defn.objectives:
        if o.metric in FRONT_SIZES:
            return o.metric
    return FRONT_SIZES[0]


def fronts(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Size metric -> its Pareto front rows (with 'front', 'rank' and 'role' added)."""
    out = {}
    for size in FRONT_SIZES:
        front = frontier_rows(rows, size)
        best = max(front, key=lambda r: row_value(r, ACCURACY)) if front else None
        knee = knee_row(front, size)
        out[size] = [
            {
                **r,
                "front": size.split(".")[-1],
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
            row["fronts"].append(size.split(".")[-1])
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


def error_samples(runs) -> list[dict[str, Any]]:
    """(design fields, top-1 error) of every complete run: the models the EDFs count."""
    out = []
    for r in runs:
        top1 = metric(ACCURACY).value(r.result or {})
        if r.state == sd.COMPLETE and top1 is not None:
            out.append({**r.design, "error": 1.0 - top1})
    return out


def evaluated_on(state: dict[str, Any], runs) -> str:
    """What the accuracies were measured on: 'digits (test split)'."""
    base = (state.get("base_config") or {}).get("data") or {}
    fixed = (state.get("definition") or {}).get("fixed") or {}
    found = []
    for data in [r.data for r in runs if r.data] or [{}]:
        name = data.get("name") or fixed.get("data.name") or base.get("name") or "?"
        split = data.get("eval_split") or fixed.get("data.eval_split") or base.get("eval_split")
        text = f"{name} ({split} split)" if split else str(name)
        if text not in found:
            found.append(text)
    return ", ".join(found)


def accuracy_text(row: dict[str, Any], name: str = ACCURACY) -> str:
    """'97.80 ± 0.45 (n=3)', or '97.80 (n=1)': never a ± from a single seed."""
    m = metric(name)
    mean, std = row.get(f"{name}.mean"), row.get(f"{name}.std")
    n = row.get(f"{name}.n", row.get("seeds_complete", 0))
    if mean is None:
        return "-"
    spread = f" ± {m.format(std)}" if std is not None else ""
    return f"{m.format(mean)}{spread} (n={n})"


def interval_text(row: dict[str, Any], name: str = ACCURACY) -> str:
    """The 95% interval of the mean, '[96.71, 98.89]', or '-' below two seeds."""
    mean, half = row.get(f"{name}.mean"), row.get(f"{name}.ci95")
    if mean is None or half is None:
        return "-"
    m = metric(name)
    # Accuracies are fractions: an interval past 0 or 1 says only that n is small.
    return f"[{m.format(max(0.0, mean - half))}, {m.format(min(1.0, mean + half))}]"


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
    if not rows:
        return f"{title}\n(no complete design points yet)"
    return f"{title}\n{format_table(rows, columns)}"


def _figures(rows, defn, runs, where: str) -> dict[str, dict[str, bytes]]:
    from sqzexplore.sweep import figures

    out = {}
    for size in FRONT_SIZES:
        out[f"accuracy_vs_{size.split('.')[-1]}"] = figures.render(
            figures.frontier_scatter(rows, defn, size, where)
        )
    for key in defn.keys:
        out[f"field_{key.replace('.', '_')}"] = figures.render(
            figures.field_curves(rows, defn, key, where)
        )
    out["error_edf"] = figures.render(figures.error_edfs(error_samples(runs), defn, where))
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
    from sqzexplore.sweep.report_html import render_html

    state = sweep_dir.state()
    defn = sweep_dir.definition()
    out = Path(out_dir) if out_dir else sweep_dir.report
    out.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(sweep_dir)
    rows = point_rows(runs, defn)
    front_by_size = fronts(rows)
    merged = merged_front(front_by_size)
    size = key_size(defn)
    keys = key_points(rows, front_by_size, size)
    st = status(sweep_dir)
    finished = not (st["counts"][sd.PENDING] or st["counts"][sd.RUNNING])
    where = evaluated_on(state, runs)

    write_csv(out / "results.csv", rows, result_columns(defn))
    front_rows = [r for s in FRONT_SIZES for r in front_by_size[s]]
    write_csv(out / "frontier.csv", front_rows, frontier_columns(defn))

    images = _figures(rows, defn, runs, where)
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
            "accuracy vs params and/or vs MACs)",
        )
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

    tb_dir = None
    if tensorboard:
        from sqzexplore.runlog import mirror_to_tensorboard

        tb_dir = sweep_dir.root / "tensorboard"
        for r in runs:
            mirror_to_tensorboard(
                sweep_dir.trial_dir(r.trial_id) / "metrics.jsonl",
                tb_dir / tensorboard_run_name(r),
                hparams={**r.design, "seed": r.seed},
            )

    mode = wandb_mode or (state.get("base_config", {}).get("wandb", {}) or {}).get("mode")
    wandb_url = None
    # While watching, the summary run is logged once, when the sweep has finished.
    if mode in ("offline", "online") and (finished or not refresh_s):
        from sqzexplore.sweep.wandb_export import log_summary_run

        wandb_url = log_summary_run(
            state,
            defn,
            rows,
            merged,
            mode,
            out,
            images={name: formats["png"] for name, formats in images.items()},
        )
    return {
        "out_dir": str(out),
        "results_csv": str(out / "results.csv"),
        "frontier_csv": str(out / "frontier.csv"),
        "report_html": str(out / "report.html"),
        "figures": [str(out / f"{n}.png") for n in images],
        "svg": [str(out / f"{n}.svg") for n in images],
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
    }


def tensorboard_run_name(run) -> str:
    """A TensorBoard run directory name: the design point's fields and the seed."""
    design = ",".join(f"{k.split('.')[-1]}={v}" for k, v in run.design.items())
    safe = "".join(c if c.isalnum() or c in "._,=-" else "_" for c in design) or run.point
    return f"{safe}/seed{run.seed}"


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
