"""Which design points a worker trains as one width-padded population, by measured cost.

Points whose configs differ only in channel widths (`models.widths.WIDTH_FIELDS`: squeeze ratio,
pct_3x3, base_e / incr_e / freq, fire_widths; equal `config.width_free`) can train as one
program padded to their largest widths (train/padding.py). That saves a compile per point and
costs the padding: every member computes the padded network's MACs. A worker pads a candidate
point into its group when, by what this worker last measured on the platform at hand (a
result.json: compile seconds, train seconds per step and the MACs of that network),

    steps * seconds_per_mac_step * extra MACs a step < compile seconds

where the extra MACs are the candidate's padding (padded MACs - its own) plus, where it widens
the padded network, that growth for every member already in the group: the padded steps cost
less than the compile they save. This is the compute-bound estimate:
on a GPU a small trial leaves the device mostly idle, so it overstates what padding costs there
and errs towards compiling. Before a worker has measured anything it does not pad (its first run
measures). Populations, and so padding, are off on a CPU unless `--population N` forces them
(`population.auto_population_size`). Jax-free: the worker imports it before the trainer.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sqzexplore.config import width_free
from sqzexplore.models.complexity import complexity
from sqzexplore.models.spec import SpecError, SqueezeNetSpec
from sqzexplore.models.widths import padded_fire_widths


def width_key(config: dict[str, Any]) -> str:
    """What a run computes apart from its seed and channel widths (`config.width_free`; equal
    keys: paddable, provided the networks have the same convs, which padding.py checks)."""
    return json.dumps(width_free(config), sort_keys=True, default=str)


@dataclasses.dataclass(frozen=True)
class Measured:
    """One finished run's costs on this worker's platform."""

    compile_s: float
    seconds_per_mac_step: float  # train seconds / steps / the network's MACs
    steps: int

    @classmethod
    def from_result(cls, result: dict | None, macs: int) -> Measured | None:
        if not result or result.get("status") != "complete" or not result.get("steps"):
            return None
        train, steps = float(result.get("train_time_s", 0)), int(result["steps"])
        compile_s = float(result.get("compile_time_s", 0))
        if train <= 0 or compile_s <= 0 or macs <= 0:
            return None
        return cls(compile_s, train / steps / macs, steps)


def _macs(specs: list[SqueezeNetSpec]) -> int:
    return complexity(specs[0].replace(fire_widths=padded_fire_widths(specs))).macs


def group_macs(configs: list[dict[str, Any]]) -> int:
    """MACs of the network a group's program computes per member (padded where the widths
    differ)."""
    return _macs([SqueezeNetSpec.from_dict(c["model"]) for c in configs])


def pays(
    group: list[dict[str, Any]], candidate: dict[str, Any], measured: Measured | None
) -> tuple[bool, str]:
    """(pad it in, why): whether `candidate` (a run's config) joins the width-padded group of
    `group`'s configs, by the rule in this module's docstring."""
    if width_key(candidate) != width_key(group[0]):
        return False, "differs in more than channel widths"
    if measured is None:
        return False, "no cost measured yet on this worker"
    try:
        specs = [SqueezeNetSpec.from_dict(c["model"]) for c in [*group, candidate]]
        padded = _macs(specs)
    except (SpecError, TypeError, ValueError) as e:
        return False, f"cannot be padded ({e})"
    own, before = complexity(specs[-1]).macs, _macs(specs[:-1])
    # The candidate's padding, and the existing members' growth where it widens the network.
    more = padded - own + len(group) * (padded - before)
    extra = measured.steps * measured.seconds_per_mac_step * more
    why = (
        f"padded steps cost ~{extra:.1f} s ({more:,} more MACs a step; padded network "
        f"{padded:,} MACs) vs ~{measured.compile_s:.1f} s compile saved (measured here)"
    )
    return extra < measured.compile_s, why
