"""`sqz sweep report DIR --tensorboard`: a sweep as TensorBoard runs with one HParams row per point.

Layout under DIR/tensorboard/: one run directory per trial, `<design>/seed<k>` (learning curves
mirrored from the trial's metrics.jsonl by `runlog.mirror_to_tensorboard`, accuracies in
percent), and in the root the HParams experiment (which hyperparameters and metrics are columns).

HParams groups sessions by their group name; every seed of a design point carries the point's
name as its group, so the HParams table has one row per design point (its metric the mean over
seeds by default, min/max/median selectable) and each row expands to its seeds. The
hyperparameters are the design fields and the point's sizes (params, MACs, MiB), each typed with
a domain (discrete values for categorical fields, an interval for ranges and sizes), so the
table's filters work. Seeds are no hyperparameter (they are the group's sessions), and top-1 is
only a metric. TensorBoard's table shows the first five hyperparameters flagged as differing:
the searched fields and params are flagged, the rest start hidden (one click to show).
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqzexplore.rundir import read_json, write_json
from sqzexplore.runlog import mirror_to_tensorboard
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.metric_table import metric
from sqzexplore.sweep.params import Categorical, label
from sqzexplore.sweep.space import SweepDefinition

# The HParams metric columns (accuracies in percent), with the names the table shows.
METRICS = {
    "final/top1": "final top-1 (%)",
    "best/top1": "best top-1 (%)",
    "final/top5": "final top-5 (%)",
    "eval/top1": "eval top-1 (%)",
    "train/loss": "train loss",
}
SIZES = {"params": "params", "macs": "macs", "mib": "fp32_mib"}
# Bumped when the layout changes: an older DIR/tensorboard is rebuilt from the trials' files.
LAYOUT_VERSION = 2
_LAYOUT_FILE = ".sqz_layout.json"
_SESSION_SUFFIX = "sqz_session"
_CONFIG_SUFFIX = "hparams_config"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._,=-" else "_" for c in text)


def point_name(run) -> str:
    """The design point as a TensorBoard name ('squeeze_ratio=0.125,bypass=none'): the HParams
    session group of every seed of the point."""
    design = ",".join(f"{k.split('.')[-1]}={v}" for k, v in run.design.items())
    return _safe(design) or _safe(run.point)


def run_name(run) -> str:
    """A trial's TensorBoard run directory: its point's name and the seed."""
    return f"{point_name(run)}/seed{run.seed}"


def _final_metrics(run) -> dict[str, float] | None:
    """A finished run's final and best accuracies (fractions), the HParams metric columns."""
    if run.state != sd.COMPLETE or not run.result:
        return None
    out = {}
    for tag in ("final/top1", "best/top1", "final/top5"):
        value = metric(tag.replace("/", ".")).value(run.result)
        if value is not None:
            out[tag] = value
    return out or None


def _value(value: Any) -> Any:
    """An HParams value: bool, float or string (tuples 'a,b,c'); numbers as floats, so one
    field has one type whatever a point's literal looked like (1 and 0.5)."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return label(tuple(value))
    return str(value)


def session_hparams(run) -> dict[str, Any]:
    """A trial's hyperparameters: its design fields (short names) and the point's sizes."""
    out: dict[str, Any] = {k.split(".")[-1]: _value(v) for k, v in run.design.items()}
    for name, key in SIZES.items():
        if key in run.complexity:
            out[name] = float(run.complexity[key])
    return out


def _domain(values: Sequence[Any], searched=None):
    """A field's domain: the sweep's interval for a numeric range, else the values seen (and,
    for a categorical field, every value the sweep may try) as a discrete set."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    if searched is not None and not isinstance(searched, Categorical):
        return hp.RealInterval(float(searched.low), float(searched.high))
    seen = list(values)
    if isinstance(searched, Categorical):
        seen += [_value(v) for v in searched.values]
    distinct = sorted(set(seen), key=lambda v: (str(type(v)), v))
    kinds = {type(v) for v in distinct}
    if len(kinds) != 1:  # mixed types (e.g. None among strings): strings
        distinct = sorted({str(v) for v in distinct})
    return hp.Discrete(distinct)


