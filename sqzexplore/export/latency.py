"""Measured inference latency of an exported model on this host, for `sqz bench latency` and,
through `cached_latency`, for sweeps that use latency as an objective or a constraint.

A measurement: the artifact is loaded in its runtime (ONNX Runtime with a given number of
intra-op threads, or JAX), called `warmup` times untimed, then `repeats` times, each call timed
alone with `time.perf_counter`; the row holds the median and the 90th percentile in ms, the
runtime and its version, the threads and the host. Latency does not depend on weight values
(dense float32 convs), so a spec is measured at its random initialisation.

`cached_latency(spec, ...)` keys a JSON cache by the spec's hash, the host (name, CPU model,
core count) and the runtime's version and threads, so a sweep measures each design point once
per machine and runtime, and can do so before (never while) its trials train on the same cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sqzexplore.export.source import ExportError, Weights

RUNTIMES = ("onnxruntime", "jax", "litert")
RUNTIME_FORMAT = {"onnxruntime": "onnx", "jax": "stablehlo", "litert": "tflite"}
CACHE_VERSION = 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    """What a latency number is only valid on: the machine's name, CPU model and cores."""
    return {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
    }


def time_calls(call: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `call`, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def summarize(times: list[float]) -> dict[str, float]:
    """Median, 90th percentile (nearest rank) and min in milliseconds."""
    ms = sorted(t * 1e3 for t in times)
    p90 = ms[min(len(ms) - 1, int(np.ceil(0.9 * len(ms))) - 1)]
    return {"median_ms": statistics.median(ms), "p90_ms": p90, "min_ms": ms[0]}


def check_runtime(runtime: str):
    """The export format `runtime` runs, checked installed and importable (ExportError
    otherwise: a package found on the path that fails to import, e.g. a broken build or a
    missing shared library, cannot measure anything either)."""
    import importlib

    from sqzexplore.export.artifact import FORMATS, check_formats

    if runtime not in RUNTIMES:
        raise ExportError("runtime", f"must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    check_formats([RUNTIME_FORMAT[runtime]])
    fmt = FORMATS[RUNTIME_FORMAT[runtime]]
    for package in fmt.packages:
        try:
            importlib.import_module(package)
        except ImportError as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ExportError(
                "runtime", f"{runtime} is installed but {package} does not import here: {first}"
            ) from None
    return fmt


def check_counts(warmup: Any, repeats: Any) -> tuple[int, int]:
    for field, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 100_000:
            raise ExportError(field, f"must be an integer in [{low}, 100000], got {value!r}")
    return warmup, repeats


def measure_latency(
    weights: Weights,
    runtime: str = "onnxruntime",
    threads: int | None = 1,
    *,
    warmup: int = 10,
    repeats: int = 50,
    layout: str = "nhwc",
) -> dict[str, Any]:
    """Batch-1 latency of `weights` exported for `runtime`, with `threads` intra-op threads
    (None: all, the runtime's default). JAX's CPU threads are fixed at process start, so the
    jax runtime with a thread count runs in a child process (`_jax_times_in_child`)."""
    from sqzexplore.export.artifact import build, load, runtime_version, sample_inputs
    from sqzexplore.export.source import fold_batch_norm

    fmt = check_runtime(runtime)
    warmup, repeats = check_counts(warmup, repeats)
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 4096
    ):
        raise ExportError("threads", f"must be an integer >= 1 or None (all), got {threads!r}")
    spec, folded = fold_batch_norm(weights)
    data = build(fmt, spec, folded, 1, layout)
    if runtime == "jax" and threads is not None:
        times = _jax_times_in_child(data, threads, warmup, repeats, layout, spec)
    else:
        call = load(fmt, data, threads)
        images = sample_inputs(spec, 1, layout)
        times = time_calls(lambda: call(images), warmup, repeats)
    return {
        "spec": weights.spec.name,
        "runtime": runtime_version(fmt),
        "threads": "all" if threads is None else int(threads),
        "batch": 1,
        "layout": layout,
        "warmup": warmup,
        "repeats": repeats,
        **summarize(times),
        "host": host_info(),
    }


# XLA:CPU sizes its thread pools when the process starts: a thread count other than the
# process's own is measured in a child started with these flags and pinned to that many cores.
_XLA_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}"


