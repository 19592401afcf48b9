"""Benchmarks: train-step throughput, compile time, memory, end-to-end loops and torchvision.

For a design-space tool speed is trials per hour, so this measures what a trial spends its time
on, on whatever devices exist, and writes rows that name the machine:

    sqz bench step     the trainer's own jitted step (`train.make_train_step`) on a synthetic
                       batch resident on the devices: compile time (lower and compile timed
                       apart, no persistent cache), steady-state img/s (host sync only at the end
                       of each timed window; median of the windows), compiled and peak device
                       memory, XLA's FLOP / byte counts and the rates they imply
    sqz bench e2e      `train.train_and_evaluate` on digits and a CIFAR-shaped dataset (synthetic
                       32x32, or a TFDS dataset with --data-dir, device-resident and tf.data):
                       loop img/s against the same step on a fixed batch (target: >= 0.9)
    sqz bench torch    torchvision squeezenet1_0 / 1_1, eager AMP channels-last and torch.compile,
                       same device and batch, as ratios to the JAX bf16 step (skipped, with a
                       note, when torch or torchvision is not installed)
    sqz bench maxbatch the largest batch (and power of two) whose step fits (GPU/TPU only)
    sqz bench all      all of the above

Without --preset/--batch/--dtype each command uses a plan for the platform: the issue's sizes on
an accelerator (v1.0 and v1.1 at 224px batch 256, the 32x32 net at batch 512, bf16 and fp32),
modest sizes on a CPU. `--smoke` shrinks everything to seconds (for tests). `--json PATH` writes
machine-readable results (rewritten after every row, so a killed run keeps what it measured);
`--results benchmarks/RESULTS.md` appends markdown tables with the machine, versions, date and
the exact command. `--profile` traces a few steps of each step row and lists where device time
goes (top ops, device busy fraction): the evidence RESULTS.md cites when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sqzexplore.models.spec import DTYPES, PRESETS

COMMANDS = ("step", "e2e", "torch", "maxbatch", "all")
REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = {
    "digits": "experiments/digits/squeezenet.py",
    "cifar": "experiments/cifar10/squeezenet.py",
}
TORCHVISION_MODELS = {"v1.0": "squeezenet1_0", "v1.1": "squeezenet1_1"}
# Targets of the Performance issue (ratios measured in one run on the same device).
TARGET_VS_TORCH_EAGER = 1.5
TARGET_VS_TORCH_COMPILE = 1.0
TARGET_LOOP_VS_STEP = 0.9

# Published peak HBM bandwidth (bytes/s) and dense bf16 tensor throughput (FLOP/s) of common
# accelerators, matched by substring of `device_kind`: they turn XLA's per-step byte and FLOP
# counts into "% of peak", i.e. how memory-bound a step is.
DEVICE_PEAKS = (
    ("H200", 4.8e12, 989e12),
    ("H100 PCIe", 2.0e12, 756e12),
    ("H100", 3.35e12, 989e12),
    ("A100-SXM4-80GB", 2.039e12, 312e12),
    ("A100 80GB PCIe", 1.935e12, 312e12),
    ("A100", 1.555e12, 312e12),
    ("L4", 0.3e12, 121e12),
)

# The smoke spec: the same architecture families, two narrow Fire modules (compiles in seconds).
SMOKE_OVERRIDES = dict(
    stem_filters=16, base_e=16, incr_e=16, squeeze_ratio=0.25, num_fire=2, pool_after=("conv1",)
)


class BenchError(ValueError):
    """A benchmark request that cannot run; the message names the option and what is allowed."""


class _Stopped(Exception):
    """SIGTERM (e.g. `timeout`) arrived: stop and write what was measured."""


# ---------------------------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class StepCase:
    """One train-step measurement: a preset at a batch size and compute dtype."""

    preset: str
    batch: int
    dtype: str
    image_size: int | None = None  # None: the preset's own size


@dataclasses.dataclass(frozen=True)
class E2ECase:
    """One end-to-end run: an experiment (digits or cifar) on a data source."""

    experiment: str  # "digits" | "cifar"
    source: str  # "digits" | "synthetic" | a TFDS name
    batch: int
    dtype: str
    on_device: str = "auto"  # "auto" (device-resident) | "false" (tf.data)


@dataclasses.dataclass
class Plan:
    """Everything one `sqz bench` invocation measures."""

    steps: list[StepCase]
    e2e: list[E2ECase]
    torch: list[StepCase]
    maxbatch: list[StepCase]
    steps_per_window: int | None  # None: adapt to window_seconds
    windows: int
    warmup: int
    window_seconds: float
    e2e_steps: int
    synthetic_train_size: int
    synthetic_eval_size: int
    smoke: bool


def _is_accelerator() -> bool:
    return jax.devices()[0].platform != "cpu"


def build_plan(args: argparse.Namespace) -> Plan:
    """The cases for the command line: explicit --preset/--batch/--dtype, else the platform's
    plan (the issue's sizes on an accelerator, modest ones on a CPU, tiny ones with --smoke)."""
    accel = _is_accelerator()
    explicit = bool(args.preset or args.batch or args.dtype)
    for p in args.preset or ():
        if p not in PRESETS:
            raise BenchError(f"--preset must be one of {', '.join(PRESETS)}, got {p!r}")
    for d in args.dtype or ():
        if d not in DTYPES:
            raise BenchError(f"--dtype must be one of {', '.join(DTYPES)}, got {d!r}")
    for b in args.batch or ():
        if b < 1:
            raise BenchError(f"--batch must be >= 1, got {b}")
    if args.image_size is not None and args.image_size < 1:
        raise BenchError(f"--image-size must be >= 1, got {args.image_size}")
    for field in ("steps", "warmup", "windows", "e2e_steps"):
        value = getattr(args, field)
        low = 0 if field == "warmup" else 1
        if value is not None and value < low:
            raise BenchError(f"--{field.replace('_', '-')} must be >= {low}, got {value}")

    size = args.image_size
    if args.smoke:
        presets = args.preset or ["digits"]
        batches = args.batch or [8]
        dtypes = args.dtype or ["float32"]
        steps = [StepCase(p, b, d, size) for p in presets for b in batches for d in dtypes]
        e2e = [E2ECase("digits", "digits", batches[0], dtypes[0])]
        torch_cases = [StepCase(p, batches[0], "bfloat16", size or 64) for p in ("v1.0", "v1.1")]
        maxbatch = [StepCase(p, batches[0], "bfloat16", size) for p in args.preset or ["v1.0"]]
    elif explicit:
        presets = args.preset or (["v1.0", "v1.1"] if accel else ["digits"])
        batches = args.batch or ([256] if accel else [64])
        dtypes = args.dtype or (["bfloat16", "float32"] if accel else ["float32"])
        steps = [StepCase(p, b, d, size) for p in presets for b in batches for d in dtypes]
        e2e = [
            E2ECase(p, "digits" if p == "digits" else "synthetic", b, d)
            for p in presets
            if p in EXPERIMENTS
            for b in batches
            for d in dtypes
        ]
        torch_cases = [
            StepCase(p, b, "bfloat16", size) for p in presets if p in TORCHVISION_MODELS
            for b in batches
        ]  # fmt: skip
        maxbatch = [StepCase(p, b, d, size) for p in presets for b in batches[:1] for d in dtypes]
    elif accel:
        steps = [
            StepCase("v1.0", 256, "bfloat16"),
            StepCase("v1.1", 256, "bfloat16"),
            StepCase("cifar", 512, "bfloat16"),
            StepCase("v1.0", 256, "float32"),
            StepCase("v1.1", 256, "float32"),
            StepCase("cifar", 512, "float32"),
        ]
        e2e = [
            E2ECase("cifar", "synthetic", 512, "bfloat16"),
            E2ECase("digits", "digits", 64, "float32"),
        ]
        torch_cases = [StepCase("v1.0", 256, "bfloat16"), StepCase("v1.1", 256, "bfloat16")]
        maxbatch = [StepCase("v1.0", 256, "bfloat16")]
    else:
        steps = [
            StepCase("digits", 64, "float32"),
            StepCase("digits", 128, "float32"),
            StepCase("cifar", 64, "float32"),
            StepCase("v1.0", 8, "float32"),
        ]
        e2e = [
            E2ECase("digits", "digits", 64, "float32"),
            E2ECase("cifar", "synthetic", 64, "float32"),
        ]
        torch_cases = [StepCase("v1.0", 8, "bfloat16")]
        maxbatch = []
    if args.data_dir:
        # The real CIFAR pipelines: decoded once into device memory, and streamed by tf.data.
        b = (args.batch or [512 if accel else 64])[0]
        d = (args.dtype or ["bfloat16" if accel else "float32"])[0]
        e2e += [
            E2ECase("cifar", args.tfds, b, d, "auto"),
            E2ECase("cifar", args.tfds, b, d, "false"),
        ]

    n = jax.device_count()
    for case in [*steps, *maxbatch, *e2e]:
        if case.batch % n:
            raise BenchError(
                f"--batch {case.batch} must be a multiple of the device count {n} (the batch is "
                "split evenly over the 'data' mesh axis)"
            )
    return Plan(
        steps=steps,
        e2e=e2e,
        torch=torch_cases,
        maxbatch=maxbatch,
        steps_per_window=args.steps if args.steps else (2 if args.smoke else None),
        windows=args.windows or (2 if args.smoke else 3),
        warmup=args.warmup if args.warmup is not None else (1 if args.smoke else 2),
        window_seconds=0.0 if args.smoke else (2.0 if accel else 4.0),
        e2e_steps=args.e2e_steps or (6 if args.smoke else (1000 if accel else 40)),
        synthetic_train_size=256 if args.smoke else (50_000 if accel else 4096),
        synthetic_eval_size=64 if args.smoke else (10_000 if accel else 512),
        smoke=bool(args.smoke),
    )


# ---------------------------------------------------------------------------------- configs
def step_config(case: StepCase, *, smoke: bool = False):
    """A trainer config for a plain step measurement: the preset, batch and dtype, the paper's
    optimiser (SGD momentum 0.9, weight decay 2e-4), synthetic data, no persistent cache."""
    from sqzexplore.config import base_config, model_config

    overrides: dict[str, Any] = {"dtype": case.dtype}
    if case.image_size is not None:
        overrides["image_size"] = case.image_size
    if smoke:
        overrides.update(SMOKE_OVERRIDES)
    c = base_config()
    c.model = model_config(case.preset, **overrides)
    c.data.name = "synthetic"
    c.batch_size = case.batch
    c.eval_batch_size = case.batch
    c.num_steps = 1_000_000  # only shapes the lr schedule; nothing runs that long
    c.optim.name = "sgd"
    c.optim.lr = 0.04
    c.optim.weight_decay = 2e-4
    c.progress = "false"
    c.compilation_cache_dir = ""
    return c


def e2e_config(case: E2ECase, plan: Plan, data_dir: str | None):
    """The repo's experiment file for `case.experiment`, set to `plan.e2e_steps` steps of the
    case's batch, dtype and data source; eval, logging and checkpoint cadence stay the
    experiment's (those stalls are what the wall-time numbers include)."""
    from sqzexplore.config import load_config_file

    path = REPO_ROOT / EXPERIMENTS[case.experiment]
    if not path.exists():
        raise BenchError(
            f"e2e needs the experiment file {path} (run from a checkout of the repository)"
        )
    c = load_config_file(str(path), "runlocal" if plan.smoke else None)
    if plan.smoke:
        for key, value in SMOKE_OVERRIDES.items():
            c.model[key] = value
    c.model.dtype = case.dtype
    c.data.name = case.source
    c.data.on_device = case.on_device
    if case.source == "synthetic":
        c.data.synthetic_train_size = plan.synthetic_train_size
        c.data.synthetic_eval_size = plan.synthetic_eval_size
    elif case.source != "digits":
        c.data.data_dir = data_dir
    c.batch_size = case.batch
    n = jax.device_count()
    c.eval_batch_size = max(n, (c.eval_batch_size // n) * n)
    c.num_steps = plan.e2e_steps
    c.progress = "false"
    c.compilation_cache_dir = ""  # cold compiles, as the first trial of a sweep sees them
    c.wandb.mode = "disabled"
    if plan.smoke:
        c.log_every_steps = 2
    return c


# ---------------------------------------------------------------------------------- the step
def _initial_state(spec, tx, seed: int, mesh):
    """The trainer's state dict (the fields `train_and_evaluate` builds), replicated on `mesh`.

    Built on the host from the abstract model: He-normal kernels, zero biases, unit BatchNorm
    scales and variances, zero optimiser state. Values do not change a step's cost, and unlike
    the trainer's jitted random init this compiles nothing, so a benchmark (and maxbatch's many
    batch sizes) pays only for the step it measures.
    """
    from flax import nnx

    from sqzexplore import sharding
    from sqzexplore.models.squeezenet import SqueezeNet

    abstract = nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0)))
    graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return rng.normal(0.0, math.sqrt(2.0 / fan_in), leaf.shape).astype(leaf.dtype)
        if name in ("scale", "var"):
            return np.ones(leaf.shape, leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    params = jax.tree_util.tree_map_with_path(value, params.to_pure_dict())
    stats = jax.tree_util.tree_map_with_path(value, stats.to_pure_dict())
    # SGD's momentum trace, Adam's moments and their step counts all start at zero.
    opt_state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(tx.init, params))
    from sqzexplore.train import TrainState

    state = TrainState(
        step=np.zeros((), np.int32),
        params=params,
        batch_stats=stats,
        opt_state=opt_state,
        rng=np.asarray(jax.random.key_data(jax.random.key(seed))),
        aux={},
        nonfinite_step=np.full((), -1, np.int32),
    )
    return graphdef, jax.device_put(state, sharding.replicated(mesh))


