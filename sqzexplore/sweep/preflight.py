"""What every trial of a sweep needs, checked once before any trial is registered.

`sqz sweep run` (and `sqz sweep worker`, on the machine it runs on) calls `check` after the sweep
file and its base config were checked and before the engine registers a trial, so a sweep that
cannot run stops with one line instead of registering every trial, compiling each ahead and
failing each the same way:

- the dataset: a TFDS dataset must be prepared in its data_dir ('digits' and 'synthetic' need
  nothing); the message says how to prepare it (`data.sources.not_prepared_message`);
- the devices: a `platform` the base config asks for (gpu/tpu) must be what JAX sees, and a job
  granted GPUs must not silently train on the CPU (`train.preflight.check_platform`);
- the storage: an Optuna database URL must open; the sweep directory's journal must be
  writable where it will be created;
- latency: a sweep whose objectives or constraints use measured latency needs its runtime
  (ONNX Runtime) installed and importable here (`sweep.latency.check_available`), whatever the
  runner: the latency is measured by the worker, not by the trainer.

The dataset and device checks apply to the default trainer; a custom `--runner` decides for
itself what it needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqzexplore.sweep.space import SweepError

BUNDLED = ("digits", "synthetic")


def check_dataset(data: Mapping[str, Any]) -> None:
    """The dataset of `data` (a config's data section) can be read here, else SweepError."""
    name = str(data.get("name") or "").strip()
    if name in BUNDLED:
        return
    from sqzexplore.data.sources import DataError, _tfds_builder, not_prepared_message

    data_dir = data.get("data_dir") or None
    try:
        builder = _tfds_builder(name, data_dir)
    except DataError as e:
        raise SweepError(str(e)) from None
    if not builder.is_prepared():
        message = not_prepared_message(name, builder, data_dir).splitlines()[0]
        raise SweepError(f"{message} (no trial was registered)")


def platforms_here(platform: str = "auto") -> list[str]:
    """The platform of each device JAX sees in this process, checked against `platform`
    (train/preflight's check_platform). Raises SweepError in one line."""
    import jax

    from sqzexplore.config import ConfigError
    from sqzexplore.train.preflight import check_platform

    try:
        devices = jax.devices()
        check_platform(platform, devices)
    except ConfigError as e:
        raise SweepError(f"{e} (no trial was registered)") from None
    except RuntimeError as e:  # a platform JAX cannot initialise at all
        raise SweepError(f"no devices: {str(e).splitlines()[0]}") from None
    return [d.platform for d in devices]


# Unless this process has initialised a JAX backend already (a test, a notebook), the check
# runs in a child: listing the devices here would initialise the accelerator in the launching
# `sqz sweep run` process, which on a GPU preallocates most of its memory and holds it while
# the workers train.
_PROBE = """
import json, sys
from sqzexplore.sweep import preflight
from sqzexplore.sweep.space import SweepError
try:
    print(json.dumps(preflight.platforms_here(sys.argv[1])))
except SweepError as e:
    print(e, file=sys.stderr)
    sys.exit(3)
"""


def _backend_initialised() -> bool:
    """Whether this process has initialised a JAX backend (jax's private registry, read only
    when jax is imported; anything unexpected counts as not initialised: the child is safe)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge._backends)
    except (ImportError, AttributeError):
        return False


def device_platforms(platform: str = "auto") -> list[str]:
    """`platforms_here`, in a child process that allocates nothing, unless this process has a
    JAX backend already."""
    if _backend_initialised():
        return platforms_here(platform)
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    cmd = [sys.executable, "-c", _PROBE, platform]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise SweepError("no devices: JAX did not list its devices in 300 s") from None
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    if p.returncode != 0:
        raise SweepError(lines[-1] if lines else f"no devices: the probe exited {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_devices(config: Mapping[str, Any]) -> None:
    """JAX sees the platform the base config asks for (or was granted)."""
    device_platforms(str(config.get("platform", "auto") or "auto"))


def check_storage(storage: str | None, workdir: str | os.PathLike) -> None:
    """An Optuna URL opens; without one, the sweep directory (its journal) can be written."""
    if storage:
        from sqzexplore.sweep.sweepdir import open_storage

        open_storage(storage, None)
        return
    path = Path(workdir).absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise SweepError(
            f"--workdir {workdir}: {path} is not a writable directory, so the sweep's study "
            "journal cannot be written there; choose another --workdir"
        )


def check(
    config: Mapping[str, Any],
    *,
    storage: str | None,
    workdir: str,
    default_runner: bool,
    devices: bool = True,
    defn=None,
) -> None:
    """Every check above for a sweep whose base config (as a dict) is `config` and whose
    definition is `defn` (None: no latency check). `devices`: off where the trials run
    elsewhere (a SLURM submission; each array task's worker checks)."""
    if defn is not None:
        from sqzexplore.sweep.latency import check_available

        check_available(defn)
    check_storage(storage, workdir)
    if default_runner:
        check_dataset(config.get("data") or {})
        if devices:
            check_devices(config)
