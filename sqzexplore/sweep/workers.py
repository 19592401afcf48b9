"""A sweep worker: claim a run, train it in its own workdir, record the outcome, repeat.

The runner is injectable: any `runner(config, workdir, *, on_eval=None) -> result dict` that
honours the run-directory contract (result.json written last, resuming from its own checkpoints).
The default is the real trainer, `sqzexplore.train:train_and_evaluate`; `--runner module:function`
selects another (custom trainers, or the tests' stand-in `fake_runner:run_fake_trial`, which
exercises the sweep machinery in seconds). A worker needs only the sweep directory: each run's
full config is in its trial.json, written when its design point was registered. Training the
claimed runs and classifying how each ended is execute.py.

Compiles are shared: the worker asks first for runs of the points it trained last (a later seed
reuses the compiled programs the trainer keeps in memory, train/programs.py), and the engine
steers it away from points other workers are running (engine.next_run). With compile-ahead
(`compile_ahead`, `--compile-ahead`; by default on where trials run on an accelerator, or on a
CPU host with more cores than live local workers), a worker about to start the last pending
seed of its point also claims its next run, with the group it will train with it
(`claim_group`: more seeds, width-padded runs), and compiles exactly that group's programs in a
background thread meanwhile (the runner's `prepare(config, population=N)`, `ahead_compile`).

Populations (`population`, `--population auto|N|off`): a worker that claims a run also claims
up to N-1 other pending seeds of its point (`SweepEngine.claim_more_runs`) and trains them as
one program (`sqzexplore.train.population.train_population`); each member still writes its own
trial directory and gets its own outcome. `auto` asks `population.auto_population_size` (off on
a CPU, where it measured slower than one after another). Only the default trainer trains
populations. Slots its point's seeds leave free go to pending runs of points that differ only
in channel widths, where the padding costs less than the compile it saves by what this worker
last measured (`claim_padded`, sweep/grouping.py; `SweepEngine.claim_width_runs`): they train
as one width-padded program (train/padding.py), and the log says which points share it and why.

A worker keeps going until the sweep is done. When only other workers' runs remain it waits and
polls (`wait_for_others`), so that a run whose worker dies is picked up again; SLURM array tasks
turn this off so that finished tasks release their GPUs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import ml_collections

from sqzexplore.rundir import RESULT_FILE, read_json, write_json
from sqzexplore.sweep import grouping
from sqzexplore.sweep import latency as sweep_latency
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.claims import HOST, Heartbeat, owner_record, record_is_live
from sqzexplore.sweep.engine import DONE, WAIT, RunOutcome, RunTicket, SweepEngine
from sqzexplore.sweep.execute import Runner, execute_population, execute_run
from sqzexplore.sweep.launch import LOCAL_WORKERS_ENV
from sqzexplore.sweep.space import SweepError

DEFAULT_RUNNER = "sqzexplore.train.runner:train_and_evaluate"
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
    population: str | int = "off",
    log: Callable[[str], None] = print,
) -> WorkerSummary:
    """Run the sweep's runs until it is done (or `max_runs` runs ended here).

    `compile_ahead`: None decides by the host (`auto_compile_ahead`). `population`: 'auto',
    'off' or the most runs of one point to train as one program (`population_size`)."""
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
    size = population_size(population, runner, log, worker)
    measured: grouping.Measured | None = None  # this worker's last run's costs (padding)
    # Measured latency (sweep/latency.py): timed here before any training, or, where the points
    # are not known ahead, when registered in this thread: then no compile-ahead thread.
    ahead_safe = sweep_latency.measure_ahead(sweep_dir, engine.defn, engine.base, log)
    ahead_ok = compile_ahead is not False and ahead_safe
    prepare = prepare_hook(runner) if ahead_ok else None
    try:
        while max_runs is None or sum(summary.runs.values()) < max_runs:
            if stop.requested:
                summary.stopped_by_signal = True
                break
            if ahead is not None:
                tickets, ahead = ahead.wait(), None
            else:
                tickets = engine.next_run(prefer=recent)
                if isinstance(tickets, RunTicket):
                    heartbeat.add_claim(tickets.claim)
                    tickets = claim_group(engine, tickets, size, measured, heartbeat, log)
            if tickets == DONE:
                break
            if tickets == WAIT:
                if not wait_for_others:
                    break
                time.sleep(poll_s)
                continue
            ticket = tickets[0]
            recent = [ticket.point, *(p for p in recent if p != ticket.point)][:RECENT_POINTS]
            if (
                prepare is not None
                and not engine.has_free_runs(ticket.point)
                # Decided now, not at start-up, when the other local workers may not be up yet.
                and (compile_ahead or auto_compile_ahead(sweep_dir, stale_after_s))
            ):
                ahead = _Ahead.start(engine, heartbeat, (size, measured), prepare, log)
            try:
                if len(tickets) > 1:
                    outcomes = execute_population(tickets, engine, runner, heartbeat, log)
                else:
                    outcomes = [execute_run(ticket, engine, runner, heartbeat, log)]
            except BaseException:
                for t in tickets:
                    engine.finish_run(t, RunOutcome("interrupted"))
                raise
            finally:
                for t in tickets:
                    heartbeat.discard(t.claim.path)
            measured = _measure(tickets, outcomes) or measured
            for t, outcome in zip(tickets, outcomes, strict=True):
                engine.finish_run(t, outcome)
                summary.runs[outcome.kind] = summary.runs.get(outcome.kind, 0) + 1
                summary.trial_ids.append(t.trial_id)
            interrupted = [o for o in outcomes if o.kind == "interrupted"]
            if interrupted:
                summary.stopped_by_signal = any(o.detail.get("preempted") for o in interrupted)
                break
    finally:
        if ahead is not None:  # claimed but never started: hand them back
            for t in ahead.wait():
                heartbeat.discard(t.claim.path)
                engine.finish_run(t, RunOutcome("interrupted"))
        stop.restore()
        heartbeat.stop()
        write_json(worker_file, {**me, "finished": time.time()})
    return summary


def population_size(population: str | int, runner: Runner, log, worker: str) -> int:
    """The most runs of one point this worker trains as one program (1: one at a time), said in
    the log with the reason. A runner trains populations when it carries `train_population`
    (the default trainer does, sqzexplore/train/runner.py); `auto` then asks its
    `auto_population_size`. A SweepError for a size > 1 with a runner that has none."""
    if population in ("off", 1, "1"):
        return 1
    if getattr(runner, "train_population", None) is None:
        if population == "auto":
            return 1  # this runner trains its runs itself, one at a time
        raise SweepError(
            f"--population {population} needs a runner that trains populations (the default "
            f"trainer); --runner {getattr(runner, '__module__', '?')} trains one run at a time"
        )
    if population == "auto":
        size, why = runner.auto_population_size()
        log(f"[{worker}] population: {why}")
        return size
    log(f"[{worker}] population: up to {int(population)} seeds of a point as one program")
    return int(population)


def claim_group(
    engine: SweepEngine,
    ticket: RunTicket,
    size: int,
    measured: grouping.Measured | None,
    heartbeat: Heartbeat,
    log: Callable[[str], None] = print,
) -> list[RunTicket]:
    """The runs this worker trains with the claimed `ticket` (its first): up to `size` - 1 more
    seeds of its point, then width-padded runs of other points (`claim_padded`); their claims
    heartbeated. Both the main loop and compile-ahead decide a run's group here, so what is
    compiled ahead is the group's program."""
    tickets = [ticket, *engine.claim_more_runs(ticket, size - 1)]
    if len(tickets) < size:
        tickets += claim_padded(engine, tickets, size, measured, log)
    for more in tickets[1:]:
        heartbeat.add_claim(more.claim)
    return tickets


