"""A sweep's wandb summary run: one per sweep state, and the command that uploads every run.

`sqz sweep report` (and `sqz sweep run` once a sweep with wandb on has finished) logs a summary
run into the sweep's group: the results and the Pareto front as wandb Tables (accuracies in
percent, as the trial runs log them), accuracy-vs-size scatters and the report's figures.

One summary run per sweep: its id derives from the sweep's group. A report of a sweep whose
results have not changed since the last summary logs nothing (DIR/report/wandb_summary.json
holds the fingerprint of what was logged); when they changed, the new summary replaces the old
one: online the run with the same id is resumed, offline the superseded offline-run directory is
removed once the new one is written, so `wandb sync` never uploads a stale summary.

`sync_command` is the one command that uploads a sweep's offline runs: every trial's run (under
trials/<id>/wandb/) and the summary run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqzexplore.rundir import read_json, write_json
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import INTERVAL_METRICS, frontier_columns, result_columns
from sqzexplore.sweep.dashboards import sweep_group
from sqzexplore.sweep.metric_table import ACCURACY, metric
from sqzexplore.sweep.space import SweepDefinition

RECORD_FILE = "wandb_summary.json"


def dashboard_cell(column: str, value: Any) -> Any:
    """A results-table cell as the dashboards show it: accuracy means, stds and intervals in
    percent (the trial runs log percent too, `runlog.dashboard_value`)."""
    name, _, stat = column.rpartition(".")
    if stat in ("mean", "std", "ci95") and name in INTERVAL_METRICS and value is not None:
        return 100.0 * value
    return value


def summary_run_id(state: dict[str, Any]) -> str:
    """The summary run's id: one per sweep group (a `--new` sweep gets a new one)."""
    return hashlib.sha1(f"{sweep_group(state)}|summary".encode()).hexdigest()[:16]


def _fingerprint(mode: str, rows, front) -> str:
    text = json.dumps([mode, rows, front], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def _wandb_dir(out: Path) -> Path:
    """Where wandb puts the summary run's directory (wandb adds 'wandb/' under its dir)."""
    return Path(os.environ.get("WANDB_DIR") or str(out)) / "wandb"


def offline_summary_dirs(out: Path, run_id: str) -> list[Path]:
    """The summary run's offline directories under the report directory `out`, oldest first."""
    return sorted(_wandb_dir(out).glob(f"offline-run-*-{run_id}"))


def log_summary_run(
    state: dict[str, Any],
    defn: SweepDefinition,
    rows: Sequence[dict[str, Any]],
    front: Sequence[dict[str, Any]],
    mode: str,
    out: Path,
    images: dict[str, bytes] | None = None,
    settings: dict[str, Any] | None = None,
) -> str | None:
    """Log (or replace) the sweep's summary run unless this state was logged already; returns
    its URL (None offline). `settings`: the sweep's DIR/wandb.json (project, entity), else the
    base config's."""
    run_id = summary_run_id(state)
    fingerprint = _fingerprint(mode, rows, front)
    record = read_json(out / RECORD_FILE) or {}
    logged_before = record.get("fingerprint") == fingerprint and record.get("id") == run_id
    if logged_before and (mode == "online" or offline_summary_dirs(out, run_id)):
        return record.get("url")
    url, run_dir = _log(state, defn, rows, front, mode, out, run_id, images, settings)
    if mode == "offline":
        for old in offline_summary_dirs(out, run_id):
            if run_dir is not None and old.resolve() != run_dir.resolve():
                shutil.rmtree(old, ignore_errors=True)  # superseded: never uploaded
    write_json(out / RECORD_FILE, {"id": run_id, "fingerprint": fingerprint, "url": url})
    return url


def _log(state, defn, rows, front, mode, out, run_id, images, settings):
    import wandb  # heavy and optional: only a report that logs a summary run needs it
    from PIL import Image

    os.environ.setdefault("WANDB_SILENT", "true")  # the report prints its own one line
    wb = {**(state.get("base_config", {}).get("wandb", {}) or {}), **(settings or {})}
    run = wandb.init(
        project=wb.get("project") or "sqzexplore",
        entity=wb.get("entity"),
        group=sweep_group(state),
        name=f"{defn.name} summary",
        id=run_id,
        resume="allow",
        job_type="sweep-report",
        tags=["sweep-report", defn.name, *defn.tags],
        config={"sweep": state.get("definition")},
        mode=mode,
        dir=os.environ.get("WANDB_DIR") or str(out),
        settings=wandb.Settings(silent=True, quiet=True),
    )
    try:
        columns = result_columns(defn)
        table = wandb.Table(
            columns=columns, data=[[dashboard_cell(c, r.get(c)) for c in columns] for r in rows]
        )
        front_columns = [*frontier_columns(defn), "fronts"]
        front_table = wandb.Table(
            columns=front_columns,
            data=[
                [
                    ", ".join(r["fronts"]) if c == "fronts" else dashboard_cell(c, r.get(c))
                    for c in front_columns
                ]
                for r in front
            ],
        )
        logged: dict[str, Any] = {"results": table, "frontier": front_table}
        for size, short in (("complexity.params", "params"), ("complexity.fp32_mib", "mib")):
            logged[f"accuracy_vs_{short}"] = wandb.plot.scatter(
                table,
                size,
                f"{ACCURACY}.mean",
                title=f"{defn.name}: {metric(ACCURACY).label} vs {metric(size).label}",
            )
        for name, png in (images or {}).items():
            logged[f"figures/{name}"] = wandb.Image(Image.open(io.BytesIO(png)), caption=name)
        run.log(logged)
        run.summary["frontier_points"] = len(front)
        url = getattr(run, "url", None)
        run_dir = Path(run.dir).parent if getattr(run, "dir", None) else None
    finally:
        run.finish()
    return url, run_dir


def sync_command(sweep_dir: sd.SweepDir, out: Path) -> str:
    """The command that uploads the sweep's offline runs: every trial's and the summary run."""
    root = shlex.quote(str(sweep_dir.root))
    parts = [f"{root}/trials/*/wandb/offline-run-*"]
    summary = _wandb_dir(out)
    parts.append(f"{shlex.quote(str(summary))}/offline-run-*")
    return "wandb sync " + " ".join(parts)
