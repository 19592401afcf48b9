"""The sweep engine: Optuna proposes design points; the sweep directory hands out their runs.

One Optuna trial is one design point (a dict {dotted config key: value}). Its `seeds` trainings
are runs, each a normal training workdir `trials/<point>-s<seed>/` whose full config is built
once, when the point is registered, and written to its trial.json; a worker only reads it. A run
is claimed by one worker at a time (claims.py). The Optuna trial is told once all its runs have
finished: the objectives are the means over seeds (stopped early: PRUNED; any run failed: FAIL).
Design points that break the sweep's analytic constraints, or are not a valid SqueezeNetSpec, or
repeat an earlier point, are told FAIL right away with the reason (also in skipped.jsonl) and
never train; they do not use the budget.

Every decision happens under the sweep lock, so the budget is exact and no run is handed out
twice, however many processes or machines share the sweep. Samplers are deterministic: the grid
order is the definition's seeded shuffle, and random / NSGA-II draws are seeded by (sweep seed,
trial number), so a sweep asks the same points whichever worker asks.

Crash safety (a SIGKILL may land between any two storage writes):
- a grid point is first enqueued (one write that holds the whole point), then asked, then its
  parameters are stored; a trial found half-made on restart still carries its enqueued point and
  is completed and registered, so no grid point is lost and none is asked twice;
- a random / NSGA-II proposal killed before its parameters were stored is told FAIL and does not
  count toward the budget (the sampler proposes another point);
- registration writes the trial directories before marking the Optuna trial registered, and is
  idempotent; a run whose claim is stale is handed out again and resumes from its checkpoints;
  a finished run is recognised by its files.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqzexplore.models.spec import SpecError
from sqzexplore.rundir import append_jsonl, read_json, read_result, write_json
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.claims import Claim, RunClaims
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
    claim: Claim
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
        self.claims = RunClaims(sweep_dir.claims, stale_after_s)
        self.lock = sweep_dir.lock()
        self.max_consecutive_skips = max_consecutive_skips
        self._mine: set[str] = set()  # trial ids this engine has claimed and not yet finished
        self._study = None
        grid = self.defn.sampler == "grid"
        self.distributions = {k: p.distribution(grid) for k, p in self.defn.space.items()}

    # -------------------------------------------------------------------------- optuna
    @property
    def study(self):
        if self._study is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            # The storage object is kept: its documented BaseStorage methods set attributes and
            # parameters of trials this process did not ask itself.
            self.storage = sd.open_storage(self.state.get("storage"), self.dir)
            with self.lock:
                self._study = optuna.create_study(
                    study_name=self.state["study_name"],
                    storage=self.storage,
                    directions=[o.direction for o in self.defn.objectives],
                    load_if_exists=True,
                )
            self.study_id = self.storage.get_study_id_from_name(self.state["study_name"])
        return self._study

    def _tell(self, number: int, *, values=None, state=None, attrs=None) -> None:
        import optuna

        for k, v in (attrs or {}).items():
            self.storage.set_trial_user_attr(self._storage_id(number), k, v)
        # Told through a neutral sampler: NSGA-II's after_trial needs nothing from us here.
        self.study.sampler = optuna.samplers.RandomSampler()
        self.study.tell(number, values=values, state=state, skip_if_finished=True)

    def _storage_id(self, number: int) -> int:
        _ = self.study  # opens the storage
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

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
            skips = 0
            while self._budget_left(trials) and skips < self.max_consecutive_skips:
                number = self._propose(trials)
                if number is None:
                    break
                ticket = self._register(number, claim=True)
                trials = self._trials()
                if ticket is not None:
                    return ticket
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
            ticket = self._claim_first([r for r in pending if r[1] in elsewhere])
            if ticket is not None:
                return ticket
            return WAIT if self._any(trials, "RUNNING") else DONE

    def claim_more_runs(self, ticket: RunTicket, limit: int) -> list[RunTicket]:
        """Claim up to `limit` more pending runs of `ticket`'s point (its other seeds), for a
        worker that trains them with it as one population (train/population.py)."""
        claimed: list[RunTicket] = []
        if limit < 1:
            return claimed
        with self.lock:
            for number, point, seed in self._pending(self._trials())[0]:
                if point == ticket.point and len(claimed) < limit:
                    more = self._try_claim(point, number, seed)
                    if more is not None:
                        claimed.append(more)
        return claimed

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
        with self.lock:
            return any(p == point for _, p, _ in self._pending(self._trials())[0])

    def finish_run(self, ticket: RunTicket, outcome: RunOutcome) -> None:
        """Record a run's end, release its claim and tell Optuna when its point is done."""
        with self.lock:
            workdir = ticket.workdir
            if outcome.kind == "failed":
                sd.mark(workdir, sd.FAILED_FILE, **outcome.detail)
            elif outcome.kind == "stopped" and sd.run_state(workdir) is None:
                sd.mark(workdir, sd.STOPPED_FILE, **outcome.detail)
            self.claims.release(ticket.claim)
            self._mine.discard(ticket.trial_id)
            self._finalize(self._frozen(ticket.number))

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
        import optuna

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
        import optuna

        for t in trials:
            if t.state != optuna.trial.TrialState.RUNNING:
                continue
            if ATTR_POINT not in t.user_attrs:
                self._register(t.number, claim=False)
            else:
                self._finalize(t)

    def _pending(self, trials) -> tuple[list[tuple[int, str, int]], set[str]]:
        """(number, point, seed) of every unfinished, unclaimed run of a registered point, in
        trial and seed order; and the points whose runs other workers hold live claims on."""
        import optuna

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
        import optuna

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
        storage_id = self._storage_id(number)
        self.storage.set_trial_user_attr(storage_id, ATTR_COMPLEXITY, totals)
        self.storage.set_trial_user_attr(storage_id, ATTR_POINT, key)  # last: registered
        if not claim:
            return None
        # The first seed not yet run: in a grown sweep (sweepdir.grow) earlier seeds may have
        # finished, or all of them, and then the point is told now.
        ticket = self._claim_first([(number, key, s) for s in d.seeds])
        if ticket is None:
            self._finalize(self._frozen(number))
        return ticket

    def _skip(self, number, point, params, kind, reason, *, values=None, totals=None) -> None:
        import optuna

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
        import optuna

        if frozen.state != optuna.trial.TrialState.RUNNING or not self._registered(frozen):
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
        number = frozen.number
        if sd.FAILED in states:
            failed = [p.name for p, s in zip(dirs, states, strict=True) if s == sd.FAILED]
            reason = f"run(s) failed: {', '.join(failed)}"
            self._tell(number, state=optuna.trial.TrialState.FAIL, attrs={"fail_reason": reason})
            return
        if sd.STOPPED in states:
            self._tell(number, state=optuna.trial.TrialState.PRUNED)
            return
        results = [read_result(p) or {} for p in dirs]
        values = []
        for objective in self.defn.objectives:
            per_seed = [metric(objective.metric).value(r) for r in results]
            if any(v is None or not math.isfinite(v) for v in per_seed):
                self._tell(
                    number,
                    state=optuna.trial.TrialState.FAIL,
                    attrs={"fail_reason": f"objective {objective.metric} missing in result.json"},
                )
                return
            values.append(statistics.fmean(per_seed))
        self._tell(number, values=values)