def _synthetic_batch(spec, batch: int, mesh):
    """A normalised float32 NHWC batch and int labels, generated on the devices, batch-sharded
    (what tf.data would hand the step, without any host transfer)."""
    from sqzexplore import sharding

    shape = (batch, spec.image_size, spec.image_size, spec.in_channels)
    out = sharding.batch_sharded(mesh)

    def make(key):
        k1, k2 = jax.random.split(key)
        images = jax.random.normal(k1, shape, jnp.float32)
        labels = jax.random.randint(k2, (batch,), 0, spec.num_classes, jnp.int32)
        return images, labels

    return jax.jit(make, out_shardings=(out, out))(jax.random.key(1))


@dataclasses.dataclass
class CompiledStep:
    """A compiled train step with its inputs, ready to time."""

    config: Any
    spec: Any
    compiled: Any
    state: Any
    images: Any
    labels: Any
    lower_s: float
    compile_s: float
    data: str


def compile_step(config, *, data: str = "fixed", mesh=None) -> CompiledStep:
    """Build and AOT-compile the trainer's step for `config` (no persistent cache hit possible:
    in-memory caches are cleared and the persistent cache is whatever jax.config holds).

    data='fixed': one synthetic batch resident on the devices, fed to every step (the pure step).
    data='device': the config's dataset held on the devices, each step drawing and augmenting
    its own batch inside the step (what the trainer runs for digits / CIFAR / synthetic).
    """
    from sqzexplore import optim, sharding, train
    from sqzexplore.config import validate_config

    spec = validate_config(config)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    sharding.check_divisible(config.batch_size, "batch", mesh)
    tx, schedule = optim.make_optimizer(config.optim, int(config.num_steps) or 1_000_000, 0)
    graphdef, state = _initial_state(spec, tx, int(config.seed), mesh)
    if data == "fixed":
        ds = None
        images, labels = _synthetic_batch(spec, int(config.batch_size), mesh)
    elif data == "device":
        from sqzexplore.data import load_dataset

        ds = load_dataset(config.data, spec)
        if not ds.on_device:
            raise BenchError(f"data source {config.data.name!r} is not device-resident")
        images, labels = (sharding.put_replicated(a, mesh) for a in ds.train_arrays())
    else:
        raise BenchError(f"data must be 'fixed' or 'device', got {data!r}")
    batch_fn = None
    if ds is not None:
        batch = int(config.batch_size)
        batch_fn = lambda x, y, step, key: ds.device_train_batch(x, y, step, key, batch)
    step_fn = train.make_train_step(
        graphdef, tx, schedule, num_classes=spec.num_classes,
        label_smoothing=config.optim.label_smoothing, batch_fn=batch_fn,
        batch_sharding=sharding.batch_sharded(mesh),
    )  # fmt: skip
    replicated = sharding.replicated(mesh)
    jax.clear_caches()
    t0 = time.perf_counter()
    lowered = jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated)).lower(
        state, images, labels
    )
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return CompiledStep(config, spec, compiled, state, images, labels, t1 - t0, t2 - t1, data)


