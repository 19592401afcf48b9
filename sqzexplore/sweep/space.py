"""Sweep definitions: a base experiment, a search space over config fields, objectives, a budget.

A sweep file (`sweeps/<name>.py`) has a docstring saying what question the sweep answers and

    def get_sweep(arg: str | None = None) -> SweepDefinition

(`arg` is the `--arg` string, parsed with `config.parse_arg`). Only `name`, `space` and
`objectives` are required:

    name         the sweep's name (wandb group, default workdir runs/sweeps/<name>)
    base         Experiment(path, arg={...}): an experiment file and its arguments as a dict
                 (default: `config.base_config()`); see `find_experiment` for relative paths
    fixed        {dotted config key: value} applied to every trial ({"model.pct_3x3": 0.5})
    space        {dotted config key: parameter}: `categorical(...)`, `uniform(lo, hi)`,
                 `log_uniform(lo, hi)`, `int_range(lo, hi)` (sqzexplore.sweep.params)
    objectives   ((metric, 'maximize' | 'minimize'), ...) with metric names from `metric_table`
    sampler      'grid' (every point once, in an order seeded by `seed`) | 'random' | 'nsga2'
    n_trials     design points to train (grid: 0 = the whole grid)
    seeds        trainings per design point: a count, or explicit config.seed values
    constraints  {max_params | max_macs | max_mib: limit}, checked analytically before training;
                 max_latency_ms: measured (sweep/latency.py), also before training
    early_stop   EarlyStop('median', n_startup_points, n_warmup_evals): stop a run whose eval
                 top-1 is below the median of finished runs at the same step
    seed         the sampler's seed (grid order, random and NSGA-II draws)
    population_size  NSGA-II population
    tags         extra wandb tags for every trial

Constructing a SweepDefinition validates it and names the offending field;
`sweepfile.check_against_config` then checks every dotted key and value against the base
experiment's config, so a typo fails before any trial.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from sqzexplore.config import ConfigError, base_config, load_config_file
from sqzexplore.sweep.metric_table import METRICS
from sqzexplore.sweep.params import (  # noqa: F401 - the builders sweep files import from here
    Categorical,
    Param,
    Range,
    SweepError,
    categorical,
    freeze,
    int_range,
    jsonable,
    label,
    log_uniform,
    param_from_dict,
    uniform,
)

SAMPLERS = ("grid", "random", "nsga2")
DIRECTIONS = ("maximize", "minimize")
EARLY_STOP_RULES = ("none", "median")
CONSTRAINTS = ("max_params", "max_macs", "max_mib", "max_latency_ms")


@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str
    direction: str

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


@dataclasses.dataclass(frozen=True)
class EarlyStop:
    """Stop hopeless runs: 'median' stops a run whose eval top-1 is below the median of finished
    runs of at least `n_startup_points` other points at the same step (after `n_warmup_evals`)."""

    rule: str = "none"
    n_startup_points: int = 0
    n_warmup_evals: int = 0

    def validate(self) -> None:
        if self.rule not in EARLY_STOP_RULES:
            raise SweepError(
                f"sweep early_stop.rule must be one of {EARLY_STOP_RULES}, got {self.rule!r}"
            )
        for field in ("n_startup_points", "n_warmup_evals"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise SweepError(f"sweep early_stop.{field} must be an integer >= 0, got {v!r}")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A base experiment: an experiment file (None: `config.base_config()`) and its arguments.

    A relative `path` is looked up in the working directory, then in the directory of the sweep
    file (`near`, set by `load_sweep`) and the one above it, so `sweeps/x.py` finds
    `experiments/...` of its own checkout wherever the package is installed."""

    path: str | None = None
    arg: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    near: str | None = dataclasses.field(default=None, compare=False, repr=False)

    def validate(self) -> None:
        if self.path is not None and not isinstance(self.path, str):
            raise SweepError(f"sweep base.path must be a path or None, got {self.path!r}")
        if not isinstance(self.arg, Mapping):
            raise SweepError(f"sweep base.arg must be a dict, got {self.arg!r}")
        for k, v in self.arg.items():
            if not re.fullmatch(r"[A-Za-z_]\w*", str(k)) or not (
                isinstance(v, (bool, int, float)) or (isinstance(v, str) and "," not in v)
            ):
                raise SweepError(
                    f"sweep base.arg {k}={v!r}: keys must be words and values numbers, booleans "
                    "or strings without commas"
                )

    def arg_string(self) -> str | None:
        """The `get_config(arg)` string of the experiment file (its own, command-line format)."""
        items = [k if v is True else f"{k}={v}" for k, v in sorted(self.arg.items())]
        return ",".join(items) or None

    def resolve(self) -> str:
        return find_experiment(self.path, self.near)

    def load(self) -> ml_collections.ConfigDict:
        if self.path is None:
            return base_config()
        try:
            return load_config_file(self.resolve(), self.arg_string())
        except (ConfigError, SyntaxError) as e:
            raise SweepError(f"sweep base experiment {self.path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "arg": dict(self.arg)}


@dataclasses.dataclass(frozen=True)
class SweepDefinition:
    """A validated sweep (see the module docstring for the fields)."""

    name: str
    space: Mapping[str, Param]
    objectives: tuple[Objective, ...]
    base: Experiment = Experiment()
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sampler: str = "grid"
    n_trials: int = 0
    seeds: tuple[int, ...] | int = 1
    constraints: Mapping[str, float] = dataclasses.field(default_factory=dict)
    early_stop: EarlyStop = EarlyStop()
    seed: int = 0
    population_size: int | None = None
    tags: tuple[str, ...] = ()
    question: str = dataclasses.field(default="", compare=False)

    def __post_init__(self):
        def put(field: str, value: Any) -> None:
            object.__setattr__(self, field, value)

        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", self.name):
            raise SweepError(
                f"sweep name must be a non-empty word ([A-Za-z0-9_.-]), got {self.name!r}"
            )
        if not isinstance(self.base, Experiment):
            raise SweepError(f"sweep base must be Experiment(path, arg={{...}}), got {self.base!r}")
        self.base.validate()
        if not isinstance(self.fixed, Mapping):
            raise SweepError(
                f"sweep fixed must map dotted config keys to values, got {self.fixed!r}"
            )
        put("fixed", {k: freeze(v) for k, v in sorted(self.fixed.items())})
        if not isinstance(self.space, Mapping) or not self.space:
            raise SweepError(
                "sweep space is empty: give at least one dotted config key, e.g. "
                "space={'model.squeeze_ratio': categorical(0.125, 0.25)}"
            )
        for key, param in self.space.items():
            _check_key(key, "sweep space")
            if not isinstance(param, (Categorical, Range)):
                raise SweepError(
                    f"sweep space {key}: expected categorical(...), uniform(...), "
                    f"log_uniform(...) or int_range(...), got {param!r}"
                )
            param.validate(f"sweep space {key}")
        put("space", dict(sorted(self.space.items())))
        for key in self.fixed:
            _check_key(key, "sweep fixed")
        both = sorted(set(self.fixed) & set(self.space))
        if both:
            raise SweepError(
                f"sweep keys {both} are both fixed and searched; keep them in one place"
            )
        put("objectives", _objectives(self.objectives))
        if self.sampler not in SAMPLERS:
            raise SweepError(f"sweep sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not _is_count(self.n_trials, 0):
            raise SweepError(f"sweep n_trials must be an integer >= 0, got {self.n_trials!r}")
        if self.sampler != "grid" and self.n_trials < 1:
            raise SweepError(f"sweep n_trials must be >= 1 for the {self.sampler!r} sampler")
        put("seeds", _seeds(self.seeds))
        put("constraints", _constraints(self.constraints))
        if isinstance(self.early_stop, str):
            put("early_stop", EarlyStop(self.early_stop))
        if not isinstance(self.early_stop, EarlyStop):
            raise SweepError(f"sweep early_stop must be EarlyStop(...), got {self.early_stop!r}")
        self.early_stop.validate()
        if not _is_count(self.seed, 0):
            raise SweepError(f"sweep seed must be an integer >= 0, got {self.seed!r}")
        if self.population_size is None:
            put("population_size", max(4, min(50, self.n_trials // 4 or 4)))
        if not _is_count(self.population_size, 2):
            raise SweepError(
                f"sweep population_size must be an integer >= 2, got {self.population_size!r}"
            )
        if isinstance(self.tags, str) or not all(isinstance(t, str) for t in self.tags):
            raise SweepError(f"sweep tags must be a list of strings, got {self.tags!r}")
        put("tags", tuple(self.tags))
        put("question", (self.question or "").strip())
        if self.sampler == "grid":
            _ = self.grid_size  # raises SweepError for a continuous range without num/step

    # ------------------------------------------------------------------ derived
    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.space)

    def param(self, key: str) -> Param:
        return self.space[key]

    def _values(self, key: str) -> tuple[Any, ...]:
        return self.space[key].grid_values(f"sweep space {key}")

    @property
    def grid_size(self) -> int:
        return math.prod(len(self._values(k)) for k in self.keys)

    @property
    def finite_size(self) -> int | None:
        """Number of distinct design points when every parameter is discrete, else None."""
        for p in self.space.values():
            if isinstance(p, Range) and (p.log if p.kind == "int" else p.step is None):
                return None
        return self.grid_size

    @property
    def planned_points(self) -> int:
        """Design points the budget allows (before constraint rejections)."""
        if self.sampler == "grid":
            return min(self.n_trials, self.grid_size) if self.n_trials else self.grid_size
        return self.n_trials

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid point, in the order the sweep trains them (shuffled by `seed`)."""
        points = [{}]
        for key in self.keys:
            points = [{**p, key: v} for p in points for v in self._values(key)]
        random.Random(self.seed).shuffle(points)
        return points

    def with_source(self, path: str, question: str) -> SweepDefinition:
        base = dataclasses.replace(self.base, near=self.base.near or path)
        return dataclasses.replace(self, base=base, question=question)

    # ------------------------------------------------------------------ JSON form (sweep.json)
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base.to_dict(),
            "fixed": {k: jsonable(v) for k, v in self.fixed.items()},
            "space": {k: p.to_dict() for k, p in self.space.items()},
            "objectives": [[o.metric, o.direction] for o in self.objectives],
            "sampler": self.sampler,
            "n_trials": self.n_trials,
            "seeds": list(self.seeds),
            "constraints": dict(self.constraints),
            "early_stop": dataclasses.asdict(self.early_stop),
            "seed": self.seed,
            "population_size": self.population_size,
            "tags": list(self.tags),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], question: str = "") -> SweepDefinition:
        d = dict(d)
        d["base"] = Experiment(**d.get("base", {}))
        d["space"] = {k: param_from_dict(v) for k, v in d["space"].items()}
        d["early_stop"] = EarlyStop(**d.get("early_stop", {}))
        return cls(**d, question=question)


def _check_key(key: Any, where: str) -> None:
    dotted = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+" if where == "sweep space" else r"[A-Za-z_][\w.]*"
    if not isinstance(key, str) or not re.fullmatch(dotted, key):
        raise SweepError(
            f"{where} key {key!r} must be a dotted config path such as 'model.squeeze_ratio'"
        )


def _is_count(v: Any, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _objectives(raw: Any) -> tuple[Objective, ...]:
    if not raw:
        raise SweepError(
            "sweep objectives are empty: give e.g. (('final.top1', 'maximize'), "
            "('complexity.params', 'minimize'))"
        )
    out = []
    for item in raw:
        if isinstance(item, Objective):
            item = (item.metric, item.direction)
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise SweepError(f"sweep objective must be (metric, direction), got {item!r}")
        name, direction = item
        if name not in METRICS:
            close = difflib.get_close_matches(str(name), METRICS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SweepError(
                f"sweep objective metric {name!r} is unknown{hint}; known: {', '.join(METRICS)}"
            )
        if direction not in DIRECTIONS:
            raise SweepError(
                f"sweep objective {name!r}: direction must be 'maximize' or 'minimize', "
                f"got {direction!r}"
            )
        out.append(Objective(name, direction))
    names = [o.metric for o in out]
    if len(set(names)) != len(names):
        raise SweepError(f"sweep objectives repeat a metric: {names}")
    return tuple(out)


def _seeds(seeds: Any) -> tuple[int, ...]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise SweepError(f"sweep seeds must be >= 1, got {seeds}")
        return tuple(range(seeds))
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise SweepError(f"sweep seeds must be a count >= 1 or a list of ints, got {seeds!r}")
    seeds = tuple(seeds)
    if not seeds or not all(_is_count(s, 0) for s in seeds):
        raise SweepError(f"sweep seeds must be a non-empty list of ints >= 0, got {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"sweep seeds repeat: {list(seeds)}")
    return seeds


def _constraints(raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise SweepError(f"sweep constraints must be a dict of {CONSTRAINTS}, got {raw!r}")
    bad = sorted(set(raw) - set(CONSTRAINTS))
    if bad:
        raise SweepError(f"unknown sweep constraint(s) {bad}; allowed: {', '.join(CONSTRAINTS)}")
    out = {}
    for k in CONSTRAINTS:
        v = raw.get(k)
        if v is None:
            continue
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf):
            raise SweepError(f"sweep constraints.{k} must be a positive number, got {v!r}")
        out[k] = float(v)
    return out


# ------------------------------------------------------------------------------ constraints
def constraint_violations(totals: dict[str, Any], constraints: dict[str, float]) -> list[str]:
    """Human-readable reasons a design point breaks the sweep's size limits (the measured
    latency limit is sweep/latency.py's)."""
    field = {"max_params": "params", "max_macs": "macs", "max_mib": "fp32_mib"}
    out = []
    for name, limit in constraints.items():
        if name not in field:
            continue
        value = totals[field[name]]
        if value > limit:
            out.append(f"{field[name]} {_number(value)} > {name} {_number(limit)}")
    return out


def _number(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:.4g}"


# ------------------------------------------------------------------------------ files
def find_experiment(path: str, near: str | None = None) -> str:
    """An experiment file: `path` as given (absolute, or relative to the working directory),
    else relative to the directory of `near` (a sweep file) or the directory above it."""
    candidates = [Path(path)]
    if near and not os.path.isabs(path):
        here = Path(near).resolve().parent
        candidates += [here / path, here.parent / path]
    for c in candidates:
        if c.is_file():
            return str(c)
    looked = ", ".join(dict.fromkeys(str(c.parent.resolve()) for c in candidates))
    raise SweepError(f"base experiment {path!r} does not exist (looked in {looked})")


# ------------------------------------------------------------------------------ identity
def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, tuples as lists) used for ids and fingerprints."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def fingerprint(defn: SweepDefinition, config: ml_collections.ConfigDict) -> str:
    """Hash of everything that decides what the trials compute: the definition (not its
    docstring) and the resolved base config. Stored in sweep.json to refuse edited sweeps."""
    payload = {"sweep": defn.to_dict(), "base_config": config_json(config)}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def point_key(point: Mapping[str, Any]) -> str:
    """A short stable id of a design point (the same values give the same id everywhere)."""
    as_json = {k: jsonable(v) for k, v in point.items()}
    return "p" + hashlib.sha1(canonical_json(as_json).encode()).hexdigest()[:10]


def trial_id(point: str, seed: int) -> str:
    """The run directory name of one training of a design point: trials/<point>-s<seed>."""
    return f"{point}-s{seed}"


def design_labels(defn: SweepDefinition, point: Mapping[str, Any]) -> dict[str, Any]:
    """The design point as display values (tuples as 'a,b,c'), keyed by dotted config key."""
    return {k: label(point[k]) for k in defn.keys if k in point}
