"""Collect a sweep from its files and analyse it: runs, per-point table, Pareto fronts, status.

Everything here reads the sweep directory only (sweep.json, trials/*, claims/, workers/,
skipped.jsonl), never Optuna or jax, so `sqz sweep status` and `report` are cheap and work on a
copied directory. Metrics are looked up by name through `metric_table`; the Pareto fronts are
`pareto`'s, the text forms of numbers `text_format`'s.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

from sqzexplore.rundir import METRICS_FILE, RESULT_FILE, read_json, read_jsonl, read_result
from sqzexplore.sweep import latency as sweep_latency
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.claims import RunClaims, record_is_live
from sqzexplore.sweep.design import point_label
from sqzexplore.sweep.metric_table import (
    ACCURACY,
    LATENCY_METRICS,
    RESULT_METRICS,
    SIZE_METRICS,
    metric,
)
from sqzexplore.sweep.pareto import pareto_front, row_value
from sqzexplore.sweep.space import SweepDefinition
from sqzexplore.sweep.text_format import format_duration

SKIP_KINDS = ("constraint", "invalid", "duplicate", "interrupted")
# Metrics whose per-point rows also carry a 95% confidence interval over seeds.
INTERVAL_METRICS = ("final.top1", "final.top5", "best.top1")


@dataclasses.dataclass
class RunRecord:
    """One training run of the sweep, as its files describe it."""

    trial_id: str
    point: str
    number: int
    seed: int
    params: dict[str, Any]  # the design point's config values (JSON: tuples as lists)
    design: dict[str, Any]  # the same as display labels (tuples as 'a,b,c')
    complexity: dict[str, Any]
    state: str
    result: dict[str, Any] | None
    failure: dict[str, Any] | None
    owner: dict[str, Any] | None  # the live worker running it
    registered: float | None
    finished: float | None  # result.json time
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # the run's config.data
    latency: dict[str, Any] | None = None  # measured at registration (sweep/latency.py)


def collect_runs(sweep_dir: sd.SweepDir, stale_after_s: float = 300.0) -> list[RunRecord]:
    """Every registered run with its state (complete/stopped/failed/skipped/running/pending)."""
    claims = RunClaims(sweep_dir.claims, stale_after_s)
    live = claims.live_claims()
    runs = []
    for tid in sweep_dir.trial_ids():
        trial_dir = sweep_dir.trial_dir(tid)
        record = read_json(trial_dir / sd.TRIAL_FILE)
        if record is None:
            continue
        state = sd.run_state(trial_dir)
        if state is None:
            state = sd.RUNNING if tid in live else sd.PENDING
        result = read_result(trial_dir)
        finished = None
        if result is not None:
            finished = (trial_dir / RESULT_FILE).stat().st_mtime
        runs.append(
            RunRecord(
                trial_id=tid,
                point=record["point"],
                number=int(record.get("number", -1)),
                seed=int(record["seed"]),
                params=record.get("params", {}),
                design=record.get("design", {}),
                complexity=record.get("complexity", {}),
                state=state,
                result=result,
                failure=read_json(trial_dir / sd.FAILED_FILE),
                owner=live.get(tid),
                registered=record.get("registered"),
                finished=finished,
                data=(record.get("config") or {}).get("data") or {},
                latency=record.get("latency"),
            )
        )
    return runs


def skipped_points(sweep_dir: sd.SweepDir) -> list[dict[str, Any]]:
    """Design points that were never trained, with the reason (one entry per Optuna trial)."""
    by_number = {}
    for record in read_jsonl(sweep_dir.skipped):
        by_number[record.get("number")] = record
    return [by_number[k] for k in sorted(by_number, key=lambda n: (n is None, n))]


# ------------------------------------------------------------------------------ per point
def _point_state(states: list[str]) -> str:
    if all(s == sd.COMPLETE for s in states):
        return sd.COMPLETE
    if sd.FAILED in states:
        return sd.FAILED
    if sd.STOPPED in states and all(s in sd.FINISHED_STATES for s in states):
        return sd.STOPPED
    if sd.RUNNING in states:
        return sd.RUNNING
    return sd.PENDING


def point_rows(runs: Sequence[RunRecord], defn: SweepDefinition) -> list[dict[str, Any]]:
    """One row per design point: design fields, sizes, metric mean and std over complete seeds."""
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(r.point, []).append(r)
    rows = []
    for point, group in groups.items():
        group.sort(key=lambda r: r.seed)
        first = group[0]
        complete = [r for r in group if r.state == sd.COMPLETE and r.result is not None]
        row: dict[str, Any] = {
            "label": point_label(first.design),
            "point": point,
            "trial_number": first.number,
        }
        for key in defn.keys:
            row[key] = first.design.get(key)
        row["state"] = _point_state([r.state for r in group])
        row["seeds"] = len(group)
        row["seeds_complete"] = len(complete)
        for name in SIZE_METRICS:
            value = metric(name).value({"complexity": first.complexity})
            integral = value is not None and name != "complexity.fp32_mib" and value.is_integer()
            row[name] = int(value) if integral else value
        for name in LATENCY_METRICS:  # a property of the point too (None: not measured)
            row[name] = metric(name).value({"latency": first.latency})
        for name in RESULT_METRICS:
            values = [v for v in (metric(name).value(r.result) for r in complete) if v is not None]
            row[f"{name}.mean"] = statistics.fmean(values) if values else None
            # One seed has no spread: None (shown as n=1), never a made-up 0.
            row[f"{name}.std"] = statistics.stdev(values) if len(values) > 1 else None
            if name in INTERVAL_METRICS:
                row[f"{name}.n"] = len(values)
                row[f"{name}.ci95"] = ci95_half_width(row[f"{name}.std"], len(values))
        row["train_time_s.sum"] = sum(
            metric("train_time_s").value(r.result) or 0.0 for r in group if r.result
        )
        row["trials"] = " ".join(r.trial_id for r in group)
        rows.append(row)
    rows.sort(key=lambda row: row["trial_number"])
    return rows


def ci95_half_width(std: float | None, n: int) -> float | None:
    """Half-width of the 95% confidence interval of a mean of `n` values (Student's t), None
    below two values."""
    if std is None or n < 2:
        return None
    from scipy.special import stdtrit  # scipy comes with scikit-learn; the stats module is slow

    return float(stdtrit(n - 1, 0.975)) * std / math.sqrt(n)


# ------------------------------------------------------------------------------ learning curves
# (split, metric) series of metrics.jsonl that the report draws per design point.
CURVES = (("eval", "top1"), ("train", "loss"))


def point_curves(sweep_dir: sd.SweepDir, runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Each design point's learning curves over its seeds, from the runs' metrics.jsonl:
    [{'point', 'label', 'seeds', 'curves': {'eval/top1': {'step': [..], 'mean': [..],
    'std': [..] (None below two seeds at a step)}}}], in trial order. Unfinished runs count
    with the steps they have logged (a watched report follows them)."""
    by_point: dict[str, list[RunRecord]] = {}
    for r in sorted(runs, key=lambda r: (r.number, r.seed)):
        by_point.setdefault(r.point, []).append(r)
    out = []
    for point, group in by_point.items():
        logs = [read_jsonl(sweep_dir.trial_dir(r.trial_id) / METRICS_FILE) for r in group]
        logs = [log for log in logs if log]
        if not logs:
            continue
        curves = {}
        for split, name in CURVES:
            per_step: dict[int, list[float]] = {}
            for log in logs:
                for record in log:
                    value = record.get(name)
                    if record.get("split", "train") == split and isinstance(value, (int, float)):
                        per_step.setdefault(int(record["step"]), []).append(float(value))
            steps = sorted(per_step)
            curves[f"{split}/{name}"] = {
                "step": steps,
                "mean": [statistics.fmean(per_step[k]) for k in steps],
                "std": [
                    statistics.stdev(per_step[k]) if len(per_step[k]) > 1 else None for k in steps
                ],
            }
        out.append(
            {
                "point": point,
                "label": point_label(group[0].design),
                "seeds": len(logs),
                "curves": curves,
            }
        )
    return out


# ------------------------------------------------------------------------------ the report's tables
TIME_METRICS = ("train_time_s", "compile_time_s", "overhead_s", "wall_time_s")


def result_columns(defn: SweepDefinition) -> list[str]:
    cols = ["label", "point", "trial_number", "state", "seeds", "seeds_complete", *defn.keys]
    cols += list(SIZE_METRICS) + latency_columns(defn)
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
        "label",
        "point",
        *defn.keys,
        f"{ACCURACY}.mean",
        f"{ACCURACY}.std",
        f"{ACCURACY}.n",
        f"{ACCURACY}.ci95",
        "complexity.params",
        "complexity.macs",
        "complexity.fp32_mib",
        *latency_columns(defn),
        "seeds_complete",
    ]