def time_step(
    step: CompiledStep,
    *,
    steps_per_window: int | None,
    windows: int,
    warmup: int,
    window_seconds: float,
) -> dict:
    """Steady-state throughput: `windows` timed windows of back-to-back steps, each ended by one
    `block_until_ready` (the only host sync); img/s is the median window's."""
    state, images, labels = step.state, step.images, step.labels
    run = step.compiled
    metrics = None
    for _ in range(warmup):
        state, metrics = run(state, images, labels)
    jax.block_until_ready((state, metrics))
    if steps_per_window is None:
        # Size windows to `window_seconds` from one timed step (at least 2, at most 2000 steps).
        t0 = time.perf_counter()
        state, metrics = run(state, images, labels)
        jax.block_until_ready((state, metrics))
        one = max(time.perf_counter() - t0, 1e-6)
        steps_per_window = int(min(2000, max(2, math.ceil(window_seconds / one))))
    times = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps_per_window):
            state, metrics = run(state, images, labels)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    step.state = state  # the old buffers were donated
    batch = int(step.config.batch_size)
    rates = [steps_per_window * batch / t for t in times]
    median = statistics.median(rates)
    return {
        "img_s": median,
        "img_s_windows": rates,
        "ms_per_step": 1e3 * batch / median,
        "steps_per_window": steps_per_window,
        "windows": windows,
        "loss_finite": bool(np.isfinite(float(jax.device_get(metrics["loss"])))),
    }


def _cost(compiled) -> dict:
    """XLA's static FLOP and byte counts for one execution (None where the backend has none)."""
    out: dict[str, float | None] = {"flops": None, "bytes_accessed": None}
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends raise instead of returning None
        cost = None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if isinstance(cost, dict):
        out["flops"] = float(cost["flops"]) if "flops" in cost else None
        if "bytes accessed" in cost:
            out["bytes_accessed"] = float(cost["bytes accessed"])
    return out


