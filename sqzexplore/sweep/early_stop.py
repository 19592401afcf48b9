"""Stopping hopeless runs early: a median rule on eval curves, fed by the trainer's `on_eval`.

`MedianStopper` is the rule of Optuna's MedianPruner applied to the sweep's own files (so it also
works for multi-objective studies, where Optuna's pruners do not): after `n_warmup_evals`
evaluations, a run stops when its eval top-1 is below the median top-1 that finished runs of at
least `n_startup_points` other design points had at the same step. The trainer then ends the run
early (its checkpoint and metrics stay), the run's state is 'stopped', and the sweep tells Optuna
the trial was PRUNED (Optuna's name for it).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from sqzexplore.rundir import METRICS_FILE, read_json, read_jsonl
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.space import EarlyStop


def eval_curve(trial_dir: Path, key: str = "top1") -> dict[int, float]:
    """step -> eval `key` of one run, from its metrics.jsonl."""
    curve = {}
    for record in read_jsonl(trial_dir / METRICS_FILE):
        if record.get("split") == "eval" and isinstance(record.get(key), (int, float)):
            curve[int(record["step"])] = float(record[key])
    return curve


def value_at(curve: dict[int, float], step: int) -> float | None:
    """The curve at `step`, else its last value before `step`."""
    if step in curve:
        return curve[step]
    earlier = [s for s in curve if s <= step]
    return curve[max(earlier)] if earlier else None


class MedianStopper:
    """`should_stop(step, metrics)` for one run, comparing with the sweep's finished runs."""

    def __init__(self, spec: EarlyStop, sweep_dir: sd.SweepDir, point: str, key: str = "top1"):
        self.spec = spec
        self.sweep_dir = sweep_dir
        self.point = point
        self.key = key
        self.evals_seen = 0
        self._curves: dict[str, tuple[str, dict[int, float]]] = {}  # trial -> (point, curve)
        self.reason: str | None = None

    def _refresh(self) -> None:
        # Finished runs never change, so each is read once.
        for trial in self.sweep_dir.trial_ids():
            if trial in self._curves:
                continue
            trial_dir = self.sweep_dir.trial_dir(trial)
            if sd.run_state(trial_dir) != sd.COMPLETE:
                continue
            record = read_json(trial_dir / sd.TRIAL_FILE) or {}
            self._curves[trial] = (record.get("point", trial), eval_curve(trial_dir, self.key))

    def should_stop(self, step: int, metrics: dict) -> bool:
        self.evals_seen += 1
        value = metrics.get(self.key)
        if self.spec.rule != "median" or self.evals_seen <= self.spec.n_warmup_evals:
            return False
        if not isinstance(value, (int, float)):
            return False
        self._refresh()
        reference, points = [], set()
        for point, curve in self._curves.values():
            if point == self.point:
                continue
            v = value_at(curve, step)
            if v is not None:
                reference.append(v)
                points.add(point)
        if len(points) < max(1, self.spec.n_startup_points):
            return False
        median = statistics.median(reference)
        if value < median:
            self.reason = (
                f"eval {self.key} {value:.4f} at step {step} is below the median {median:.4f} "
                f"of {len(reference)} finished runs ({len(points)} design points)"
            )
            return True
        return False
