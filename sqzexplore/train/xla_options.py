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
`configure` is idempotent and runs before any compile in every process that compiles: at the
start of each run, in the compile-ahead hook, and in the benchmarks. Processes sharing the cache
directory do so safely (the section "sharing the cache directory" below). The line also states
the matmul/convolution precision on a GPU (`precision_line`), and `member_tolerance` is the
per-platform tolerance of a population member against its lone trial.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
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
_lock = threading.Lock()  # the compile-ahead thread and the run may configure at once


def step_options() -> dict | None:
    """Compile options of the train step and eval on the default backend (None: XLA's)."""
    if jax.default_backend() == "cpu":
        return dict(LEVEL_1)
    return dict(_gpu_options) or None


def cache_settings(cache_dir: str, platform: str) -> dict[str, Any]:
    """The `jax.config` values that turn the persistent cache on at `cache_dir` on `platform`
    ('cpu', 'gpu' or 'tpu'): what `configure` sets, by option name."""
    settings: dict[str, Any] = {
        "jax_compilation_cache_dir": cache_dir,
        # A size limit: JAX's LRU cache, which locks the directory around reads and writes, so
        # processes sharing it never read a half-written entry (see "sharing" below).
        "jax_compilation_cache_max_size": CACHE_MAX_BYTES,
    }
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
    """Set this process's persistent cache, GPU compile options and precision report from
    `config` and return the line that says what is on; it is printed the first time a process
    configures these settings. Call it before the process compiles anything (JAX fixes its cache
    at the first compile that uses it): the trainer does at the start of every run, the
    compile-ahead hook before it compiles (train/runner.py), the benchmarks at their start.
    Idempotent and thread-safe: the same config gives the same settings and line again."""
    platform = platform or jax.default_backend()
    with _lock:
        return _configure(config, platform)


def _configure(config: ml_collections.ConfigDict, platform: str) -> str:
    global _gpu_options
    options = gpu_compile_options(config.get("xla_gpu_autotune_level"))
    _gpu_options = options if platform == "gpu" else {}
    parts = []
    path = config.get("compilation_cache_dir") or ""
    if path:
        path = os.path.abspath(os.path.expanduser(path))
        os.makedirs(path, exist_ok=True)
        settings = cache_settings(path, platform)
        backfill_access_times(path)
        missing = [name for name in settings if name not in jax.config.values]
        for name, value in settings.items():
            if name not in missing:
                jax.config.update(name, value)
        active = active_cache_dir()
        if active is not None and active != path:
            parts.append(
                f"persistent compilation cache stays {active} in this process (JAX set it up at "
                f"its first compile); config.compilation_cache_dir={path} applies to new processes"
            )
        else:
            parts.append(f"persistent compilation cache {path}")
        floor = settings["jax_persistent_cache_min_compile_time_secs"]
        parts.append(f"programs compiled in >= {floor:g} s" if floor else "every program")
        if platform == "gpu":
            on = "jax_persistent_cache_enable_xla_caches" not in missing
            if on:  # XLA's flag documents that the folder must exist
                os.makedirs(os.path.join(path, AUTOTUNE_CACHE), exist_ok=True)
                parts.append(f"XLA per-fusion autotune cache on{autotune_tmpdir(path)}")
            else:
                parts.append("XLA per-fusion autotune cache OFF")
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
        parts.append(precision_line(platform, _model_dtype(config)))
    elif options:
        parts.append(f"config.xla_gpu_autotune_level unused on {platform}")
    line = "; ".join(parts)
    if line not in _reported and jax.process_index() == 0:
        _reported.add(line)
        print(line, flush=True)
    return line


def active_cache_dir() -> str | None:
    """The directory of the persistent cache JAX has set up in this process (None: not yet).
    Reads JAX's module state: None as well where a jax version keeps it elsewhere."""
    try:
        from jax._src import compilation_cache
    except ImportError:
        return None
    cache = getattr(compilation_cache, "_cache", None)
    cache = getattr(cache, "_cache", cache)  # a VerificationCache wraps the LRUCache
    path = getattr(cache, "path", None)
    return os.path.abspath(str(path)) if path is not None else None


# ------------------------------------------------------------------ sharing the cache directory
# Several processes of one user share the cache (sweep workers, runs, benchmarks):
# - compiled programs: JAX writes an entry in place (no rename), so without a lock a reader can
#   load a half-written entry and two writers can interleave. A size limit turns on JAX's LRU
#   cache, which takes a file lock (`.lockfile`, flock on a local filesystem) around every read
#   and write, and bounds the directory's size (least recently read entries go first).
# - XLA:GPU's per-fusion autotune results: XLA writes each to a temporary file and renames it
#   into the folder (atomic, so concurrent writers are safe), but takes the temporary file from
#   TEST_TMPDIR, TMPDIR, TMP or /tmp, in that order; across filesystems the rename fails and with
#   it the compile. `autotune_tmpdir` points TEST_TMPDIR (read by XLA's C++ only; Python's
#   tempfile ignores it) at a folder inside the cache when the first of those is elsewhere.
CACHE_MAX_BYTES = 32 * 2**30
CACHE_SUFFIX, ATIME_SUFFIX = "-cache", "-atime"  # JAX's LRU cache's file names (jax/_src/lru_cache)
TMP_ENV = ("TEST_TMPDIR", "TMPDIR", "TMP")
AUTOTUNE_TMP = "tmp"


