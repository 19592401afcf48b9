"""Latency: the measuring function (warm-up and timed calls counted, median/p90), its cache per
spec, host, runtime and threads (a point is measured once), and `sqz bench latency` end to end
with RESULTS.md rows that name the machine and the runtime; bad options are one line."""

from __future__ import annotations

import json
import os

import pytest

from sqzexplore import cli as sqz_cli
from sqzexplore.export import artifact, latency, source
from sqzexplore.export.source import ExportError
from sqzexplore.models.spec import preset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    stem_filters=8, base_e=16, incr_e=16, squeeze_ratio=0.25, num_fire=2, pool_after=("fire2",)
)


def test_time_calls_warms_up_then_times_each_call():
    calls = []
    times = latency.time_calls(lambda: calls.append(1), warmup=3, repeats=5)
    assert len(calls) == 8 and len(times) == 5 and all(t >= 0 for t in times)


def test_summarize_median_and_nearest_rank_p90():
    row = latency.summarize([i / 1000 for i in range(1, 11)])  # 1 .. 10 ms
    assert row == {"median_ms": pytest.approx(5.5), "p90_ms": pytest.approx(9), "min_ms": 1}


@pytest.mark.parametrize(
    "runtime, threads",
    [("onnxruntime", 1), ("onnxruntime", None), ("jax", None), ("jax", 1), ("litert", 1)],
)
def test_measure_latency_names_runtime_threads_and_host(runtime, threads):
    weights = source.from_spec(preset("digits", **TINY))
    row = latency.measure_latency(weights, runtime, threads, warmup=1, repeats=3)
    fmt = artifact.FORMATS[latency.RUNTIME_FORMAT[runtime]]
    assert row["runtime"] == artifact.runtime_version(fmt) and row["runtime"][-1].isdigit()
    assert row["threads"] == ("all" if threads is None else 1)
    assert row["batch"] == 1 and row["repeats"] == 3
    assert 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"]
    assert row["host"]["cores"] == os.cpu_count() and row["host"]["cpu"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(runtime="tflite"), "runtime: must be one of onnxruntime, jax, litert"),
        (dict(threads=True), "threads: must be an integer >= 1"),
        (dict(threads=0), "threads: must be an integer >= 1"),
        (dict(repeats=0), r"repeats: must be an integer in \[1, 100000\]"),
        (dict(warmup=-1), r"warmup: must be an integer in \[0, 100000\]"),
    ],
)
def test_bad_measurements_are_refused_before_anything_is_built(kwargs, message, monkeypatch):
    monkeypatch.setattr(source, "fold_batch_norm", lambda w: pytest.fail("built"))
    weights = source.Weights(preset("digits", **TINY), {}, {}, {})
    with pytest.raises(ExportError, match=message):
        latency.measure_latency(weights, **kwargs)


def test_cached_latency_measures_each_spec_host_runtime_and_threads_once(tmp_path, monkeypatch):
    measured = []

    def fake(weights, runtime, threads, **kwargs):
        measured.append((weights.spec.squeeze_ratio, threads))
        return {"median_ms": 1.0 + len(measured), "threads": threads}

    monkeypatch.setattr(latency, "measure_latency", fake)
    cache = str(tmp_path / "cache" / "latency.json")
    a, b = preset("digits", **TINY), preset("digits", **{**TINY, "squeeze_ratio": 0.5})
    first = latency.cached_latency(a, cache, threads=1)
    assert first["cached"] is False and measured == [(0.25, 1)]
    again = latency.cached_latency(a, cache, threads=1)
    assert again["cached"] is True and again["median_ms"] == first["median_ms"]
    latency.cached_latency(a, cache, threads=None)  # other threads: another entry
    latency.cached_latency(b, cache, threads=1)  # another spec: another entry
    assert measured == [(0.25, 1), (0.25, None), (0.5, 1)]
    with open(cache) as f:
        entries = json.load(f)["entries"]
    assert len(entries) == 3
    # The key names the spec's hash, the host and the runtime's version.
    key = latency.cache_key(a, "onnxruntime", 1)
    assert key in entries and latency.spec_key(a) in key and "onnxruntime 1." in key
    assert latency.host_info()["cpu"] in key


def test_bench_latency_end_to_end_writes_rows_naming_machine_and_runtime(tmp_path, capsys):
    specs = []
    for ratio in (0.25, 0.5):
        path = tmp_path / f"sr{ratio}.json"
        path.write_text(preset("digits", **{**TINY, "squeeze_ratio": ratio}).to_json())
        specs += ["--spec", str(path)]
    results, out = tmp_path / "RESULTS.md", tmp_path / "latency.json"
    argv = ["bench", "--benchmarks-dir", os.path.join(REPO, "benchmarks"), "latency", *specs,
            "--warmup=1", "--repeats=3", "--json", str(out), "--results", str(results)]  # fmt: skip
    assert sqz_cli.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["complete"] and len(data["latency"]) == 4  # 2 specs x threads 1, all
    assert [r["threads"] for r in data["latency"]] == [1, "all", 1, "all"]
    assert len(data["latency_ratio"]) == 2
    ratio = data["latency_ratio"][0]
    assert ratio["macs_ratio"] == pytest.approx(
        data["latency"][0]["macs"] / data["latency"][2]["macs"]
    )
    markdown = results.read_text()
    assert "Inference latency (batch 1" in markdown and "onnxruntime 1." in markdown
    assert data["machine"]["machine"] in markdown and "median latency ratio" in markdown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--runtime=tflite"], "--runtime: must be one of onnxruntime, jax, litert"),
        (["--threads=0"], "--threads: must be integers >= 1 or 'all', got '0'"),
        (["--repeats=0"], r"--repeats: must be an integer in [1, 100000]"),
        (["--layout=hwc"], "--layout: must be one of nhwc, nchw"),
        (["--preset=v7"], "--preset: unknown preset 'v7'"),
        (["--workdir=/nonexistent/run"], "--workdir: /nonexistent/run does not exist"),
    ],
)
def test_bench_latency_bad_options_are_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "latency.json"
    full = ["bench", "--benchmarks-dir", os.path.join(REPO, "benchmarks"), "latency", *argv,
            "--json", str(out)]  # fmt: skip
    assert sqz_cli.main(full) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()
