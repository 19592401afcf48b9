"""How a sweep's Optuna study reads in optuna-dashboard: the same units as every other dashboard.

Accuracies are fractions in the run files and percent on every dashboard (wandb, TensorBoard,
the report: `runlog.dashboard_value`); the study's objective values are percent too, and the
objectives are named with their unit ('final.top1 (%)'). A point's trial carries, as numeric
user attributes (optuna-dashboard lists and plots numbers, not a JSON string), each seed's
objective values ('final.top1 s0') and its sizes ('params', 'macs', 'mib').

Scaling an objective by 100 changes no Pareto rank and no NSGA-II crowding distance (each
objective is normalised by its range), so the search proposes the same points.

One study per sweep: growing a sweep (sweepdir.grow) starts a fresh study; the superseded one is
deleted from the storage when the grown sweep next runs (`retire_superseded`). Nothing is lost:
the trials' files are the record, and the grown study holds every point again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqzexplore.runlog import dashboard_value
from sqzexplore.sweep.space import SweepDefinition

SIZE_ATTRS = {"params": "params", "macs": "macs", "mib": "fp32_mib"}


def in_percent(name: str) -> bool:
    """Whether the study shows metric `name` ('final.top1') in percent."""
    return dashboard_value(name, 1.0) != 1.0


def metric_names(defn: SweepDefinition | Mapping[str, Any]) -> list[str]:
    """The objectives' names as the study shows them: 'final.top1 (%)', 'complexity.params'."""
    objectives = (
        defn.objectives if isinstance(defn, SweepDefinition) else defn["definition"]["objectives"]
    )
    names = [o.metric if hasattr(o, "metric") else o[0] for o in objectives]
    return [f"{n} (%)" if in_percent(n) else n for n in names]


def study_values(defn: SweepDefinition, means: Sequence[float]) -> list[float]:
    """A point's objective values (means over seeds) in the study's units."""
    return [
        float(dashboard_value(o.metric, v)) for o, v in zip(defn.objectives, means, strict=True)
    ]


def seed_attrs(
    defn: SweepDefinition, names: Sequence[str], values: Sequence[Sequence[float] | None]
) -> dict[str, float]:
    """Each seed's objective values as numbers: {'final.top1 s0': 97.5, ...} (`names`: the
    point's trial ids, '<point>-s<seed>', in the order of `values`)."""
    out = {}
    for name, run_values in zip(names, values, strict=True):
        found = re.search(r"-s(\d+)$", name)
        if not found or run_values is None:
            continue
        for objective, value in zip(defn.objectives, run_values, strict=True):
            if value is not None:
                shown = float(dashboard_value(objective.metric, value))
                out[f"{objective.metric} s{found.group(1)}"] = shown
    return out


def size_attrs(totals: Mapping[str, Any] | None) -> dict[str, float]:
    """A point's sizes as numbers: {'params': 183786, 'macs': ..., 'mib': ...}."""
    return {name: float(totals[key]) for name, key in SIZE_ATTRS.items() if key in (totals or {})}


def superseded_studies(state: Mapping[str, Any]) -> list[str]:
    """The study names a grown sweep used before its current one."""
    current = state["study_name"]
    old = [f"{state['name']}-{g['from'][:8]}" for g in state.get("grown", [])]
    return [name for name in dict.fromkeys(old) if name != current]


def retire_superseded(storage, state: Mapping[str, Any]) -> list[str]:
    """Delete a grown sweep's superseded studies from `storage`; returns their names."""
    import optuna

    existing = set(optuna.get_all_study_names(storage))
    gone = [name for name in superseded_studies(state) if name in existing]
    for name in gone:
        optuna.delete_study(study_name=name, storage=storage)
    return gone
