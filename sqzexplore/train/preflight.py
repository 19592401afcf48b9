"""Checks a run passes once its devices are known, before any data is loaded or anything compiled.

`check(config, spec, mesh, workdir)` (called by `train_and_evaluate`, so `sqz train` and every
sweep trial run it):

- prints the devices the run uses (platform, kind, count, processes);
- the platform: `config.platform` gpu/tpu/cpu must be what JAX sees, and a SLURM job that was
  granted GPUs (or a CUDA_VISIBLE_DEVICES that names some) must not silently train on the CPU:
  both stop with an error naming the fix (the accelerator build of jax);
- the global batches split evenly over the devices and processes;
- one training step fits in memory: a lower bound on its activations (the analytic per-layer
  output sizes of `models.complexity`, times the per-device batch) and parameters, times the
  members of a population (`members`: N members train at once), plus a device-resident dataset
  must not exceed the memory there is (a GPU/TPU's own, or the host's available RAM for CPU
  devices), so `image_size=100000` is an error naming the limit, not an allocation that runs
  the machine out of memory;
- the workdir (a file, under a file, read-only) can be written.

Every failure is a `ConfigError` (a `ValueError`) or `rundir.WorkdirError` whose message names
the setting and what to change.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from jax.sharding import Mesh

from sqzexplore import rundir, sharding
from sqzexplore.config import ConfigError
from sqzexplore.models.spec import SqueezeNetSpec

# Environment variables by which SLURM (or a user) says this job has GPUs.
GPU_GRANT_VARS = ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")
INSTALL_FIX = {
    "gpu": 'install the CUDA build of jax: pip install -e ".[cuda12]" (or ".[cuda13]"; '
    "check `nvidia-smi` works)",
    "tpu": 'install the TPU build of jax: pip install -e ".[tpu]"',
    "cpu": "run with JAX_PLATFORMS=cpu",
}
# Bytes of the digits dataset per image pixel while it is built on the host: the float64
# bilinear resize plus the uint8 result.
_DIGITS_HOST_BYTES_PER_PIXEL = 9
_DIGITS_IMAGES = 1797


class PlatformError(ConfigError):
    """The run asked for (or was granted) an accelerator that JAX does not see."""


def check(config: Any, spec: SqueezeNetSpec, mesh: Mesh, workdir: str, members: int = 1) -> None:
    """All the checks above, in order; prints the device line on the main process. `members`:
    the population's size (its members train at once, each with its own state and activations
    on every device)."""
    devices = list(mesh.devices.flat)
    if jax.process_index() == 0:
        print(f"devices: {describe_devices(devices)}", flush=True)
    check_platform(config.get("platform", "auto"), devices)
    sharding.check_divisible(config.batch_size, "config.batch_size", mesh)
    sharding.check_divisible(config.eval_batch_size, "config.eval_batch_size", mesh)
    check_memory(config, spec, devices, members)
    rundir.check_writable_dir(workdir)


def describe_devices(devices: list) -> str:
    """`gpu, 2 x NVIDIA H200 (1 process)`."""
    kinds: dict[str, int] = {}
    for d in devices:
        kinds[d.device_kind] = kinds.get(d.device_kind, 0) + 1
    what = ", ".join(f"{n} x {kind}" for kind, n in kinds.items())
    processes = jax.process_count()
    return f"{devices[0].platform}, {what} ({processes} process{'es' if processes > 1 else ''})"


def gpu_grant(environ: dict | None = None) -> str | None:
    """`NAME=value` of the first variable saying this job was given GPUs, or None."""
    env = os.environ if environ is None else environ
    for name in GPU_GRANT_VARS:
        value = env.get(name, "").strip()
        if name == "SLURM_GPUS_ON_NODE":
            if value.isdigit() and int(value) > 0:
                return f"{name}={value}"
        elif value and value not in ("-1", "NoDevFiles") and not value.startswith("-"):
            return f"{name}={value}"
    return None


def check_platform(platform: str, devices: list, environ: dict | None = None) -> None:
    """Refuse a run whose devices are not the platform it asked for (or was granted)."""
    env = os.environ if environ is None else environ
    seen = devices[0].platform if devices else "none"
    if platform != "auto":
        if seen != platform:
            raise PlatformError(
                f"config.platform={platform} but JAX sees only {seen} devices; "
                f"{INSTALL_FIX[platform]}, or set config.platform=auto"
            )
        return
    if seen != "cpu":
        return
    explicit = (env.get("JAX_PLATFORMS") or env.get("JAX_PLATFORM_NAME") or "").lower()
    if explicit.startswith("cpu"):
        return  # the CPU on purpose
    grant = gpu_grant(env)
    if grant is not None:
        raise PlatformError(
            f"this job was granted GPUs ({grant}) but JAX sees only CPU devices; "
            f"{INSTALL_FIX['gpu']}. To train on the CPU on purpose set config.platform=cpu "
            "and JAX_PLATFORMS=cpu"
        )


def host_memory_bytes() -> int | None:
    """Available host RAM (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory_bytes(device: Any) -> int | None:
    """A GPU/TPU's memory limit (None for CPU devices, which share the host's RAM)."""
    if device.platform == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
    except Exception:  # a backend without memory stats
        return None
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


def _gib(n: float) -> str:
    return f"{n / 2**40:.1f} TiB" if n >= 2**40 else f"{n / 2**30:.2f} GiB"


def step_memory_bytes(
    config: Any, spec: SqueezeNetSpec, n_devices: int, members: int = 1
) -> dict[str, int]:
    """Lower bounds (bytes, per device) of what one train step and the dataset hold.

    `activations`: every layer's output for the per-device train batch (the backward pass keeps
    them), in the compute dtype, for each of a population's `members`; `state`: the members'
    float32 parameters and gradients; `dataset`: a digits / synthetic dataset held on every
    device (uint8, one copy the members share); `host`: what building that dataset takes on the
    host.
    """
    from sqzexplore.models.complexity import complexity

    cx = complexity(spec)
    itemsize = 2 if spec.dtype == "bfloat16" else 4
    per_device = max(1, int(config.batch_size) // n_devices)
    eval_per_device = max(1, int(config.eval_batch_size) // n_devices)
    pixels = spec.image_size**2 * spec.in_channels
    peak_layer = max((layer.activations for layer in cx.layers), default=0)
    activations = max(per_device * (cx.activations + pixels), eval_per_device * peak_layer)
    name = str(config.data.name).strip()
    images = 0
    if name == "digits":
        images = _DIGITS_IMAGES
    elif name == "synthetic":
        images = int(config.data.synthetic_train_size) + int(config.data.synthetic_eval_size)
    per_pixel = _DIGITS_HOST_BYTES_PER_PIXEL if name == "digits" else 0
    host = images * (spec.image_size**2 * per_pixel + pixels)
    return {
        "activations": members * activations * itemsize,
        "state": members * 2 * 4 * cx.params,
        "dataset": images * pixels,
        "host": host,
    }


def check_memory(config: Any, spec: SqueezeNetSpec, devices: list, members: int = 1) -> None:
    """Refuse a run whose step (of `members` at once, a population) and device-resident data
    cannot fit; names the limit."""
    need = step_memory_bytes(config, spec, len(devices), members)
    per_device = need["activations"] + need["state"] + need["dataset"]
    local = [d for d in devices if d.process_index == jax.process_index()] or devices
    host = host_memory_bytes()
    limit = device_memory_bytes(local[0])
    if limit is not None:
        where, available, needed = f"{local[0].device_kind} memory per device", limit, per_device
    elif host is not None:
        # CPU devices share the host's RAM: every local device holds its share at once.
        where, available = "available host RAM (MemAvailable)", host
        needed = per_device * len(local)
    else:
        return
    host_needed = need["host"]
    if host is not None and host_needed > host and host_needed > needed:
        where, available, needed = "available host RAM (MemAvailable)", host, host_needed
    if needed <= available:
        return
    population = f" for a population of {members} members" if members > 1 else ""
    raise ConfigError(
        f"config.model.image_size={spec.image_size} with config.batch_size={config.batch_size} "
        f"needs at least {_gib(needed)}{population} (one step's activations"
        + (f" and the {config.data.name} images" if need["dataset"] else "")
        + f"), more than the {_gib(available)} of {where}; use a smaller image_size or "
        + ("batch_size, or fewer members (--population)" if members > 1 else "batch_size")
    )
