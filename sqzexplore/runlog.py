"""A run's log: metrics.jsonl (process 0, one JSON object per log or eval point), and mirrors of
it for dashboards: wandb (live, while training) and TensorBoard event files
(`mirror_to_tensorboard`, from the finished or growing metrics.jsonl).

A run's files are the source of truth; dashboards only mirror them (docs/design.md). Everything
logged is a Python float or int, never a jax array (no accidental device syncs or pickled
buffers). Files go through `rundir` (atomic rewrites, umask-respecting modes). A wandb run's
config carries the design fields flat (`design_fields`: squeeze_ratio, pct_3x3, pool_after,
bypass, ..., params, macs, mib, seed) so wandb's parallel-coordinates and scatter panels work on
them without edits.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqzexplore import rundir
from sqzexplore.config import WANDB_MODES
from sqzexplore.models.spec import DESIGN_FIELDS


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
                {
                    f"{split}/{k}": dashboard_value(k, v)
                    for k, v in record.items()
                    if k not in ("step", "split")
                },
                step=int(record["step"]),
            )

    def summary(self, values: dict) -> None:
        if self._wandb is not None:
            for k, v in _flatten(values).items():
                self._wandb.summary[k] = dashboard_value(k, v)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


# Accuracies are fractions in the run's files and percentages on every dashboard (wandb,
# TensorBoard), as in the sweep report: one unit wherever people compare runs.
ACCURACY_KEYS = ("top1", "top5")


def dashboard_value(key: str, value: Any) -> Any:
    """`value` as dashboards show it: accuracies ('top1', 'final/top1', ...) in percent."""
    name = key.replace("/", ".").split(".")[-1]
    if name in ACCURACY_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return 100.0 * value
    return value


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
        config={**(run_config or {}), **design_fields(run_config, summary)},
        mode=c.mode,
        dir=workdir,
        id=_wandb_run_id(workdir, c.group),
        resume="allow",
    )
    for k, v in _flatten(summary or {}).items():
        run.summary[k] = dashboard_value(k, v)
    return run


def _wandb_run_id(workdir: str, group: str | None = None) -> str:
    """A stable id per workdir (and group) so a resumed run continues the same wandb run. A
    sweep's group names the sweep directory's creation (sweep/dashboards.py), so a `--new`
    sweep in the same directory starts new runs instead of appending to the old ones."""
    key = os.path.abspath(workdir) + (f"|{group}" if group else "")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


# Spec fields a dashboard compares runs by, flat at the top of a wandb run's config: those the
# spec's field metadata marks as design dimensions.
DESIGN_KEYS = DESIGN_FIELDS


def design_fields(run_config: Mapping[str, Any] | None, summary: Mapping[str, Any] | None):
    """{squeeze_ratio, pct_3x3, pool_after ('conv1,fire4,fire8'), bypass, base_e, incr_e, freq,
    params, macs, mib, seed, dataset}: the design point and its size, one level deep."""
    run_config = run_config or {}
    design = (summary or {}).get("design") or run_config.get("model") or {}
    cplx = (summary or {}).get("complexity") or {}
    out: dict[str, Any] = {}
    for key in DESIGN_KEYS:
        if key in design:
            value = design[key]
            out[key] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    for source, name in (("params", "params"), ("macs", "macs"), ("fp32_mib", "mib")):
        if source in cplx:
            out[name] = cplx[source]
    if "seed" in run_config:
        out["seed"] = run_config["seed"]
    dataset = (run_config.get("data") or {}).get("name")
    if dataset:
        out["dataset"] = dataset
    return out


# ------------------------------------------------------------------------------ TensorBoard
_MIRROR_STATE = ".sqz_mirrored.json"


def mirror_to_tensorboard(
    metrics_path: str | os.PathLike,
    logdir: str | os.PathLike,
    hparams: Mapping[str, Any] | None = None,
    final: Mapping[str, float] | None = None,
) -> int:
    """Append the log points of `metrics_path` not yet mirrored to TensorBoard event files in
    `logdir` (one scalar per metric, tagged `<split>/<name>`, accuracies in percent); returns
    how many points were new.

    Incremental, so a watcher can call it while the run trains: each call writes a new event
    file holding only the steps after the last one mirrored (TensorBoard reads every event file
    of a run directory). A resumed run rewrites steps it had logged with the same values; those
    are skipped. `hparams` (design fields, seed, sizes, final metrics) go to TensorBoard's
    HParams dashboard, again whenever they change (a run that finished since the last call
    adds its final top-1). `final` ({'final/top1': 0.97, 'best/top1': ...}, once the run has
    finished) is written once as scalars at the last step, the metric columns of the HParams
    table. Needs only the `tensorboard` package, never TensorFlow."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.record_writer import RecordWriter

    logdir = Path(logdir)
    state = rundir.read_json(logdir / _MIRROR_STATE) or {"step": -1, "files": 0}
    records = [r for r in rundir.read_jsonl(metrics_path) if int(r.get("step", -1)) > state["step"]]
    values_now = {k: _hparam(v) for k, v in (hparams or {}).items()}
    new_hparams = bool(values_now) and values_now != state.get("hparams")
    new_final = bool(final) and not state.get("final")
    if not records and (state["files"] == 0 or not (new_hparams or new_final)):
        return 0  # nothing new (or a run that has not logged yet): no empty files
    logdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{state['files']}"
    last = max([int(r["step"]) for r in records], default=state["step"])
    with open(logdir / name, "wb") as f:
        writer = RecordWriter(f)
        writer.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        if new_hparams:
            from tensorboard.plugins.hparams import summary_v2

            pb = summary_v2.hparams_pb(values_now, trial_id=logdir.name, start_time_secs=now)
            writer.write(Event(wall_time=now, step=0, summary=pb).SerializeToString())
        for r in records:
            values = [
                Summary.Value(
                    tag=f"{r.get('split', 'train')}/{k}", simple_value=float(dashboard_value(k, v))
                )
                for k, v in r.items()
                if k not in ("step", "split") and isinstance(v, (int, float))
                and not isinstance(v, bool)
            ]  # fmt: skip
            event = Event(wall_time=float(r.get("time", now)), step=int(r["step"]))
            event.summary.CopyFrom(Summary(value=values))
            writer.write(event.SerializeToString())
        if new_final:
            values = [
                Summary.Value(tag=tag, simple_value=float(dashboard_value(tag, v)))
                for tag, v in final.items()
            ]
            event = Event(wall_time=now, step=max(last, 0))
            event.summary.CopyFrom(Summary(value=values))
            writer.write(event.SerializeToString())
        writer.flush()
    rundir.write_json(
        logdir / _MIRROR_STATE,
        {
            "step": last,
            "files": state["files"] + 1,
            "hparams": values_now or state.get("hparams"),
            "final": bool(state.get("final") or new_final),
        },
    )
    return len(records)


def write_hparams_config(
    logdir: str | os.PathLike, hparams: Mapping[str, Any], metrics: list[str]
) -> None:
    """The HParams experiment of a TensorBoard root holding many runs: which hparams and which
    metric tags (e.g. 'final/top1', 'eval/top1') the HParams table and parallel-coordinates
    view show as columns. Written once per call as its own event file in `logdir`."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams import summary_v2
    from tensorboard.summary.writer.record_writer import RecordWriter

    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    pb = summary_v2.hparams_config_pb(
        hparams=[summary_v2.HParam(name) for name in hparams],
        metrics=[summary_v2.Metric(tag) for tag in metrics],
    )
    for old in logdir.glob("events.out.tfevents.*.hparams_config"):
        old.unlink()  # one experiment definition, the newest
    name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.hparams_config"
    with open(logdir / name, "wb") as f:
        writer = RecordWriter(f)
        writer.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        writer.write(Event(wall_time=now, step=0, summary=pb).SerializeToString())
        writer.flush()


def _hparam(value: Any) -> Any:
    """An HParams value: bool, number or string (tuples and lists as 'a,b,c')."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return json.dumps(value)
