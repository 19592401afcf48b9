"""The Optuna side of a sweep: ask for design points, register their runs, tell their outcomes.

One Optuna trial is one design point (a dict {dotted config key: value}). Its `seeds` trainings
are runs, each a normal training workdir `trials/<point>-s<seed>/` whose full config is built
once, when the point is registered, and written to its trial.json; a worker only reads it. The
Optuna trial is told once all its runs have finished: the objectives are the means over seeds
(stopped early: PRUNED; any run failed: FAIL). Design points that break the sweep's analytic
constraints (or its measured latency limit, sweep/latency.py), or are not a valid
SqueezeNetSpec, or repeat an earlier point, are told FAIL right away with the reason (also in
skipped.jsonl) and never train; they do not use the budget. A sweep that uses latency stores
each point's measured row in its runs' trial.json, where the objectives read it.
Samplers are deterministic: the grid order is the definition's seeded shuffle, and random /
NSGA-II draws are seeded by (sweep seed, trial number), so a sweep asks the same points
whichever worker asks.

Crash safety (a SIGKILL may land between any two storage writes):
- a grid point is first enqueued (one write that holds the whole point), then asked, then its
  parameters are stored; a trial found half-made on restart still carries its enqueued point and
  is completed and registered, so no grid point is lost and none is asked twice;
- a random / NSGA-II proposal killed before its parameters were stored is told FAIL and does not
  count toward the budget (the sampler proposes another point);
- registration writes the trial directories, then the store's runs (store.add_runs), then marks
  the Optuna trial registered, and is idempotent.

Optuna is imported at module level: it costs ~0.3 s (measured: `python -c "import optuna"`,
2-core AMD EPYC CPU VM, loaded by concurrent work), and every process that builds an engine uses
it anyway.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import optuna

from sqzexplore.models.spec import SpecError
from sqzexplore.rundir import append_jsonl, read_json, read_result, write_json
from sqzexplore.sweep import latency as sweep_latency
from sqzexplore.sweep import study_view
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.metric_table import metric
from sqzexplore.sweep.params import jsonable
from sqzexplore.sweep.runconfig import analytic_complexity, trial_config
from sqzexplore.sweep.space import constraint_violations, design_labels, point_key, trial_id
from sqzexplore.sweep.store import RunStore
from sqzexplore.sweep.store_open import open_store

# Optuna user attributes of a design point.
ATTR_POINT = "point"  # set last by registration: marks the trial registered (or skipped)
ATTR_COMPLEXITY = "complexity"
ATTR_LATENCY = "latency_ms"  # the measured latency (sweep/latency.py), when the sweep uses it
ATTR_SKIPPED = "skipped"  # reason a point was not trained
ATTR_SKIP_KIND = "skip_kind"  # constraint | invalid | duplicate | interrupted
# Optuna's own system attribute holding an enqueued trial's parameters (Study.enqueue_trial).
FIXED_PARAMS = "fixed_params"
RUNNING = optuna.trial.TrialState.RUNNING


def _mix_seed(seed: int, number: int) -> int:
    # A fixed integer mix (not hash(), which is salted per process).
    return (seed * 1_000_003 + number * 7_919 + 12_345) % (2**31 - 1)


class DesignPoints:
    """A sweep's Optuna study and the registration of its design points (the engine's base)."""

    def __init__(self, sweep_dir: sd.SweepDir, *, stale_after_s: float, max_consecutive_skips):
        self.dir = sweep_dir
        self.state = sweep_dir.state()
        self.defn = sweep_dir.definition()
        self.base = self.state["base_config"]
        self.stale_after_s = stale_after_s
        self.max_consecutive_skips = max_consecutive_skips
        self._ids: dict[int, int] = {}  # Optuna trial number -> storage id
        self._study = None
        grid = self.defn.sampler == "grid"
        self.distributions = {k: p.distribution(grid) for k, p in self.defn.space.items()}
        self.store: RunStore = open_store(sweep_dir, self.state, self.defn.seeds, stale_after_s)

    # -------------------------------------------------------------------------- the study
    @property
    def study(self):
        if self._study is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            # The storage object is kept: its documented BaseStorage methods set attributes and
            # parameters of trials this process did not ask itself.
            self.storage = sd.open_storage(self.state.get("storage"), self.dir)
            # A database resolves concurrent creations itself (unique study name: the losers
            # load the winner's study).
            with self.store.decisions():
                self._study = optuna.create_study(
                    study_name=self.state["study_name"],
                    storage=self.storage,
                    directions=[o.direction for o in self.defn.objectives],
                    load_if_exists=True,
                )
            self.store.open()
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

    def _registered(self, t) -> bool:
        return ATTR_POINT in t.user_attrs and ATTR_SKIPPED not in t.user_attrs

    def _registered_points(self) -> list[tuple[int, str]]:
        """(number, point) of every registered design point not told yet, in trial order."""
        trials = sorted(self._trials(), key=lambda t: t.number)
        return [
            (t.number, t.user_attrs[ATTR_POINT])
            for t in trials
            if t.state == RUNNING and self._registered(t)
        ]

    @staticmethod
    def _any(trials, state: str) -> bool:
        return any(t.state.name == state for t in trials)

    # -------------------------------------------------------------------------- proposing
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

    def _note_exhausted(self, skips: int) -> None:
        write_json(
            self.dir.exhausted,
            {
                "time": time.time(),
                "reason": f"{skips} consecutive proposals were invalid, over the "
                "constraints or repeats: the search space looks exhausted",
            },
        )

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

    # -------------------------------------------------------------------------- registering
    def _register(self, number: int) -> str | None:
        """Validate a proposed point and create its runs: its point key, or None when it was
        skipped (told FAIL) as bad or repeated."""
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
        latency = self._latency(number, key, point, configs[d.seeds[0]], totals)
        if latency is False:
            return None
        for seed, config in configs.items():
            workdir = self.dir.trial_dir(trial_id(key, seed))
            if (workdir / sd.TRIAL_FILE).exists():
                continue  # registered before a kill: the file is already whole
            workdir.mkdir(parents=True, exist_ok=True)
            record = {
                "trial_id": trial_id(key, seed),
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
            if latency is not None:
                record["latency"] = latency
            write_json(workdir / sd.TRIAL_FILE, record)
        self.store.add_runs(number, key, d.seeds)
        storage_id = self._storage_id(number)
        self.storage.set_trial_user_attr(storage_id, ATTR_COMPLEXITY, totals)
        for name, value in study_view.size_attrs(totals).items():  # numbers for the dashboard
            self.storage.set_trial_user_attr(storage_id, name, value)
        if latency is not None:
            self.storage.set_trial_user_attr(storage_id, ATTR_LATENCY, latency["ms"])
        self.storage.set_trial_user_attr(storage_id, ATTR_POINT, key)  # last: registered
        return key

    def _latency(self, number, key, point, config, totals) -> dict | None | bool:
        """The point's measured latency row when the sweep uses latency (None when it does
        not; False when the point was skipped: over max_latency_ms, or not measurable)."""
        if not sweep_latency.wanted(self.defn):
            return None
        from sqzexplore.export.source import ExportError

        try:
            latency = sweep_latency.point_latency(self.dir, config)
        except (ExportError, RuntimeError) as e:
            reason = f"latency not measurable: {str(e).splitlines()[0]}"
            self._skip(number, key, point, "invalid", reason, totals=totals)
            return False
        over = sweep_latency.violations(latency, self.defn.constraints)
        if over:
            self._skip(number, key, point, "constraint", "; ".join(over), totals=totals)
            return False
        return latency

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

    # -------------------------------------------------------------------------- telling
    def _run_values(self, workdir: Path, state: str | None) -> list[float | None] | None:
        """A complete run's objective values (None for one missing or not finite)."""
        if state != sd.COMPLETE:
            return None
        result = read_result(workdir) or {}
        if sweep_latency.wanted(self.defn):  # measured at registration, kept in trial.json
            result["latency"] = (read_json(workdir / sd.TRIAL_FILE) or {}).get("latency")
        values = [metric(o.metric).value(result) for o in self.defn.objectives]
        return [v if v is not None and math.isfinite(v) else None for v in values]

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
