"""`sqz bench compile-ahead`: compile the next run's programs while the current run trains.

A sweep worker trains design points one after another, and each first compiles its train and eval
steps (17-24 s per digits trial on the 2-core CPU, 18-58 s per variant on a GPU host), while the
device idles. This runs `plan.ahead` (one preset at several squeeze ratios: distinct programs,
each trained `plan.ahead_steps` steps on a device-resident batch and evaluated once) twice:

- sequential: compile run i (train and eval step), train it, evaluate it, then run i+1;
- ahead: when run i starts training, run i+1's compilation starts in a background thread
  (`jax.jit(step).lower(...).compile()` of the public steps), and run i+1 waits only for what
  is left of it.

It reports both wall times and, per run, compile, train and waiting time: a lower train img/s in
the ahead mode is the background compile competing with training (expected on a CPU-only host,
where the trainer should leave compile-ahead off).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import time
from typing import Any

import jax
import numpy as np

from benchmarks.common import Section
from benchmarks.plan import Plan, StepCase, step_config
from benchmarks.step import CompiledStep, compile_eval_step, compile_step
from sqzexplore import sharding


@dataclasses.dataclass
class Run:
    """One run's compiled train and eval steps and its inputs."""

    squeeze_ratio: float
    step: CompiledStep
    eval_step: Any
    mask: Any
    compile_s: float  # set-up, lower and compile of both steps


def prepare(config) -> Run:
    """Everything a run compiles before its first step (thread-safe: no cache clearing)."""
    t0 = time.perf_counter()
    step = compile_step(config, cold=False)
    mask = jax.device_put(np.ones(step.labels.shape, np.float32), sharding.batch_sharded(step.mesh))
    eval_step, _ = compile_eval_step(step, mask)
    return Run(step.spec.squeeze_ratio, step, eval_step, mask, time.perf_counter() - t0)


def train(run: Run, steps: int) -> float:
    """`steps` train steps, then one eval batch; seconds until both are done."""
    s = run.step
    t0 = time.perf_counter()
    state = s.state
    for _ in range(steps):
        state, metrics = s.compiled(state, s.images, s.labels)
    sums = run.eval_step(state, s.images, s.labels, run.mask)
    jax.block_until_ready((state, metrics, sums))
    s.state = state  # the old buffers were donated
    return time.perf_counter() - t0


def _record(run: Run, train_s: float, steps: int, waited_s: float) -> dict:
    batch = int(run.step.config.batch_size)
    return {
        "squeeze_ratio": run.squeeze_ratio,
        "compile_s": run.compile_s,
        "train_s": train_s,
        "img_s": steps * batch / train_s,
        "waited_s": waited_s,
    }


def run_sequential(configs: list, steps: int) -> dict:
    """Compile, train, compile, train, ...: what a worker does today."""
    runs = []
    t0 = time.perf_counter()
    for config in configs:
        run = prepare(config)
        runs.append(_record(run, train(run, steps), steps, waited_s=run.compile_s))
        del run
    return {"wall_s": time.perf_counter() - t0, "runs": runs}


def run_ahead(configs: list, steps: int) -> dict:
    """The next run compiles in a background thread while the current one trains."""
    runs = []
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile-ahead") as pool:
        pending = pool.submit(prepare, configs[0])
        for i in range(len(configs)):
            t_wait = time.perf_counter()
            run = pending.result()
            waited = time.perf_counter() - t_wait
            if i + 1 < len(configs):
                pending = pool.submit(prepare, configs[i + 1])
            runs.append(_record(run, train(run, steps), steps, waited_s=waited))
            del run
    return {"wall_s": time.perf_counter() - t0, "runs": runs}


def _warm_up(case: StepCase) -> None:
    """Compile a tiny program once, untimed: the process's one-time costs (jax's lowering
    machinery, first backend use) must not land on whichever mode runs first."""
    tiny = dataclasses.replace(case, batch=jax.device_count(), squeeze_ratio=None)
    prepare(step_config(tiny, smoke=True))


def measure_compile_ahead(cases: list[StepCase], plan: Plan) -> dict:
    """Sequential vs compile-ahead over the runs `cases`, the row `sqz bench compile-ahead`
    reports. In-memory caches are cleared before each mode, so both compile cold."""
    configs = [step_config(c, smoke=plan.smoke) for c in cases]
    _warm_up(cases[0])
    modes = {}
    for name, run_all in (("sequential", run_sequential), ("ahead", run_ahead)):
        jax.clear_caches()
        gc.collect()
        modes[name] = run_all(configs, plan.ahead_steps)
    seq, ahead = modes["sequential"], modes["ahead"]
    first = configs[0]
    return {
        "preset": first.model.name,
        "image_size": first.model.image_size,
        "batch": int(first.batch_size),
        "dtype": first.model.dtype,
        "squeeze_ratios": [r["squeeze_ratio"] for r in seq["runs"]],
        "steps_per_run": plan.ahead_steps,
        "sequential": seq,
        "ahead": ahead,
        "sequential_wall_s": seq["wall_s"],
        "ahead_wall_s": ahead["wall_s"],
        "saved_s": seq["wall_s"] - ahead["wall_s"],
        "speedup": seq["wall_s"] / ahead["wall_s"],
        # Compilation the ahead mode took off the critical path (every run but the first).
        "hidden_compile_s": sum(r["compile_s"] - r["waited_s"] for r in ahead["runs"][1:]),
    }


# ---------------------------------------------------------------------------------- its report
def _cells(r: dict) -> list[str]:
    seq, ahead = r["sequential"]["runs"], r["ahead"]["runs"]
    per_run = lambda runs, key: " / ".join(f"{x[key]:.1f}" for x in runs)
    return [
        r["preset"], str(r["image_size"]), str(r["batch"]), r["dtype"],
        ", ".join(f"{x:g}" for x in r["squeeze_ratios"]), str(r["steps_per_run"]),
        f"{r['sequential_wall_s']:.1f}", f"{r['ahead_wall_s']:.1f}", f"{r['speedup']:.2f}",
        per_run(seq, "compile_s"), per_run(ahead, "compile_s"), per_run(seq, "train_s"),
        per_run(ahead, "train_s"), per_run(ahead, "waited_s"),
    ]  # fmt: skip


def _line(r: dict) -> str:
    return (
        f"{r['preset']} b{r['batch']} {r['dtype']}, {len(r['squeeze_ratios'])} runs of "
        f"{r['steps_per_run']} steps: sequential {r['sequential_wall_s']:.1f}s, ahead "
        f"{r['ahead_wall_s']:.1f}s (x{r['speedup']:.2f})"
    )


SECTION = Section(
    name="compile_ahead",
    title="Compile-ahead (runs of one preset at several squeeze ratios, each compiling its train "
    "and eval steps, training, evaluating once; ahead: the next run compiles in a "
    "background thread while this one trains; per-run values in run order):",
    columns=("preset", "image", "batch", "dtype", "squeeze ratios", "steps/run",
             "sequential wall s", "ahead wall s", "speedup", "compile s (sequential)",
             "compile s (ahead, background)", "train s (sequential)", "train s (ahead)",
             "waited s (ahead)"),
    cells=_cells,
    line=_line,
)  # fmt: skip
