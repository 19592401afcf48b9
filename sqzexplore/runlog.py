"""A run's log: metrics.jsonl (process 0, one JSON object per log or eval point), wandb mirror.

A run's files are the source of truth; wandb only mirrors them (docs/design.md). Everything logged
is a Python float or int, never a jax array (no accidental device syncs or pickled buffers).
Files go through `rundir` (atomic rewrites, umask-respecting modes).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from sqzexplore import rundir
from sqzexplore.config import WANDB_MODES


class MetricsWriter:
    """Appends one JSON object per log point to metrics.jsonl and mirrors it to wandb."""

    def __init__(
        self,
        workdir: str,
        *,
        is_main: bool,
        resume_step: int,
        wandb_config: Any = None,
        run_config: dict | None = None,
        summary: dict | None = None,
    ):
        self.path = os.path.join(workdir, rundir.METRICS_FILE)
        self.is_main = is_main
        self._wandb = None
        if not is_main:
            return
        # Log points after the restored checkpoint will be recomputed: drop them so that a resumed
        # run's file is identical to an uninterrupted one's.
        kept = [r for r in rundir.read_jsonl(self.path) if r.get("step", 0) <= resume_step]
        rundir.write_jsonl(self.path, kept)
        if wandb_config is not None and wandb_config.mode != "disabled":
            self._wandb = _start_wandb(workdir, wandb_config, run_config, summary)

    def write(self, record: dict) -> None:
        if not self.is_main:
            return
        record = {k: rundir.finite_or_str(v) for k, v in record.items()}
        rundir.append_jsonl(self.path, record, fsync=False)
        if self._wandb is not None:
            split = record.get("split", "train")
            self._wandb.log(
                {f"{split}/{k}": v for k, v in record.items() if k not in ("step", "split")},
                step=int(record["step"]),
            )

    def summary(self, values: dict) -> None:
        if self._wandb is not None:
            for k, v in _flatten(values).items():
                self._wandb.summary[k] = v

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def _start_wandb(workdir: str, c: Any, run_config: dict | None, summary: dict | None) -> Any:
    if c.mode not in WANDB_MODES:
        raise ValueError(f"config.wandb.mode must be one of {WANDB_MODES}, got {c.mode!r}")
    import wandb  # lazy: most runs never touch it

    run = wandb.init(
        project=c.project,
        entity=c.entity,
        group=c.group,
        name=c.name or os.path.basename(os.path.abspath(workdir)),
        tags=list(c.tags),
        config=run_config,
        mode=c.mode,
        dir=workdir,
        id=_wandb_run_id(workdir),
        resume="allow",
    )
    for k, v in _flatten(summary or {}).items():
        run.summary[k] = v
    return run


def _wandb_run_id(workdir: str) -> str:
    """A stable id per workdir so a resumed run continues the same wandb run."""
    return hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]