def claim_padded(
    engine: SweepEngine,
    tickets: list[RunTicket],
    size: int,
    measured: grouping.Measured | None,
    log: Callable[[str], None] = print,
) -> list[RunTicket]:
    """Claim runs of other points to fill a population of `size` with `tickets`, padded to
    common widths, where `grouping.pays`; logs each point considered and why."""
    group = [t.record()["config"] for t in tickets]
    said: set[str] = set()

    def accept(record: dict) -> bool:
        ok, why = grouping.pays(group, record["config"], measured)
        if record["point"] not in said:
            said.add(record["point"])
            verdict = "padded into its program" if ok else "not padded"
            log(f"[{engine.worker}] {tickets[0].point}: {record['point']} {verdict}: {why}")
        if ok:
            group.append(record["config"])
        return ok

    return engine.claim_width_runs(tickets[0], size - len(tickets), accept)


def _measure(tickets: list[RunTicket], outcomes: list) -> grouping.Measured | None:
    """The costs of the program that just trained `tickets` (for `claim_padded`)."""
    for t, outcome in zip(tickets, outcomes, strict=True):
        if outcome.kind != "complete":
            continue
        configs = [x.record()["config"] for x in tickets]
        macs = len(tickets) * grouping.group_macs(configs)  # the program computes them all
        return grouping.Measured.from_result(read_json(t.workdir / RESULT_FILE), macs)
    return None


