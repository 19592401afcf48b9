"""`sqz bench maxbatch`: the largest batch whose train step fits on one device (GPU/TPU only).

The compiled footprint is linear in the batch: two measured sizes predict where the allocator
limit is reached, and the prediction, the step above it and the largest power of two below it
are compiled and run to confirm. It runs under JAX's default allocator settings.
"""

from __future__ import annotations

import dataclasses
import gc
from typing import Any

import jax

from benchmarks.common import Section, device_memory, nbytes, num
from benchmarks.plan import Plan, StepCase, Timing, step_config
from benchmarks.step import compile_step, compiled_memory, time_step
from sqzexplore import sharding
from sqzexplore.models.spec import PRESETS

# One short window: enough to prove the step runs at that batch, and its rate.
CONFIRM = Timing(steps_per_window=3, windows=1, warmup=1, window_seconds=0.0)


def is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return "resource_exhausted" in text or "out of memory" in text or "oom" in text.split()


def measure_maxbatch(case: StepCase, plan: Plan, *, cap: int = 1 << 16) -> dict:
    """The largest batch whose step runs on one device without running out of memory.

    The compiled footprint is linear in the batch, so two measured sizes (case.batch and twice
    that) predict where the allocator limit is reached; the prediction and the largest power of
    two below it are then run to confirm (bisecting down on a failure). Without an allocator
    limit to aim at, the batch simply doubles until a step fails.
    """
    mesh = sharding.make_mesh(jax.devices()[:1])
    tried: dict[int, dict] = {}

    def fits(batch: int) -> bool:
        if batch in tried:
            return bool(tried[batch]["fits"])
        config = step_config(dataclasses.replace(case, batch=batch), smoke=plan.smoke)
        entry: dict[str, Any] = {"batch": batch}
        tried[batch] = entry
        step = None
        try:
            step = compile_step(config, data="fixed", mesh=mesh)
            entry["step_bytes"] = compiled_memory(step.compiled)
            limit = device_memory().get("bytes_limit")
            if limit and entry["step_bytes"] and entry["step_bytes"] > limit:
                entry.update(fits=False, why="compiled footprint exceeds the allocator limit")
                return False
            timing = time_step(step, CONFIRM)
            entry.update(fits=True, img_s=timing["img_s"])
            return True
        except Exception as e:
            if not is_oom(e):
                raise
            entry.update(fits=False, why=str(e).splitlines()[0][:160])
            return False
        finally:
            del step
            gc.collect()

    def bisect(ok: int, bad: int) -> tuple[int, int]:
        # Down to a gap of 1/8 of the fitting batch, on multiples of 8.
        while bad - ok > max(8, ok // 8):
            mid = (ok + bad) // 2 // 8 * 8
            if mid <= ok:
                break
            ok, bad = (mid, bad) if fits(mid) else (ok, mid)
        return ok, bad

    small, large = case.batch, 2 * case.batch
    ok = bad = predicted = None
    if not fits(small):
        bad = small
    elif not fits(large):
        ok, bad = bisect(small, large)
    else:
        ok = large
        limit = device_memory().get("bytes_limit")
        m_small, m_large = tried[small].get("step_bytes"), tried[large].get("step_bytes")
        if limit and m_small and m_large and m_large > m_small:
            per_image = (m_large - m_small) / (large - small)
            predicted = int((limit - (m_small - per_image * small)) / per_image) // 8 * 8
            predicted = min(predicted, cap)
            pow2 = 1 << max(0, predicted.bit_length() - 1)
            while pow2 > ok and not fits(pow2):
                bad, pow2 = pow2, pow2 // 2
            ok = max(ok, pow2)
            if predicted > ok and bad is None:
                if fits(predicted):
                    # Confirm the edge: the next size up should not fit (compiled, maybe run).
                    above = predicted + max(8, predicted // 64 // 8 * 8)
                    ok, bad = (above, None) if fits(above) else (predicted, above)
                else:
                    ok, bad = bisect(ok, predicted)
        else:
            while ok * 2 <= cap and fits(ok * 2):
                ok *= 2
            if ok * 2 <= cap:
                ok, bad = bisect(ok, ok * 2)
    fitting = [b for b, t in tried.items() if t["fits"]]
    pow2_ok = max((b for b in fitting if b & (b - 1) == 0), default=None)
    best = tried.get(ok, {}) if ok else {}
    return {
        "preset": case.preset,
        "image_size": case.image_size or PRESETS[case.preset].image_size,
        "dtype": case.dtype,
        "max_batch": ok,
        "max_power_of_two": pow2_ok,
        "predicted_from_footprint": predicted,
        "first_failed": bad,
        "step_bytes_at_max": best.get("step_bytes"),
        "img_s_at_max": best.get("img_s"),
        "bytes_limit": device_memory().get("bytes_limit"),
        "tried": sorted(tried.values(), key=lambda t: t["batch"]),
    }


# ---------------------------------------------------------------------------------- its report
def _cells(r: dict) -> list[str]:
    return [
        r["preset"], str(r["image_size"]), r["dtype"], num(r["max_batch"]),
        num(r["max_power_of_two"]), num(r["predicted_from_footprint"]),
        num(r["first_failed"]), nbytes(r["step_bytes_at_max"]), num(r["img_s_at_max"]),
        nbytes(r["bytes_limit"]),
    ]  # fmt: skip


SECTION = Section(
    name="maxbatch",
    title="Largest batch that fits (one device; predicted from the compiled footprint at two "
    "sizes, then run to confirm):",
    columns=("preset", "image", "dtype", "max batch", "largest power of two", "predicted",
             "first failed", "step memory at max", "img/s at max", "allocator limit"),
    cells=_cells,
    line=lambda r: (
        f"{r['preset']} {r['dtype']}: max batch {r['max_batch']} (failed at {r['first_failed']})"
    ),
)  # fmt: skip