def backfill_access_times(cache_dir: str) -> int:
    """Give every entry written without a size limit (before this module set one, or by a jax
    without it) the access-time file JAX's LRU cache reads for each entry when it makes room:
    without it every later write fails (FileNotFoundError, a warning, the program uncached).
    Returns how many were added."""
    added = 0
    now = time.time_ns().to_bytes(8, "little")  # JAX's format: nanoseconds, little-endian
    with contextlib.suppress(OSError):
        for name in os.listdir(cache_dir):
            if not name.endswith(CACHE_SUFFIX):
                continue
            atime = os.path.join(cache_dir, name[: -len(CACHE_SUFFIX)] + ATIME_SUFFIX)
            if not os.path.exists(atime):
                with contextlib.suppress(OSError), open(atime, "wb") as f:
                    f.write(now)
                    added += 1
    return added


def _device_of(path: str) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def xla_tempdir(environ: dict | None = None) -> str:
    """The directory XLA takes its temporary files from (its GetTempFilename's order)."""
    env = os.environ if environ is None else environ
    for name in TMP_ENV:
        value = env.get(name)
        if value and os.path.isdir(value):
            return value
    return "/tmp"


def autotune_tmpdir(cache_dir: str, environ: dict | None = None) -> str:
    """Make XLA's temporary files land on the cache's filesystem (see above); returns '' when
    they already do, else a note naming the folder now in TEST_TMPDIR."""
    env = os.environ if environ is None else environ
    if _device_of(xla_tempdir(env)) == _device_of(cache_dir):
        return ""
    tmp = os.path.join(cache_dir, AUTOTUNE_TMP)
    os.makedirs(tmp, exist_ok=True)
    env["TEST_TMPDIR"] = tmp
    return f" (XLA's temporary files in {tmp}: the system's are on another filesystem)"


# ------------------------------------------------------------------------------------ precision
# float32 matmuls and convolutions with jax_default_matmul_precision unset ("default"), per
# platform: XLA:CPU computes them in float32; XLA:GPU in TF32 on NVIDIA GPUs from Ampere on
# (cuBLAS/cuDNN tensor cores: 10-bit mantissa inputs, float32 accumulation); TPUs in bfloat16
# passes. A bfloat16 model (config.model.dtype) computes in bfloat16 everywhere, accumulating in
# float32. docs/gpu.md says why the default stays JAX's.
DEFAULT_FLOAT32_PRECISION = {
    "cpu": "float32",
    "gpu": "TF32 (NVIDIA tensor cores, Ampere and later)",
    "tpu": "bfloat16 passes",
}


def matmul_precision() -> str:
    """jax_default_matmul_precision as set (env JAX_DEFAULT_MATMUL_PRECISION or jax.config),
    'default' when unset."""
    return str(jax.config.values.get("jax_default_matmul_precision") or "default")


def precision_line(platform: str, dtype: str = "float32") -> str:
    """What precision this process's matmuls and convolutions run at on `platform`."""
    setting = matmul_precision()
    if dtype == "bfloat16":
        what = "bfloat16 (config.model.dtype), float32 accumulation"
    elif setting in ("highest", "float32"):
        what = "float32"
    elif setting == "default":
        what = DEFAULT_FLOAT32_PRECISION.get(platform, "the platform's default")
    else:
        what = setting
    return f"matmul/conv precision {what} (jax_default_matmul_precision={setting})"


# How far a population member's first log point loss may be from its lone trial's (relative),
# per platform and precision: the members' program differs from the lone one (vmapped members'
# convolutions become grouped ones, with other algorithms), so the tolerance is the rounding of
# the precision the convolutions run at, amplified by a few steps. The CPU value is measured
# (tests/test_population.py: 1e-5 holds for unrolled and vmapped members); the GPU and TPU values
# are not measured yet: TF32 rounds inputs to 10 mantissa bits (~5e-4 relative per product),
# bfloat16 to 7 (~4e-3).
MEMBER_LOSS_RTOL = {
    ("cpu", "float32"): 1e-5,
    ("gpu", "float32"): 1e-4,  # jax_default_matmul_precision=highest
    ("gpu", "tf32"): 1e-2,  # the GPU default for float32 models
    ("tpu", "float32"): 1e-4,  # highest
    ("tpu", "bf16-passes"): 5e-2,  # the TPU default for float32 models
    ("any", "bfloat16"): 5e-2,  # a bfloat16 model on any platform
}


def member_tolerance(platform: str | None = None, dtype: str = "float32") -> float:
    """The relative tolerance of `MEMBER_LOSS_RTOL` for this process's platform (default JAX's
    backend), model dtype and jax_default_matmul_precision."""
    platform = platform or jax.default_backend()
    if dtype == "bfloat16":
        return MEMBER_LOSS_RTOL[("any", "bfloat16")]
    if platform == "cpu":
        return MEMBER_LOSS_RTOL[("cpu", "float32")]
    full = matmul_precision() in ("highest", "float32")
    if platform == "gpu":
        return MEMBER_LOSS_RTOL[("gpu", "float32" if full else "tf32")]
    return MEMBER_LOSS_RTOL[("tpu", "float32" if full else "bf16-passes")]


def _model_dtype(config: ml_collections.ConfigDict) -> str:
    model = config.get("model")
    return str(model.get("dtype", "float32")) if model is not None else "float32"
