"""Sweep analysis and reports: Pareto fronts against brute force, tables, figures, HTML, wandb."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
import time
from xml.etree import ElementTree

import pytest
from fake_runner import run_fake_trial
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sweep_support import FAKE_RUNNER, run_inprocess, sr_space, sweep_cli, write_sweep

from sqzexplore.sweep import cli
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs, union_seconds
from sqzexplore.sweep.metric_table import METRICS, metric
from sqzexplore.sweep.paper_values import paper_figure
from sqzexplore.sweep.params import categorical
from sqzexplore.sweep.pareto import dominates, frontier_rows, knee_row, pareto_front
from sqzexplore.sweep.report import build_report, watch


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
        "learning_curves.png",
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
    # One worker session ran (and found nothing to train): no train time over a wall time > 0.
    assert out["max_parallel_workers"] == 1
    assert out["efficiency"] == 0.0 and out["efficiency_per_worker"] == 0.0


# ------------------------------------------------------------------------------ what a reader sees
def page_of(report) -> str:
    with open(report["report_html"]) as f:
        return f.read()


def test_knee_is_where_accuracy_stops_paying_for_size():
    def front(params, acc):
        return [
            {"complexity.params": p, "final.top1.mean": a} for p, a in zip(params, acc, strict=True)
        ]

    rows = front([1e5, 2e5, 4e5, 8e5, 16e5], [0.5, 0.8, 0.9, 0.92, 0.93])
    assert knee_row(rows, "complexity.params") is rows[1]
    assert knee_row(rows[:2], "complexity.params") is None  # two points have no knee
    line = front([1e5, 2e5, 4e5], [0.5, 0.6, 0.7])  # straight on the log axis: no knee
    assert knee_row(line, "complexity.params") is None


def test_one_seed_shows_n_and_no_made_up_spread(tmp_path):
    path = write_sweep(tmp_path / "one.py", space=sr_space(0.125, 0.25, 0.5), seeds=1)
    sweep_dir, _ = run_inprocess(path, tmp_path / "w")
    printed = []
    out = build_report(sweep_dir, echo=printed.append)
    for row in read_csv(out["results_csv"]):
        assert row["final.top1.n"] == "1" and row["final.top1.mean"]
        assert row["final.top1.std"] == "" and row["final.top1.ci95"] == ""
    page = page_of(out)
    assert "± 0.00" not in page and "± -" not in page and "(n=1)" in page
    assert "(n=1)" in printed[0] and "± 0.00" not in printed[0]
    # The summary's "sweep directory" row shows the directory, the sweep file its own row.
    assert f"<td>sweep directory</td><td class='l'>{sweep_dir.root.resolve()}</td>" in page
    assert f"<td>sweep file</td><td class='l'>{path.resolve()}</td>" in page


def test_seed_spread_and_interval_in_every_accuracy_table(report):
    page = page_of(report)
    rows = [r for r in read_csv(report["results_csv"]) if r["state"] == "complete"]
    row = rows[0]
    mean, std = float(row["final.top1.mean"]), float(row["final.top1.std"])
    assert float(row["final.top1.ci95"]) == pytest.approx(12.706 * std / math.sqrt(2), rel=1e-3)
    assert f"{mean * 100:.2f} ± {std * 100:.2f} (n=2)" in page
    for caption in ("Key points", "Pareto front", "All design points"):
        assert caption in page
    assert page.count("<caption>top-1 accuracy (%) on digits (test split)") >= 2
    # Times side by side: train, compile and overhead per trial.
    assert "<th>train s/trial</th><th>compile s/trial</th><th>overhead s/trial</th>" in page
    # One frontier table, with the best point and the knee as rows above it.
    assert page.count("<h2>Pareto front") == 1
    assert "best: highest mean top-1" in page and "knee of the parameters front" in page


def test_paper_values_beside_the_measured_ones(report):
    page = page_of(report)
    assert "<h2>Against the paper</h2>" in page
    assert "the paper&#x27;s Fig. 3a (ImageNet)" in page  # squeeze ratio
    assert "the paper&#x27;s Table 3 (ImageNet)" in page  # bypass
    for value in ("80.3", "57.5", "60.4", "58.8", "82.5"):
        assert f"<td>{value}</td>" in page
    assert "paper top-5 (%), ImageNet" in page and "measured top-1 (%), digits (test split)" in page


def test_paper_values_match_by_field_value():
    sr = paper_figure("model.squeeze_ratio")
    assert sr.point(0.125).top5 == 0.803 and sr.point(0.25) is None
    assert sr.point(0.75000000001).top5 == 0.86
    pools = paper_figure("model.pool_after")
    assert pools.point(("conv1", "fire4", "fire8")).top1 == 0.575
    assert pools.point("conv1,fire3,fire5").top1 is None  # v1.1: a note, no number
    assert paper_figure("model.base_e") is None


def test_figures_are_png_and_svg_with_titles_that_say_what_was_measured(report):
    for png, svg in zip(report["figures"], report["svg"], strict=True):
        assert png[:-4] == svg[:-4]
        root = ElementTree.parse(svg).getroot()
        assert root.tag.endswith("svg")
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        name = os.path.basename(svg)
        assert f"<a href='{name}'>SVG</a>" in page_of(report)
        assert sum(1 for e in root.iter() if e.tag.endswith("path")) > 50  # drawn, not empty


def test_titles_legends_and_log_ticks(report, recorded_sweep):
    from sqzexplore.sweep import figures
    from sqzexplore.sweep.analyze import point_rows

    defn = recorded_sweep.definition()
    rows = point_rows(collect_runs(recorded_sweep), defn)
    where = "digits (test split)"
    for fig in (
        figures.frontier_scatter(rows, defn, "complexity.params", where),
        figures.field_curves(rows, defn, "model.squeeze_ratio", where),
        figures.field_curves(rows, defn, "model.bypass", where),  # categorical, paper panel
        figures.error_edfs([{**r, "error": 0.1} for r in rows], defn, where),
    ):
        fig.canvas.draw()
        title = fig._suptitle.get_text() + " ".join(a.get_title() for a in fig.axes)
        assert where in title and ("accuracy" in title or "error" in title)
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:  # outside the plotting area, never over the data
                box = legend.get_window_extent()
                assert not box.overlaps(ax.get_window_extent())
                assert not box.overlaps(ax.xaxis.label.get_window_extent())
                for tick in ax.get_xticklabels():
                    assert not tick.get_text() or not box.overlaps(tick.get_window_extent())
        if fig.axes[0].get_xscale() == "log":
            labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
            assert len(labels) >= 2 and all(re.fullmatch(r"\d+(\.\d+)?[kM]?", x) for x in labels)
        figures.render(fig)
    assert figures.short_number(700_000) == "700k" and figures.short_number(1e6) == "1M"
    assert figures.short_number(2.5e6) == "2.5M" and figures.short_number(50) == "50"


def test_watch_rebuilds_until_the_sweep_is_done_and_the_page_reloads_meanwhile(tmp_path):
    path = write_sweep(tmp_path / "w.py", space=sr_space(0.125, 0.25, 0.5))
    sweep_dir, _ = run_inprocess(path, tmp_path / "w", max_runs=1)
    pages = []

    def build(first):
        out = build_report(sweep_dir, refresh_s=7, echo=lambda s: None)
        pages.append(page_of(out))
        return out

    def sleep(seconds):  # the sweep moves on while the report waits
        run_inprocess(path, tmp_path / "w", max_runs=1)

    lines = []
    out = watch(sweep_dir, build, 7, echo=lines.append, sleep=sleep)
    assert out["finished"] and len(pages) == 3
    assert all("<meta http-equiv='refresh' content='7'>" in p for p in pages[:2])
    assert "still running" in pages[0]
    assert "http-equiv='refresh'" not in pages[-1] and "still running" not in pages[-1]
    assert [line.split("report updated: ")[1] for line in lines] == [
        "1/3 trials finished, 0 running",
        "2/3 trials finished, 0 running",
        "3/3 trials finished, 0 running",
    ]


@pytest.mark.slow
def test_report_watch_follows_a_running_sweep_from_the_command_line(tmp_path):
    path = write_sweep(
        tmp_path / "live.py", space=sr_space(0.125, 0.25, 0.5, 1.0), fixed={"num_steps": 20}
    )
    workdir = tmp_path / "w"
    sweep = sweep_cli(
        "run", str(path), "--workdir", str(workdir), "--runner", FAKE_RUNNER, "--progress",
        "off", env={"SQZ_FAKE_STEP_S": "0.1"},
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (workdir / "sweep.json").exists() and time.time() < deadline:
            time.sleep(0.1)
        watcher = sweep_cli("report", str(workdir), "--watch", "--interval", "1", "--quiet")
        page = workdir / "report" / "report.html"
        while time.time() < deadline and not (page.exists() and "refresh" in page.read_text()):
            time.sleep(0.1)
        assert "http-equiv='refresh' content='1'" in page.read_text()  # seen while running
        out, err = watcher.communicate(timeout=180)
        assert watcher.returncode == 0, err
        assert sweep.wait(timeout=180) == 0
    finally:
        for p in (sweep, watcher):
            if p.poll() is None:
                p.kill()
    assert "4/4 trials finished" in out
    assert "refresh" not in page.read_text()  # the last page, written once all had finished
