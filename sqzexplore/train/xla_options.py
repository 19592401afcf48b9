"""XLA compile options of the trainer's programs, and the persistent compilation cache.

Compile options (`INIT`, `step_options()`): on XLA:CPU, LLVM code generation is most of a small
model's compile time (the digits train step: ~1 s of HLO passes, 7-10 s of code generation on
the 2-core CPU VM), and backend optimisation level 1 cuts it by about a fifth without slowing the
step there (benchmarks/RESULTS.md, "Compile time of the digits train step"). The initialiser runs
once per run, so it is compiled at level 1 on every platform: its values are bit-identical to the
default build (tests/test_programs.py). The train step and eval are compiled at level 1 on CPU
only: there the step computes different low-order bits than at the default level (LLVM contracts
and orders floating-point operations differently), so CPU results differ from runs of sqzexplore
before this change in the last bits, and from there in the usual run-to-run way. On a GPU the
step and eval keep XLA's defaults, except `config.xla_gpu_autotune_level` when it is set (XLA's
`xla_gpu_autotune_level`, 0-5, default 4: lower levels compile faster and may pick slower
convolution and GEMM algorithms; see docs/gpu-compile.md).

The persistent cache (`configure`, called by the trainer before it builds any program):
`config.compilation_cache_dir` (default ~/.cache/sqzexplore/xla, per user, shared by all of that
user's runs and sweep workers; '' leaves JAX's own setting, off unless JAX_COMPILATION_CACHE_DIR
is set). What is cached depends on the platform (`cache_settings`):

- CPU: programs that took >= 0.5 s to compile (the trainer's init, step and eval; not the small
  eager helpers), as before this module took the cache over.
- GPU / TPU: every program (no minimum compile time or entry size): a cold digits trial spends
  tens of seconds compiling there, a cached one reads files. On GPU, XLA's per-fusion autotune
  cache (`xla_gpu_per_fusion_autotune_cache_dir`, a folder inside the cache) is on as well, so a
  new program does not autotune again the convolutions an earlier one had (layers whose shapes
  a sweep does not change, a later sweep over the same widths).

Every option is set through `jax.config` by name; one that this jax does not have is reported
in the line `configure` prints (it says what is on and what is not), never skipped silently.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from sqzexplore.config import check_autotune_level

LEVEL_1 = {"xla_backend_optimization_level": 1}
INIT = LEVEL_1

# XLA's --xla_gpu_autotune_level (config.GPU_AUTOTUNE_LEVELS): 0 off, 1 on, 2 +initialised
# buffers, 3 +reinitialised, 4 +checked against a reference (XLA's default), 5 +skip solutions
# that fail the check.
XLA_DEFAULT_AUTOTUNE_LEVEL = 4
CPU_MIN_COMPILE_SECS = 0.5  # the CPU threshold before this module (unchanged there)
AUTOTUNE_CACHE = "xla_gpu_per_fusion_autotune_cache_dir"  # the XLA cache JAX can turn on

# The GPU compile options of this process (set by `configure`; empty: XLA's defaults).
_gpu_options: dict[str, Any] = {}
_reported: set[str] = set()  # settings lines already printed by this process


def step_options() -> dict | None:
    """Compile options of the train step and eval on the default backend (None: XLA's)."""
    if jax.default_backend() == "cpu":
        return dict(LEVEL_1)
    return dict(_gpu_options) or None


def cache_settings(cache_dir: str, platform: str) -> dict[str, Any]:
    """The `jax.config` values that turn the persistent cache on at `cache_dir` on `platform`
    ('cpu', 'gpu' or 'tpu'): what `configure` sets, by option name."""
    settings: dict[str, Any] = {"jax_compilation_cache_dir": cache_dir}
    if platform == "cpu":
        settings["jax_persistent_cache_min_compile_time_secs"] = CPU_MIN_COMPILE_SECS
        return settings
    settings["jax_persistent_cache_min_compile_time_secs"] = 0.0
    settings["jax_persistent_cache_min_entry_size_bytes"] = -1  # no size floor (JAX's guide)
    if platform == "gpu":
        settings["jax_persistent_cache_enable_xla_caches"] = AUTOTUNE_CACHE
    return settings


def gpu_compile_options(autotune_level: int | None) -> dict[str, Any]:
    """The GPU compile options of `config.xla_gpu_autotune_level` (None: XLA's default)."""
    check_autotune_level(autotune_level)
    return {} if autotune_level is None else {"xla_gpu_autotune_level": int(autotune_level)}


def configure(config: ml_collections.ConfigDict, platform: str | None = None) -> str:
    """Set this process's persistent cache and GPU compile options from `config` (before any
    program of the run is built) and return the line that says what is on; it is printed the
    first time a process configures these settings."""
    platform = platform or jax.default_backend()
    global _gpu_options
    options = gpu_compile_options(config.get("xla_gpu_autotune_level"))
    _gpu_options = options if platform == "gpu" else {}
    parts = []
    path = config.get("compilation_cache_dir") or ""
    if path:
        path = os.path.abspath(os.path.expanduser(path))
        os.makedirs(path, exist_ok=True)
        settings = cache_settings(path, platform)
        missing = [name for name in settings if name not in jax.config.values]
        for name, value in settings.items():
            if name not in missing:
                jax.config.update(name, value)
        parts.append(f"persistent compilation cache {path}")
        floor = settings["jax_persistent_cache_min_compile_time_secs"]
        parts.append(f"programs compiled in >= {floor:g} s" if floor else "every program")
        if platform == "gpu":
            on = "jax_persistent_cache_enable_xla_caches" not in missing
            if on:  # XLA's flag documents that the folder must exist
                os.makedirs(os.path.join(path, AUTOTUNE_CACHE), exist_ok=True)
            parts.append(f"XLA per-fusion autotune cache {'on' if on else 'OFF'}")
        if missing:
            parts.append(f"jax {jax.__version__} lacks {', '.join(missing)}: not set")
    else:
        parts.append(
            "persistent compilation cache: JAX's setting (config.compilation_cache_dir='')"
        )
    if platform == "gpu":
        level = options.get("xla_gpu_autotune_level")
        shown = f"XLA default ({XLA_DEFAULT_AUTOTUNE_LEVEL})" if level is None else level
        parts.append(f"GPU autotune level {shown}")
    elif options:
        parts.append(f"config.xla_gpu_autotune_level unused on {platform}")
    line = "; ".join(parts)
    if line not in _reported and jax.process_index() == 0:
        _reported.add(line)
        print(line, flush=True)
    return line