def _compiled_memory(compiled) -> int | None:
    """Device bytes one execution needs: arguments + outputs + temporaries, less what donation
    lets outputs reuse (the executable's buffer assignment, exact per step)."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    total = (
        m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )  # fmt: skip
    return int(total)


def device_memory() -> dict:
    """Peak / current / limit bytes of device 0 (`memory_stats`), or {} where unsupported (CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        stats = None
    if not stats:
        return {}
    keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
    return {k: int(stats[k]) for k in keys if k in stats}


def device_peaks(device_kind: str) -> tuple[float, float] | None:
    """(peak bytes/s, peak bf16 FLOP/s) for a known accelerator, else None."""
    for key, bandwidth, flops in DEVICE_PEAKS:
        if key.lower() in device_kind.lower():
            return bandwidth, flops
    return None


def measure_step(config, plan: Plan, *, data: str = "fixed", profile: bool = False) -> dict:
    """Compile and time one step configuration; the row `sqz bench step` reports."""
    step = compile_step(config, data=data)
    row = step_row(step, plan, profile=profile)
    del step
    gc.collect()
    return row


def _time(step: CompiledStep, plan: Plan) -> dict:
    return time_step(
        step,
        steps_per_window=plan.steps_per_window,
        windows=plan.windows,
        warmup=plan.warmup,
        window_seconds=plan.window_seconds,
    )


def step_row(step: CompiledStep, plan: Plan, *, profile: bool = False) -> dict:
    """Time a compiled step and describe it: throughput, compile time, memory, XLA costs."""
    timing = _time(step, plan)
    spec, config = step.spec, step.config
    row: dict[str, Any] = {
        "preset": spec.name,
        "image_size": spec.image_size,
        "batch": int(config.batch_size),
        "dtype": spec.dtype,
        "batch_norm": spec.batch_norm,
        "data": step.data,
        "devices": jax.device_count(),
        "lower_s": step.lower_s,
        "compile_s": step.compile_s,
        **timing,
        "step_bytes": _compiled_memory(step.compiled),
        **_cost(step.compiled),
    }
    mem = device_memory()
    row["device_peak_bytes"] = mem.get("peak_bytes_in_use")
    row["device_limit_bytes"] = mem.get("bytes_limit")
    seconds = row["ms_per_step"] / 1e3
    row["achieved_flop_s"] = row["flops"] / seconds if row["flops"] else None
    row["achieved_bytes_s"] = row["bytes_accessed"] / seconds if row["bytes_accessed"] else None
    peaks = device_peaks(jax.devices()[0].device_kind)
    if peaks and row["achieved_bytes_s"]:
        row["pct_peak_bandwidth"] = 100 * row["achieved_bytes_s"] / peaks[0]
    if peaks and row["achieved_flop_s"]:
        row["pct_peak_bf16_flops"] = 100 * row["achieved_flop_s"] / peaks[1]
    if profile:
        row["profile"] = profile_step(step, steps=3 if plan.smoke else 10)
    return row


# ---------------------------------------------------------------------------------- profiling
def profile_step(step: CompiledStep, *, steps: int) -> dict:
    """Trace `steps` steps with the JAX profiler and summarise where the time went: the top ops
    (XLA ops or GPU kernels on an accelerator, XLA thunks on a CPU) and, on an accelerator, the
    fraction of the traced wall time some kernel was running (below ~0.9: the host or the launch
    overhead limits the step, not the device)."""
    trace_dir = tempfile.mkdtemp(prefix="sqz-trace-")
    try:
        state, images, labels = step.state, step.images, step.labels
        with jax.profiler.trace(trace_dir):
            t0 = time.perf_counter()
            for _ in range(steps):
                state, metrics = step.compiled(state, images, labels)
            jax.block_until_ready((state, metrics))
            wall = time.perf_counter() - t0
        step.state = state
        files = sorted(Path(trace_dir).rglob("*.xplane.pb"))
        if not files:
            return {"error": "the profiler wrote no trace"}
        summary = summarize_trace(str(files[-1]), hlo=hlo_labels(step.compiled))
        summary["wall_ms_per_step"] = 1e3 * wall / steps
        if summary.get("busy_ns"):
            summary["device_busy_fraction"] = min(1.0, summary["busy_ns"] / 1e9 / wall)
        for key in ("total_ns", "busy_ns"):
            if summary.get(key) is not None:
                summary[key.replace("_ns", "_ms_per_step")] = summary.pop(key) / 1e6 / steps
        for op in summary.get("top", []):
            op["ms_per_step"] = op.pop("ns") / 1e6 / steps
        return summary
    except Exception as e:  # a profile is evidence, not a requirement: report and carry on
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    finally:
        import shutil

        shutil.rmtree(trace_dir, ignore_errors=True)


# Host-thread events that are bookkeeping (or the executor wrapping the real ops), not work.
_TRACE_NOISE = ("ThreadpoolListener", "end: ", "SlinkyThreadPool", "ThunkExecutor", "$")


def _self_times(events: list[tuple[str, float, float]]) -> dict[str, float]:
    """Exclusive time per name on one trace line, whose events nest (a `while` or `call` op
    contains its body's ops): each event's duration less that of its direct children."""
    out: dict[str, float] = {}
    stack: list[list] = []  # [name, end_ns, child_ns]

    def close(entry):
        name, end, children, duration = entry
        out[name] = out.get(name, 0.0) + max(0.0, duration - children)

    for name, start, duration in sorted(events, key=lambda e: (e[1], -e[2])):
        while stack and stack[-1][1] <= start:
            close(stack.pop())
        if stack:
            stack[-1][2] += duration
        stack.append([name, start + duration, 0.0, duration])
    while stack:
        close(stack.pop())
    return out


def summarize_trace(path: str, top: int = 12, hlo: dict[str, str] | None = None) -> dict:
    """Per-op device time from an `.xplane.pb` trace (parsed with `jax.profiler.ProfileData`).

    Op times are exclusive (nested ops are not counted twice). `hlo` (from `hlo_labels`) labels
    and categorises ops the trace names only by HLO instruction (the CPU thunks). Returns
    {"source", "total_ns",
    "busy_ns" (accelerators: union of kernel intervals), "top": [{"name", "ns", "share"}],
    "categories": {category: share}}.
    """
    data = jax.profiler.ProfileData.from_file(path)
    ops: dict[str, float] = {}
    kernels: dict[str, float] = {}
    cpu_ops: dict[str, float] = {}
    intervals: list[tuple[float, float]] = []
    # XLA Ops events on a GPU carry the HLO category and text; keep them to label the top ops.
    hlo_category: dict[str, str] = {}
    hlo_text: dict[str, str] = dict(hlo or {})

    def merge(into: dict[str, float], line_events) -> None:
        for name, ns in _self_times(line_events).items():
            into[name] = into.get(name, 0.0) + ns

    for plane in data.planes:
        if plane.name.startswith("/device:"):
            for line in plane.lines:
                events = [(ev.name, ev.start_ns, ev.duration_ns) for ev in line.events]
                if line.name == "XLA Ops":
                    merge(ops, events)
                    for ev in line.events:
                        if ev.name in hlo_category:
                            continue
                        stats = _event_stats(ev)
                        hlo_category[ev.name] = str(stats.get("hlo_category", ""))
                        hlo_text[ev.name] = str(stats.get("long_name", ""))[:160]
                elif line.name.startswith(("Stream", "Compute")):
                    merge(kernels, events)
                    intervals += [(start, start + dur) for _, start, dur in events]
                    for ev in line.events:
                        if ev.name not in hlo_text:  # the HLO op a kernel belongs to
                            hlo_text[ev.name] = str(_event_stats(ev).get("hlo_op", ""))[:160]
        elif plane.name == "/host:CPU":
            for line in plane.lines:
                if line.name.startswith("tf_XLA"):
                    events = [
                        (ev.name, ev.start_ns, ev.duration_ns)
                        for ev in line.events
                        if ev.duration_ns > 0 and not ev.name.startswith(_TRACE_NOISE)
                    ]
                    merge(cpu_ops, events)
    if ops:
        source, table = "XLA ops on the device", ops
    elif kernels:
        source, table = "GPU kernels", kernels
    else:
        source, table = "XLA thunks on host CPU threads", cpu_ops
    total = sum(table.values())
    ranked = sorted(table.items(), key=lambda kv: -kv[1])
    categories: dict[str, float] = {}
    for name, ns in ranked:
        cat = hlo_category.get(name) or op_category(name, hlo_text.get(name, ""))
        categories[cat] = categories.get(cat, 0.0) + ns
    return {
        "source": source,
        "total_ns": total,
        "busy_ns": _union_length(intervals) if intervals else None,
        "top": [
            {
                "name": name[:90],
                "ns": ns,
                "share": ns / total if total else 0.0,
                "hlo": hlo_text.get(name, ""),
            }
            for name, ns in ranked[:top]
        ],
        "categories": {
            k: v / total if total else 0.0
            for k, v in sorted(categories.items(), key=lambda kv: -kv[1])
        },
    }


def _event_stats(event) -> dict:
    try:
        return {str(k): v for k, v in event.stats}
    except Exception:  # the stats API differs across jaxlib versions; labels are optional
        return {}


# Substrings of op / kernel names, by category, tried in order (first match wins).
_OP_CATEGORIES = (
    ("max-pool (fwd/bwd)", ("select_and_scatter", "select-and-scatter", "reduce_window",
                            "reduce-window")),
    # ynn_fusion: the XLA CPU backend's YNNPACK fusions (its convolutions and dots).
    ("convolution", ("conv", "cudnn", "xmma", "gemm", "implicit", "dot", "cutlass", "wgrad",
                     "dgrad", "fprop", "ynn")),
    ("reductions", ("reduce", "reduction")),
    ("copies/transposes", ("copy", "transpose", "memcpy", "memset")),
    ("iota/broadcast", ("iota", "broadcast")),
    ("elementwise fusions", ("fusion", "loop", "add", "multiply", "select")),
)  # fmt: skip


def op_category(name: str, label: str = "") -> str:
    """A coarse class for an op or kernel: where a memory-bound step spends its time. The JAX
    op that an HLO label names (its `op_name` metadata) decides first, then the op's own name."""
    source = label.rsplit(" <- ", 1)[-1] if " <- " in label else ""
    for text in (source.lower(), name.lower()):
        for category, keys in _OP_CATEGORIES:
            if text and any(k in text for k in keys):
                return category
    return "other"


_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\(")
_HLO_COMPUTATION = re.compile(r"^%?([\w.\-]+) \(.*\) -> .* \{$")
_HLO_CALLS = re.compile(r"calls=%([\w.\-]+)")
_HLO_OP_NAME = re.compile(r'op_name="([^"]+)"')


def hlo_labels(compiled) -> dict[str, str]:
    """`{instruction: "shape opcode <- jax op"}` for a compiled executable's HLO, so profile rows
    named by instruction (`wrapped_iota.5`, `ynn_fusion.70`) say what they compute and which JAX
    op they come from (a fusion's op is its root's `op_name` metadata)."""
    try:
        text = compiled.as_text()
    except Exception:
        return {}
    roots: dict[str, str] = {}  # computation -> op_name of its root
    instructions: dict[str, tuple[str, str, str, str]] = {}
    computation = None
    for line in text.splitlines():
        head = _HLO_COMPUTATION.match(line.strip())
        if head:
            computation = head.group(1)
            continue
        match = _HLO_INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode = match.groups()
        op_name = _HLO_OP_NAME.search(line)
        calls = _HLO_CALLS.search(line)
        instructions[name] = (shape, opcode, op_name.group(1) if op_name else "",
                              calls.group(1) if calls else "")  # fmt: skip
        if line.lstrip().startswith("ROOT") and computation and op_name:
            roots[computation] = op_name.group(1)
    labels = {}
    for name, (shape, opcode, op_name, calls) in instructions.items():
        source = op_name or roots.get(calls, "")
        source = source.split("/")[-1] if source else ""
        labels[name] = f"{shape[:80]} {opcode}" + (f" <- {source}" if source else "")
    return labels


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


# ---------------------------------------------------------------------------------- e2e
def measure_e2e(case: E2ECase, plan: Plan, data_dir: str | None, *, profile: bool = False) -> dict:
    """`train_and_evaluate` for `case` in a scratch workdir, against the same step on a fixed
    synthetic batch and on device-resident data (the 'within 10%' comparison). With `profile`,
    both reference steps are traced: their difference is the on-device input pipeline."""
    from sqzexplore import train

    config = e2e_config(case, plan, data_dir)
    streamed = case.on_device == "false"
    row: dict[str, Any] = {
        "experiment": case.experiment,
        "source": case.source,
        "pipeline": "tf.data" if streamed else "device-resident",
        "batch": case.batch,
        "dtype": case.dtype,
        "steps": plan.e2e_steps,
    }
    # The reference steps are timed before and after the run and their windows pooled, so a
    # change in background load (a shared machine) shifts both sides of the ratio alike.
    references = {"fixed": compile_step(config, data="fixed")}
    if not streamed:
        references["device"] = compile_step(config, data="device")
    before = {kind: step_row(step, plan, profile=profile) for kind, step in references.items()}
    with tempfile.TemporaryDirectory(prefix="sqz-bench-e2e-") as workdir:
        result = train.train_and_evaluate(config, workdir)
    for kind, step in references.items():
        windows = before[kind]["img_s_windows"] + _time(step, plan)["img_s_windows"]
        key = "step_img_s" if kind == "fixed" else "device_step_img_s"
        row[key] = statistics.median(windows)
        row[key + "_windows"] = windows
        if profile:
            row[key.replace("img_s", "profile")] = before[kind].get("profile")
    del references
    gc.collect()
    steps, train_s = int(result["steps"]), float(result["train_time_s"])
    row.update(
        loop_img_s=steps * case.batch / train_s if train_s > 0 else None,
        last_interval_img_s=float(result["images_per_s"]),
        compile_s=float(result["compile_time_s"]),
        train_time_s=train_s,
        wall_time_s=float(result["wall_time_s"]),
        top1=result["final"].get("top1"),
    )
    row["wall_img_s"] = steps * case.batch / row["wall_time_s"]
    row["train_fraction_of_wall"] = train_s / row["wall_time_s"]
    row["loop_vs_step"] = row["loop_img_s"] / row["step_img_s"] if row["loop_img_s"] else None
    row["meets_target"] = bool(row["loop_vs_step"] and row["loop_vs_step"] >= TARGET_LOOP_VS_STEP)
    return row


# ---------------------------------------------------------------------------------- maxbatch
def _is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return "resource_exhausted" in text or "out of memory" in text or "oom" in text.split()


def measure_maxbatch(case: StepCase, plan: Plan, *, cap: int = 1 << 16) -> dict:
    """The largest batch whose step runs on one device without running out of memory.

    The compiled footprint is linear in the batch, so two measured sizes (case.batch and twice
    that) predict where the allocator limit is reached; the prediction and the largest power of
    two below it are then run to confirm (bisecting down on a failure). Without an allocator
    limit to aim at, the batch simply doubles until a step fails.
    """
    from sqzexplore import sharding

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
            entry["step_bytes"] = _compiled_memory(step.compiled)
            limit = device_memory().get("bytes_limit")
            if limit and entry["step_bytes"] and entry["step_bytes"] > limit:
                entry.update(fits=False, why="compiled footprint exceeds the allocator limit")
                return False
            timing = time_step(step, steps_per_window=3, windows=1, warmup=1, window_seconds=0)
            entry.update(fits=True, img_s=timing["img_s"])
            return True
        except Exception as e:
            if not _is_oom(e):
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


# ---------------------------------------------------------------------------------- torch
def torch_available() -> str | None:
    """None if torch and torchvision can be imported, else why not."""
    missing = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not installed: torchvision comparison skipped "
            "(install torch and torchvision in this environment to measure the ratios)"
        )
    return None


def measure_torch(cases: list[StepCase], plan: Plan, timeout_s: float = 1200.0) -> list[dict]:
    """torchvision rows for `cases`, measured in a child process (its own CUDA context and
    allocator, so neither framework's memory pool squeezes the other)."""
    payload = {
        "cases": [dataclasses.asdict(c) for c in cases],
        "steps_per_window": plan.steps_per_window,
        "windows": plan.windows,
        "warmup": plan.warmup,
        "window_seconds": plan.window_seconds,
    }
    cmd = [sys.executable, "-m", "sqzexplore.bench", "_torch-worker", json.dumps(payload)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("SQZ_TORCH_JSON "):
            return json.loads(line[len("SQZ_TORCH_JSON ") :])
    tail = (proc.stderr or proc.stdout)[-800:]
    raise RuntimeError(f"the torch worker failed (exit {proc.returncode}): {tail}")


def _torch_worker(payload: dict) -> list[dict]:
    """Runs in the child: every case in eager AMP channels-last mode, then under torch.compile."""
    import torch
    import torch.nn.functional as F
    import torchvision

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    for raw in payload["cases"]:
        case = StepCase(**raw)
        size = case.image_size or PRESETS[case.preset].image_size
        for mode in ("eager", "compile"):
            row: dict[str, Any] = {
                "preset": case.preset,
                "model": TORCHVISION_MODELS[case.preset],
                "image_size": size,
                "batch": case.batch,
                "mode": mode,
                "amp_dtype": "bfloat16",
                "channels_last": True,
                "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
            }
            try:
                torch.manual_seed(0)
                ctor = getattr(torchvision.models, TORCHVISION_MODELS[case.preset])
                model = ctor(num_classes=1000).to(device).to(memory_format=torch.channels_last)
                model.train()
                # The paper's solver, as in the JAX step (SGD momentum 0.9, weight decay 2e-4).
                opt = torch.optim.SGD(model.parameters(), lr=0.04, momentum=0.9, weight_decay=2e-4)
                net = torch.compile(model) if mode == "compile" else model
                x = torch.randn(case.batch, 3, size, size, device=device)
                x = x.contiguous(memory_format=torch.channels_last)
                y = torch.randint(0, 1000, (case.batch,), device=device)

                def step(net=net, opt=opt, x=x, y=y):
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                        loss = F.cross_entropy(net(x), y)
                    loss.backward()
                    opt.step()
                    return loss

                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                step()
                sync()
                row["first_step_s"] = time.perf_counter() - t0  # includes torch.compile
                row.update(_time_torch(step, sync, payload, case.batch))
                row["compile_s"] = row["first_step_s"] - row["ms_per_step"] / 1e3
                row["peak_bytes"] = int(torch.cuda.max_memory_allocated()) if cuda else None
            except Exception as e:  # one failing mode must not hide the other's numbers
                row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            rows.append(row)
            with contextlib.suppress(Exception):
                del net, model, opt
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return rows


def _time_torch(step: Callable, sync: Callable, payload: dict, batch: int) -> dict:
    for _ in range(payload["warmup"]):
        step()
    sync()
    n = payload["steps_per_window"]
    if n is None:
        t0 = time.perf_counter()
        step()
        sync()
        one = max(time.perf_counter() - t0, 1e-6)
        n = int(min(2000, max(2, math.ceil(payload["window_seconds"] / one))))
    rates = []
    for _ in range(payload["windows"]):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        rates.append(n * batch / (time.perf_counter() - t0))
    median = statistics.median(rates)
    return {"img_s": median, "img_s_windows": rates, "ms_per_step": 1e3 * batch / median,
            "steps_per_window": n}  # fmt: skip


def torch_ratios(torch_rows: list[dict], step_rows: list[dict]) -> list[dict]:
    """JAX bf16 step img/s over torchvision's, per (preset, batch, image size)."""
    out = []
    for key in sorted({(r["preset"], r["batch"], r["image_size"]) for r in torch_rows}):
        jax_row = next(
            (
                r for r in step_rows
                if (r["preset"], r["batch"], r["image_size"]) == key
                and r["dtype"] == "bfloat16" and r["data"] == "fixed"
            ),
            None,
        )  # fmt: skip
        modes = {
            r["mode"]: r for r in torch_rows if (r["preset"], r["batch"], r["image_size"]) == key
        }
        entry: dict[str, Any] = {"preset": key[0], "batch": key[1], "image_size": key[2]}
        entry["jax_img_s"] = jax_row["img_s"] if jax_row else None
        for mode, target in (
            ("eager", TARGET_VS_TORCH_EAGER),
            ("compile", TARGET_VS_TORCH_COMPILE),
        ):
            t = modes.get(mode, {})
            entry[f"torch_{mode}_img_s"] = t.get("img_s")
            ratio = entry["jax_img_s"] / t["img_s"] if jax_row and t.get("img_s") else None
            entry[f"vs_{mode}"] = ratio
            entry[f"vs_{mode}_meets_target"] = None if ratio is None else ratio >= target
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------- machine
def machine_info() -> dict:
    """What ran the benchmark: devices, host CPU, versions, load, compile-cache setting."""
    import flax
    import jaxlib
    import optax

    devices = jax.devices()
    cpu_model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        short = f"{cpu_model} ({cores} cores, CPU)"
    else:
        short = f"{len(devices)}x {kind}"
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "machine": short,
        "platform": devices[0].platform,
        "device_kind": kind,
        "device_count": len(devices),
        "host_cpu": cpu_model,
        "host_cores": cores,
        "load_average_1min": load,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
    }


# ---------------------------------------------------------------------------------- report
class Report:
    """Results of one invocation; rewritten to --json after every row."""

    def __init__(self, command: str, json_path: str | None):
        self.json_path = json_path
        self.data: dict[str, Any] = {
            "command": command,
            "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(),
            "step": [],
            "e2e": [],
            "torch": [],
            "torch_ratio": [],
            "maxbatch": [],
            "notes": [],
            "complete": False,
        }
        self.flush()

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)
        print(f"[{section}] {_one_line(section, row)}", flush=True)
        self.flush()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        print(f"note: {text}", flush=True)
        self.flush()

    def flush(self) -> None:
        if not self.json_path:
            return
        from sqzexplore.rundir import write_json as write_json_atomic

        os.makedirs(os.path.dirname(os.path.abspath(self.json_path)), exist_ok=True)
        write_json_atomic(self.json_path, self.data)


