"""`sqz bench step`: the trainer's own train step, compiled ahead of time and timed.

The step is the public `sqzexplore.train.make_train_step` (forward, backward, optimiser,
non-finite guard, metrics), jitted and compiled the way `train_and_evaluate` does, on a
synthetic batch resident on the devices: compile time (lower and compile timed apart, in-memory
caches cleared), steady-state img/s (one host sync per timed window; median of the windows),
compiled and peak device memory, XLA's FLOP / byte counts and the rates they imply.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import BenchError, Section, device_memory, nbytes, num, timed_windows
from benchmarks.plan import Plan, Timing
from benchmarks.profile import profile_markdown, profile_step
from sqzexplore import optim, sharding
from sqzexplore.config import validate_config
from sqzexplore.data import load_dataset
from sqzexplore.train import init_state, make_eval_step, make_train_step
from sqzexplore.train.state import model_graphdef

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


def initial_state(spec, tx, seed: int, mesh):
    """`init_state`'s state for `spec`, filled on the host and replicated on `mesh`.

    The shapes come from `jax.eval_shape(init_state)`; the values are filled in with numpy
    (He-normal kernels, unit BatchNorm scales and variances, zeros elsewhere). Values do not
    change a step's cost, and unlike the trainer's jitted random init (13-20 s to compile on the
    2-core CPU) this compiles nothing, so a benchmark (and maxbatch's many batch sizes) pays
    only for the step it measures.
    """
    abstract = jax.eval_shape(lambda: init_state(spec, tx, seed))
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        field = getattr(path[0], "name", None)  # the TrainState field
        name = str(getattr(path[-1], "key", path[-1]))
        if field not in ("params", "batch_stats"):  # optimiser state and counters start at 0
            return np.zeros(leaf.shape, leaf.dtype)
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return rng.normal(0.0, math.sqrt(2.0 / fan_in), leaf.shape).astype(leaf.dtype)
        if name in ("scale", "var"):
            return np.ones(leaf.shape, leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    state = jax.tree_util.tree_map_with_path(value, abstract)
    # The two fields whose zero is not their initial value: the seed's key and "no bad step".
    state = state.replace(
        rng=np.asarray(jax.random.key_data(jax.random.key(seed))),
        nonfinite_step=np.full(abstract.nonfinite_step.shape, -1, abstract.nonfinite_step.dtype),
    )
    return jax.device_put(state, sharding.replicated(mesh))


def synthetic_batch(spec, batch: int, mesh):
    """A normalised float32 NHWC batch and int labels, generated on the devices, batch-sharded
    (what tf.data would hand the step, without any host transfer)."""
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
    mesh: Any
    compiled: Any
    state: Any
    images: Any
    labels: Any
    lower_s: float
    compile_s: float
    data: str


def compile_step(config, *, data: str = "fixed", mesh=None, cold: bool = True) -> CompiledStep:
    """Build and AOT-compile the trainer's step for `config`.

    data='fixed': one synthetic batch resident on the devices, fed to every step (the pure step).
    data='device': the config's dataset held on the devices, each step drawing and augmenting
    its own batch inside the step (what the trainer runs for digits / CIFAR / synthetic).
    `cold`: clear jax's in-memory caches first (the persistent cache is whatever jax.config
    holds; `sqz bench` leaves it off). Compile-ahead passes False: clearing caches while another
    thread compiles would measure nothing useful, and its runs are distinct programs anyway.
    """
    spec = validate_config(config)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    sharding.check_divisible(config.batch_size, "batch", mesh)
    tx, schedule = optim.make_optimizer(config.optim, int(config.num_steps) or 1_000_000, 0)
    state = initial_state(spec, tx, int(config.seed), mesh)
    batch_fn = None
    if data == "fixed":
        images, labels = synthetic_batch(spec, int(config.batch_size), mesh)
    elif data == "device":
        ds = load_dataset(config.data, spec)
        if not ds.on_device:
            raise BenchError(f"data source {config.data.name!r} is not device-resident")
        images, labels = (sharding.put_replicated(a, mesh) for a in ds.train_arrays())
        batch = int(config.batch_size)
        batch_fn = lambda x, y, step, key: ds.device_train_batch(x, y, step, key, batch)
    else:
        raise BenchError(f"data must be 'fixed' or 'device', got {data!r}")
    step_fn = make_train_step(
        model_graphdef(spec), tx, schedule, num_classes=spec.num_classes,
        label_smoothing=config.optim.label_smoothing, batch_fn=batch_fn,
        batch_sharding=sharding.batch_sharded(mesh),
    )  # fmt: skip
    replicated = sharding.replicated(mesh)
    if cold:
        jax.clear_caches()
    t0 = time.perf_counter()
    lowered = jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated)).lower(
        state, images, labels
    )
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return CompiledStep(config, spec, mesh, compiled, state, images, labels, t1 - t0, t2 - t1, data)


def compile_eval_step(step: CompiledStep, mask) -> tuple[Any, float]:
    """AOT-compile the trainer's eval step for `step`'s model and batch, `(state, x, y, mask) ->
    sums` as `EvalRunner` runs it (`mask`: 1.0 per real example). Returns (compiled, seconds)."""
    spec = step.spec
    eval_fn = make_eval_step(
        model_graphdef(spec), num_classes=spec.num_classes,
        batch_sharding=sharding.batch_sharded(step.mesh),
    )  # fmt: skip
    t0 = time.perf_counter()
    compiled = jax.jit(eval_fn).lower(step.state, step.images, step.labels, mask).compile()
    return compiled, time.perf_counter() - t0


def time_step(step: CompiledStep, timing: Timing) -> dict:
    """Steady-state throughput of a compiled step (`common.timed_windows`)."""
    carry = [step.state, None]  # (state, metrics): each step donates the state it is given

    def one():
        carry[0], carry[1] = step.compiled(carry[0], step.images, step.labels)

    row = timed_windows(
        one, lambda: jax.block_until_ready(carry), int(step.config.batch_size),
        **dataclasses.asdict(timing),
    )  # fmt: skip
    step.state = carry[0]
    row["loss_finite"] = bool(np.isfinite(float(jax.device_get(carry[1]["loss"]))))
    return row


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


def compiled_memory(compiled) -> int | None:
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


def step_row(step: CompiledStep, plan: Plan, *, profile: bool = False) -> dict:
    """Time a compiled step and describe it: throughput, compile time, memory, XLA costs."""
    timing = time_step(step, plan.timing)
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
        "step_bytes": compiled_memory(step.compiled),
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


# ---------------------------------------------------------------------------------- its report
def _cells(r: dict) -> list[str]:
    gflop = num(r["flops"] / 1e9 if r["flops"] else None, 1)
    gb = num(r["bytes_accessed"] / 1e9 if r["bytes_accessed"] else None, 2)
    tflops = num(r["achieved_flop_s"] / 1e12 if r["achieved_flop_s"] else None, 2)
    gbs = num(r["achieved_bytes_s"] / 1e9 if r["achieved_bytes_s"] else None, 0)
    if r.get("pct_peak_bandwidth") is not None:
        gbs += f" ({r['pct_peak_bandwidth']:.0f}% of peak BW)"
    windows = r["img_s_windows"]
    return [
        f"{r['preset']}{' +BN' if r['batch_norm'] else ''}", str(r["image_size"]),
        str(r["batch"]), r["dtype"], r["data"], f"{r['lower_s']:.2f} + {r['compile_s']:.2f}",
        f"{r['img_s']:,.0f} (windows {min(windows):,.0f}-{max(windows):,.0f})",
        f"{r['ms_per_step']:.2f}", nbytes(r["step_bytes"]), nbytes(r["device_peak_bytes"]),
        f"{gflop} / {gb}", f"{tflops}, {gbs}",
    ]  # fmt: skip


def _line(r: dict) -> str:
    return (
        f"{r['preset']} {r['image_size']}px b{r['batch']} {r['dtype']} ({r['data']}): "
        f"{r['img_s']:,.0f} img/s, compile {r['compile_s']:.1f}s"
    )


def _profiles(rows: list[dict]) -> list[str]:
    lines: list[str] = []
    for r in rows:
        if r.get("profile"):
            title = f"{r['preset']} b{r['batch']} {r['dtype']} step ({r['data']} data)"
            lines += profile_markdown(title, r["profile"])
    return lines


SECTION = Section(
    name="step",
    title="Train step (the trainer's jitted step; synthetic batch resident on the devices; "
    "median of timed windows, one host sync per window):",
    columns=("preset", "image", "batch", "dtype", "data", "lower + compile s", "img/s",
             "ms/step", "step memory", "device peak", "XLA GFLOP / GB per step",
             "achieved TFLOP/s, GB/s"),
    cells=_cells,
    line=_line,
    after=_profiles,
)  # fmt: skip
