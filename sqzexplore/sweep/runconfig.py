"""The full config of one run of a design point, built once when the point is registered.

The sweep engine writes it into the run's trial.json; the worker only reads it. Also the
analytic complexity of a config (the sweep's constraints and objectives use it).
"""

from __future__ import annotations

from typing import Any

from sqzexplore.config import apply_overrides, typed_config
from sqzexplore.models.spec import SqueezeNetSpec
from sqzexplore.sweep.params import jsonable
from sqzexplore.sweep.space import SweepDefinition, config_json


def trial_config(
    base: dict[str, Any], defn: SweepDefinition, point: dict[str, Any], seed: int, run_id: str
) -> dict[str, Any]:
    """The full config of one run, as JSON: base + design point + seed + sweep bookkeeping.

    The point is set on the typed base config by `config.apply_overrides`, the same path as a
    sweep's fixed values and `sqz describe --set`, so a value is checked (and converted) by its
    field's type. The bookkeeping keys (wandb group/name/tags, progress, distributed) do not
    change what a run computes, so the trainer's resume check ignores them."""
    typed = typed_config(base)
    apply_overrides(typed, {key: jsonable(value) for key, value in point.items()})
    config = config_json(typed)
    config["seed"] = int(seed)
    config["progress"] = _off(config["progress"])  # the sweep draws one bar over trials instead
    config["distributed"]["initialize"] = _off(config["distributed"]["initialize"])
    wandb = config["wandb"]
    wandb["group"] = defn.name
    wandb["name"] = f"{defn.name}/{run_id}"
    wandb["tags"] = list(dict.fromkeys([*wandb["tags"], "sweep", defn.name, *defn.tags]))
    return config


def _off(current: Any) -> Any:
    # A yes/no setting, whichever form the base config gives it (a boolean or 'auto'/'false').
    return False if isinstance(current, bool) else "false"


def analytic_complexity(config: dict[str, Any]) -> dict[str, Any]:
    """Params / MACs / MiB / activations of a config's model, without building it."""
    from sqzexplore.models.complexity import complexity

    return complexity(SqueezeNetSpec.from_dict(config["model"])).totals()