def _one_line(section: str, r: dict) -> str:
    if section == "step":
        return (
            f"{r['preset']} {r['image_size']}px b{r['batch']} {r['dtype']} ({r['data']}): "
            f"{r['img_s']:,.0f} img/s, compile {r['compile_s']:.1f}s"
        )
    if section == "e2e":
        ratio = r.get("loop_vs_step")
        return (
            f"{r['experiment']}/{r['source']} ({r['pipeline']}) b{r['batch']}: loop "
            f"{_num(r.get('loop_img_s'))} img/s vs step {_num(r['step_img_s'])}"
            + (f" = {ratio:.2f}" if ratio else "")
        )
    if section == "maxbatch":
        return (
            f"{r['preset']} {r['dtype']}: max batch {r['max_batch']} "
            f"(failed at {r['first_failed']})"
        )
    return json.dumps({k: v for k, v in r.items() if not isinstance(v, (list, dict))})[:200]


def _num(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def _bytes(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x / 2**20:,.0f} MiB" if x < 2**30 else f"{x / 2**30:,.2f} GiB"


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def render_markdown(data: dict) -> str:
    """The markdown block `--results` appends: a header naming the machine and command, then a
    table per benchmark kind (every row names the machine again)."""
    m = data["machine"]
    name = m["machine"]
    lines = [
        f"### {data['started']} · {name}",
        "",
        f"Command: `{data['command']}`  ",
        f"Devices: {m['device_count']}x {m['device_kind']} ({m['platform']}); host "
        f"{m['host_cpu']}, {m['host_cores']} cores; 1-min load average "
        f"{_num(m['load_average_1min'], 2)} at start, "
        f"{_num(m.get('load_average_1min_end'), 2)} at the end  ",
        f"Versions: python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']}, "
        f"optax {m['optax']}; persistent compile cache: {m['compilation_cache_dir'] or 'off'}",
    ]
    if not data.get("complete"):
        lines.append("**Incomplete run** (stopped before the end; rows below are what finished).")
    lines.append("")
    if data["step"]:
        lines += [
            "Train step (the trainer's jitted step; synthetic batch resident on the devices; "
            "median of timed windows, one host sync per window):",
            "",
            "| machine | preset | image | batch | dtype | data | lower + compile s | img/s | "
            "ms/step | step memory | device peak | XLA GFLOP / GB per step | "
            "achieved TFLOP/s, GB/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in data["step"]:
            gflop = _num(r["flops"] / 1e9 if r["flops"] else None, 1)
            gb = _num(r["bytes_accessed"] / 1e9 if r["bytes_accessed"] else None, 2)
            tflops = _num(r["achieved_flop_s"] / 1e12 if r["achieved_flop_s"] else None, 2)
            gbs = _num(r["achieved_bytes_s"] / 1e9 if r["achieved_bytes_s"] else None, 0)
            pct = r.get("pct_peak_bandwidth")
            if pct is not None:
                gbs += f" ({pct:.0f}% of peak BW)"
            lines.append(
                f"| {name} | {r['preset']}{' +BN' if r['batch_norm'] else ''} | "
                f"{r['image_size']} | {r['batch']} | {r['dtype']} | {r['data']} | "
                f"{r['lower_s']:.2f} + "
                f"{r['compile_s']:.2f} | {r['img_s']:,.0f} (windows {min(r['img_s_windows']):,.0f}"
                f"-{max(r['img_s_windows']):,.0f}) | {r['ms_per_step']:.2f} | "
                f"{_bytes(r['step_bytes'])} | {_bytes(r['device_peak_bytes'])} | {gflop} / {gb} | "
                f"{tflops}, {gbs} |"
            )
        lines.append("")
        for r in data["step"]:
            if r.get("profile"):
                title = f"{r['preset']} b{r['batch']} {r['dtype']} step ({r['data']} data)"
                lines += _profile_lines(title, r["profile"])
    if data["e2e"]:
        lines += [
            "End to end (`train_and_evaluate`, the experiment's recipe and eval/checkpoint "
            "cadence; loop img/s = steps x batch / train_time_s; target loop/step >= "
            f"{TARGET_LOOP_VS_STEP}):",
            "",
            "| machine | experiment | data | pipeline | batch | dtype | steps | step img/s (fixed "
            "batch) | step img/s (device data) | loop img/s | loop/step | target | compile s | "
            "wall s | train/wall |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in data["e2e"]:
            ratio = r.get("loop_vs_step")
            lines.append(
                f"| {name} | {r['experiment']} | {r['source']} | {r['pipeline']} | {r['batch']} | "
                f"{r['dtype']} | {r['steps']} | {_num(r['step_img_s'])} | "
                f"{_num(r.get('device_step_img_s'))} | {_num(r.get('loop_img_s'))} | "
                f"{_num(ratio, 2)} | {_mark(r.get('meets_target'))} | {r['compile_s']:.1f} | "
                f"{r['wall_time_s']:.1f} | {r['train_fraction_of_wall']:.2f} |"
            )
        lines.append("")
        for r in data["e2e"]:
            for key, data_kind in (("step_profile", "fixed"), ("device_step_profile", "device")):
                if r.get(key):
                    title = f"{r['experiment']} b{r['batch']} {r['dtype']} step ({data_kind} data)"
                    lines += _profile_lines(title, r[key])
    if data["torch"]:
        lines += [
            "torchvision (bf16 autocast, channels-last, same optimiser, same device and batch):",
            "",
            "| machine | model | mode | image | batch | img/s | ms/step | first step s | peak "
            "memory | torch |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in data["torch"]:
            if "error" in r:
                lines.append(
                    f"| {name} | {r['model']} | {r['mode']} | {r['image_size']} | {r['batch']} | "
                    f"failed: {r['error'][:120]} | | | | {r.get('torch', '')} |"
                )
                continue
            lines.append(
                f"| {name} | {r['model']} | {r['mode']} | {r['image_size']} | {r['batch']} | "
                f"{r['img_s']:,.0f} | {r['ms_per_step']:.2f} | {r['first_step_s']:.1f} | "
                f"{_bytes(r.get('peak_bytes'))} | {r['torch']} |"
            )
        lines.append("")
    if data["torch_ratio"]:
        lines += [
            f"JAX bf16 step / torchvision (targets: >= {TARGET_VS_TORCH_EAGER}x eager AMP, "
            f">= {TARGET_VS_TORCH_COMPILE}x torch.compile):",
            "",
            "| machine | preset | batch | image | JAX img/s | eager img/s | JAX/eager | target | "
            "compile img/s | JAX/compile | target |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in data["torch_ratio"]:
            lines.append(
                f"| {name} | {r['preset']} | {r['batch']} | {r['image_size']} | "
                f"{_num(r['jax_img_s'])} | {_num(r['torch_eager_img_s'])} | "
                f"{_num(r['vs_eager'], 2)} | {_mark(r['vs_eager_meets_target'])} | "
                f"{_num(r['torch_compile_img_s'])} | {_num(r['vs_compile'], 2)} | "
                f"{_mark(r['vs_compile_meets_target'])} |"
            )
        lines.append("")
    if data["maxbatch"]:
        lines += [
            "Largest batch that fits (one device; predicted from the compiled footprint at two "
            "sizes, then run to confirm):",
            "",
            "| machine | preset | image | dtype | max batch | largest power of two | predicted | "
            "first failed | step memory at max | img/s at max | allocator limit |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in data["maxbatch"]:
            lines.append(
                f"| {name} | {r['preset']} | {r['image_size']} | {r['dtype']} | "
                f"{_num(r['max_batch'])} | {_num(r['max_power_of_two'])} | "
                f"{_num(r['predicted_from_footprint'])} | {_num(r['first_failed'])} | "
                f"{_bytes(r['step_bytes_at_max'])} | {_num(r['img_s_at_max'])} | "
                f"{_bytes(r['bytes_limit'])} |"
            )
        lines.append("")
    for note in data["notes"]:
        lines.append(f"- {note}")
    if data["notes"]:
        lines.append("")
    return "\n".join(lines) + "\n"


def _profile_lines(title: str, p: dict) -> list[str]:
    """A profile as markdown: categories on one line, then the top ops."""
    busy = p.get("device_busy_fraction")
    head = f"Profile of {title}, {p.get('source', '?')}"
    if busy is not None:
        head += f"; device busy {100 * busy:.0f}% of wall"
    if "error" in p:
        return [f"{head}: failed ({p['error']})", ""]
    cats = "; ".join(f"{k} {100 * v:.0f}%" for k, v in p["categories"].items())
    lines = [f"{head}: {cats}"]
    for op in p.get("top", [])[:8]:
        hlo = f": `{op['hlo'][:110]}`" if op.get("hlo") else ""
        lines.append(
            f"  - `{op['name']}` {op['ms_per_step']:.3f} ms/step ({100 * op['share']:.1f}%){hlo}"
        )
    return [*lines, ""]


def append_results(path: str, data: dict) -> None:
    """Append a run's markdown block to `path` (created with a title if missing)."""
    block = render_markdown(data)
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        if new:
            f.write("# Benchmark results\n\n")
        f.write("\n" + block)


# ---------------------------------------------------------------------------------- running
def run(command: str, args: argparse.Namespace, report: Report) -> None:
    """Run the benchmarks of `command` ('all' runs each in turn), adding rows to `report`.

    A row that fails (other than for a bad request) becomes a note naming the case and the
    error, and the run goes on: one broken case must not cost the others' measurements.
    """
    plan = build_plan(args)
    wanted = COMMANDS[:-1] if command == "all" else (command,)
    if "step" in wanted:
        for case in plan.steps:
            with _row_errors(report, f"step {case}"):
                config = step_config(case, smoke=plan.smoke)
                report.add("step", measure_step(config, plan, profile=args.profile))
    if "e2e" in wanted:
        for case in plan.e2e:
            with _row_errors(report, f"e2e {case}"):
                report.add("e2e", measure_e2e(case, plan, args.data_dir, profile=args.profile))
    if "torch" in wanted:
        with _row_errors(report, "torch"):
            _run_torch(plan, args, report)
    if "maxbatch" in wanted:
        if not _is_accelerator():
            report.note(
                "maxbatch skipped: it needs a GPU/TPU (host RAM on a CPU is not a device-memory "
                "limit worth measuring)"
            )
        else:
            for case in plan.maxbatch:
                with _row_errors(report, f"maxbatch {case}"):
                    report.add("maxbatch", measure_maxbatch(case, plan))


@contextlib.contextmanager
def _row_errors(report: Report, what: str):
    try:
        yield
    except (BenchError, _Stopped, KeyboardInterrupt):
        raise
    except Exception as e:
        report.data["failed"] = report.data.get("failed", 0) + 1
        report.note(f"{what} FAILED: {type(e).__name__}: {str(e)[:500]}")


def _run_torch(plan: Plan, args: argparse.Namespace, report: Report) -> None:
    why = torch_available()
    if why:
        report.note(why)
        return
    if not plan.torch:
        report.note("torch: no v1.0/v1.1 cases in this plan (torchvision has only those two)")
        return
    # The JAX side of each ratio first (it is the number this project owns): reuse this run's
    # bf16 rows, measure the missing ones.
    for case in plan.torch:
        size = case.image_size or PRESETS[case.preset].image_size
        have = any(
            (r["preset"], r["batch"], r["image_size"], r["dtype"], r["data"])
            == (case.preset, case.batch, size, "bfloat16", "fixed")
            for r in report.data["step"]
        )
        if not have:
            config = step_config(case, smoke=plan.smoke)
            report.add("step", measure_step(config, plan, profile=args.profile))
    for row in measure_torch(plan.torch, plan):
        report.add("torch", row)
    for entry in torch_ratios(report.data["torch"], report.data["step"]):
        report.add("torch_ratio", entry)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--preset", action="append", help=f"one of {', '.join(PRESETS)}; repeatable"
    )
    common.add_argument("--batch", action="append", type=int, help="global batch size; repeatable")
    common.add_argument("--dtype", action="append", help=f"one of {', '.join(DTYPES)}; repeatable")
    common.add_argument("--image-size", type=int, help="input side (default: the preset's)")
    common.add_argument("--steps", type=int, help="steps per timed window (default: ~2-4 s worth)")
    common.add_argument("--warmup", type=int, help="untimed steps after compilation (default 2)")
    common.add_argument(
        "--windows", type=int, help="timed windows; img/s is their median (default 3)"
    )
    common.add_argument("--e2e-steps", type=int, help="steps of each end-to-end run")
    common.add_argument("--data-dir", help="TFDS data_dir: adds e2e rows on a real TFDS dataset")
    common.add_argument("--tfds", default="cifar10", help="TFDS dataset for --data-dir (cifar10)")
    common.add_argument("--profile", action="store_true", help="trace each step row; top ops")
    common.add_argument("--smoke", action="store_true", help="tiny spec, few steps (tests)")
    common.add_argument("--json", help="write machine-readable results here")
    common.add_argument("--results", help="append markdown tables here (benchmarks/RESULTS.md)")
    parser = argparse.ArgumentParser(
        prog="sqz bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}"
    )
    helps = {
        "step": "train-step img/s, compile time and memory on synthetic device-resident data",
        "e2e": "train_and_evaluate loop img/s vs the synthetic-data step (digits, CIFAR-shaped)",
        "torch": "torchvision squeezenet1_0/1_1 eager AMP and torch.compile, as ratios",
        "maxbatch": "largest batch whose step fits on one device (GPU/TPU)",
        "all": "all of the above",
    }
    for name in COMMANDS:
        sub.add_parser(name, parents=[common], help=helps[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    """`sqz bench {step,e2e,torch,maxbatch,all} [options]`; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_torch-worker"]:  # internal: the child process of `measure_torch`
        rows = _torch_worker(json.loads(argv[1]))
        print("SQZ_TORCH_JSON " + json.dumps(rows), flush=True)
        return 0
    args = _parser().parse_args(argv)
    command = "sqz bench " + shlex.join(argv)
    report = Report(command, args.json)
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: no SIGTERM handling
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
    status = 0
    try:
        run(args.command, args, report)
        report.data["complete"] = True
        status = 1 if report.data.get("failed") else 0
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (_Stopped, KeyboardInterrupt):
        report.note("stopped by a signal before the end; the rows above are what finished")
        status = 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    with contextlib.suppress(OSError):
        report.data["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    report.flush()
    if args.results and (report.data["complete"] or _has_rows(report.data)):
        append_results(args.results, report.data)
        print(f"appended to {args.results}", flush=True)
    return status


def _has_rows(data: dict) -> bool:
    return any(data[k] for k in ("step", "e2e", "torch", "maxbatch"))


def _raise_stopped(signum, frame):
    raise _Stopped()


if __name__ == "__main__":
    sys.exit(main())
