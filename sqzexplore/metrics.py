"""Run outputs: metrics.jsonl (always, process 0), the wandb mirror, and the progress bar.

A run's files are the source of truth; wandb only mirrors them (DESIGN.md). Everything logged is
a Python float or int, never a jax array (no accidental device syncs or pickled buffers).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from typing import Any

WANDB_MODES = ("disabled", "offline", "online")


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON to `path` atomically (tmp file + rename): readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_to_builtin)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _to_builtin(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def read_jsonl(path: str) -> list[dict]:
    """Records of a metrics.jsonl file; a torn last line (killed mid-write) is skipped."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


class MetricsWriter:
    """Appends one JSON object per log point to metrics.jsonl and mirrors it to wandb."""

    def __init__(
        self,
        workdir: str,
        *,
        is_main: bool,
        resume_step: int,
        wandb_config=None,
        run_config: dict | None = None,
        summary: dict | None = None,
    ):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.is_main = is_main
        self._wandb = None
        if not is_main:
            return
        # Log points after the restored checkpoint will be recomputed: drop them so that a resumed
        # run's file is identical to an uninterrupted one's.
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)
        self._file = open(self.path, "a")  # noqa: SIM115 - held open for the run, closed in close()
        if wandb_config is not None and wandb_config.mode != "disabled":
            self._wandb = _start_wandb(workdir, wandb_config, run_config, summary)

    def write(self, record: dict) -> None:
        if not self.is_main:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
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
        if not self.is_main:
            return
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def _start_wandb(workdir: str, c, run_config: dict | None, summary: dict | None):
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
    import hashlib

    return hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]


class Progress:
    """A tqdm bar over steps (images/s, ETA, last loss); silent when not on a terminal."""

    def __init__(self, mode, total: int, initial: int, is_main: bool):
        mode = str(mode).lower()
        enabled = is_main and (mode == "true" or (mode == "auto" and sys.stderr.isatty()))
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, **postfix) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(
                {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in postfix.items()},
                refresh=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
