"""Measured latency in sweeps (sweep/latency.py): `latency.ms` as an objective and
`max_latency_ms` as a constraint, each design point timed once (cached per spec, host and
runtime in the sweep directory) before anything trains, on both run stores; a real runlocal
squeeze-ratio sweep through the CLI whose results.csv, frontier.csv and report carry the
latency and the accuracy-vs-latency front; and the one-line refusal on a host whose ONNX
Runtime cannot run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import optuna
import pytest
from postgres_server import new_database, required_server
from test_sweep_support import (
    DIGITS,
    FAKE_RUNNER,
    REPO,
    TESTS,
    run_inprocess,
    sr_space,
    study_of,
    sweep_cli,
    write_sweep,
)

from sqzexplore.rundir import read_json, read_jsonl
from sqzexplore.sweep import cli
from sqzexplore.sweep import latency as sweep_latency
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs, point_rows, result_columns
from sqzexplore.sweep.space import Experiment, SweepError
from sqzexplore.sweep.sweepfile import load_sweep

LATENCY_OBJECTIVES = [("final.top1", "maximize"), ("latency.ms", "minimize")]


def _latency_sweep(path, **fields):
    fields.setdefault("name", "lat")
    fields.setdefault("base", Experiment(DIGITS, {"runlocal": True}))
    fields.setdefault("objectives", LATENCY_OBJECTIVES)
    return write_sweep(path, doc="Latency test sweep: what does SR cost in ms?", **fields)


def _measured(sweep_dir: sd.SweepDir) -> list[dict]:
    """Every fresh latency measurement of the sweep (one line each; cache hits add none)."""
    return read_jsonl(sweep_dir.root / sweep_latency.LOG_FILE)


@pytest.fixture(scope="module")
def postgres():
    with required_server() as url:
        yield url


@pytest.fixture(params=["journal", "postgres"])
def new_storage(request):
    if request.param == "journal":
        return lambda: None
    base = request.getfixturevalue("postgres")
    return lambda: new_database(base)


def test_latency_objective_is_measured_once_per_point_and_told(tmp_path, new_storage):
    path = _latency_sweep(tmp_path / "lat.py", space=sr_space(0.125, 0.5), seeds=2)
    storage = new_storage()
    sweep_dir, summary = run_inprocess(path, tmp_path / "w", storage=storage)
    assert summary.runs == {"complete": 4}
    measured = _measured(sweep_dir)
    assert len(measured) == 2  # two points, each timed once, before any run trained
    assert {m["model"]["squeeze_ratio"] for m in measured} == {0.125, 0.5}
    cache = read_json(sweep_dir.root / sweep_latency.CACHE_FILE)
    assert len(cache["entries"]) == 2
    runs = collect_runs(sweep_dir)
    for r in runs:
        # Registration read the cache the worker filled before it trained.
        assert r.latency["cached"] is True and r.latency["ms"] > 0
        assert r.latency["runtime"].startswith("onnxruntime ") and r.latency["threads"] == 1
    by_point = {r.point: r.latency["ms"] for r in runs}
    trials = study_of(sweep_dir).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        point = t.user_attrs["point"]
        assert t.values[1] == pytest.approx(by_point[point])  # the latency objective, in ms
        assert t.user_attrs["latency_ms"] == pytest.approx(by_point[point])
    # Another worker on the same sweep measures nothing again.
    run_inprocess(path, tmp_path / "w", storage=storage)
    assert len(_measured(sweep_dir)) == 2
    rows = point_rows(runs, sweep_dir.definition())
    assert {r["point"]: r["latency.ms"] for r in rows} == pytest.approx(by_point)
    assert "latency.ms" in result_columns(sweep_dir.definition())


def test_two_local_workers_time_each_point_once_before_any_run_starts(tmp_path):
    path = _latency_sweep(tmp_path / "lat.py", space=sr_space(0.125, 0.25, 0.5))
    workdir = tmp_path / "w"
    args = ["run", str(path), "--workdir", str(workdir), "--workers", "2", "--progress", "off"]
    proc = sweep_cli(*args, "--runner", FAKE_RUNNER)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    sweep_dir = sd.SweepDir(workdir)
    measured = _measured(sweep_dir)
    assert len(measured) == 3  # the second worker waited on the lock and read the cache
    starts = [
        a["time"]
        for r in collect_runs(sweep_dir)
        for a in read_jsonl(sweep_dir.trial_dir(r.trial_id) / "fake_attempts.jsonl")
    ]
    assert len(starts) == 3 and max(m["t"] for m in measured) < min(starts)


def test_max_latency_ms_skips_slow_points_before_training(tmp_path):
    path = _latency_sweep(
        tmp_path / "lat.py",
        objectives=[("final.top1", "maximize"), ("complexity.params", "minimize")],
        space=sr_space(0.125),
        constraints={"max_latency_ms": 1e-6},  # nothing runs in a nanosecond
    )
    sweep_dir, summary = run_inprocess(path, tmp_path / "w")
    assert summary.runs == {}
    skipped = read_jsonl(sweep_dir.skipped)
    assert [s["kind"] for s in skipped] == ["constraint"]
    assert "> max_latency_ms 1e-06" in skipped[0]["reason"]
    assert len(_measured(sweep_dir)) == 1 and not collect_runs(sweep_dir)


def test_random_sampler_measures_at_registration(tmp_path):
    # Points not known ahead: timed when registered, in the worker's thread, once each.
    path = _latency_sweep(
        tmp_path / "lat.py", space=sr_space(0.125, 0.25), sampler="random", n_trials=2
    )
    sweep_dir, summary = run_inprocess(path, tmp_path / "w", compile_ahead=True)
    assert summary.runs == {"complete": 2}
    assert len(_measured(sweep_dir)) == 2
    assert all(r.latency["cached"] is False for r in collect_runs(sweep_dir))


def test_sweep_file_latency_loads_with_its_presets():
    defn = load_sweep(str(REPO / "sweeps" / "latency.py"), "runlocal")
    assert [(o.metric, o.direction) for o in defn.objectives] == LATENCY_OBJECTIVES
    assert defn.seeds == (0,) and len(defn.grid_points()) == 2
    limited = load_sweep(str(REPO / "sweeps" / "latency.py"), "runlocal,max_latency_ms=0.5")
    assert limited.constraints == {"max_latency_ms": 0.5}
    with pytest.raises(SweepError, match="max_latency_ms must be a positive number"):
        load_sweep(str(REPO / "sweeps" / "latency.py"), "max_latency_ms=-1")


def test_runtime_that_cannot_import_refuses_the_sweep_in_one_line(tmp_path):
    # A fake onnxruntime first on the path that fails to import, as a broken install would.
    fake = tmp_path / "fake_site" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('libonnxruntime.so: cannot open')\n")
    path = _latency_sweep(tmp_path / "lat.py", space=sr_space(0.125))
    workdir = tmp_path / "w"
    done = subprocess.run(
        [sys.executable, "-m", "sqzexplore.sweep.cli", "run", str(path), "--workdir", str(workdir)],
        cwd=REPO,
        env={
            **__import__("os").environ,
            "PYTHONPATH": f"{fake.parent}:{REPO}:{TESTS}",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: sweep lat uses latency.ms, measured with onnxruntime")
    assert "onnxruntime does not import here: libonnxruntime.so: cannot open" in lines[0]
    assert "(no trial was registered)" in lines[0]
    assert not workdir.exists()


@pytest.mark.slow
def test_latency_sweep_end_to_end_through_the_cli(tmp_path, capsys):
    """A runlocal squeeze-ratio sweep with the real trainer, a latency objective, then its
    report: the accuracy-vs-latency front in frontier.csv, results.csv and the figures."""
    path = _latency_sweep(
        tmp_path / "lat.py",
        fixed={"num_steps": 3, "eval_every_epochs": 0.1, "log_every_steps": 1},
        space=sr_space(0.125, 0.5),
    )
    workdir = tmp_path / "w"
    argv = ["run", str(path), "--workdir", str(workdir), "--progress", "off"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "latency: measured 2 design point(s) with onnxruntime, 1 thread" in out
    assert "2 done, 0 running, 0 failed" in out
    sweep_dir = sd.SweepDir(workdir)
    assert len(_measured(sweep_dir)) == 2
    assert cli.main(argv) == 0  # a rerun trains and times nothing again
    assert len(_measured(sweep_dir)) == 2
    ms = {r.point: r.latency["ms"] for r in collect_runs(sweep_dir)}

    assert cli.main(["report", str(workdir)]) == 0
    text = capsys.readouterr().out
    assert "latency (ms)" in text and "accuracy vs params and/or vs macs and/or vs latency" in text
    report = workdir / "report"
    with open(report / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["point"]: float(r["latency.ms"]) for r in rows} == pytest.approx(ms)
    with open(report / "frontier.csv") as f:
        front = [r for r in csv.DictReader(f) if r["front"] == "latency"]
    assert front and all(float(r["latency.ms"]) == pytest.approx(ms[r["point"]]) for r in front)
    for fmt in ("png", "svg", "pdf"):
        assert (report / f"accuracy_vs_latency.{fmt}").stat().st_size > 0
    html = (report / "report.html").read_text()
    assert "vs latency (ms, batch 1) (median of 50 batch-1 calls, onnxruntime" in html
    state = json.loads((workdir / "sweep.json").read_text())
    assert state["definition"]["objectives"][1] == ["latency.ms", "minimize"]
