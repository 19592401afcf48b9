"""What the benchmarks share: their errors, the timed-window loop, and device facts."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

# The smoke spec: the same architecture families, two narrow Fire modules (compiles in seconds).
SMOKE_OVERRIDES = dict(
    stem_filters=16, base_e=16, incr_e=16, squeeze_ratio=0.25, num_fire=2, pool_after=("conv1",)
)


class BenchError(ValueError):
    """A benchmark request that cannot run; the message names the option and what is allowed."""


class Stopped(Exception):
    """SIGTERM (e.g. `timeout`) arrived: stop and write what was measured."""


def is_accelerator() -> bool:
    """True when jax's default devices are GPUs or TPUs."""
    import jax

    return jax.devices()[0].platform != "cpu"


def timed_windows(
    step: Callable[[], Any],
    sync: Callable[[], Any],
    batch: int,
    *,
    steps_per_window: int | None,
    windows: int,
    warmup: int,
    window_seconds: float,
) -> dict:
    """Steady-state throughput of `step()` (one dispatched train step of `batch` images).

    `windows` timed windows of back-to-back steps, each ended by one `sync()` (the only wait for
    the device); img/s is the median window's. Without `steps_per_window`, windows are sized to
    `window_seconds` from one timed step (at least 2, at most 2000 steps). The JAX step and the
    torchvision comparison are timed by this same loop.
    """
    for _ in range(warmup):
        step()
    sync()
    if steps_per_window is None:
        t0 = time.perf_counter()
        step()
        sync()
        one = max(time.perf_counter() - t0, 1e-6)
        steps_per_window = int(min(2000, max(2, math.ceil(window_seconds / one))))
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        sync()
        rates.append(steps_per_window * batch / (time.perf_counter() - t0))
    median = statistics.median(rates)
    return {
        "img_s": median,
        "img_s_windows": rates,
        "ms_per_step": 1e3 * batch / median,
        "steps_per_window": steps_per_window,
        "windows": windows,
    }


def device_memory() -> dict:
    """Peak / current / limit bytes of device 0 (`memory_stats`), or {} where unsupported (CPU)."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        stats = None
    if not stats:
        return {}
    keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
    return {k: int(stats[k]) for k in keys if k in stats}