def _jax_times_in_child(
    data: bytes, threads: int, warmup: int, repeats: int, layout: str, spec
) -> list[float]:
    import subprocess
    import sys
    import tempfile

    cores = sorted(os.sched_getaffinity(0))[:threads]
    if len(cores) < threads:
        raise ExportError("threads", f"{threads} threads need {threads} cores; {len(cores)} here")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.stablehlo")
        with open(path, "wb") as f:
            f.write(data)
        from sqzexplore.export.artifact import sample_inputs

        shape = list(sample_inputs(spec, 1, layout).shape)
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {_XLA_THREAD_FLAGS.format(n=threads)}"
        job = {"path": path, "shape": shape, "warmup": warmup, "repeats": repeats, "cores": cores}
        done = subprocess.run(
            [sys.executable, "-m", "sqzexplore.export.latency", json.dumps(job)],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the jax latency child failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child_main(job: str) -> None:
    """In the child: pin to the cores, load a StableHLO artifact (importing jax only now, so
    XLA sizes its pools for them), time it, print the seconds as JSON."""
    job = json.loads(job)
    os.sched_setaffinity(0, job["cores"])
    from sqzexplore.export.stablehlo import load_stablehlo

    with open(job["path"], "rb") as f:
        call = load_stablehlo(f.read())
    images = np.random.default_rng(0).standard_normal(job["shape"]).astype(np.float32)
    times = time_calls(lambda: np.asarray(call(images)), job["warmup"], job["repeats"])
    print(json.dumps(times), flush=True)


def spec_key(spec) -> str:
    return hashlib.sha256(spec.to_json(sort_keys=True).encode()).hexdigest()[:16]


def cache_key(spec, runtime: str, threads: int | None, layout: str = "nhwc") -> str:
    """The cache entry of one measurement: spec hash | host | runtime version | threads | layout."""
    from sqzexplore.export.artifact import runtime_version

    fmt = check_runtime(runtime)
    host = host_info()
    host_text = f"{host['host']}/{host['cpu']}/{host['cores']}"
    t = "all" if threads is None else str(threads)
    return f"{spec_key(spec)}|{host_text}|{runtime_version(fmt)}|threads={t}|{layout}"


def cached_latency(
    spec,
    cache_path: str,
    runtime: str = "onnxruntime",
    threads: int | None = 1,
    *,
    warmup: int = 10,
    repeats: int = 50,
    layout: str = "nhwc",
) -> dict[str, Any]:
    """`measure_latency` of `spec` at random init, read from / written to the JSON cache at
    `cache_path` (one entry per `cache_key`; the row gains `"cached": True` when read)."""
    from sqzexplore import rundir
    from sqzexplore.export.source import from_spec

    key = cache_key(spec, runtime, threads, layout)
    cache = rundir.read_json(cache_path, {}) if os.path.exists(cache_path) else {}
    if not isinstance(cache, dict) or cache.get("version") != CACHE_VERSION:
        cache = {"version": CACHE_VERSION, "entries": {}}
    hit = cache["entries"].get(key)
    if hit is not None:
        return {**hit, "cached": True}
    row = measure_latency(
        from_spec(spec), runtime, threads, warmup=warmup, repeats=repeats, layout=layout
    )
    row["spec_json"] = json.loads(spec.to_json())
    # Re-read before writing: another process may have added entries meanwhile.
    fresh = rundir.read_json(cache_path, {}) if os.path.exists(cache_path) else {}
    if isinstance(fresh, dict) and fresh.get("version") == CACHE_VERSION:
        cache = fresh
    cache["entries"][key] = row
    os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
    rundir.write_json(cache_path, cache)
    return {**row, "cached": False}


if __name__ == "__main__":
    import sys

    _child_main(sys.argv[1])