def _experiment_pb(defn: SweepDefinition, sessions: Mapping[str, dict[str, Any]]):
    """The HParams experiment: typed hyperparameters with domains, the metric columns, and the
    'differs' flag on the searched fields and params (the columns shown at first)."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    searched = {k.split(".")[-1]: p for k, p in defn.space.items()}
    names: dict[str, None] = {}
    for values in sessions.values():
        names.update(dict.fromkeys(values))
    hparams = []
    for name in names:
        seen = [s[name] for s in sessions.values() if name in s]
        if name in SIZES:
            low, high = min(seen), max(seen)
            domain = hp.RealInterval(float(low), float(high if high > low else low + 1))
        else:
            domain = _domain(seen, searched.get(name))
        hparams.append(hp.HParam(name, domain, description=_describe(name, name in searched)))
    metrics = [hp.Metric(tag, display_name=shown) for tag, shown in METRICS.items()]
    pb = hp.hparams_config_pb(hparams=hparams, metrics=metrics)
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData.FromString(pb.value[0].metadata.plugin_data.content)
    shown = set(searched) | {"params"}
    for info in content.experiment.hparam_infos:
        info.differs = info.name in shown
    pb.value[0].metadata.CopyFrom(metadata.create_summary_metadata(content))
    return pb


def _describe(name: str, searched: bool) -> str:
    if name in SIZES:
        return f"the design point's {metric('complexity.' + SIZES[name]).label}"
    return "searched design field" if searched else "design field"


def _write_event(path: Path, summary_pb) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    now = time.time()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        writer = RecordWriter(f)
        writer.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        writer.write(Event(wall_time=now, step=0, summary=summary_pb).SerializeToString())
        writer.flush()
    tmp.replace(path)


def _replace_event_file(logdir: Path, suffix: str, summary_pb) -> None:
    """One event file of this kind in `logdir`, the newest (older ones removed)."""
    logdir.mkdir(parents=True, exist_ok=True)
    for old in logdir.glob(f"events.out.tfevents.*.{suffix}"):
        old.unlink()
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{suffix}"
    _write_event(logdir / name, summary_pb)


def _session_pb(run, hparams: dict[str, Any]):
    """The trial's session start (its hyperparameters, grouped under its design point) and, once
    it finished, its end status. Built from the protos: no TensorFlow."""
    from google.protobuf import struct_pb2
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo(
        group_name=point_name(run), start_time_secs=float(run.registered or time.time())
    )
    for name, value in hparams.items():
        if isinstance(value, bool):
            start.hparams[name].CopyFrom(struct_pb2.Value(bool_value=value))
        elif isinstance(value, float):
            start.hparams[name].CopyFrom(struct_pb2.Value(number_value=value))
        else:
            start.hparams[name].CopyFrom(struct_pb2.Value(string_value=str(value)))
    data = [
        (
            metadata.SESSION_START_INFO_TAG,
            plugin_data_pb2.HParamsPluginData(session_start_info=start),
        )
    ]
    if run.state in sd.FINISHED_STATES:
        status = api_pb2.STATUS_SUCCESS if run.state == sd.COMPLETE else api_pb2.STATUS_FAILURE
        end = plugin_data_pb2.SessionEndInfo(
            status=status, end_time_secs=float(run.finished or time.time())
        )
        data.append(
            (metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))
        )
    return Summary(
        value=[
            Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(pb))
            for tag, pb in data
        ]
    )


def write_tensorboard(sweep_dir: sd.SweepDir, runs: Sequence[Any]) -> Path:
    """Mirror every trial's learning curves and write the HParams sessions and experiment under
    DIR/tensorboard (incremental: only new log points are appended). Returns that root."""
    root = sweep_dir.root / "tensorboard"
    layout = read_json(root / _LAYOUT_FILE) or {}
    if root.exists() and layout.get("version") != LAYOUT_VERSION:
        shutil.rmtree(root)  # derived from the trials' files: rebuilt whole in the new layout
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / _LAYOUT_FILE, {"version": LAYOUT_VERSION})
    sessions: dict[str, dict[str, Any]] = {}
    for r in runs:
        logdir = root / run_name(r)
        mirror_to_tensorboard(
            sweep_dir.trial_dir(r.trial_id) / "metrics.jsonl", logdir, final=_final_metrics(r)
        )
        hparams = session_hparams(r)
        sessions[run_name(r)] = hparams
        _replace_event_file(logdir, _SESSION_SUFFIX, _session_pb(r, hparams))
    if sessions:
        _replace_event_file(root, _CONFIG_SUFFIX, _experiment_pb(sweep_dir.definition(), sessions))
    return root
