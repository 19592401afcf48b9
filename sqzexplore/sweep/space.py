"""Sweep definitions: a base experiment, a search space over config fields, objectives, a budget.

A sweep file (`sweeps/<name>.py`) has a docstring saying what question the sweep answers and

    def get_sweep(arg=None) -> ml_collections.ConfigDict

returning these fields (only `name`, `space` and `objectives` are required):

    name         the sweep's name (wandb group, default workdir runs/sweeps/<name>)
    base         experiment: path of an experiment file (None: `config.base_config()`), arg: its arg
    fixed        dotted config overrides applied to every trial (`dotted({"model.pct_3x3": 0.5})`)
    space        dotted config keys -> a parameter: `categorical(...)`, `uniform(lo, hi)`,
                 `log_uniform(lo, hi)`, `int_range(lo, hi)`
    objectives   ((metric, 'maximize' | 'minimize'), ...) with metric names from `metric_table`
    sampler      'grid' (optuna GridSampler) | 'random' | 'nsga2' (multi-objective NSGA-II)
    n_trials     design points to train (grid: 0 = the whole grid)
    seeds        trainings per design point: a count, or explicit config.seed values
    constraints  max_params, max_macs, max_mib: checked analytically before anything trains
    pruner       name 'none' | 'median' (stop a run whose eval top-1 is below the median of
                 finished runs at the same step), n_startup_points, n_warmup_evals
    seed         the sampler's seed (grid order, random and NSGA-II draws)
    population_size  NSGA-II population
    tags         extra wandb tags for every trial

Parsing validates everything and names the offending field; `check_against_config` then checks
every dotted key and value against the base experiment's config, so a typo fails before any trial.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import importlib.util
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from sqzexplore.config import ConfigError, apply_overrides, base_config, load_config_file
from sqzexplore.sweep.metric_table import METRICS

SAMPLERS = ("grid", "random", "nsga2")
DIRECTIONS = ("maximize", "minimize")
PRUNERS = ("none", "median")
PARAM_KINDS = ("categorical", "float", "int")
CONSTRAINTS = ("max_params", "max_macs", "max_mib")
SWEEP_FIELDS = (
    "name",
    "base",
    "fixed",
    "space",
    "objectives",
    "sampler",
    "n_trials",
    "seeds",
    "constraints",
    "pruner",
    "seed",
    "population_size",
    "tags",
)
REPO_ROOT = Path(__file__).resolve().parents[2]


class SweepError(ValueError):
    """An invalid sweep definition; the message names the field and what is allowed."""


# ------------------------------------------------------------------------------ builders
def categorical(*values: Any) -> dict[str, Any]:
    """A choice among `values` (numbers, strings, booleans, None or tuples of those)."""
    return {"type": "categorical", "values": list(values)}


def uniform(
    low: float, high: float, *, step: float | None = None, num: int | None = None
) -> dict[str, Any]:
    """A float in [low, high]; `step` discretises it, `num` gives the grid sampler `num` points."""
    return {"type": "float", "low": low, "high": high, "log": False, "step": step, "num": num}


def log_uniform(low: float, high: float, *, num: int | None = None) -> dict[str, Any]:
    """A float in [low, high] drawn uniformly in log space (`num` log-spaced grid points)."""
    return {"type": "float", "low": low, "high": high, "log": True, "step": None, "num": num}


def int_range(low: int, high: int, *, step: int = 1, log: bool = False) -> dict[str, Any]:
    """An integer in [low, high] (inclusive)."""
    return {"type": "int", "low": low, "high": high, "log": log, "step": step, "num": None}


def dotted(mapping: Mapping[str, Any] | None = None, **fields: Any) -> ml_collections.ConfigDict:
    """A ConfigDict whose keys may be dotted config paths (`model.squeeze_ratio`)."""
    d = dict(mapping or {})
    d.update(fields)
    return ml_collections.ConfigDict(d, allow_dotted_keys=True)


# ------------------------------------------------------------------------------ values
def value_label(value: Any) -> Any:
    """The Optuna-storable form of a value: primitives as they are, tuples as 'a,b,c'."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) if value else "(none)"
    raise TypeError(f"unsupported value {value!r} of type {type(value).__name__}")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, tuples as lists) used for ids and fingerprints."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(x: Any) -> Any:
    if isinstance(x, tuple):
        return list(x)
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _plain(x: Any) -> Any:
    """ConfigDicts, tuples and FieldReferences to plain JSON-able Python."""
    if isinstance(x, ml_collections.ConfigDict):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ------------------------------------------------------------------------------ parameters
