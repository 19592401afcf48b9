"""Devices, the ('data',) mesh and multi-host start-up.

Parallelism is `jax.jit` over a one-axis mesh of every device on every host: the batch is sharded
on 'data', the train state replicated (docs/design.md). No pmap. Multi-host runs call
`jax.distributed.initialize()` first, with an explicit coordinator or auto-detected on SLURM/TPU.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def maybe_initialize_distributed(dist_config) -> None:
    """Join the other processes of a multi-host run (no-op for a single process).

    `dist_config.initialize`: True always calls `jax.distributed.initialize` (with the given
    coordinator / process count / id, or JAX's own auto-detection); "auto" does so only when an
    explicit coordinator is given or SLURM (more than one task) or a TPU pod is detected;
    False never does.
    """
    from sqzexplore.config import tristate

    mode = tristate(dist_config.initialize, "distributed.initialize")
    if mode is False or _distributed_is_initialized():
        return
    explicit = dist_config.coordinator_address is not None
    detected = int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ
    if mode is None and not (explicit or detected):
        return
    kwargs = {}
    if explicit:
        kwargs["coordinator_address"] = dist_config.coordinator_address
    if dist_config.num_processes is not None:
        kwargs["num_processes"] = int(dist_config.num_processes)
    if dist_config.process_id is not None:
        kwargs["process_id"] = int(dist_config.process_id)
    if jax.config.jax_platforms in (None, "", "cpu") or str(jax.config.jax_platforms).startswith(
        "cpu"
    ):
        # CPU processes need a collectives backend to talk to each other (used by the tests).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def _distributed_is_initialized() -> bool:
    try:
        from jax._src import distributed  # the public API has no query for this

        return distributed.global_state.client is not None
    except Exception:  # pragma: no cover - private API moved; assume not initialised
        return False


def make_mesh(devices=None) -> Mesh:
    """A 1-D ('data',) mesh over the given devices (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def put_replicated(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """Place a host array (identical on every process) on every device of the mesh."""
    array = np.asarray(array)
    sharding = replicated(mesh)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def put_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assemble each process's share of a batch into one global array sharded on 'data'."""
    return jax.make_array_from_process_local_data(batch_sharded(mesh), np.asarray(local))


def check_divisible(batch_size: int, field: str, mesh: Mesh) -> None:
    """Refuse a global batch that does not split evenly over the devices and processes
    (a ConfigError, a ValueError, naming `field`)."""
    from sqzexplore.config import ConfigError

    n = mesh.devices.size
    if batch_size <= 0 or batch_size % n:
        raise ConfigError(
            f"{field}={batch_size} must be a positive multiple of the device count {n} "
            f"(the global batch is split evenly over the 'data' mesh axis)"
        )
    if batch_size % jax.process_count():
        raise ConfigError(
            f"{field}={batch_size} must divide by the process count {jax.process_count()}"
        )


def barrier(name: str, timeout_s: float = 1800.0) -> None:
    """Wait until every process reaches `name` (no-op for one process).

    Used after compilation: processes compile at different speeds, and the first collective's
    Gloo/NCCL set-up times out after ~30 s if one process is still compiling.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the coordination client has no public handle

    client = distributed.global_state.client
    if client is None:  # pragma: no cover - multi-process without jax.distributed
        return
    client.wait_at_barrier(f"sqzexplore_{name}", timeout_in_ms=int(timeout_s * 1000))
