"""Training the runs a worker claimed, and classifying how each ended (complete, stopped early,
failed, or interrupted: preempted, or its claim taken over by another worker).

`execute_run` trains one run with the runner; `execute_population` trains runs as one program
with the runner's `train_population` (seeds of one point, or width-padded points) and gives each
member its own outcome, as `execute_run` would its run's. A run's failure is data (e.g. NaN at a
design point), recorded in its trial directory by the engine, not a crash of the worker.
"""

from __future__ import annotations

import inspect
import time
import traceback
from collections.abc import Callable
from typing import Any

import ml_collections

from sqzexplore.rundir import RESULT_FILE, write_json
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.claims import Heartbeat
from sqzexplore.sweep.dashboards import trial_wandb
from sqzexplore.sweep.early_stop import MedianStopper
from sqzexplore.sweep.engine import RunOutcome, RunTicket, SweepEngine

Runner = Callable[..., dict]


def accepts_on_eval(runner: Runner) -> bool:
    try:
        params = inspect.signature(runner).parameters
    except (TypeError, ValueError):
        return False
    return "on_eval" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def execute_run(
    ticket: RunTicket,
    engine: SweepEngine,
    runner: Runner,
    heartbeat: Heartbeat,
    log: Callable[[str], None] = print,
) -> RunOutcome:
    """Train one run and classify how it ended."""
    record = ticket.record()
    # Named, grouped and switched on or off for wandb as this sweep says (dashboards.py).
    config = ml_collections.ConfigDict(trial_wandb(engine.dir, engine.dir.state(), record))
    stopper = MedianStopper(engine.defn.early_stop, engine.dir, ticket.point)
    lost = {"claim": False}

    def on_eval(step: int, metrics: dict) -> bool:
        if heartbeat.lost(ticket.claim.path):
            lost["claim"] = True  # another host took the run over: stop, record nothing
            return True
        return stopper.should_stop(step, metrics)

    kwargs: dict[str, Any] = {"on_eval": on_eval} if accepts_on_eval(runner) else {}
    t0 = time.time()
    design = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in record["design"].items())
    log(f"[{engine.worker}] {ticket.trial_id}: {design}, seed {ticket.seed}")
    try:
        result = runner(config, str(ticket.workdir), **kwargs)
    except Exception as e:  # a run's failure is data (e.g. NaN at a design point), not a crash
        log(f"[{engine.worker}] {ticket.trial_id} failed: {type(e).__name__}: {e}")
        return RunOutcome(
            "failed",
            {
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
                "seconds": time.time() - t0,
            },
        )
    return _outcome(ticket, result, stopper, lost["claim"], t0)


def _outcome(
    ticket: RunTicket, result: dict | None, stopper: MedianStopper, lost: bool, t0: float
) -> RunOutcome:
    """How a run that returned `result` ended."""
    if lost:
        return RunOutcome("interrupted", {"reason": "claim taken over by another worker"})
    status = (result or {}).get("status")
    if status == "preempted":
        return RunOutcome("interrupted", {"preempted": True})
    if status in sd.STOPPED_STATUSES or stopper.reason is not None:
        return RunOutcome("stopped", {"reason": stopper.reason or "stopped by on_eval"})
    if status != "complete":
        return RunOutcome("failed", {"error": f"runner returned status {status!r}"})
    if not (ticket.workdir / RESULT_FILE).exists():
        # A runner that only returns its result: keep the contract (result.json written last).
        write_json(ticket.workdir / RESULT_FILE, result)
    return RunOutcome("complete", {"seconds": time.time() - t0})


def execute_population(
    tickets: list[RunTicket],
    engine: SweepEngine,
    runner: Runner,
    heartbeat: Heartbeat,
    log: Callable[[str], None] = print,
) -> list[RunOutcome]:
    """Train runs of one point as one population (default trainer) and classify each member's
    end as `execute_run` would its run's."""
    from sqzexplore.train.population import PopulationError  # jax, loaded with the trainer

    records = [t.record() for t in tickets]
    configs = [ml_collections.ConfigDict(r["config"]) for r in records]
    stoppers = [MedianStopper(engine.defn.early_stop, engine.dir, t.point) for t in tickets]
    lost = [False] * len(tickets)

    def on_eval(member: int, step: int, metrics: dict) -> bool:
        if heartbeat.lost(tickets[member].claim.path):
            lost[member] = True
            return True
        return stoppers[member].should_stop(step, metrics)

    t0 = time.time()
    design = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in records[0]["design"].items())
    seeds = ", ".join(str(t.seed) for t in tickets)
    if len({t.point for t in tickets}) == 1:
        log(f"[{engine.worker}] {tickets[0].point}: {design}, seeds {seeds} as one population")
    else:
        runs = ", ".join(t.trial_id for t in tickets)
        log(f"[{engine.worker}] {runs} as one width-padded population (one program)")
    try:
        results = runner.train_population(
            configs, [str(t.workdir) for t in tickets], on_eval=on_eval
        )
    except PopulationError as e:  # e.g. a streamed dataset: said, then trained one by one
        log(f"[{engine.worker}] no population for {tickets[0].point} ({e}); one run at a time")
        return [execute_run(t, engine, runner, heartbeat, log) for t in tickets]
    except Exception as e:  # as execute_run: a failure is data; every member failed with it
        log(f"[{engine.worker}] population of {tickets[0].point} failed: {type(e).__name__}: {e}")
        detail = {
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
            "seconds": time.time() - t0,
        }
        return [RunOutcome("failed", dict(detail)) for _ in tickets]
    outcomes = []
    for k, (ticket, result) in enumerate(zip(tickets, results, strict=True)):
        if result.get("status") == "failed":  # frozen by a non-finite loss: the run's error
            log(f"[{engine.worker}] {ticket.trial_id} failed: {result['error']}")
            outcomes.append(
                RunOutcome(
                    "failed",
                    {
                        "error": result["error"],
                        "traceback": result["error"],
                        "seconds": time.time() - t0,
                    },
                )
            )
            continue
        outcomes.append(_outcome(ticket, result, stoppers[k], lost[k], t0))
    return outcomes
