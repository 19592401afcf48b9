"""`sqz sweep report DIR --tensorboard`: one HParams session group per design point (its seeds as
the group's sessions), typed hyperparameters with domains, top-1 only as a metric, learning
curves per trial; read back from the event files with TensorBoard's own protos and from
TensorBoard's own HParams backend (the rows the HParams page shows)."""

from __future__ import annotations

import json
import urllib.request
from collections import defaultdict

import pytest
from test_sweep_support import run_inprocess, sr_space, write_sweep

from sqzexplore.sweep import cli
from sqzexplore.sweep.analyze import collect_runs
from sqzexplore.sweep.tensorboard import point_name, run_name


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
    return getattr(v, v.WhichOneof("kind"))


@pytest.fixture(scope="module")
def tb_sweep(tmp_path_factory):
    """A finished 2-point x 2-seed squeeze-ratio sweep, reported with --tensorboard."""
    tmp = tmp_path_factory.mktemp("tb")
    path = write_sweep(tmp / "t.py", name="tbh", space=sr_space(0.125, 0.5), seeds=2)
    sweep_dir, _ = run_inprocess(path, tmp / "w")
    assert cli.main(["report", str(sweep_dir.root), "--tensorboard", "--quiet"]) == 0
    return sweep_dir


def test_one_session_group_per_design_point_with_typed_hparams(tb_sweep):
    root = tb_sweep.root / "tensorboard"
    runs = collect_runs(tb_sweep)
    assert len(runs) == 4
    groups = defaultdict(list)
    for r in runs:
        logdir = root / run_name(r)
        (start,) = [
            d.session_start_info for d in _hparams_data(logdir) if d.session_start_info.hparams
        ]
        hp = {k: _value(v) for k, v in start.hparams.items()}
        groups[start.group_name].append((r.seed, hp))
        assert start.group_name == point_name(r) and "seed" not in start.group_name
        assert hp["squeeze_ratio"] == r.params["model.squeeze_ratio"]
        assert hp["params"] == r.complexity["params"] and hp["macs"] == r.complexity["macs"]
        assert hp["mib"] == pytest.approx(r.complexity["fp32_mib"])
        # top-1 is a metric only, and the seed is the group's session, not a setting.
        assert not {"final_top1", "best_top1", "seed"} & set(hp)
        tags = defaultdict(list)
        for event in _events(logdir):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    tags[value.tag].append(value.simple_value)
        assert len(tags["train/loss"]) == 8 and len(tags["eval/top1"]) >= 2
        assert tags["final/top1"] == [pytest.approx(100 * r.result["final"]["top1"], rel=1e-6)]
    # Two groups, each with both seeds of one squeeze ratio.
    assert len(groups) == 2
    for sessions in groups.values():
        assert sorted(seed for seed, _ in sessions) == [0, 1]
        assert len({hp["squeeze_ratio"] for _, hp in sessions}) == 1
    (experiment,) = [d.experiment for d in _hparams_data(root) if d.experiment.hparam_infos]
    infos = {h.name: h for h in experiment.hparam_infos}
    assert set(infos) == {"squeeze_ratio", "params", "macs", "mib"}
    from tensorboard.plugins.hparams import api_pb2

    sr = infos["squeeze_ratio"]
    assert sr.type == api_pb2.DATA_TYPE_FLOAT64
    assert [v.number_value for v in sr.domain_discrete.values] == [0.125, 0.5]
    assert infos["params"].type == api_pb2.DATA_TYPE_FLOAT64
    assert infos["params"].HasField("domain_interval")
    # The columns shown at first: the searched field and params.
    assert {n for n, h in infos.items() if h.differs} == {"squeeze_ratio", "params"}
    metrics = {m.name.tag: m.display_name for m in experiment.metric_infos}
    assert metrics["final/top1"] == "final top-1 (%)" and "eval/top1" in metrics


def test_the_hparams_page_shows_one_row_per_point(tb_sweep):
    """TensorBoard's own HParams backend (what its page requests) groups the sessions."""
    from tensorboard import program

    tb = program.TensorBoard()
    tb.configure(argv=[None, "--logdir", str(tb_sweep.root / "tensorboard"), "--port", "0"])
    url = tb.launch()
    request = {
        "experimentName": "",
        "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_RUNNING"],
        "colParams": [{"hparam": "squeeze_ratio"}, {"metric": {"tag": "final/top1"}}],
        "startIndex": 0,
        "sliceSize": 100,
    }
    body = json.dumps(request).encode()
    req = urllib.request.Request(
        url + "data/plugin/hparams/session_groups",
        data=body,
        headers={"Content-Type": "application/json", "X-TensorBoard-Feature-Flags": "{}"},
    )
    groups = []
    for _ in range(60):  # the first requests may come before the logdir was read
        groups = json.loads(urllib.request.urlopen(req, timeout=30).read()).get("sessionGroups", [])
        if len(groups) == 2 and all(len(g["sessions"]) == 2 for g in groups):
            break
        import time

        time.sleep(0.5)
    runs = collect_runs(tb_sweep)
    assert len(groups) == 2
    for g in groups:
        mine = [r for r in runs if point_name(r) == g["name"]]
        assert len(g["sessions"]) == 2 and len(mine) == 2
        assert g["hparams"]["squeeze_ratio"] == mine[0].params["model.squeeze_ratio"]
        (final,) = [m for m in g["metricValues"] if m["name"]["tag"] == "final/top1"]
        mean = sum(100 * r.result["final"]["top1"] for r in mine) / 2
        assert final["value"] == pytest.approx(mean, rel=1e-5)


def test_a_tensorboard_dir_of_the_old_layout_is_rebuilt(tb_sweep):
    root = tb_sweep.root / "tensorboard"
    stale = root / "squeeze_ratio=0.125" / "seed0" / "events.out.tfevents.1.old.0"
    stale.write_bytes(b"")
    (root / ".sqz_layout.json").unlink()
    assert cli.main(["report", str(tb_sweep.root), "--tensorboard", "--quiet"]) == 0
    assert not stale.exists() and (root / ".sqz_layout.json").exists()
