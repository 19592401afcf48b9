"""The sweep engine: Optuna proposes design points; the sweep directory hands out their runs.

One Optuna trial is one design point (a set of config overrides). Its `seeds` trainings are runs,
each a normal training workdir `trials/<point>-s<seed>/`, claimed by one worker at a time
(claims.py). The Optuna trial is told once all its runs have finished: the objectives are the
means over seeds (pruned: PRUNED; any run failed: FAIL). Design points that break the sweep's
analytic constraints, or are not a valid SqueezeNetSpec, or repeat an earlier point, are told FAIL
right away with the reason (also in skipped.jsonl) and never train; they do not use the budget.

Every decision happens under the sweep lock, so the budget is exact and no run is handed out
twice, however many processes or machines share the sweep. Samplers are deterministic: the grid
order comes from the sweep seed, and random / NSGA-II draws are seeded by (sweep seed, trial
number), so a sweep asks the same points whichever worker asks.

Crash safety: a trial's registration is idempotent (an Optuna trial left RUNNING without its
registration by a kill is registered on the next call); a run whose claim is stale is handed out
again and resumes from its own checkpoints; a finished run is recognised by its files.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from pathlib import Path
from typing import Any

import ml_collections

from sqzexplore.config import ConfigError, apply_overrides, spec_from_config
from sqzexplore.models.spec import SpecError
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.claims import Claim, RunClaims, SweepLock
from sqzexplore.sweep.metric_table import metric
from sqzexplore.sweep.space import (
    SweepDefinition,
    SweepError,
    design_labels,
    param_values,
    point_key,
    trial_id,
)

WAIT = "wait"  # nothing to hand out now, but other workers' runs are in flight
DONE = "done"  # the sweep is finished (or its budget fully handed out and finished)

# Optuna user attributes of a registered design point.
ATTR_POINT = "point"
ATTR_OVERRIDES = "overrides"
ATTR_SEEDS = "seeds"
ATTR_COMPLEXITY = "complexity"
ATTR_SKIPPED = "skipped"  # reason a point was not trained
ATTR_SKIP_KIND = "skip_kind"  # constraint | invalid | duplicate | interrupted


@dataclasses.dataclass
class RunTicket:
    """One run handed to a worker."""

    trial_id: str
    point: str
    number: int  # the Optuna trial number of the design point
    seed: int
    overrides: dict[str, Any]
    claim: Claim
    workdir: Path


@dataclasses.dataclass
class RunOutcome:
    kind: str  # complete | pruned | failed | interrupted
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


def trial_config(
    base_config: ml_collections.ConfigDict,
    defn: SweepDefinition,
    overrides: dict[str, Any],
    seed: int,
    run_id: str | None = None,
) -> ml_collections.ConfigDict:
    """The training config of one run: base + design point + seed + sweep bookkeeping.

    The bookkeeping keys (wandb group/name/tags, progress, distributed) do not change what a run
    computes, so the trainer's resume check ignores them."""
    config = copy.deepcopy(base_config)
    apply_overrides(config, overrides)
    config.seed = int(seed)
    config.progress = "false"  # the sweep draws one bar over trials instead
    config.distributed.initialize = "false"  # a sweep worker is one process
    config.wandb.group = defn.name
    if run_id is not None:
        config.wandb.name = f"{defn.name}/{run_id}"
    config.wandb.tags = tuple(dict.fromkeys((*config.wandb.tags, "sweep", defn.name, *defn.tags)))
    return config


def constraint_violations(
    complexity_totals: dict[str, Any], constraints: tuple[tuple[str, float], ...]
) -> list[str]:
    """Human-readable reasons a design point breaks the sweep's size limits."""
    field = {"max_params": "params", "max_macs": "macs", "max_mib": "fp32_mib"}
    out = []
    for name, limit in constraints:
        value = complexity_totals[field[name]]
        if value > limit:
            out.append(f"{field[name]} {_number(value)} > {name} {_number(limit)}")
    return out


def _number(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:.4g}"