def prepare_hook(
    runner: Runner, population: int = 1
) -> Callable[[ml_collections.ConfigDict], Any] | None:
    """The runner's compile-ahead function, `runner.prepare(config)` (of a population of
    `population` members when that is more than 1), or None if the runner has none.

    A runner offers compile-ahead by carrying the attribute; the default trainer carries the
    program cache's `sqzexplore.train.programs.prepare` (sqzexplore/train/runner.py).
    """
    hook = getattr(runner, "prepare", None)
    if hook is not None and population > 1:
        return lambda config: hook(config, population=population)
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
    """The next run's group, claimed early (`claim_group`), its programs compiling in a
    background thread: exactly the programs the group trains with (`ahead_compile`)."""

    def __init__(self, tickets: list[RunTicket], thread: threading.Thread | None):
        self.tickets, self.thread = tickets, thread

    @classmethod
    def start(
        cls, engine: SweepEngine, heartbeat: Heartbeat, group: tuple, prepare, log
    ) -> _Ahead | None:
        """Claim the next run and its group (`group`: claim_group's size and measured costs)."""
        ticket = engine.next_run()
        if not isinstance(ticket, RunTicket):
            return None  # nothing to claim now; ask again after this run
        heartbeat.add_claim(ticket.claim)
        tickets = claim_group(engine, ticket, *group, heartbeat, log)
        compile_next = ahead_compile(prepare, tickets, log, engine.worker)
        if compile_next is None:
            return cls(tickets, None)
        thread = threading.Thread(target=compile_next, name="compile-ahead", daemon=True)
        thread.start()
        return cls(tickets, thread)

    def wait(self) -> list[RunTicket]:
        if self.thread is not None:
            self.thread.join()
        return self.tickets


def ahead_compile(
    prepare: Callable, tickets: list[RunTicket], log: Callable[[str], None], worker: str
) -> Callable[[], None] | None:
    """The compile-ahead of the claimed group `tickets`, or None where none is exact. The run
    trains a lone run's programs for one ticket (execute_run), a population program of
    len(tickets) members for several seeds of one point (execute_population), with the
    lowering and steps per dispatch `prepare` derives from the config as the driver does. A
    width-padded group (several points) trains programs built for that run alone (uncached,
    train/padding.py): compiling any ahead would be wasted, so none is."""
    names = ", ".join(t.trial_id for t in tickets)
    if len({t.point for t in tickets}) > 1:
        log(f"[{worker}] claimed {names} ahead; no compile-ahead for a width-padded group")
        return None
    config = ml_collections.ConfigDict(tickets[0].record()["config"])
    members = len(tickets)

    def compile_next():
        try:
            prepare(config) if members == 1 else prepare(config, population=members)
        except Exception as e:  # the run itself will compile (and report) it again
            log(f"[{worker}] compile-ahead of {names} failed: {e}")

    what = f"a population of {members}" if members > 1 else "one run"
    log(f"[{worker}] compiling {names} ahead ({what})")
    return compile_next