def latency_columns(defn: SweepDefinition) -> list[str]:
    return list(LATENCY_METRICS) if sweep_latency.wanted(defn) else []


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


# ------------------------------------------------------------------------------ time
def worker_sessions(sweep_dir: sd.SweepDir, stale_after_s: float = 300.0) -> list[dict[str, Any]]:
    """Each worker's [start, end] (end = its finish time, else its last heartbeat) and liveness."""
    out = []
    if not sweep_dir.workers.exists():
        return out
    for path in sorted(sweep_dir.workers.glob("*.json")):
        record = read_json(path)
        if not record or "started" not in record:
            continue
        mtime = path.stat().st_mtime
        live = "finished" not in record and record_is_live(record, mtime, stale_after_s)
        end = record.get("finished") or (time.time() if live else mtime)
        out.append({**record, "end": end, "live": live})
    return out


def union_seconds(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals (time when any worker was working)."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def sweep_times(sweep_dir: sd.SweepDir, runs: Sequence[RunRecord]) -> dict[str, float]:
    """Wall time of the sweep, summed train time of its runs and their ratio (efficiency)."""
    sessions = worker_sessions(sweep_dir)
    wall = union_seconds([(s["started"], s["end"]) for s in sessions])
    train = sum(metric("train_time_s").value(r.result) or 0.0 for r in runs if r.result)
    run_wall = sum(metric("wall_time_s").value(r.result) or 0.0 for r in runs if r.result)
    return {
        "wall_time_s": wall,
        "train_time_s": train,
        "run_wall_time_s": run_wall,
        "efficiency": train / wall if wall > 0 else float("nan"),
        # Several workers train at once, so the plain ratio can pass 1; per worker it cannot.
        "efficiency_per_worker": (
            train / (wall * _max_parallel(sessions)) if wall > 0 and sessions else float("nan")
        ),
        "workers": len(sessions),
        "max_parallel": _max_parallel(sessions),
    }


def _max_parallel(sessions: Sequence[dict[str, Any]]) -> int:
    events = sorted([(s["started"], 1) for s in sessions] + [(s["end"], -1) for s in sessions])
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


# ------------------------------------------------------------------------------ status
def status(sweep_dir: sd.SweepDir) -> dict[str, Any]:
    """Counts, best so far, front size and ETA of a sweep (what `sqz sweep status` prints)."""
    defn = sweep_dir.definition()
    runs = collect_runs(sweep_dir)
    rows = point_rows(runs, defn)
    skipped = skipped_points(sweep_dir)
    skip_counts = {k: sum(s.get("kind") == k for s in skipped) for k in SKIP_KINDS}
    registered_points = len(rows)
    exhausted = sweep_dir.exhausted.exists()
    planned_points = defn.planned_points
    if defn.finite_size is not None:
        rejected = {s.get("point") for s in skipped if s.get("kind") in ("constraint", "invalid")}
        planned_points = min(planned_points, defn.finite_size - len(rejected))
    if exhausted:
        planned_points = registered_points
    planned_points = max(planned_points, registered_points)
    counts = {
        s: 0 for s in (sd.COMPLETE, sd.RUNNING, sd.PENDING, sd.FAILED, sd.STOPPED, sd.SKIPPED)
    }
    for r in runs:
        counts[r.state] += 1
    unregistered_runs = (planned_points - registered_points) * len(defn.seeds)
    counts[sd.PENDING] += unregistered_runs
    total_runs = len(runs) + unregistered_runs

    best = {}
    complete_rows = [r for r in rows if r["state"] == sd.COMPLETE]
    for objective in defn.objectives:
        scored = [r for r in complete_rows if row_value(r, objective.metric) is not None]
        if scored:
            pick = (max if objective.maximize else min)(
                scored, key=lambda r, m=objective.metric: row_value(r, m)
            )
            best[objective.metric] = {
                "value": row_value(pick, objective.metric),
                "display": metric(objective.metric).format(row_value(pick, objective.metric)),
                "design": {k: pick[k] for k in defn.keys},
                "point": pick["point"],
            }
    objective_values = [[row_value(r, o.metric) for o in defn.objectives] for r in complete_rows]
    usable = [v for v in objective_values if all(x is not None for x in v)]
    front = len(pareto_front(usable, [o.maximize for o in defn.objectives]))

    times = sweep_times(sweep_dir, runs)
    durations = [
        metric("wall_time_s").value(r.result) for r in runs if r.state == sd.COMPLETE and r.result
    ]
    durations = [d for d in durations if d is not None]
    remaining = counts[sd.PENDING] + counts[sd.RUNNING]
    active = sum(1 for s in worker_sessions(sweep_dir) if s["live"])
    eta = None
    if durations and remaining:
        parallel = max(1, active, counts[sd.RUNNING])
        eta = (counts[sd.PENDING] + 0.5 * counts[sd.RUNNING]) * statistics.median(durations)
        eta /= parallel
    return {
        "name": defn.name,
        "directory": str(sweep_dir.root),
        "sampler": defn.sampler,
        "seeds": len(defn.seeds),
        "planned_points": planned_points,
        "registered_points": registered_points,
        "total_runs": total_runs,
        "counts": counts,
        "skipped_points": skip_counts,
        "sampling_exhausted": exhausted,
        "best": best,
        "pareto_front_size": front,
        "active_workers": active,
        "eta_s": eta,
        **times,
    }


def format_status(st: dict[str, Any]) -> str:
    c = st["counts"]
    lines = [
        f"sweep {st['name']} ({st['sampler']}, {st['planned_points']} points x {st['seeds']} "
        f"seed(s) = {st['total_runs']} trials) in {st['directory']}",
        f"trials: {c['complete']} done, {c['running']} running, {c['failed']} failed, "
        f"{c['stopped']} stopped early, {c['skipped']} skipped, {c['pending']} pending",
    ]
    sk = {k: v for k, v in st["skipped_points"].items() if v}
    if sk:
        lines.append("design points not trained: " + ", ".join(f"{v} {k}" for k, v in sk.items()))
    if st["sampling_exhausted"]:
        lines.append("sampling stopped: the search space looks exhausted (sampling_exhausted.json)")
    for name, b in st["best"].items():
        design = ", ".join(f"{k}={v}" for k, v in b["design"].items())
        lines.append(f"best {name} [{metric(name).label}]: {b['display']} ({design})")
    lines.append(f"Pareto-optimal points so far: {st['pareto_front_size']}")
    lines.append(
        f"wall {format_duration(st['wall_time_s'])}, {st['active_workers']} worker(s) active, "
        f"ETA {format_duration(st['eta_s'])}"
    )
    return "\n".join(lines)
