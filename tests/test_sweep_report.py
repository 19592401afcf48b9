"""Sweep analysis and reports: Pareto fronts against brute force, tables, figures, HTML, wandb."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest
from fake_runner import run_fake_trial
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sweep_support import run_inprocess, sr_space, write_sweep

from sqzexplore.sweep import cli
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import (
    collect_runs,
    dominates,
    frontier_rows,
    pareto_front,
    union_seconds,
)
from sqzexplore.sweep.metric_table import METRICS, metric
from sqzexplore.sweep.params import categorical
from sqzexplore.sweep.report import build_report


def brute_front(acc, size):
    """Indices no other point beats: at least as accurate and as small, better in one."""
    out = []
    for i in range(len(acc)):
        beaten = any(
            acc[j] >= acc[i] and size[j] <= size[i] and (acc[j] > acc[i] or size[j] < size[i])
            for j in range(len(acc))
        )
        if not beaten:
            out.append(i)
    return out


small_values = st.integers(0, 6).map(float)  # few distinct values: many ties


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(small_values, small_values), max_size=30))
def test_frontier_matches_brute_force(points):
    acc = [p[0] for p in points]
    size = [p[1] for p in points]
    assert pareto_front(points, [True, False]) == brute_front(acc, size)
    rows = [
        {"state": "complete", "i": i, "final.top1.mean": a, "complexity.params": s}
        for i, (a, s) in enumerate(points)
    ]
    front = [r["i"] for r in frontier_rows(rows, "complexity.params")]
    assert sorted(front) == brute_front(acc, size)
    assert [size[i] for i in front] == sorted(size[i] for i in front)  # ordered by size


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(small_values, small_values, small_values), min_size=1, max_size=20),
    st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_pareto_front_properties(points, maximize):
    front = pareto_front(points, maximize)
    assert front  # a non-empty set always has a non-dominated point
    for i in range(len(points)):
        dominated = any(dominates(points[j], points[i], maximize) for j in range(len(points)))
        assert (i in front) == (not dominated)


def test_union_seconds():
    assert union_seconds([]) == 0
    assert union_seconds([(0, 10), (5, 15), (20, 25)]) == 20
    assert union_seconds([(0, 10), (2, 3)]) == 10


def test_metric_table_reads_result_json():
    result = {"final": {"top1": 0.93, "top5": None}, "complexity": {"params": 1248424}}
    assert metric("final.top1").value(result) == 0.93
    assert metric("final.error").value(result) == pytest.approx(0.07)
    assert metric("final.top5").value(result) is None
    assert metric("complexity.params").format(1248424) == "1,248,424"
    assert metric("final.top1").format(0.9312) == "93.12"
    assert metric("complexity.macs").format(818.92e6) == "818.92"
    assert all(m.label and m.fmt for m in METRICS.values())
    with pytest.raises(KeyError, match="known metrics"):
        metric("final.top7")


@pytest.fixture(scope="module")
def recorded_sweep(tmp_path_factory):
    """A finished fake sweep with a failed point, a pruned-free grid and a rejected point."""
    tmp = tmp_path_factory.mktemp("sweep")

    def flaky(config, workdir, *, on_eval=None):
        if config.model.bypass == "complex" and config.model.squeeze_ratio == 0.5:
            raise RuntimeError("out of memory")
        return run_fake_trial(config, workdir, on_eval=on_eval)

    path = write_sweep(
        tmp / "r.py",
        name="report_demo",
        space={
            **sr_space(0.125, 0.25, 0.5, 1.0),
            "model.bypass": categorical("none", "simple", "complex"),
        },
        seeds=2,
        constraints={"max_mib": 5.6},  # rejects SR 1.0 with complex bypass (5.8 MiB)
    )
    sweep_dir, _ = run_inprocess(path, tmp / "w", runner=flaky)
    return sweep_dir


@pytest.fixture(scope="module")
def report(recorded_sweep):
    printed = []
    out = build_report(recorded_sweep, echo=printed.append)
    return {**out, "printed": "\n".join(printed)}


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_results_csv_has_one_row_per_design_point(recorded_sweep, report):
    printed = report["printed"]
    rows = read_csv(report["results_csv"])
    runs = collect_runs(recorded_sweep)
    assert len(rows) == len({r.point for r in runs}) == 11  # 12 points, one rejected
    assert {
        "model.squeeze_ratio",
        "model.bypass",
        "complexity.params",
        "complexity.macs",
        "complexity.fp32_mib",
        "final.top1.mean",
        "final.top1.std",
        "train_time_s.mean",
        "wall_time_s.mean",
        "seeds_complete",
    } <= set(rows[0])
    for row in rows:
        group = [r for r in runs if r.point == row["point"]]
        complete = [r.result["final"]["top1"] for r in group if r.state == sd.COMPLETE]
        assert row["seeds"] == "2"
        if row["state"] == "complete":
            assert float(row["final.top1.mean"]) == pytest.approx(statistics.fmean(complete))
            assert float(row["final.top1.std"]) == pytest.approx(statistics.stdev(complete))
            assert int(row["complexity.params"]) == group[0].result["complexity"]["params"]
        else:
            assert row["state"] == "failed" and row["model.bypass"] == "complex"
            assert row["final.top1.mean"] == ""  # no complete seed
        assert row["final.top1.n"] == row["seeds_complete"]
        # Per-trial overhead: wall - train - compile, a column of its own.
        times = [r.result for r in group if r.state == sd.COMPLETE]
        if times:
            expected = statistics.fmean(
                t["wall_time_s"] - t["train_time_s"] - t["compile_time_s"] for t in times
            )
            assert float(row["overhead_s.mean"]) == pytest.approx(max(0.0, expected), abs=1e-6)
    # One frontier table is printed (it lists both fronts), with the key points above it.
    assert printed.count("Pareto front") == 1
    assert "digits (test split)" in printed
    assert "best: highest mean top-1" in printed and "knee of the" in printed
    assert "(n=2)" in printed and "± 0.00" not in printed


def test_frontier_csv_is_the_brute_force_front(report):
    rows = [r for r in read_csv(report["results_csv"]) if r["state"] == "complete"]
    front = read_csv(report["frontier_csv"])
    for size, label in (("complexity.params", "params"), ("complexity.macs", "macs")):
        acc = [float(r["final.top1.mean"]) for r in rows]
        sizes = [float(r[size]) for r in rows]
        expected = {rows[i]["point"] for i in brute_front(acc, sizes)}
        got = [r for r in front if r["front"] == label]
        assert {r["point"] for r in got} == expected and expected
        assert [int(r["rank"]) for r in got] == list(range(1, len(got) + 1))
        assert [float(r[size]) for r in got] == sorted(float(r[size]) for r in got)


def test_report_html_is_self_contained(report):
    out = report
    with open(out["report_html"]) as f:
        page = f.read()
    names = [p.split("/")[-1] for p in out["figures"]]
    assert {
        "accuracy_vs_params.png",
        "accuracy_vs_macs.png",
        "error_edf.png",
        "field_model_squeeze_ratio.png",
        "field_model_bypass.png",
    } == set(names)
    for path in out["figures"]:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert page.count("src='data:image/png;base64,") == len(names)
    assert "http://" not in page and "https://" not in page  # nothing fetched from a network
    for text in (
        "report_demo",
        "SWEEP EFFICIENCY",
        "Test sweep: what does SR buy?",
        "Sweep definition",
        "Machine",
        "Design points not trained",
        "max_mib",
        "sweep wall time",
        "Pareto front",
    ):
        assert text in page
    assert "<td>failed</td>" in page  # the failed point is listed with its state


def test_sweep_efficiency_is_train_time_over_wall_time(tmp_path, monkeypatch):
    monkeypatch.setenv("SQZ_FAKE_STEP_S", "0.01")
    path = write_sweep(tmp_path / "e.py", space=sr_space(0.25, 0.5), fixed={"num_steps": 10})
    sweep_dir, _ = run_inprocess(path, tmp_path / "w")
    out = build_report(sweep_dir, echo=lambda s: None)
    runs = collect_runs(sweep_dir)
    train = sum(r.result["train_time_s"] for r in runs)
    sessions = [json.loads(p.read_text()) for p in sweep_dir.workers.glob("*.json")]
    wall = sum(s["finished"] - s["started"] for s in sessions)
    assert out["efficiency"] == pytest.approx(train / wall, rel=1e-6)
    assert 0 < out["efficiency"] <= 1.0


def test_report_cli_and_wandb_summary_offline(recorded_sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (tmp_path / "wandb").mkdir()
    rc = cli.main(
        [
            "report",
            str(recorded_sweep.root),
            "--out",
            str(tmp_path / "r"),
            "--wandb-mode",
            "offline",
            "--quiet",
        ]
    )
    assert rc == 0
    assert "report: " in capsys.readouterr().out
    runs = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert runs, "an offline wandb run should have been written under WANDB_DIR"
    assert any(p.suffix == ".wandb" for p in runs[0].rglob("*"))


def test_report_of_a_sweep_with_nothing_finished(tmp_path):
    path = write_sweep(tmp_path / "n.py", space=sr_space(0.25, 0.5))
    sweep_dir, _ = run_inprocess(path, tmp_path / "w", max_runs=0)
    out = build_report(sweep_dir, echo=lambda s: None)
    assert out["points"] == 0 and out["fronts"] == {"complexity.params": 0, "complexity.macs": 0}
    assert math.isnan(out["efficiency"]) or out["efficiency"] == 0