def analytic_complexity(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Params / MACs / MiB / activations of a config's model, without building it."""
    from sqzexplore.models.complexity import complexity

    return complexity(spec_from_config(config)).totals()


def _mix_seed(seed: int, number: int) -> int:
    # A fixed integer mix (not hash(), which is salted per process).
    return (seed * 1_000_003 + number * 7_919 + 12_345) % (2**31 - 1)


class SweepEngine:
    """The scheduling side of a sweep, used by every worker process."""

    def __init__(
        self,
        sweep_dir: sd.SweepDir,
        defn: SweepDefinition,
        base_config: ml_collections.ConfigDict,
        *,
        worker: str,
        stale_after_s: float = 300.0,
        max_consecutive_skips: int = 100,
    ):
        self.dir = sweep_dir
        self.defn = defn
        self.base_config = base_config
        self.worker = worker
        self.state = sweep_dir.state()
        self.claims = RunClaims(sweep_dir.claims, stale_after_s)
        self.lock = sweep_dir.lock()
        self.max_consecutive_skips = max_consecutive_skips
        self._study = None

    # -------------------------------------------------------------------------- optuna
    @property
    def study(self):
        if self._study is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            # The storage object is kept: its documented BaseStorage methods set user attributes
            # and look up trials by number for trials this process did not ask itself.
            self.storage = self._storage()
            with self.lock:
                self._study = optuna.create_study(
                    study_name=self.state["study_name"],
                    storage=self.storage,
                    directions=[o.direction for o in self.defn.objectives],
                    load_if_exists=True,
                )
            self.study_id = self.storage.get_study_id_from_name(self.state["study_name"])
        return self._study

    def _storage(self):
        import optuna
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        url = self.state.get("storage")
        if url:
            return optuna.storages.RDBStorage(url)
        journal = str(self.dir.journal)
        return JournalStorage(JournalFileBackend(journal, lock_obj=SweepLock(journal + ".lock")))

    def _sampler(self, number: int):
        import optuna

        d = self.defn
        if d.sampler == "grid":
            space = {p.key: list(p.grid_values()) for p in d.params}
            return optuna.samplers.GridSampler(space, seed=d.seed)
        if d.sampler == "random":
            return optuna.samplers.RandomSampler(seed=_mix_seed(d.seed, number))
        return optuna.samplers.NSGAIISampler(
            population_size=d.population_size, seed=_mix_seed(d.seed, number)
        )

    def _tell(self, number: int, *, values=None, state=None, attrs=None) -> None:
        import optuna

        study = self.study
        for k, v in (attrs or {}).items():
            self.storage.set_trial_user_attr(self._trial_id_of(number), k, v)
        # Tell through a neutral sampler: GridSampler.after_trial calls study.stop(), which only
        # works inside study.optimize.
        study.sampler = optuna.samplers.RandomSampler()
        study.tell(number, values=values, state=state, skip_if_finished=True)

    def _trial_id_of(self, number: int) -> int:
        _ = self.study  # opens the storage
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def _frozen(self, number: int):
        return self.storage.get_trial(self._trial_id_of(number))

    # -------------------------------------------------------------------------- scheduling
    def next_run(self) -> RunTicket | str:
        """Claim the next run: a pending run of a registered point, else a run of a new point.

        Returns a RunTicket, WAIT (only runs in flight elsewhere remain) or DONE."""
        with self.lock:
            trials = self._trials()
            self._repair(trials)
            trials = self._trials()
            ticket = self._claim_pending(trials)
            if ticket is not None:
                return ticket
            skips = 0
            while self._budget_left(trials) and skips < self.max_consecutive_skips:
                number = self._ask(len(trials))
                ticket = self._register(number, claim=True)
                trials = self._trials()
                if ticket is not None:
                    return ticket
                skips += 1
            if skips >= self.max_consecutive_skips:
                sd.write_json(
                    self.dir.root / "sampling_exhausted.json",
                    {
                        "time": time.time(),
                        "reason": f"{skips} consecutive proposals were invalid, over the "
                        "constraints or repeats: the search space looks exhausted",
                    },
                )
            if self._in_flight(trials):
                return WAIT
            return DONE

    def finish_run(self, ticket: RunTicket, outcome: RunOutcome) -> None:
        """Record a run's end, release its claim and tell Optuna when its point is done."""
        with self.lock:
            workdir = ticket.workdir
            if outcome.kind == "failed":
                sd.write_json(workdir / sd.FAILED_FILE, {"time": time.time(), **outcome.detail})
            elif outcome.kind == "pruned" and sd.run_state(workdir) is None:
                sd.write_json(workdir / sd.PRUNED_FILE, {"time": time.time(), **outcome.detail})
            self.claims.release(ticket.claim)
            self._finalize(self._frozen(ticket.number))

    def _trials(self):
        return self.study.get_trials(deepcopy=False)

    def _registered(self, t) -> bool:
        return ATTR_POINT in t.user_attrs and ATTR_SKIPPED not in t.user_attrs

    def _budget_left(self, trials) -> bool:
        if (self.dir.root / "sampling_exhausted.json").exists():
            return False
        d = self.defn
        if d.sampler == "grid" and len(trials) >= d.grid_size:
            return False
        if d.finite_size is not None:
            seen = {t.user_attrs[ATTR_POINT] for t in trials if ATTR_POINT in t.user_attrs}
            if len(seen) >= d.finite_size:  # every distinct point was tried or rejected
                return False
        return sum(self._registered(t) for t in trials) < d.planned_points

    def _in_flight(self, trials) -> bool:
        import optuna

        return any(t.state == optuna.trial.TrialState.RUNNING for t in trials)

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

    def _claim_pending(self, trials) -> RunTicket | None:
        import optuna

        for t in sorted(trials, key=lambda t: t.number):
            if t.state != optuna.trial.TrialState.RUNNING or not self._registered(t):
                continue
            overrides = t.user_attrs[ATTR_OVERRIDES]
            for seed in t.user_attrs[ATTR_SEEDS]:
                tid = trial_id(t.user_attrs[ATTR_POINT], seed)
                workdir = self.dir.trial_dir(tid)
                if sd.run_state(workdir) is not None:
                    continue
                claim = self.claims.try_claim(tid, self.worker)
                if claim is not None:
                    return RunTicket(
                        tid, t.user_attrs[ATTR_POINT], t.number, seed, overrides, claim, workdir
                    )
        return None

    def _ask(self, number: int) -> int:
        study = self.study
        study.sampler = self._sampler(number)
        grid = self.defn.sampler == "grid"
        trial = study.ask({p.key: p.distribution(grid) for p in self.defn.params})
        return trial.number

    def _register(self, number: int, *, claim: bool) -> RunTicket | None:
        """Validate a proposed point and create its runs; skip (tell FAIL) a bad or repeated one."""
        import optuna

        d = self.defn
        frozen = self._frozen(number)
        try:
            overrides = param_values(d.params, frozen.params)
        except SweepError as e:
            self._skip(
                number, None, {}, "interrupted", f"proposal interrupted before sampling: {e}"
            )
            return None
        point = point_key(overrides)
        for t in self._trials():
            if t.number != number and t.user_attrs.get(ATTR_POINT) == point and self._registered(t):
                reason = f"repeats design point {point} (trial #{t.number})"
                values = t.values if t.state == optuna.trial.TrialState.COMPLETE else None
                self._skip(number, point, overrides, "duplicate", reason, values=values)
                return None
        config = trial_config(self.base_config, d, overrides, d.seeds[0])
        try:
            totals = analytic_complexity(config)
        except (SpecError, ConfigError) as e:
            self._skip(number, point, overrides, "invalid", f"invalid design point: {e}")
            return None
        violations = constraint_violations(totals, d.constraints)
        if violations:
            self._skip(number, point, overrides, "constraint", "; ".join(violations), totals=totals)
            return None
        design = design_labels(d, overrides)
        for seed in d.seeds:
            tid = trial_id(point, seed)
            workdir = self.dir.trial_dir(tid)
            workdir.mkdir(parents=True, exist_ok=True)
            record = {
                "trial_id": tid,
                "point": point,
                "number": number,
                "seed": seed,
                "overrides": overrides,
                "design": design,
                "complexity": totals,
                "sweep": d.name,
                "registered": time.time(),
            }
            if not (workdir / sd.TRIAL_FILE).exists():
                sd.write_json(workdir / sd.TRIAL_FILE, record)
        storage, storage_id = self.storage, self._trial_id_of(number)
        storage.set_trial_user_attr(storage_id, ATTR_OVERRIDES, _jsonable(overrides))
        storage.set_trial_user_attr(storage_id, ATTR_SEEDS, list(d.seeds))
        storage.set_trial_user_attr(storage_id, ATTR_COMPLEXITY, totals)
        storage.set_trial_user_attr(storage_id, ATTR_POINT, point)  # last: marks it registered
        if not claim:
            return None
        tid = trial_id(point, d.seeds[0])
        c = self.claims.try_claim(tid, self.worker)
        if c is None:
            return None
        return RunTicket(
            tid, point, number, d.seeds[0], _jsonable(overrides), c, self.dir.trial_dir(tid)
        )

    def _skip(self, number, point, overrides, kind, reason, *, values=None, totals=None) -> None:
        import optuna

        sd.append_jsonl(
            self.dir.skipped,
            {
                "number": number,
                "point": point,
                "overrides": _jsonable(overrides),
                "kind": kind,
                "reason": reason,
                "complexity": totals,
                "time": time.time(),
            },
        )
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
        dirs = [self.dir.trial_dir(trial_id(point, s)) for s in frozen.user_attrs[ATTR_SEEDS]]
        states = [sd.run_state(p) for p in dirs]
        if sd.PRUNED in states:
            # Seeds of a pruned point that have not started are not worth training.
            for p, state in zip(dirs, states, strict=True):
                if state is None and self.claims.live_owner(p.name) is None:
                    sd.write_json(p / sd.SKIPPED_FILE, {"time": time.time(), "reason": "pruned"})
            states = [sd.run_state(p) for p in dirs]
        if any(s is None for s in states):
            return
        number = frozen.number
        if sd.FAILED in states:
            failed = [p.name for p, s in zip(dirs, states, strict=True) if s == sd.FAILED]
            reason = f"run(s) failed: {', '.join(failed)}"
            self._tell(number, state=optuna.trial.TrialState.FAIL, attrs={"fail_reason": reason})
            return
        if sd.PRUNED in states:
            self._tell(number, state=optuna.trial.TrialState.PRUNED)
            return
        results = [sd.read_json(p / "result.json") or {} for p in dirs]
        values = []
        for objective in self.defn.objectives:
            m = metric(objective.metric)
            per_seed = [m.value(r) for r in results]
            if any(v is None or not math.isfinite(v) for v in per_seed):
                self._tell(
                    number,
                    state=optuna.trial.TrialState.FAIL,
                    attrs={"fail_reason": f"objective {objective.metric} missing in result.json"},
                )
                return
            values.append(statistics.fmean(per_seed))
        self._tell(number, values=values)


def _jsonable(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}
