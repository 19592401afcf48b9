"""A spec field's metadata (`FieldInfo`) and the error a bad design point raises (`SpecError`).

Every `SqueezeNetSpec` field is declared with `spec_field`, which stores its help text, type and
allowed range or choices in the dataclass field's metadata. The spec's own validation, the typed
config section (`config.model_config`), the override parser (`overrides.py`), `sqz train --help`
and the wandb design fields all read it from there (`spec.field_infos()`).
"""

from __future__ import annotations

import dataclasses
from typing import Any


class SpecError(ValueError):
    """A design point that cannot be built; the message names the field and what is allowed."""


# The key under which a spec field's `FieldInfo` sits in its dataclass field metadata.
SPEC_FIELD = "sqzexplore.spec"


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """What a spec field means and accepts: its help text, its type (`kind`) and its allowed
    range or choices. Config defaults, `sqz train --help`, `sqz describe --set`, the wandb design
    fields and the spec's own validation all read it, so adding a field is one line here.

    `design`: a dimension of the design space that dashboards compare runs by. `formula_only`:
    checked only when `fire_widths` is unset (the field feeds the width formulas).
    """

    help: str
    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    design: bool = False
    formula_only: bool = False
    example: str | None = None  # a command-line spelling, for tuple-valued fields
    optional: bool = False  # None is allowed (and means "use the formulas")
    # Left out of `to_dict` (spec.json, a .sqz header) at its default, so a field added later
    # leaves the files of every design point that does not use it byte-identical.
    omit_default: bool = False

    @property
    def allowed(self) -> str:
        """The allowed values in words: 'an integer >= 1', 'in (0, 1]', 'one of (...)'."""
        if self.choices is not None:
            return f"one of {self.choices}"
        if self.kind is int:
            return f"an integer >= {int(self.low)}" if self.low is not None else "an integer"
        if self.kind is float and self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.kind is bool:
            return "true or false"
        if self.kind is tuple:
            return f"a tuple such as {self.example}" if self.example else "a tuple"
        return "a string"

    @property
    def line(self) -> str:
        """One help line: the meaning, then the range where the meaning does not say it."""
        if self.kind in (int, float) and (self.low is not None or self.high is not None):
            return f"{self.help}; {self.allowed}"
        return self.help

    def check(self, name: str, value: Any) -> None:
        """SpecError naming the field and the allowed range when `value` is outside it."""
        if self.choices is not None:
            if value not in self.choices:
                raise SpecError(f"{name} must be {self.allowed}, got {value!r}")
            return
        if self.kind is int:
            if not isinstance(value, int) or isinstance(value, bool) or value < self.low:
                raise SpecError(f"{name} must be {self.allowed}, got {value!r}")
        elif self.kind is float:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise SpecError(f"{name} must be a number {self.allowed}, got {value!r}")
            below = value <= self.low if self.low_open else value < self.low
            above = value >= self.high if self.high_open else value > self.high
            if below or above or value != value:  # NaN is in no range
                raise SpecError(f"{name} must be {self.allowed}, got {value!r}")


def spec_field(default: Any, help: str, *, kind: type | None = None, **info: Any) -> Any:
    """A dataclass field of `SqueezeNetSpec` carrying its `FieldInfo` (kind: the default's type,
    or str for a field with choices)."""
    kind = kind or (str if "choices" in info else type(default))
    return dataclasses.field(default=default, metadata={SPEC_FIELD: FieldInfo(help, kind, **info)})
