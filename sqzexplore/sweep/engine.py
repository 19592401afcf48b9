"""The sweep engine: Optuna proposes design points; the sweep directory hands out their runs.

One Optuna trial is one design point (a dict {dotted config key: value}). Its `seeds` trainings
are runs, each a normal training workdir `trials/<point>-s<seed>/` whose full config is built
once, when the point is registered, and written to its trial.json; a worker only reads it. A run
is claimed by one worker at a time (claims.py). The Optuna trial is told once all its runs have
finished: the objectives are the means over seeds (stopped early: PRUNED; any run failed: FAIL).
Design points that break the sweep's analytic constraints, or are not a valid SqueezeNetSpec, or
repeat an earlier point, are told FAIL right away with the reason (also in skipped.jsonl) and
never train; they do not use the budget.

Who decides depends on the storage. With the journal file (and SQLite) every decision happens
under the sweep directory's flock (claims.py): one machine, or a filesystem whose flock all nodes
share. With a server database (`--storage postgresql://...`) the database decides and no file lock
is taken (dbclaims.py): runs are rows claimed by conditional UPDATEs, a run's outcome and values
go into its row, a point is told under a lock of its rows, and proposals (ask + register) hold
the sweep row's lock; claiming an already registered run takes no sweep-wide lock. Either way the
budget is exact and no run is handed out twice, however many processes or machines share the
sweep. Samplers are deterministic: the grid order is the definition's seeded shuffle, and random
/ NSGA-II draws are seeded by (sweep seed, trial number), so a sweep asks the same points
whichever worker asks.

Crash safety (a SIGKILL may land between any two storage writes):
- a grid point is first enqueued (one write that holds the whole point), then asked, then its
  parameters are stored; a trial found half-made on restart still carries its enqueued point and
  is completed and registered, so no grid point is lost and none is asked twice;
- a random / NSGA-II proposal killed before its parameters were stored is told FAIL and does not
  count toward the budget (the sampler proposes another point);
- registration writes the trial directories before marking the Optuna trial registered, and is
  idempotent (with a database: dirs, then the run rows, then the mark); a run whose claim is
  stale is handed out again and resumes from its checkpoints; a finished run is recognised by its
  files (with a database: when it is claimed again, if its row was not updated before a kill).

Optuna is imported at module level: it costs ~0.3 s (measured: `python -c "import optuna"`,
2-core AMD EPYC CPU VM, loaded by concurrent work), and every process that builds an engine uses
it anyway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from sqzexplore.models.spec import SpecError
from sqzexplore.rundir import append_jsonl, read_json, read_result, write_json
from sqzexplore.sweep import dbclaims, study_view
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.claims import (
    ALTERNATIVE,
    HOST,
    Claim,
    LockUnsupportedError,
    RunClaims,
    node_local_flock,
    record_is_live,
)
from sqzexplore.sweep.dbclaims import DbClaim, DbRuns
from sqzexplore.sweep.metric_table import metric
from sqzexplore.sweep.params import jsonable
from sqzexplore.sweep.runconfig import analytic_complexity, trial_config
from sqzexplore.sweep.space import (
    constraint_violations,
    design_labels,
    point_key,
    trial_id,
)

WAIT = "wait"  # nothing to hand out now, but other workers' runs are in flight
DONE = "done"  # the sweep is finished (or its budget fully handed out and finished)

# Optuna user attributes of a design point.
ATTR_POINT = "point"  # set last by registration: marks the trial registered (or skipped)
ATTR_COMPLEXITY = "complexity"
ATTR_SKIPPED = "skipped"  # reason a point was not trained
ATTR_SKIP_KIND = "skip_kind"  # constraint | invalid | duplicate | interrupted
# Optuna's own system attribute holding an enqueued trial's parameters (Study.enqueue_trial).
FIXED_PARAMS = "fixed_params"


@dataclasses.dataclass
class RunTicket:
    """One run handed to a worker."""

    trial_id: str
    point: str
    number: int  # the Optuna trial number of the design point
    seed: int
    claim: Claim | DbClaim
    workdir: Path

    def record(self) -> dict[str, Any]:
        return read_json(self.workdir / sd.TRIAL_FILE)  # design point, seed and full config


@dataclasses.dataclass
class RunOutcome:
    kind: str  # complete | stopped | failed | interrupted
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


def _mix_seed(seed: int, number: int) -> int:
    # A fixed integer mix (not hash(), which is salted per process).
    return (seed * 1_000_003 + number * 7_919 + 12_345) % (2**31 - 1)


class SweepEngine:
    """The scheduling side of a sweep, used by every worker process."""

    def __init__(
        self,
        sweep_dir: sd.SweepDir,
        *,
        worker: str,
        stale_after_s: float = 300.0,
        max_consecutive_skips: int = 100,
    ):
        self.dir = sweep_dir
        self.state = sweep_dir.state()
        self.defn = sweep_dir.definition()
        self.base = self.state["base_config"]
        self.worker = worker
        self.stale_after_s = stale_after_s
        self.max_consecutive_skips = max_consecutive_skips
        self._mine: set[str] = set()  # trial ids this engine has claimed and not yet finished
        self._spent = False  # database: the budget was seen fully handed out
        self._ids: dict[int, int] = {}  # Optuna trial number -> storage id
        self._study = None
        grid = self.defn.sampler == "grid"
        self.distributions = {k: p.distribution(grid) for k, p in self.defn.space.items()}
        url = self.state.get("storage")
        self.db: DbRuns | None = None
        if dbclaims.coordinates_in_db(url):
            self.db = DbRuns(url, self.state["study_name"], sweep_dir.claims, stale_after_s)
        else:
            self.claims = RunClaims(sweep_dir.claims, stale_after_s)
            self.lock = sweep_dir.lock()
            self._check_flock_shared()

    def _check_flock_shared(self) -> None:
        """Refuse a sweep used from several hosts on a filesystem whose flock is node-local."""
        reason = node_local_flock(self.dir.root)
        if reason is None:
            return
        hosts = {self.state.get("created_on"), HOST}
        for path in self.dir.workers.glob("*.json"):
            record = read_json(path) or {}
            with contextlib.suppress(OSError):
                if "finished" not in record and record_is_live(
                    record, path.stat().st_mtime, self.stale_after_s
                ):
                    hosts.add(record.get("host"))
        hosts.discard(None)
        if len(hosts) > 1:
            raise LockUnsupportedError(
                f"{reason}: its flock is local to each machine, and this sweep is used from "
                f"{', '.join(sorted(hosts))}, so workers on different machines could run the same "
                f"trial; {ALTERNATIVE}"
            )

    def _decisions(self):
        """The lock every decision holds: the sweep flock, or (database) none."""
        return self.lock if self.db is None else contextlib.nullcontext()

    def _proposals(self):
        """The lock a proposal holds: the sweep flock (reentrant), or the sweep row's lock."""
        return self.lock if self.db is None else self.db.proposal_lock()

    # -------------------------------------------------------------------------- optuna
    @property
    def study(self):
        if self._study is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            # The storage object is kept: its documented BaseStorage methods set attributes and
            # parameters of trials this process did not ask itself.
            self.storage = sd.open_storage(self.state.get("storage"), self.dir)
            # A database resolves concurrent creations itself (unique study name: the losers
            # load the winner's study).
            with self._decisions():
                self._study = optuna.create_study(
                    study_name=self.state["study_name"],
                    storage=self.storage,
                    directions=[o.direction for o in self.defn.objectives],
                    load_if_exists=True,
                )
            if self.db is not None:
                self.db.create()
            self.study_id = self.storage.get_study_id_from_name(self.state["study_name"])
        return self._study

    def _tell(self, number: int, *, values=None, state=None, attrs=None) -> None:
        for k, v in (attrs or {}).items():
            self.storage.set_trial_user_attr(self._storage_id(number), k, v)
        # Told through a neutral sampler: NSGA-II's after_trial needs nothing from us here.
        self.study.sampler = optuna.samplers.RandomSampler()
        self.study.tell(number, values=values, state=state, skip_if_finished=True)

    def _storage_id(self, number: int) -> int:
        if number not in self._ids:  # a trial's number and id never change
            _ = self.study  # opens the storage
            self._ids[number] = self.storage.get_trial_id_from_study_id_trial_number(
                self.study_id, number
            )
        return self._ids[number]

    def _frozen(self, number: int):
        return self.storage.get_trial(self._storage_id(number))

    def _trials(self):
        return self.study.get_trials(deepcopy=False)

    # -------------------------------------------------------------------------- scheduling
    def next_run(self, prefer: Sequence[str] = ()) -> RunTicket | str:
        """Claim the next run, sharing compiles: a pending run of a point in `prefer` (points
        whose compiled programs this worker holds), else of a point no other worker is running
        (so that no point compiles twice at once), else a run of a new point, else a pending
        run of a point another worker is running. Returns a RunTicket, WAIT (only runs in flight
        elsewhere remain) or DONE."""
        if self.db is not None:
            return self._next_run_db(prefer)
        with self.lock:
            self._repair(self._trials())
            trials = self._trials()
            pending, elsewhere = self._pending(trials)
            rank = {p: k for k, p in enumerate(prefer)}
            free = [r for r in pending if r[1] not in elsewhere]
            free.sort(key=lambda r: rank.get(r[1], len(rank)))  # stable: trial order otherwise
            ticket = self._claim_first(free)
            if ticket is not None:
                return ticket
            ticket = self._propose_and_register(trials)
            if ticket is not None:
                return ticket
            ticket = self._claim_first([r for r in pending if r[1] in elsewhere])
            if ticket is not None:
                return ticket
            return WAIT if self._any(self._trials(), "RUNNING") else DONE

    def _propose_and_register(self, trials) -> RunTicket | None:
        """Under the proposal lock: new design points until one has a run to claim (claimed),
        the budget is spent, or too many proposals in a row were skipped."""
        skips = 0
        while self._budget_left(trials) and skips < self.max_consecutive_skips:
            number = self._propose(trials)
            if number is None:
                break
            ticket = self._register(number, claim=True)
            if ticket is not None:
                return ticket
            trials = self._trials()
            # A point of a grown sweep whose runs all finished before is no rejection.
            skips += ATTR_SKIPPED in self._frozen(number).user_attrs
        if skips >= self.max_consecutive_skips:
            write_json(
                self.dir.exhausted,
                {
                    "time": time.time(),
                    "reason": f"{skips} consecutive proposals were invalid, over the "
                    "constraints or repeats: the search space looks exhausted",
                },
            )
        return None

    def _next_run_db(self, prefer: Sequence[str]) -> RunTicket | str:
        """next_run with a database: claim a registered run without any sweep-wide lock; only
        when there is none, take the proposal lock to repair, propose and register. Once the
        budget is spent, a worker whose only work left is in flight elsewhere waits without
        taking the lock."""
        _ = self.study  # opens the storage
        ticket, in_flight = self._claim_rows(prefer, elsewhere_too=self._spent)
        if ticket is not None:
            return ticket
        if not self._spent:
            # Read without the lock: a spent budget stays spent (see below).
            self._spent = not self._budget_left(self._trials())
        if self._spent:
            if in_flight:
                return WAIT
            if not self._any(self._trials(), "RUNNING"):
                return DONE  # every point told, and none can be added
        with self.db.proposal_lock():
            self._repair(self._trials())
            # Another worker may have registered points while this one waited for the lock.
            ticket, _ = self._claim_rows(prefer, elsewhere_too=False)
            if ticket is None:
                ticket = self._propose_and_register(self._trials())
            if ticket is not None:
                return ticket
            trials = self._trials()
            # Monotone: no worker proposes after the budget is seen spent under this lock.
            self._spent = not self._budget_left(trials)
        ticket, _ = self._claim_rows(prefer, elsewhere_too=True)
        if ticket is not None:
            return ticket
        return WAIT if self._any(trials, "RUNNING") else DONE

    def _claim_rows(self, prefer: Sequence[str], *, elsewhere_too: bool):
        """Database: claim a claimable run, in next_run's order of preference. Returns (the
        ticket or None, whether other workers hold live claims)."""
        rows, now = self.db.snapshot()
        elsewhere = {
            r.point
            for r in rows
            if r.state == dbclaims.CLAIMED
            and r.run_id not in self._mine
            and not self.db.is_stale(r, now)
        }
        pending = [r for r in rows if self.db.claimable(r, now)]
        rank = {p: k for k, p in enumerate(prefer)}
        free = sorted(
            (r for r in pending if r.point not in elsewhere),
            key=lambda r: rank.get(r.point, len(rank)),
        )
        if elsewhere_too:
            free += [r for r in pending if r.point in elsewhere]
        for row in free:
            ticket = self._try_claim_row(row, now)
            if ticket is not None:
                return ticket, bool(elsewhere)
        return None, bool(elsewhere)

    def _try_claim_row(self, row, now) -> RunTicket | None:
        claim = self.db.try_claim(row, self.worker, now)
        if claim is None:
            return None
        workdir = self.dir.trial_dir(row.run_id)
        state = sd.run_state(workdir)
        if state is not None:  # finished by its files; a kill came before its row was updated
            self.db.finish(claim, state, self._run_values(workdir, state))
            self._finalize_db(row.number)
            return None
        self._mine.add(row.run_id)
        return RunTicket(row.run_id, row.point, row.number, row.seed, claim, workdir)

    def claim_batch(self, point: str, n: int) -> list[RunTicket]:
        """Claim up to `n` unclaimed runs of the registered design point `point` (seed order)."""
        tickets: list[RunTicket] = []
        if self.db is not None:
            _ = self.study
            rows, now = self.db.snapshot()
            for row in rows:
                if len(tickets) < n and row.point == point and self.db.claimable(row, now):
                    ticket = self._try_claim_row(row, now)
                    if ticket is not None:
                        tickets.append(ticket)
            return tickets
        with self.lock:
            for number, p, seed in self._pending(self._trials())[0]:
                if len(tickets) < n and p == point:
                    ticket = self._try_claim(p, number, seed)
                    if ticket is not None:
                        tickets.append(ticket)
        return tickets

    def claim_more_runs(self, ticket: RunTicket, limit: int) -> list[RunTicket]:
        """Claim up to `limit` more pending runs of `ticket`'s point (its other seeds), for a
        worker that trains them with it as one population (train/population.py)."""
        return self.claim_batch(ticket.point, limit) if limit >= 1 else []

    def claim_width_runs(
        self, ticket: RunTicket, limit: int, accept: Callable[[dict[str, Any]], bool]
    ) -> list[RunTicket]:
        """Claim up to `limit` pending runs of other points whose trial record (trial.json)
        `accept`s, for a worker that trains them with `ticket`'s as one width-padded population
        (train/padding.py, sweep/grouping.py). While fewer are pending it registers up to
        `limit` new points; one that `accept` refuses stays pending for any worker. Points other
        workers are running are left to them (their programs are compiled there)."""
        claimed: list[RunTicket] = []
        proposed = 0
        with self.lock:
            while limit > len(claimed):
                pending, elsewhere = self._pending(self._trials())
                for number, point, seed in pending:
                    if len(claimed) >= limit or point == ticket.point or point in elsewhere:
                        continue
                    record = read_json(self.dir.trial_dir(trial_id(point, seed)) / sd.TRIAL_FILE)
                    if record is not None and accept(record):
                        more = self._try_claim(point, number, seed)
                        if more is not None:
                            claimed.append(more)
                trials = self._trials()
                if len(claimed) >= limit or proposed >= limit or not self._budget_left(trials):
                    break
                number = self._propose(trials)
                if number is None:
                    break
                self._register(number, claim=False)
                proposed += 1
        return claimed

    def has_free_runs(self, point: str) -> bool:
        """Whether `point` has unfinished runs that nobody has claimed."""
        if self.db is not None:
            rows, now = self.db.snapshot()
            return any(r.point == point and self.db.claimable(r, now) for r in rows)
        with self.lock:
            return any(p == point for _, p, _ in self._pending(self._trials())[0])

    def finish_run(self, ticket: RunTicket, outcome: RunOutcome) -> None:
        """Record a run's end, release its claim and tell Optuna when its point is done."""
        with self._decisions():
            workdir = ticket.workdir
            # With a database, a run taken over by another worker is no longer ours to mark.
            ours = self.db is None or outcome.kind == "interrupted" or ticket.claim.still_mine()
            if outcome.kind == "failed" and ours:
                sd.mark(workdir, sd.FAILED_FILE, **outcome.detail)
            elif outcome.kind == "stopped" and ours and sd.run_state(workdir) is None:
                sd.mark(workdir, sd.STOPPED_FILE, **outcome.detail)
            self._mine.discard(ticket.trial_id)
            if self.db is None:
                self.claims.release(ticket.claim)
                self._finalize(self._frozen(ticket.number))
                return
            state = None if outcome.kind == "interrupted" else sd.run_state(workdir)
            self.db.finish(ticket.claim, state, self._run_values(workdir, state))
            self._finalize_db(ticket.number)

    def _run_values(self, workdir: Path, state: str | None) -> list[float | None] | None:
        """A complete run's objective values (None for one missing or not finite)."""
        if state != sd.COMPLETE:
            return None
        result = read_result(workdir) or {}
        values = [metric(o.metric).value(result) for o in self.defn.objectives]
        return [v if v is not None and math.isfinite(v) else None for v in values]

    def _registered(self, t) -> bool:
        return ATTR_POINT in t.user_attrs and ATTR_SKIPPED not in t.user_attrs

    def _budget_left(self, trials) -> bool:
        if self.dir.exhausted.exists():
            return False
        d = self.defn
        if sum(self._registered(t) for t in trials) >= d.planned_points:
            return False
        if d.sampler == "grid":
            return self._any(trials, "WAITING") or self._next_grid_point(trials) is not None
        if d.finite_size is not None:
            seen = {t.user_attrs[ATTR_POINT] for t in trials if ATTR_POINT in t.user_attrs}
            if len(seen) >= d.finite_size:  # every distinct point was tried or rejected
                return False
        return True

    @staticmethod
    def _any(trials, state: str) -> bool:
        return any(t.state.name == state for t in trials)

    def _next_grid_point(self, trials) -> dict[str, Any] | None:
        """The first grid point (in the sweep's order) that no trial holds yet."""
        taken = set()
        for t in trials:
            point = t.user_attrs.get(ATTR_POINT)
            if point is None and FIXED_PARAMS in t.system_attrs:
                point = point_key(self._decode(t.system_attrs[FIXED_PARAMS]))
            taken.add(point)
        for point in self.defn.grid_points():
            if point_key(point) not in taken:
                return point
        return None

    def _propose(self, trials) -> int | None:
        """Create the Optuna trial of the next design point; its number (None: grid done)."""
        study = self.study
        if self.defn.sampler == "grid":
            if not self._any(trials, "WAITING"):
                point = self._next_grid_point(trials)
                if point is None:
                    return None
                # The intent, in one storage write that holds the whole point: a kill at any
                # later moment leaves a trial that still knows its point (see _point_of).
                study.enqueue_trial(self._encode(point))
            study.sampler = optuna.samplers.RandomSampler()  # the enqueued values are used
        elif self.defn.sampler == "random":
            study.sampler = optuna.samplers.RandomSampler(
                seed=_mix_seed(self.defn.seed, len(trials))
            )
        else:
            study.sampler = optuna.samplers.NSGAIISampler(
                population_size=self.defn.population_size,
                seed=_mix_seed(self.defn.seed, len(trials)),
            )
        return study.ask(self.distributions).number

    def _encode(self, point: dict[str, Any]) -> dict[str, Any]:
        return {k: self.defn.param(k).encode(v) for k, v in point.items()}

    def _decode(self, stored: dict[str, Any]) -> dict[str, Any]:
        return {k: self.defn.param(k).decode(stored[k]) for k in self.defn.keys}

    def _point_of(self, frozen) -> dict[str, Any] | None:
        """A trial's design point from its stored parameters, completing those a kill left
        unstored from its enqueued values; None when the trial never got a whole point."""
        stored = dict(frozen.params)
        fixed = frozen.system_attrs.get(FIXED_PARAMS) or {}
        missing = [k for k in self.defn.keys if k not in stored]
        if any(k not in fixed for k in missing):
            return None
        for k in missing:
            dist = self.distributions[k]
            storage_id = self._storage_id(frozen.number)
            self.storage.set_trial_param(storage_id, k, dist.to_internal_repr(fixed[k]), dist)
            stored[k] = fixed[k]
        return self._decode(stored)

    def _repair(self, trials) -> None:
        """Register RUNNING trials a killed process left unregistered; tell finished points."""
        rows: dict[int, list] = {}
        if self.db is not None:
            for row in self.db.snapshot()[0]:
                rows.setdefault(row.number, []).append(row)
        for t in trials:
            if t.state != optuna.trial.TrialState.RUNNING:
                continue
            if ATTR_POINT not in t.user_attrs:
                self._register(t.number, claim=False)
                continue
            if self.db is not None:
                mine = rows.get(t.number, [])
                if len(mine) < len(self.defn.seeds):  # a kill kept them from being added
                    self._add_rows(t.number, t.user_attrs[ATTR_POINT])
                    continue
                # Only points with nothing left to run, or a seed stopped early, can be told.
                done = [r.outcome for r in mine if r.state == dbclaims.DONE]
                if len(done) < len(mine) and sd.STOPPED not in done:
                    continue
            self._finalize(t)

    def _pending(self, trials) -> tuple[list[tuple[int, str, int]], set[str]]:
        """(number, point, seed) of every unfinished, unclaimed run of a registered point, in
        trial and seed order; and the points whose runs other workers hold live claims on."""
        live = self.claims.live_claims()
        elsewhere = {tid.rsplit("-s", 1)[0] for tid in live if tid not in self._mine}
        pending = []
        for t in sorted(trials, key=lambda t: t.number):
            if t.state != optuna.trial.TrialState.RUNNING or not self._registered(t):
                continue
            point = t.user_attrs[ATTR_POINT]
            for seed in self.defn.seeds:
                tid = trial_id(point, seed)
                if tid not in live and sd.run_state(self.dir.trial_dir(tid)) is None:
                    pending.append((t.number, point, seed))
        return pending, elsewhere

    def _claim_first(self, runs: list[tuple[int, str, int]]) -> RunTicket | None:
        for number, point, seed in runs:
            ticket = self._try_claim(point, number, seed)
            if ticket is not None:
                return ticket
        return None

    def _try_claim(self, point: str, number: int, seed: int) -> RunTicket | None:
        tid = trial_id(point, seed)
        workdir = self.dir.trial_dir(tid)
        if sd.run_state(workdir) is not None:
            return None
        claim = self.claims.try_claim(tid, self.worker)
        if claim is None:
            return None
        self._mine.add(tid)
        return RunTicket(tid, point, number, seed, claim, workdir)

    def _register(self, number: int, *, claim: bool) -> RunTicket | None:
        """Validate a proposed point and create its runs; skip (tell FAIL) a bad or repeated one."""
        d = self.defn
        point = self._point_of(self._frozen(number))
        if point is None:
            reason = "proposal interrupted before its parameters were stored"
            self._skip(number, None, {}, "interrupted", reason)
            return None
        key = point_key(point)
        for t in self._trials():
            if t.number != number and t.user_attrs.get(ATTR_POINT) == key and self._registered(t):
                reason = f"repeats design point {key} (trial #{t.number})"
                values = t.values if t.state == optuna.trial.TrialState.COMPLETE else None
                self._skip(number, key, point, "duplicate", reason, values=values)
                return None
        configs = {s: trial_config(self.base, d, point, s, trial_id(key, s)) for s in d.seeds}
        try:
            totals = analytic_complexity(configs[d.seeds[0]])
        except (SpecError, TypeError) as e:
            self._skip(number, key, point, "invalid", f"invalid design point: {e}")
            return None
        violations = constraint_violations(totals, d.constraints)
        if violations:
            self._skip(number, key, point, "constraint", "; ".join(violations), totals=totals)
            return None
        for seed, config in configs.items():
            tid = trial_id(key, seed)
            workdir = self.dir.trial_dir(tid)
            if (workdir / sd.TRIAL_FILE).exists():
                continue  # registered before a kill: the file is already whole
            workdir.mkdir(parents=True, exist_ok=True)
            record = {
                "trial_id": tid,
                "point": key,
                "number": number,
                "seed": seed,
                "params": {k: jsonable(v) for k, v in point.items()},
                "design": design_labels(d, point),
                "complexity": totals,
                "sweep": d.name,
                "registered": time.time(),
                "config": config,
            }
            write_json(workdir / sd.TRIAL_FILE, record)
        if self.db is not None:
            self._add_rows(number, key)
        storage_id = self._storage_id(number)
        self.storage.set_trial_user_attr(storage_id, ATTR_COMPLEXITY, totals)
        for name, value in study_view.size_attrs(totals).items():  # numbers for the dashboard
            self.storage.set_trial_user_attr(storage_id, name, value)
        self.storage.set_trial_user_attr(storage_id, ATTR_POINT, key)  # last: registered
        if not claim:
            return None
        if self.db is not None:
            # In a grown sweep (sweepdir.grow) earlier seeds may have finished: a row whose
            # files say finished is told and skipped (`_try_claim_row`).
            return next(iter(self.claim_batch(key, 1)), None)
        # The first seed not yet run: in a grown sweep (sweepdir.grow) earlier seeds may have
        # finished, or all of them, and then the point is told now.
        ticket = self._claim_first([(number, key, s) for s in d.seeds])
        if ticket is None:
            self._finalize(self._frozen(number))
        return ticket

    def _add_rows(self, number: int, point: str) -> None:
        seeds = list(self.defn.seeds)
        self.db.add_runs(number, point, seeds, [trial_id(point, s) for s in seeds])

    def _skip(self, number, point, params, kind, reason, *, values=None, totals=None) -> None:
        params = {k: jsonable(v) for k, v in params.items()}
        record = dict(number=number, point=point, params=params, kind=kind, reason=reason)
        append_jsonl(self.dir.skipped, {**record, "complexity": totals, "time": time.time()})
        attrs = {ATTR_SKIPPED: reason, ATTR_SKIP_KIND: kind}
        if point is not None:
            attrs[ATTR_POINT] = point
        if values is not None:
            self._tell(number, values=list(values), attrs=attrs)
        else:
            self._tell(number, state=optuna.trial.TrialState.FAIL, attrs=attrs)

    def _finalize(self, frozen) -> None:
        """Tell Optuna a registered point's outcome once all its runs have finished."""
        if frozen.state != optuna.trial.TrialState.RUNNING or not self._registered(frozen):
            return
        if self.db is not None:
            self._finalize_db(frozen.number)
            return
        point = frozen.user_attrs[ATTR_POINT]
        dirs = [self.dir.trial_dir(trial_id(point, s)) for s in self.defn.seeds]
        states = [sd.run_state(p) for p in dirs]
        if sd.STOPPED in states:
            # Seeds of a point stopped early that have not started are not worth training.
            for p, state in zip(dirs, states, strict=True):
                if state is None and self.claims.live_owner(p.name) is None:
                    sd.mark(p, sd.SKIPPED_FILE, reason="another seed of the point stopped early")
            states = [sd.run_state(p) for p in dirs]
        if any(s is None for s in states):
            return
        values = [self._run_values(p, s) for p, s in zip(dirs, states, strict=True)]
        self._tell_outcome(frozen.number, [p.name for p in dirs], states, values)

    def _finalize_db(self, number: int) -> None:
        """_finalize from the point's rows, under their lock: one worker tells it, once."""
        with self.db.point_lock(number) as (conn, rows, now):
            states = [r.outcome if r.state == dbclaims.DONE else None for r in rows]
            if len(rows) < len(self.defn.seeds) or (None in states and sd.STOPPED not in states):
                return  # runs left to train: nothing to tell yet (and no need to ask Optuna)
            frozen = self._frozen(number)  # read under the lock: told by another worker?
            if frozen.state != optuna.trial.TrialState.RUNNING or not self._registered(frozen):
                return
            if sd.STOPPED in states:
                for k, row in enumerate(rows):
                    if states[k] is None and self.db.claimable(row, now):
                        reason = "another seed of the point stopped early"
                        sd.mark(self.dir.trial_dir(row.run_id), sd.SKIPPED_FILE, reason=reason)
                        self.db.mark_done(conn, row, sd.SKIPPED)
                        states[k] = sd.SKIPPED
            if any(s is None for s in states):
                return
            values = [json.loads(r.run_values) if r.run_values else None for r in rows]
            self._tell_outcome(number, [r.run_id for r in rows], states, values)

    def _tell_outcome(self, number: int, names, states, values) -> None:
        """Tell a point whose runs all finished: FAIL, PRUNED or the means over its seeds."""
        if sd.FAILED in states:
            failed = [n for n, s in zip(names, states, strict=True) if s == sd.FAILED]
            reason = f"run(s) failed: {', '.join(failed)}"
            self._tell(number, state=optuna.trial.TrialState.FAIL, attrs={"fail_reason": reason})
            return
        if sd.STOPPED in states:
            self._tell(number, state=optuna.trial.TrialState.PRUNED)
            return
        means = []
        for k, objective in enumerate(self.defn.objectives):
            per_seed = [(v or [None] * len(self.defn.objectives))[k] for v in values]
            if any(v is None for v in per_seed):
                self._tell(
                    number,
                    state=optuna.trial.TrialState.FAIL,
                    attrs={"fail_reason": f"objective {objective.metric} missing in result.json"},
                )
                return
            means.append(statistics.fmean(per_seed))
        # In the dashboards' units (percent), with each seed's values beside: study_view.
        attrs = study_view.seed_attrs(self.defn, names, values)
        self._tell(number, values=study_view.study_values(self.defn, means), attrs=attrs)