@dataclasses.dataclass(frozen=True)
class SearchParam:
    """One dimension of the search space: a dotted config key and its values or range."""

    key: str
    kind: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    num: int | None = None

    @property
    def labels(self) -> tuple[Any, ...]:
        return tuple(value_label(v) for v in self.values)

    def grid_values(self) -> tuple[Any, ...]:
        """The values the grid sampler visits (labels for categorical parameters)."""
        if self.kind == "categorical":
            return self.labels
        if self.kind == "int":
            values = range(int(self.low), int(self.high) + 1, int(self.step or 1))
            if self.log:
                raise SweepError(
                    f"sweep space {self.key}: a log int_range cannot be a grid; "
                    "use categorical(...) with the values you want"
                )
            return tuple(values)
        if self.step is not None:
            n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            return tuple(round(self.low + i * self.step, 12) for i in range(n))
        if not self.num:
            raise SweepError(
                f"sweep space {self.key}: the grid sampler needs a finite set of values; give "
                "uniform/log_uniform a num= (or step=), or use categorical(...)"
            )
        if self.num == 1:
            return (float(self.low),)
        if self.log:
            a, b = math.log(self.low), math.log(self.high)
            return tuple(float(math.exp(a + (b - a) * i / (self.num - 1))) for i in range(self.num))
        return tuple(
            float(self.low + (self.high - self.low) * i / (self.num - 1)) for i in range(self.num)
        )

    def distribution(self, grid: bool):
        """The Optuna distribution this parameter is asked with."""
        import optuna

        if grid or self.kind == "categorical":
            return optuna.distributions.CategoricalDistribution(
                list(self.grid_values() if grid else self.labels)
            )
        if self.kind == "int":
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return optuna.distributions.FloatDistribution(
            float(self.low), float(self.high), log=self.log, step=self.step
        )

    def decode(self, stored: Any) -> Any:
        """The config value of a value stored in Optuna."""
        if self.kind == "categorical":
            for value, label in zip(self.values, self.labels, strict=True):
                if label == stored:
                    return tuple(value) if isinstance(value, list) else value
            raise SweepError(f"sweep space {self.key}: stored value {stored!r} is not a choice")
        if self.kind == "int":
            return int(stored)
        return float(stored)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": "categorical", "values": _plain(list(self.values))}
        return {
            "type": self.kind,
            "low": self.low,
            "high": self.high,
            "log": self.log,
            "step": self.step,
            "num": self.num,
        }


