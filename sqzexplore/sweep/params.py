"""Search parameters: one dimension of a sweep's space, as a typed value.

A sweep file builds them with `categorical(...)`, `uniform(lo, hi)`, `log_uniform(lo, hi)` or
`int_range(lo, hi)` and maps dotted config keys to them. A design point is a dict
{dotted key: config value}; its values are what the config gets (a pooling option is a tuple of
layer names). The only other form a value takes is its Optuna form, at the Optuna boundary:
`encode` (categorical values become primitive labels, tuples 'a,b,c') and `decode` back.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import optuna


class SweepError(ValueError):
    """An invalid sweep definition; the message names the field and what is allowed."""


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def freeze(v: Any) -> Any:
    """Lists (from JSON) as tuples, recursively: the config's tuple fields."""
    return tuple(freeze(x) for x in v) if isinstance(v, (list, tuple)) else v


def jsonable(v: Any) -> Any:
    """Tuples as lists, recursively: a config value as JSON holds it."""
    return [jsonable(x) for x in v] if isinstance(v, (list, tuple)) else v


def label(value: Any) -> Any:
    """The Optuna-storable (and display) form of a value: primitives as they are, tuples as
    'a,b,c' (the empty tuple as '(none)')."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "(none)"
    raise TypeError(f"unsupported value {value!r} of type {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class Categorical:
    """A choice among `values` (numbers, strings, booleans, None or tuples of those)."""

    values: tuple[Any, ...]

    def __post_init__(self):
        object.__setattr__(self, "values", freeze(self.values))

    def validate(self, where: str) -> None:
        if not self.values:
            raise SweepError(f"{where}: categorical needs at least one value")
        labels = []
        for v in self.values:
            try:
                labels.append(label(v))
            except TypeError:
                raise SweepError(
                    f"{where}: value {v!r} must be a number, string, boolean, None or a tuple "
                    "of those"
                ) from None
        dupes = sorted({str(lab) for lab in labels if labels.count(lab) > 1})
        if dupes:
            raise SweepError(f"{where}: values repeat ({', '.join(dupes)})")

    def grid_values(self, where: str = "") -> tuple[Any, ...]:
        return self.values

    def probe_values(self) -> tuple[Any, ...]:
        return self.values

    def encode(self, value: Any) -> Any:
        return label(value)

    def decode(self, stored: Any) -> Any:
        for value in self.values:
            if label(value) == stored:
                return value
        raise SweepError(f"stored value {stored!r} is not one of the choices {self.values}")

    def distribution(self, grid: bool):
        return optuna.distributions.CategoricalDistribution([label(v) for v in self.values])

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "values": [jsonable(v) for v in self.values]}


@dataclasses.dataclass(frozen=True)
class Range:
    """A number in [low, high]: float or int, optionally log-spaced, stepped, or (for the grid
    sampler) `num` evenly spaced points."""

    kind: str  # "float" | "int"
    low: float
    high: float
    log: bool = False
    step: float | None = None
    num: int | None = None

    def validate(self, where: str) -> None:
        low, high, step, num = self.low, self.high, self.step, self.num
        if not (_is_number(low) and _is_number(high)) or not low < high:
            raise SweepError(f"{where}: needs numbers low < high, got low={low!r}, high={high!r}")
        if self.log and low <= 0:
            raise SweepError(f"{where}: a log range needs low > 0, got {low}")
        if step is not None and (not _is_number(step) or step <= 0):
            raise SweepError(f"{where}: step must be a positive number, got {step!r}")
        if step is not None and self.log and self.kind == "float":
            raise SweepError(f"{where}: step and log cannot be combined")
        if num is not None and (not isinstance(num, int) or isinstance(num, bool) or num < 1):
            raise SweepError(f"{where}: num must be an integer >= 1, got {num!r}")
        if self.kind == "int" and not all(isinstance(v, int) for v in (low, high, step or 1)):
            raise SweepError(f"{where}: int_range needs integer low, high and step")

    def grid_values(self, where: str = "") -> tuple[Any, ...]:
        """The values the grid sampler visits."""
        low, high = self.low, self.high
        if self.kind == "int":
            if self.log:
                raise SweepError(
                    f"{where}: a log int_range cannot be a grid; use categorical(...) with the "
                    "values you want"
                )
            return tuple(range(int(low), int(high) + 1, int(self.step or 1)))
        if self.step is not None:
            n = int(math.floor((high - low) / self.step + 1e-9)) + 1
            return tuple(round(low + i * self.step, 12) for i in range(n))
        if not self.num:
            raise SweepError(
                f"{where}: the grid sampler needs a finite set of values; give "
                "uniform/log_uniform a num= (or step=), or use categorical(...)"
            )
        if self.num == 1:
            return (float(low),)
        if self.log:
            a, b = math.log(low), math.log(high)
            return tuple(float(math.exp(a + (b - a) * i / (self.num - 1))) for i in range(self.num))
        return tuple(float(low + (high - low) * i / (self.num - 1)) for i in range(self.num))

    def probe_values(self) -> tuple[Any, ...]:
        return (self.low, self.high)

    def encode(self, value: Any) -> Any:
        return value

    def decode(self, stored: Any) -> Any:
        return int(stored) if self.kind == "int" else float(stored)

    def distribution(self, grid: bool):
        if grid:
            return optuna.distributions.CategoricalDistribution(list(self.grid_values()))
        if self.kind == "int":
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return optuna.distributions.FloatDistribution(
            float(self.low), float(self.high), log=self.log, step=self.step
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["type"] = d.pop("kind")
        return d


Param = Categorical | Range


def categorical(*values: Any) -> Categorical:
    """A choice among `values` (numbers, strings, booleans, None or tuples of those)."""
    return Categorical(values)


def uniform(low: float, high: float, *, step: float | None = None, num: int | None = None) -> Range:
    """A float in [low, high]; `step` discretises it, `num` gives the grid sampler `num` points."""
    return Range("float", low, high, step=step, num=num)


def log_uniform(low: float, high: float, *, num: int | None = None) -> Range:
    """A float in [low, high] drawn uniformly in log space (`num` log-spaced grid points)."""
    return Range("float", low, high, log=True, num=num)


def int_range(low: int, high: int, *, step: int = 1, log: bool = False) -> Range:
    """An integer in [low, high] (inclusive)."""
    return Range("int", low, high, log=log, step=step)


def param_from_dict(d: dict[str, Any]) -> Param:
    """A parameter from its `to_dict()` form (sweep.json)."""
    d = dict(d)
    kind = d.pop("type", None)
    if kind == "categorical":
        return Categorical(tuple(d.get("values") or ()))
    if kind in ("float", "int"):
        return Range(kind, **d)
    raise SweepError(f"unknown parameter type {kind!r}; known: categorical, float, int")
