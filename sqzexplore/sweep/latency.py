"""Measured latency as a sweep metric: `latency.ms` as an objective, `max_latency_ms` as a
constraint, the accuracy-vs-latency front in the report.

A design point's latency is a property of its model (batch 1, this host, ONNX Runtime with one
intra-op thread, `export.latency.cached_latency` at random init), not of a training run, so it
is measured once per spec and host and kept in the sweep directory's cache (`latency_cache.json`;
every fresh measurement is also a line of `latency.jsonl`). It is never measured while trials
train on the same cores:

- a worker measures every point of a grid sweep when it starts, before it trains anything
  (`measure_ahead`), holding the sweep directory's `latency.lock`, so the workers starting beside
  it wait and then find every point in the cache; registration then only reads the cache;
- a random / NSGA-II sweep measures a point when it is registered, in the worker's own thread
  between its runs (its compile-ahead thread is off, `ahead_safe`). With several local workers
  another worker may be training meanwhile: run such a sweep with one worker per host, or
  measure its points first with a grid.

The latency row goes into each run's trial.json (`latency`: ms = median, p90_ms, runtime,
threads, host), from where the objectives, results.csv and the report read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable
from typing import Any

from sqzexplore.rundir import append_jsonl
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.space import SweepDefinition, SweepError

RUNTIME = "onnxruntime"  # the runtime a deployment on a CPU would use (export/artifact.py)
THREADS = 1  # one intra-op thread: comparable across hosts with different core counts
CACHE_FILE = "latency_cache.json"
LOG_FILE = "latency.jsonl"
LOCK_FILE = "latency.lock"
METRIC = "latency.ms"
CONSTRAINT = "max_latency_ms"


def wanted(defn: SweepDefinition) -> bool:
    """Whether the sweep uses measured latency (an objective or a constraint)."""
    return CONSTRAINT in defn.constraints or any(
        o.metric.startswith("latency.") for o in defn.objectives
    )


def _why(defn: SweepDefinition) -> str:
    names = [o.metric for o in defn.objectives if o.metric.startswith("latency.")]
    if CONSTRAINT in defn.constraints:
        names.append(f"constraints.{CONSTRAINT}")
    return " and ".join(names)


def check_available(defn: SweepDefinition) -> None:
    """A sweep that uses latency can measure it on this host, else one-line SweepError."""
    if not wanted(defn):
        return
    from sqzexplore.export.latency import check_runtime
    from sqzexplore.export.source import ExportError

    try:
        check_runtime(RUNTIME)
    except ExportError as e:
        raise SweepError(
            f"sweep {defn.name} uses {_why(defn)}, measured with {RUNTIME}, which cannot run "
            f"on this host: {e.message} (no trial was registered)"
        ) from None


@contextlib.contextmanager
def _locked(sweep_dir: sd.SweepDir):
    # One measurer per sweep directory at a time: the others wait, then read the cache.
    with open(sweep_dir.root / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _measure(sweep_dir: sd.SweepDir, config: dict[str, Any]) -> dict[str, Any]:
    from sqzexplore.export.latency import cached_latency
    from sqzexplore.models.spec import SqueezeNetSpec

    spec = SqueezeNetSpec.from_dict(config["model"])
    row = cached_latency(spec, str(sweep_dir.root / CACHE_FILE), RUNTIME, THREADS)
    out = {
        "ms": row["median_ms"],
        "p90_ms": row["p90_ms"],
        "min_ms": row["min_ms"],
        "runtime": row["runtime"],
        "threads": row["threads"],
        "repeats": row["repeats"],
        "host": row["host"]["host"],
        "cpu": row["host"]["cpu"],
        "cached": row["cached"],  # False: measured by this call
    }
    if not row["cached"]:
        append_jsonl(sweep_dir.root / LOG_FILE, {**out, "model": config["model"], "t": time.time()})
    return out


def point_latency(sweep_dir: sd.SweepDir, config: dict[str, Any]) -> dict[str, Any]:
    """The latency row of a point's model (its config): from the cache, else measured now."""
    with _locked(sweep_dir):
        return _measure(sweep_dir, config)


def violations(latency: dict[str, Any], constraints: dict[str, float]) -> list[str]:
    limit = constraints.get(CONSTRAINT)
    if limit is None or latency["ms"] <= limit:
        return []
    return [f"latency {latency['ms']:.3f} ms > {CONSTRAINT} {limit:g}"]


def measure_ahead(
    sweep_dir: sd.SweepDir, defn: SweepDefinition, base: dict[str, Any], log: Callable = print
) -> bool:
    """Before a worker trains: measure every grid point it may register (valid, within the
    analytic constraints, up to the budget) into the cache. Returns whether registration will
    only read the cache (True also when the sweep does not use latency)."""
    if not wanted(defn):
        return True
    if defn.sampler != "grid":
        return False
    from sqzexplore.export.source import ExportError
    from sqzexplore.models.spec import SpecError
    from sqzexplore.sweep.runconfig import analytic_complexity, trial_config
    from sqzexplore.sweep.space import constraint_violations

    fresh = 0
    with _locked(sweep_dir):
        wanted_points = 0
        for point in defn.grid_points():
            if wanted_points >= defn.planned_points:
                break
            config = trial_config(base, defn, point, defn.seeds[0], "latency")
            try:
                totals = analytic_complexity(config)
            except (SpecError, TypeError):
                continue
            if constraint_violations(totals, defn.constraints):
                continue
            try:
                row = _measure(sweep_dir, config)
            except (ExportError, RuntimeError):
                continue  # registration retries it and skips the point with the reason
            fresh += not row["cached"]
            wanted_points += not violations(row, defn.constraints)  # a skip uses no budget
    if fresh:
        log(
            f"latency: measured {fresh} design point(s) with {RUNTIME}, {THREADS} thread, "
            f"before training (cache: {sweep_dir.root / CACHE_FILE})"
        )
    return True