def parse_param(key: str, spec: Any) -> SearchParam:
    """A SearchParam from a builder dict (or a bare list of categorical values)."""
    where = f"sweep space {key}"
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", key):
        raise SweepError(
            f"sweep space key {key!r} must be a dotted config path such as 'model.squeeze_ratio'"
        )
    spec = _plain(spec)
    if isinstance(spec, list):
        spec = {"type": "categorical", "values": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise SweepError(
            f"{where}: expected categorical(...), uniform(...), log_uniform(...) or "
            f"int_range(...), got {spec!r}"
        )
    kind = spec["type"]
    if kind not in PARAM_KINDS:
        raise SweepError(f"{where}: type must be one of {PARAM_KINDS}, got {kind!r}")
    if kind == "categorical":
        values = spec.get("values") or []
        if not values:
            raise SweepError(f"{where}: categorical needs at least one value")
        values = tuple(tuple(v) if isinstance(v, list) else v for v in values)
        labels = []
        for v in values:
            try:
                labels.append(value_label(v))
            except TypeError:
                raise SweepError(
                    f"{where}: value {v!r} must be a number, string, boolean, None or a tuple "
                    "of those"
                ) from None
        dupes = {str(lab) for lab in labels if labels.count(lab) > 1}
        if dupes:
            raise SweepError(f"{where}: values repeat ({', '.join(sorted(dupes))})")
        return SearchParam(key, "categorical", values=values)
    low, high = spec.get("low"), spec.get("high")
    if not (_is_number(low) and _is_number(high)) or not low < high:
        raise SweepError(f"{where}: needs numbers low < high, got low={low!r}, high={high!r}")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise SweepError(f"{where}: a log range needs low > 0, got {low}")
    step, num = spec.get("step"), spec.get("num")
    if step is not None and (not _is_number(step) or step <= 0):
        raise SweepError(f"{where}: step must be a positive number, got {step!r}")
    if step is not None and log:
        raise SweepError(f"{where}: step and log cannot be combined")
    if num is not None and (not isinstance(num, int) or num < 1):
        raise SweepError(f"{where}: num must be an integer >= 1, got {num!r}")
    if kind == "int":
        if not all(isinstance(v, int) for v in (low, high, step or 1)):
            raise SweepError(f"{where}: int_range needs integer low, high and step")
        return SearchParam(key, "int", low=low, high=high, log=log, step=step or 1)
    return SearchParam(key, "float", low=float(low), high=float(high), log=log, step=step, num=num)


# ------------------------------------------------------------------------------ the definition
@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str
    direction: str

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


@dataclasses.dataclass(frozen=True)
class PrunerSpec:
    name: str = "none"
    n_startup_points: int = 4
    n_warmup_evals: int = 1


@dataclasses.dataclass(frozen=True)
class SweepDefinition:
    """A validated sweep: what to train, what to vary, what to optimise, how many."""

    name: str
    params: tuple[SearchParam, ...]
    objectives: tuple[Objective, ...]
    base_experiment: str | None = None
    base_arg: str | None = None
    fixed: tuple[tuple[str, Any], ...] = ()
    sampler: str = "grid"
    n_trials: int = 0
    seeds: tuple[int, ...] = (0,)
    constraints: tuple[tuple[str, float], ...] = ()
    pruner: PrunerSpec = PrunerSpec()
    seed: int = 0
    population_size: int = 8
    tags: tuple[str, ...] = ()
    question: str = ""

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.params)

    def param(self, key: str) -> SearchParam:
        for p in self.params:
            if p.key == key:
                return p
        raise KeyError(key)

    @property
    def grid_size(self) -> int:
        return math.prod(len(p.grid_values()) for p in self.params)

    @property
    def finite_size(self) -> int | None:
        """Number of distinct design points when every parameter is discrete, else None."""
        if any(p.kind == "float" and p.step is None for p in self.params):
            return None
        if any(p.kind == "int" and p.log for p in self.params):
            return None
        return (
            self.grid_size
            if self.sampler == "grid"
            else math.prod(
                len(p.grid_values()) if p.kind != "categorical" else len(p.values)
                for p in self.params
            )
        )

    @property
    def planned_points(self) -> int:
        """Design points the budget allows (before constraint rejections)."""
        if self.sampler == "grid":
            return min(self.n_trials, self.grid_size) if self.n_trials else self.grid_size
        return self.n_trials

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in sweep.json (parse_sweep(to_dict()) gives back this sweep)."""
        return {
            "name": self.name,
            "base": {"experiment": self.base_experiment, "arg": self.base_arg},
            "fixed": {k: _plain(v) for k, v in self.fixed},
            "space": {p.key: p.to_dict() for p in self.params},
            "objectives": [[o.metric, o.direction] for o in self.objectives],
            "sampler": self.sampler,
            "n_trials": self.n_trials,
            "seeds": list(self.seeds),
            "constraints": dict(self.constraints),
            "pruner": dataclasses.asdict(self.pruner),
            "seed": self.seed,
            "population_size": self.population_size,
            "tags": list(self.tags),
        }


def parse_sweep(
    d: Mapping[str, Any] | ml_collections.ConfigDict, question: str = ""
) -> SweepDefinition:
    """Validate a sweep dict (what `get_sweep` returns) into a SweepDefinition."""
    d = _plain(d)
    if not isinstance(d, dict):
        raise SweepError(f"get_sweep must return a ConfigDict or dict, got {type(d).__name__}")
    unknown = sorted(set(d) - set(SWEEP_FIELDS))
    if unknown:
        close = {u: difflib.get_close_matches(u, SWEEP_FIELDS, n=1) for u in unknown}
        hints = "".join(f" ({u!r}: did you mean {c[0]!r}?)" for u, c in close.items() if c)
        raise SweepError(
            f"unknown sweep field(s) {unknown}{hints}; allowed: {', '.join(SWEEP_FIELDS)}"
        )
    name = d.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SweepError(f"sweep name must be a non-empty word ([A-Za-z0-9_.-]), got {name!r}")

    base = d.get("base") or {}
    if not isinstance(base, dict) or set(base) - {"experiment", "arg"}:
        raise SweepError(f"sweep base must be dict(experiment=PATH, arg=ARG), got {base!r}")
    experiment, base_arg = base.get("experiment"), base.get("arg")
    if experiment is not None and not isinstance(experiment, str):
        raise SweepError(f"sweep base.experiment must be a path or None, got {experiment!r}")
    if base_arg is not None and not isinstance(base_arg, str):
        raise SweepError(f"sweep base.arg must be a string or None, got {base_arg!r}")

    fixed = d.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SweepError(f"sweep fixed must map dotted config keys to values, got {fixed!r}")

    space = d.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise SweepError(
            "sweep space is empty: give at least one dotted config key, e.g. "
            "space=dotted({'model.squeeze_ratio': categorical(0.125, 0.25)})"
        )
    params = tuple(parse_param(k, v) for k, v in sorted(space.items()))
    both = sorted(set(fixed) & set(space))
    if both:
        raise SweepError(f"sweep keys {both} are both fixed and searched; keep them in one place")

    objectives = _parse_objectives(d.get("objectives"))

    sampler = d.get("sampler", "grid")
    if sampler not in SAMPLERS:
        raise SweepError(f"sweep sampler must be one of {SAMPLERS}, got {sampler!r}")
    n_trials = d.get("n_trials", 0)
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 0:
        raise SweepError(f"sweep n_trials must be an integer >= 0, got {n_trials!r}")
    if sampler != "grid" and n_trials < 1:
        raise SweepError(f"sweep n_trials must be >= 1 for the {sampler!r} sampler")

    seeds = d.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list)):
        raise SweepError(f"sweep seeds must be a count >= 1 or a list of ints, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise SweepError(f"sweep seeds must be >= 1, got {seeds}")
        seeds = list(range(seeds))
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"sweep seeds must be a non-empty list of ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"sweep seeds repeat: {seeds}")

    constraints = d.get("constraints") or {}
    if not isinstance(constraints, dict):
        raise SweepError(f"sweep constraints must be a dict of {CONSTRAINTS}, got {constraints!r}")
    bad = sorted(set(constraints) - set(CONSTRAINTS))
    if bad:
        raise SweepError(f"unknown sweep constraint(s) {bad}; allowed: {', '.join(CONSTRAINTS)}")
    limits = []
    for k in CONSTRAINTS:
        v = constraints.get(k)
        if v is None:
            continue
        if not _is_number(v) or v <= 0:
            raise SweepError(f"sweep constraints.{k} must be a positive number, got {v!r}")
        limits.append((k, float(v)))

    pruner = _parse_pruner(d.get("pruner"))
    seed = d.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SweepError(f"sweep seed must be an integer >= 0, got {seed!r}")
    population = d.get("population_size", max(4, min(50, n_trials // 4 or 4)))
    if not isinstance(population, int) or population < 2:
        raise SweepError(f"sweep population_size must be an integer >= 2, got {population!r}")
    tags = d.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise SweepError(f"sweep tags must be a list of strings, got {tags!r}")

    defn = SweepDefinition(
        name=name,
        params=params,
        objectives=objectives,
        base_experiment=experiment,
        base_arg=base_arg,
        fixed=tuple(sorted((k, _freeze(v)) for k, v in fixed.items())),
        sampler=sampler,
        n_trials=n_trials,
        seeds=tuple(seeds),
        constraints=tuple(limits),
        pruner=pruner,
        seed=seed,
        population_size=population,
        tags=tuple(tags),
        question=question.strip(),
    )
    if sampler == "grid":
        _ = defn.grid_size  # raises SweepError for a continuous range without num/step
    return defn


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def _parse_objectives(raw: Any) -> tuple[Objective, ...]:
    if not raw:
        raise SweepError(
            "sweep objectives are empty: give e.g. (('final.top1', 'maximize'), "
            "('complexity.params', 'minimize'))"
        )
    out = []
    for item in raw:
        if isinstance(item, dict):
            item = [item.get("metric"), item.get("direction")]
        if not isinstance(item, list) or len(item) != 2:
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


def _parse_pruner(raw: Any) -> PrunerSpec:
    if raw is None or raw == "none":
        return PrunerSpec()
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise SweepError(f"sweep pruner must be 'none', 'median' or a dict, got {raw!r}")
    bad = sorted(set(raw) - {f.name for f in dataclasses.fields(PrunerSpec)})
    if bad:
        raise SweepError(
            f"unknown sweep pruner field(s) {bad}; allowed: name, n_startup_points, n_warmup_evals"
        )
    spec = PrunerSpec(**raw)
    if spec.name not in PRUNERS:
        raise SweepError(f"sweep pruner.name must be one of {PRUNERS}, got {spec.name!r}")
    for field in ("n_startup_points", "n_warmup_evals"):
        v = getattr(spec, field)
        if not isinstance(v, int) or v < 0:
            raise SweepError(f"sweep pruner.{field} must be an integer >= 0, got {v!r}")
    return spec


# ------------------------------------------------------------------------------ loading
def load_sweep(path: str, arg: str | None = None) -> SweepDefinition:
    """Import a sweep file and validate what its `get_sweep(arg)` returns."""
    if not os.path.exists(path):
        raise SweepError(f"sweep file {path!r} does not exist")
    module_name = "sqz_sweep_" + re.sub(r"\W", "_", Path(path).stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SweepError(f"sweep file {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"sweep file {path} defines no get_sweep(arg=None)")
    if not (module.__doc__ or "").strip():
        raise SweepError(
            f"sweep file {path} has no docstring; its docstring must say what question the "
            "sweep answers"
        )
    try:
        raw = module.get_sweep(arg)
    except ConfigError as e:
        raise SweepError(f"sweep file {path}: {e}") from None
    return parse_sweep(raw, question=module.__doc__)


def experiment_path(path: str) -> str:
    """An experiment file given relative to the working directory or to the repository root."""
    if os.path.exists(path):
        return path
    candidate = REPO_ROOT / path
    if not os.path.isabs(path) and candidate.exists():
        return str(candidate)
    raise SweepError(
        f"base experiment {path!r} does not exist (looked in {os.getcwd()} and {REPO_ROOT})"
    )


def dataset_experiment(dataset: str) -> str:
    """The experiment a sweep builds on for `dataset`: experiments/<dataset>/frontier.py, else
    experiments/<dataset>/squeezenet.py (paths relative to the repository root)."""
    for name in ("frontier.py", "squeezenet.py"):
        rel = f"experiments/{dataset}/{name}"
        if (REPO_ROOT / rel).exists():
            return rel
    have = sorted(
        p.parent.name
        for p in (REPO_ROOT / "experiments").glob("*/*.py")
        if p.name in ("frontier.py", "squeezenet.py")
    )
    raise SweepError(
        f"no experiment for dataset {dataset!r} (looked for experiments/{dataset}/frontier.py "
        f"and squeezenet.py); datasets with one: {', '.join(have) or '(none)'}. For another "
        "TFDS dataset, write experiments/<dataset>/squeezenet.py (copy the cifar10 one and set "
        "data.name, model.num_classes, model.image_size)"
    )


def load_base_config(defn: SweepDefinition) -> ml_collections.ConfigDict:
    """The base experiment's config with the sweep's fixed overrides applied."""
    if defn.base_experiment is None:
        config = base_config()
    else:
        path = experiment_path(defn.base_experiment)
        try:
            config = load_config_file(path, defn.base_arg)
        except ConfigError as e:
            raise SweepError(f"sweep base experiment {defn.base_experiment}: {e}") from None
    try:
        apply_overrides(config, dict(defn.fixed))
    except ConfigError as e:
        raise SweepError(f"sweep fixed: {_explain_key(config, e)}") from None
    return config


def check_against_config(defn: SweepDefinition, config: ml_collections.ConfigDict) -> None:
    """Every searched key exists in the base config and accepts the values the space can give."""
    for p in defn.params:
        probe_values = p.values if p.kind == "categorical" else (p.low, p.high)
        for value in probe_values:
            trial = copy.deepcopy(config)
            if p.kind == "int":
                value = int(value)
            try:
                apply_overrides(trial, {p.key: value})
            except ConfigError as e:
                raise SweepError(f"sweep space {p.key}: {_explain_key(config, e)}") from None


def _explain_key(config: ml_collections.ConfigDict, error: ConfigError) -> str:
    """Add the keys that do exist (and a close match) to an unknown-key error."""
    msg = str(error)
    m = re.search(r"unknown config key '([^']+)'", msg)
    if not m:
        return msg
    parts = m.group(1).split(".")
    node: Any = config
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            where = ".".join(parts[:i]) or "the config"
            close = difflib.get_close_matches(part, known, n=1)
            hint = f"; did you mean {'.'.join([*parts[:i], close[0]])!r}?" if close else ""
            return f"{msg}{hint} (keys under {where}: {', '.join(known)})"
        node = node[part]
    return msg


# ------------------------------------------------------------------------------ identity
def fingerprint(defn: SweepDefinition, config: ml_collections.ConfigDict) -> str:
    """Hash of everything that decides what the trials compute: the definition (not its
    docstring) and the resolved base config. Stored in sweep.json to refuse edited sweeps."""
    payload = {"sweep": defn.to_dict(), "base_config": config_json(config)}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def point_key(overrides: Mapping[str, Any]) -> str:
    """A short stable id of a design point (the same values give the same id everywhere)."""
    return "p" + hashlib.sha1(canonical_json(dict(overrides)).encode()).hexdigest()[:10]


def trial_id(point: str, seed: int) -> str:
    """The run directory name of one training of a design point: trials/<point>-s<seed>."""
    return f"{point}-s{seed}"


def design_labels(defn: SweepDefinition, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The design point as display values (tuples as 'a,b,c'), keyed by dotted config key."""
    return {k: value_label(overrides[k]) for k in defn.keys if k in overrides}


def param_values(params: Sequence[SearchParam], stored: Mapping[str, Any]) -> dict[str, Any]:
    """Config overrides of a design point from the values Optuna stored."""
    missing = [p.key for p in params if p.key not in stored]
    if missing:
        raise SweepError(f"stored trial lacks parameter(s) {missing}")
    return {p.key: p.decode(stored[p.key]) for p in params}


def dataset_base(
    dataset: str, runlocal: bool, experiment: str = "", extra_arg: str = ""
) -> dict[str, Any]:
    """`base` for the shipped sweeps: the dataset's experiment (or `experiment`, any experiment
    file, e.g. for a TFDS dataset without an experiments/ directory), shrunk when `runlocal`."""
    args = [a for a in (("runlocal" if runlocal else ""), extra_arg) if a]
    path = experiment or dataset_experiment(dataset)
    return {"experiment": path, "arg": ",".join(args) or None}


def as_config_value(value: Any) -> Any:
    """Lists from JSON back to tuples (the config's tuple fields, e.g. pool_after)."""
    return tuple(as_config_value(v) for v in value) if isinstance(value, list) else value
