"""A sweep worker: claim a run, train it in its own workdir, record the outcome, repeat.

The runner is injectable: any `runner(config, workdir, *, on_eval=None) -> result dict` that
honours the run-directory contract (result.json written last, resuming from its own checkpoints).
The default is the real trainer, `sqzexplore.train:train_and_evaluate`; `--runner module:function`
selects another (custom trainers, or the tests' stand-in `fake_runner:run_fake_trial`, which
exercises the sweep machinery in seconds). A worker needs only the sweep directory: each run's
full config is in its trial.json, written when its design point was registered.

Compiles are shared: the worker asks first for runs of the points it trained last (a later seed
reuses the compiled programs the trainer keeps in memory, train/programs.py), and the engine
steers it away from points other workers are running (engine.next_run). With compile-ahead
(`compile_ahead`, `--compile-ahead`; by default on where trials run on an accelerator, or on a
CPU host with more cores than live local workers), a worker about to start the last pending
seed of its point also claims its next run and compiles that run's programs in a background
thread meanwhile (the runner's `prepare(config)`, see `prepare_hook`).

A worker keeps going until the sweep is done. When only other workers' runs remain it waits and
polls (`wait_for_others`), so that a run whose worker dies is picked up again; SLURM array tasks
turn this off so that finished tasks release their GPUs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import ml_collections

from sqzexplore.rundir import RESULT_FILE, read_json, write_json
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.claims import HOST, Heartbeat, owner_record, record_is_live
from sqzexplore.sweep.early_stop import MedianStopper
from sqzexplore.sweep.engine import DONE, WAIT, RunOutcome, RunTicket, SweepEngine
from sqzexplore.sweep.launch import LOCAL_WORKERS_ENV
from sqzexplore.sweep.space import SweepError

DEFAULT_RUNNER = "sqzexplore.train:train_and_evaluate"
Runner = Callable[..., dict]
RECENT_POINTS = 4  # points a worker asks for first (the trainer keeps this many compiled)


def load_runner(spec: str) -> Runner:
    """`module:function` -> the function (a SweepError naming --runner when it is not there)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SweepError(f"--runner must be 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SweepError(f"--runner {spec}: cannot import {module_name!r}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SweepError(f"--runner {spec}: {module_name} has no function {attr!r}")
    return fn


def accepts_on_eval(runner: Runner) -> bool:
    try:
        params = inspect.signature(runner).parameters
    except (TypeError, ValueError):
        return False
    return "on_eval" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


@dataclasses.dataclass
class WorkerSummary:
    worker: str
    runs: dict[str, int] = dataclasses.field(default_factory=dict)  # outcome kind -> count
    trial_ids: list[str] = dataclasses.field(default_factory=list)
    stopped_by_signal: bool = False


class _StopFlag:
    """SIGTERM / SIGINT between runs end the worker after the current step of its loop (the
    trainer handles SIGTERM itself during a run: it checkpoints and returns 'preempted')."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGTERM,):
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_worker(
    sweep_dir: sd.SweepDir,
    *,
    runner: Runner,
    worker: str,
    heartbeat_s: float = 10.0,
    stale_after_s: float = 300.0,
    wait_for_others: bool = True,
    poll_s: float = 2.0,
    max_runs: int | None = None,
    max_consecutive_skips: int = 100,
    compile_ahead: bool | None = None,
    log: Callable[[str], None] = print,
) -> WorkerSummary:
    """Run the sweep's runs until it is done (or `max_runs` runs ended here).

    `compile_ahead`: None decides by the host (`auto_compile_ahead`)."""
    engine = SweepEngine(
        sweep_dir,
        worker=worker,
        stale_after_s=stale_after_s,
        max_consecutive_skips=max_consecutive_skips,
    )
    summary = WorkerSummary(worker)
    sweep_dir.workers.mkdir(exist_ok=True)
    me = owner_record(worker)
    worker_file = sweep_dir.workers / f"{me['host']}-{me['pid']}-{me['token'][:6]}.json"
    write_json(worker_file, me)
    heartbeat = Heartbeat(heartbeat_s)
    heartbeat.add(worker_file)
    stop = _StopFlag()
    recent: list[str] = []  # points this process trained, newest first
    ahead: _Ahead | None = None
    prepare = prepare_hook(runner) if compile_ahead is not False else None
    try:
        while max_runs is None or sum(summary.runs.values()) < max_runs:
            if stop.requested:
                summary.stopped_by_signal = True
                break
            if ahead is not None:
                ticket, ahead = ahead.wait(), None
            else:
                ticket = engine.next_run(prefer=recent)
            if ticket == DONE:
                break
            if ticket == WAIT:
                if not wait_for_others:
                    break
                time.sleep(poll_s)
                continue
            heartbeat.add_claim(ticket.claim)
            recent = [ticket.point, *(p for p in recent if p != ticket.point)][:RECENT_POINTS]
            if (
                prepare is not None
                and not engine.has_free_runs(ticket.point)
                # Decided now, not at start-up, when the other local workers may not be up yet.
                and (compile_ahead or auto_compile_ahead(sweep_dir, stale_after_s))
            ):
                ahead = _Ahead.start(engine, heartbeat, prepare, log)
            try:
                outcome = execute_run(ticket, engine, runner, heartbeat, log)
            except BaseException:
                engine.finish_run(ticket, RunOutcome("interrupted"))
                raise
            finally:
                heartbeat.discard(ticket.claim.path)
            engine.finish_run(ticket, outcome)
            summary.runs[outcome.kind] = summary.runs.get(outcome.kind, 0) + 1
            summary.trial_ids.append(ticket.trial_id)
            if outcome.kind == "interrupted":
                summary.stopped_by_signal = bool(outcome.detail.get("preempted"))
                break
    finally:
        if ahead is not None:  # claimed but never started: hand it back
            reserved = ahead.wait()
            if isinstance(reserved, RunTicket):
                heartbeat.discard(reserved.claim.path)
                engine.finish_run(reserved, RunOutcome("interrupted"))
        stop.restore()
        heartbeat.stop()
        write_json(worker_file, {**me, "finished": time.time()})
    return summary


def prepare_hook(runner: Runner) -> Callable[[ml_collections.ConfigDict], Any] | None:
    """The runner's compile-ahead function `prepare(config)`: its `prepare` attribute, or for
    the default trainer the program cache's `sqzexplore.train.programs.prepare`."""
    hook = getattr(runner, "prepare", None)
    name = f"{getattr(runner, '__module__', '')}:{getattr(runner, '__qualname__', '')}"
    if hook is None and name == "sqzexplore.train.loop:train_and_evaluate":
        from sqzexplore.train import programs

        hook = programs.prepare
    return hook


def auto_compile_ahead(sweep_dir: sd.SweepDir, stale_after_s: float) -> bool:
    """Compile ahead unless trials run on the CPU and this host has no core to spare for it
    (as many live local workers as cores, or as `sqz sweep run --workers N` started: its
    children get N in `SQZ_LOCAL_WORKERS`): there it would slow the training it overlaps."""
    import jax

    if jax.default_backend() != "cpu":
        return True
    local = 0
    for path in sweep_dir.workers.glob("*.json"):
        try:
            record, mtime = read_json(path) or {}, path.stat().st_mtime
        except OSError:
            continue
        if record.get("host") == HOST and "finished" not in record:
            local += record_is_live(record, mtime, stale_after_s)
    # The launcher's count covers workers that have not registered yet (at the first run).
    with contextlib.suppress(ValueError):
        local = max(local, int(os.environ.get(LOCAL_WORKERS_ENV, "0")))
    return max(local, 1) < (os.cpu_count() or 1)


class _Ahead:
    """The next run, claimed early, its programs compiling in a background thread."""

    def __init__(self, ticket: RunTicket | str, thread: threading.Thread | None):
        self.ticket, self.thread = ticket, thread

    @classmethod
    def start(cls, engine: SweepEngine, heartbeat: Heartbeat, prepare, log) -> _Ahead | None:
        ticket = engine.next_run()
        if not isinstance(ticket, RunTicket):
            return None  # nothing to claim now; ask again after this run
        heartbeat.add_claim(ticket.claim)
        config = ml_collections.ConfigDict(ticket.record()["config"])

        def compile_next():
            try:
                prepare(config)
            except Exception as e:  # the run itself will compile (and report) it again
                log(f"[{engine.worker}] compile-ahead of {ticket.trial_id} failed: {e}")

        thread = threading.Thread(target=compile_next, name="compile-ahead", daemon=True)
        thread.start()
        log(f"[{engine.worker}] compiling {ticket.trial_id} ahead")
        return cls(ticket, thread)

    def wait(self) -> RunTicket | str:
        if self.thread is not None:
            self.thread.join()
        return self.ticket


def execute_run(
    ticket: RunTicket,
    engine: SweepEngine,
    runner: Runner,
    heartbeat: Heartbeat,
    log: Callable[[str], None] = print,
) -> RunOutcome:
    """Train one run and classify how it ended."""
    record = ticket.record()
    config = ml_collections.ConfigDict(record["config"])
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
    if lost["claim"]:
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
