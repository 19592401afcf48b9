"""`sqz sweep report DIR --tensorboard`: HParams with every design field, the sizes and the final
top-1 (read back from the event files with TensorBoard's own protos), and learning curves per
trial."""

from __future__ import annotations

import pytest
from test_sweep_support import run_inprocess, sr_space, write_sweep

from sqzexplore.sweep import cli
from sqzexplore.sweep.analyze import collect_runs
from sqzexplore.sweep.params import categorical
from sqzexplore.sweep.report import tensorboard_run_name


def _events(logdir):
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for raw in RawEventFileLoader(str(path)).Load():
            yield Event.FromString(raw)


def _hparams_data(logdir) -> list:
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = []
    for event in _events(logdir):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "hparams":
                content = value.metadata.plugin_data.content
                out.append(plugin_data_pb2.HParamsPluginData.FromString(content))
    return out


def _value(v):
    kind = v.WhichOneof("kind")
    return getattr(v, kind)


def test_hparams_carry_design_fields_sizes_and_final_top1(tmp_path, capsys):
    path = write_sweep(
        tmp_path / "t.py",
        name="tbh",
        space={**sr_space(0.125, 0.5), "model.bypass": categorical("none", "simple")},
        seeds=1,
    )
    sweep_dir, _ = run_inprocess(path, tmp_path / "w")
    assert cli.main(["report", str(sweep_dir.root), "--tensorboard", "--quiet"]) == 0
    root = sweep_dir.root / "tensorboard"
    runs = collect_runs(sweep_dir)
    assert len(runs) == 4
    for r in runs:
        logdir = root / tensorboard_run_name(r)
        (start,) = [
            d.session_start_info for d in _hparams_data(logdir) if d.session_start_info.hparams
        ]
        hp = {k: _value(v) for k, v in start.hparams.items()}
        assert hp["squeeze_ratio"] == r.params["model.squeeze_ratio"]
        assert hp["bypass"] == r.params["model.bypass"] and hp["seed"] == r.seed
        assert hp["params"] == r.complexity["params"] and hp["macs"] == r.complexity["macs"]
        assert hp["mib"] == pytest.approx(r.complexity["fp32_mib"])
        assert hp["final_top1"] == pytest.approx(100 * r.result["final"]["top1"])
        assert hp["best_top1"] == pytest.approx(100 * r.result["best"]["top1"])
        # Learning curves per trial, and the final top-1 as a metric column (percent).
        tags = {}
        for event in _events(logdir):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    tags.setdefault(value.tag, []).append(value.simple_value)
        assert len(tags["train/loss"]) == 8 and len(tags["eval/top1"]) >= 2
        assert tags["final/top1"] == [pytest.approx(100 * r.result["final"]["top1"], rel=1e-6)]
    (experiment,) = [d.experiment for d in _hparams_data(root) if d.experiment.hparam_infos]
    names = {h.name for h in experiment.hparam_infos}
    assert {"squeeze_ratio", "bypass", "params", "macs", "mib", "final_top1"} <= names
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"final/top1", "eval/top1"} <= metrics
