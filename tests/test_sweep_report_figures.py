"""The report's figures people read and reuse: log axes labelled over any range, accuracy and
size in panels of their own, the paper's points all shown, learning curves per design point,
PNG + SVG with editable text + PDF, and readable point labels."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from xml.etree import ElementTree

import matplotlib.pyplot as plt
import pytest
from test_sweep_support import run_inprocess, sr_space, write_sweep

from sqzexplore.rundir import read_jsonl
from sqzexplore.sweep import figures
from sqzexplore.sweep.analyze import collect_runs, point_curves, point_rows
from sqzexplore.sweep.design import point_label, trial_label
from sqzexplore.sweep.params import categorical
from sqzexplore.sweep.report import build_report


def _number(label: str) -> float:
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}
    return float(label[:-1]) * scale[label[-1]] if label[-1] in scale else float(label)


@pytest.mark.parametrize(
    "lo, hi", [(5.1e6, 17e6), (183_786, 730_000), (1.0, 1.05), (2e5, 1.9e6), (3e3, 9e7)]
)
def test_a_log_axis_is_labelled_end_to_end_over_any_range(lo, hi):
    fig, ax = plt.subplots()
    ax.scatter([lo, hi], [0, 1])
    ax.set_xscale("log")
    figures.readable_log_axis(ax.xaxis, [lo, hi])
    fig.canvas.draw()
    left, right = ax.get_xlim()
    shown = [
        _number(t.get_text())
        for t in ax.get_xticklabels()
        if t.get_text() and left <= t.get_position()[0] <= right
    ]
    plt.close(fig)
    assert len(shown) >= 3, shown
    # Labels reach across the data: the outer ones within a factor 2.5 of each end.
    assert min(shown) <= lo * 2.5 and max(shown) >= hi / 2.5, (shown, lo, hi)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("figs")
    path = write_sweep(
        tmp / "f.py",
        name="figs",
        space={**sr_space(0.125, 0.25, 0.5), "model.pct_3x3": categorical(0.25, 0.5)},
        seeds=2,
    )
    sweep_dir, _ = run_inprocess(path, tmp / "w")
    return sweep_dir


def test_accuracy_and_size_are_on_axes_of_their_own(sweep):
    defn = sweep.definition()
    rows = point_rows(collect_runs(sweep), defn)
    fig = figures.field_curves(rows, defn, "model.squeeze_ratio", "digits (test split)")
    fig.canvas.draw()
    boxes = [tuple(round(v, 4) for v in ax.get_position().bounds) for ax in fig.axes]
    assert len(boxes) == len(set(boxes)), "twin axes: two y scales over one plot"
    ylabels = [ax.get_ylabel() for ax in fig.axes]
    assert "top-1 accuracy (%)" in ylabels and "fp32 size (MiB)" in ylabels
    plt.close(fig)


def test_the_paper_panel_shows_every_point_the_paper_reports(sweep):
    defn = sweep.definition()
    rows = point_rows(collect_runs(sweep), defn)
    fig = figures.field_curves(rows, defn, "model.squeeze_ratio", "digits (test split)")
    (paper_ax,) = [ax for ax in fig.axes if "paper" in ax.get_ylabel()]
    xs = sorted(x for line in paper_ax.get_lines() for x in line.get_xdata())
    # The paper's Fig. 3a gives SR 0.125 and 0.75; the sweep trained 0.125..0.5 only.
    assert xs == [0.125, 0.75]
    left, right = paper_ax.get_xlim()
    assert left < 0.125 and right > 0.75
    plt.close(fig)


def test_figures_are_png_svg_with_text_and_pdf(sweep):
    defn = sweep.definition()
    rows = point_rows(collect_runs(sweep), defn)
    out = figures.render(figures.frontier_scatter(rows, defn, "complexity.params", "digits"))
    assert set(out) == {"png", "svg", "pdf"}
    assert out["pdf"][:5] == b"%PDF-" and out["png"][:4] == b"\x89PNG"
    root = ElementTree.fromstring(out["svg"])
    texts = ["".join(e.itertext()) for e in root.iter() if e.tag.endswith("text")]
    assert any("top-1 accuracy" in t for t in texts)  # editable text, not glyph paths
    assert any(re.fullmatch(r"\d+(\.\d+)?[kM]", t.strip()) for t in texts)


def test_learning_curves_are_the_mean_over_seeds_of_each_point(sweep):
    runs = collect_runs(sweep)
    curves = point_curves(sweep, runs)
    assert len(curves) == 6 and all(c["seeds"] == 2 for c in curves)
    first = curves[0]
    logs = [
        read_jsonl(sweep.trial_dir(r.trial_id) / "metrics.jsonl")
        for r in runs
        if r.point == first["point"]
    ]
    last = [[x["top1"] for x in log if x["split"] == "eval"][-1] for log in logs]
    evals = first["curves"]["eval/top1"]
    assert evals["mean"][-1] == pytest.approx(statistics.fmean(last))
    assert evals["std"][-1] == pytest.approx(statistics.stdev(last))
    assert first["label"] == point_label(next(r.design for r in runs if r.point == first["point"]))
    fig = figures.learning_curves(curves, sweep.definition(), "digits (test split)")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"{first['label']} (n=2)" in legend
    assert len(fig.axes[0].collections) == 6  # one ± 1 std band per point
    plt.close(fig)


def test_point_labels_read_like_the_design():
    design = {"model.pct_3x3": 0.5, "model.squeeze_ratio": 0.125}
    assert point_label(design) == "sr=0.125 pct=0.5"
    assert trial_label(design, 0) == "sr=0.125 pct=0.5 s0"
    assert point_label({"model.pool_after": ("conv1", "fire4")}) == "pool=conv1,fire4"


def test_the_report_has_learning_curves_pdfs_and_labelled_points(sweep):
    out = build_report(sweep, echo=lambda s: None)
    page = Path(out["report_html"]).read_text()
    assert "<h2>Learning curves</h2>" in page and "learning_curves.pdf" in page
    assert all(Path(p).read_bytes()[:5] == b"%PDF-" for p in out["pdf"])
    assert "<td>sr=0.125 pct=0.25</td>" in page  # the label, with the hash beside it
    header = Path(out["results_csv"]).read_text().splitlines()[0]
    assert header.startswith("label,point,")


def _on_the_frame(fig) -> list[str]:
    """Markers (and line ends) of the figure's plots that touch their axes' frame: each marker
    clear of the axis lines by its own size (its centre two radii inside), a bare line's ends
    two pixels inside."""
    import numpy as np

    fig.canvas.draw()
    touching = []
    for ax in fig.axes:
        box = ax.get_window_extent()
        for line in ax.get_lines():
            xy = np.asarray(line.get_xydata(), dtype=float)
            if not line.get_visible() or xy.size == 0:
                continue
            xy = xy[np.isfinite(xy).all(axis=1)]
            px = ax.transData.transform(xy)
            marker = line.get_marker()
            radius = 1.0  # a bare line's end: at least two pixels away
            if marker not in (None, "None", "none", "", " "):
                radius = line.get_markersize() * fig.dpi / 72
            for x, y in px:
                if not (
                    box.x0 + radius < x < box.x1 - radius and box.y0 + radius < y < box.y1 - radius
                ):
                    touching.append(f"{ax.get_title()}: {line.get_label()} at ({x:.0f}, {y:.0f})")
        for coll in ax.collections:
            offsets = np.asarray(coll.get_offsets(), dtype=float)
            sizes = coll.get_sizes() if hasattr(coll, "get_sizes") else []
            if offsets.size == 0 or len(sizes) == 0:
                continue
            px = coll.get_offset_transform().transform(offsets)
            radius = float(np.sqrt(max(sizes))) * fig.dpi / 72
            for x, y in px:
                if not (
                    box.x0 + radius < x < box.x1 - radius and box.y0 + radius < y < box.y1 - radius
                ):
                    touching.append(f"{ax.get_title()}: {coll.get_label()} at ({x:.0f}, {y:.0f})")
    plt.close(fig)
    return touching


def test_no_marker_or_curve_end_sits_on_an_axis_line(sweep):
    defn = sweep.definition()
    runs = collect_runs(sweep)
    rows = point_rows(runs, defn)
    from sqzexplore.sweep.analyze import error_samples

    built = {
        "frontier": figures.frontier_scatter(rows, defn, "complexity.params", "digits"),
        "field": figures.field_curves(rows, defn, "model.squeeze_ratio", "digits"),
        "edf": figures.error_edfs(error_samples(runs), defn, "digits"),
        "curves": figures.learning_curves(point_curves(sweep, runs), defn, "digits"),
    }
    touching = {name: _on_the_frame(fig) for name, fig in built.items()}
    assert not any(touching.values()), touching
