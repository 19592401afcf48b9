"""What the benchmarks share: their errors, the timed-window loop, device facts, and the shape of
a benchmark's section in a report (each benchmark module declares its own `Section`s; report.py
only renders them)."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

# The smoke spec: the same architecture families, two narrow Fire modules (compiles in seconds).
SMOKE_OVERRIDES = dict(
    stem_filters=16, base_e=16, incr_e=16, squeeze_ratio=0.25, num_fire=2, pool_after=("conv1",)
)


@dataclasses.dataclass(frozen=True)
class Section:
    """One kind of row in a `sqz bench` report, declared by the benchmark that measures it.

    `name` keys the rows in the JSON results; `title`, `columns` and `cells(row)` make its
    RESULTS.md table (report.py adds the machine as the first column); `line(row)` is printed
    when a row is measured; `after(rows)` gives markdown lines under the table (profiles).
    """

    name: str
    title: str
    columns: tuple[str, ...]
    cells: Callable[[dict], list[str]]
    line: Callable[[dict], str] | None = None
    after: Callable[[list[dict]], list[str]] | None = None

    def one_line(self, row: dict) -> str:
        """The line printed when `row` is measured."""
        if self.line is not None:
            return self.line(row)
        scalars = {k: v for k, v in row.items() if not isinstance(v, (list, dict))}
        return json.dumps(scalars)[:200]


def num(x: float | None, digits: int = 0) -> str:
    """A number for a table cell, with thousands separators; n/a for None."""
    return "n/a" if x is None else f"{x:,.{digits}f}"


def nbytes(x: float | None) -> str:
    """A byte count for a table cell, in MiB or GiB; n/a for None."""
    if x is None:
        return "n/a"
    return f"{x / 2**20:,.0f} MiB" if x < 2**30 else f"{x / 2**30:,.2f} GiB"


def mark(ok: bool | None) -> str:
    """A target check for a table cell."""
    return "n/a" if ok is None else ("met" if ok else "MISSED")


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
