"""Benchmark tooling smoke tests: well-formed output, positive numbers, clear errors.

These check that `sqz bench` runs and reports sensibly; they time nothing (benchmarks are not
timed tests). The numbers themselves live in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json

import jax
import pytest

from sqzexplore import bench


def _read(path) -> dict:
    return json.loads(path.read_text())


def test_step_smoke_writes_json_and_markdown(tmp_path):
    out, md = tmp_path / "step.json", tmp_path / "RESULTS.md"
    assert bench.main(["step", "--smoke", "--json", str(out), "--results", str(md)]) == 0
    data = _read(out)
    assert data["complete"] is True
    assert data["command"] == f"sqz bench step --smoke --json {out} --results {md}"
    machine = data["machine"]
    assert machine["device_count"] == jax.device_count()
    assert machine["platform"] == "cpu" and machine["host_cores"] >= 1
    (row,) = data["step"]
    assert row["preset"] == "digits" and row["batch"] == 8 and row["data"] == "fixed"
    for key in ("img_s", "ms_per_step", "lower_s", "compile_s", "step_bytes", "flops"):
        assert row[key] > 0, key
    assert len(row["img_s_windows"]) == row["windows"] == 2
    assert row["loss_finite"]
    assert row["device_peak_bytes"] is None  # CPU: no allocator statistics
    text = md.read_text()
    assert text.startswith("# Benchmark results")
    assert machine["machine"] in text and "sqz bench step --smoke" in text
    table_rows = [line for line in text.splitlines() if line.startswith(f"| {machine['machine']}")]
    assert len(table_rows) == 1 and "| digits |" in table_rows[0]


def test_torch_and_maxbatch_skip_with_notes_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "torch_available", lambda: "torch not installed: skipped")
    out = tmp_path / "skip.json"
    assert bench.main(["torch", "--smoke", "--json", str(out)]) == 0
    assert bench.main(["maxbatch", "--smoke", "--json", str(out)]) == 0  # rewrites the file
    data = _read(out)
    assert data["complete"] and data["maxbatch"] == [] and data["torch"] == []
    assert any("needs a GPU" in note for note in data["notes"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["step", "--preset", "v9"], "--preset must be one of"),
        (["step", "--dtype", "float16"], "--dtype must be one of"),
        (["step", "--batch", "6"], "multiple of the device count"),
        (["step", "--windows", "0"], "--windows must be >= 1"),
    ],
)
def test_bad_options_are_clear_errors(argv, message, capsys):
    assert bench.main(argv) == 2
    assert message in capsys.readouterr().err


def test_torch_ratios_against_targets():
    step_rows = [
        dict(
            preset="v1.0", batch=256, image_size=224, dtype="bfloat16", data="fixed", img_s=15_000
        ),
        dict(preset="v1.0", batch=256, image_size=224, dtype="float32", data="fixed", img_s=5_000),
    ]
    torch_rows = [
        dict(preset="v1.0", batch=256, image_size=224, mode="eager", img_s=9_000),
        dict(preset="v1.0", batch=256, image_size=224, mode="compile", img_s=16_000),
    ]
    (ratio,) = bench.torch_ratios(torch_rows, step_rows)
    assert ratio["jax_img_s"] == 15_000  # the bf16 row, not the fp32 one
    assert ratio["vs_eager"] == pytest.approx(15_000 / 9_000)
    assert ratio["vs_eager_meets_target"] is True
    assert ratio["vs_compile"] == pytest.approx(15_000 / 16_000)
    assert ratio["vs_compile_meets_target"] is False


def test_self_times_do_not_count_nested_ops_twice():
    # A `while` op (0-100 ns) containing two ops, one of which contains another.
    events = [("while", 0, 100), ("a", 10, 20), ("b", 40, 30), ("c", 45, 10), ("d", 200, 5)]
    assert bench._self_times(events) == {"while": 50, "a": 20, "b": 20, "c": 10, "d": 5}
    assert bench._union_length([(0, 10), (5, 20), (30, 40)]) == 30


def test_op_categories():
    assert bench.op_category("select-and-scatter.3") == "max-pool (fwd/bwd)"
    assert bench.op_category("sm90_xmma_fprop_implicit_gemm_bf16") == "convolution"
    assert bench.op_category("loop_multiply_fusion") == "elementwise fusions"


@pytest.mark.slow
def test_all_smoke_runs_every_benchmark(tmp_path):
    """`sqz bench all --smoke --profile`: step (profiled), e2e through train_and_evaluate."""
    out, md = tmp_path / "all.json", tmp_path / "RESULTS.md"
    assert (
        bench.main(["all", "--smoke", "--profile", "--json", str(out), "--results", str(md)]) == 0
    )
    data = _read(out)
    (e2e,) = data["e2e"]
    assert e2e["experiment"] == "digits" and e2e["pipeline"] == "device-resident"
    for key in ("step_img_s", "device_step_img_s", "loop_img_s", "wall_time_s", "compile_s"):
        assert e2e[key] > 0, key
    assert e2e["loop_vs_step"] == pytest.approx(e2e["loop_img_s"] / e2e["step_img_s"])
    profile = data["step"][0]["profile"]
    assert "error" not in profile, profile
    assert profile["top"] and all(op["ms_per_step"] >= 0 for op in profile["top"])
    assert sum(profile["categories"].values()) == pytest.approx(1.0)
    assert "End to end" in md.read_text()
