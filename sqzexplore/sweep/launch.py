"""Local worker processes: how many, which GPUs each sees, and a progress bar over trials.

Default worker count: one per visible GPU (each worker sees one GPU through
CUDA_VISIBLE_DEVICES, and its trials train on it), else one worker on the CPU, whose trials use
all (fake or real) CPU devices. GPUs are counted without importing jax in this process (jax would
reserve GPU memory in the parent): JAX_PLATFORMS=cpu means none, else CUDA_VISIBLE_DEVICES, else
`nvidia-smi`, else (no nvidia-smi, as in some container images) jax's own device count in a child
process that allocates nothing, when a GPU build of jax is installed. With --workers N on G GPUs:
N <= G splits the GPUs into N groups (each trial is data-parallel over its group); N > G shares
GPUs round-robin and caps each worker's share of GPU memory in the spelling its jaxlib reads
(XLA_CLIENT_MEM_FRACTION, or the older XLA_PYTHON_CLIENT_MEM_FRACTION; `mem_fraction_var`): 0.9
of the GPU, or of the fraction the user set in either, split between the workers that share it.
Where the GPUs cannot be counted, more than one local worker is refused, naming the fix.

Children die with the parent (PR_SET_PDEATHSIG on Linux): killing `sqz sweep run`, even with
SIGKILL, stops its workers, and a rerun resumes their trials.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.space import SweepError


def visible_gpus() -> list[str] | None:
    """Ids of the GPUs trials could use, found without initialising jax in this process; None
    when a GPU build of jax is installed but the GPUs could not be counted."""
    platforms = (
        os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME") or ""
    ).lower()
    if platforms and not any(p in platforms for p in ("cuda", "gpu", "rocm")):
        return []
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return [x.strip() for x in cvd.split(",") if x.strip() and x.strip() != "-1"]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        if not gpu_jax_installed():
            return []
        count = jax_gpu_count()  # no nvidia-smi: ask jax itself, in a child process
        return None if count is None else [str(i) for i in range(count)]
    return [line.strip() for line in out.splitlines() if line.strip()]


def gpu_jax_installed() -> bool:
    """Whether a CUDA or ROCm build of jax is installed (a plugin, or a jaxlib built with it)."""
    import importlib.metadata as md
    import re

    for dist in md.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        if re.fullmatch(r"jax-(cuda|rocm)\d*-(plugin|pjrt)", name):
            return True
    try:
        return any(tag in md.version("jaxlib") for tag in ("cuda", "rocm"))
    except md.PackageNotFoundError:
        return False


# Counts jax's GPUs without taking their memory (no preallocation, no array made).
_PROBE = """
import jax
try:
    n = len(jax.devices("gpu"))
except RuntimeError:
    n = 0
print("SQZ_GPUS", n)
"""


def jax_gpu_count(timeout_s: float = 120) -> int | None:
    """GPUs jax's own backend sees, from a child process (None if the probe fails)."""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s,
            env=env,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("SQZ_GPUS "):
            return int(line.split()[1])
    return None


def default_workers(gpus: Sequence[str] | None) -> int:
    return max(1, len(gpus or []))


# `sqz sweep run --workers N` tells each local worker N (see workers.auto_compile_ahead).
LOCAL_WORKERS_ENV = "SQZ_LOCAL_WORKERS"


# JAX's variable for the share of GPU memory a process takes, in its two spellings: newer jaxlib
# reads XLA_CLIENT_MEM_FRACTION, and the older XLA_PYTHON_CLIENT_MEM_FRACTION only when that is
# unset (both set is an error there); older jaxlib reads only the older one. A worker gets the
# one its jaxlib reads, and the other set empty (which both read as unset).
MEM_FRACTION_VARS = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION")
DEFAULT_MEM_TOTAL = 0.9  # of a shared GPU, split between its workers


def mem_fraction_var() -> str:
    """The spelling the installed jaxlib reads (from its source, without importing it)."""
    import importlib.util

    with contextlib.suppress(Exception):
        spec = importlib.util.find_spec("jaxlib")
        if spec is not None and spec.origin:
            source = Path(spec.origin).with_name("xla_client.py").read_text(errors="replace")
            if "XLA_CLIENT_MEM_FRACTION" in source:
                return "XLA_CLIENT_MEM_FRACTION"
    return "XLA_PYTHON_CLIENT_MEM_FRACTION"


def memory_total(environ: dict | None = None) -> float:
    """The share of each GPU the sweep's workers split: the user's fraction (either spelling;
    the smaller if both), else DEFAULT_MEM_TOTAL. A SweepError for a value outside (0, 1]."""
    env = os.environ if environ is None else environ
    values = []
    for name in MEM_FRACTION_VARS:
        text = env.get(name, "").strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 < value <= 1:
            raise SweepError(f"{name} must be a fraction in (0, 1], got {text!r}")
        values.append(value)
    return min(values, default=DEFAULT_MEM_TOTAL)


def worker_envs(
    n_workers: int, gpus: Sequence[str] | None, environ: dict | None = None
) -> list[dict[str, str]]:
    """Environment additions of each of `n_workers` local workers (`gpus` None: a GPU build of
    jax whose GPUs could not be counted; then only one worker, which needs no share)."""
    if n_workers < 1:
        raise ValueError(f"--workers must be >= 1, got {n_workers}")
    if gpus is None:
        if n_workers > 1:
            raise SweepError(
                f"--workers {n_workers}: cannot count the GPUs (no nvidia-smi, no "
                "CUDA_VISIBLE_DEVICES, and jax's device count failed), so the workers' shares "
                "of GPU memory are unknown; set CUDA_VISIBLE_DEVICES to the GPUs to use (e.g. "
                "CUDA_VISIBLE_DEVICES=0), or JAX_PLATFORMS=cpu"
            )
        return [{}]
    if not gpus:
        return [{} for _ in range(n_workers)]
    if n_workers <= len(gpus):
        # Contiguous groups (neighbouring GPUs usually share the fastest links).
        bounds = [round(i * len(gpus) / n_workers) for i in range(n_workers + 1)]
        groups = [gpus[bounds[i] : bounds[i + 1]] for i in range(n_workers)]
        return [{"CUDA_VISIBLE_DEVICES": ",".join(g)} for g in groups]
    share = math.ceil(n_workers / len(gpus))
    fraction = f"{math.floor(100 * memory_total(environ) / share) / 100:.2f}"
    memory = {**dict.fromkeys(MEM_FRACTION_VARS, ""), mem_fraction_var(): fraction}
    return [{"CUDA_VISIBLE_DEVICES": gpus[k % len(gpus)], **memory} for k in range(n_workers)]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class SweepProgress:
    """A tqdm bar over the sweep's trials (on stderr; by default only on a terminal), refreshed
    from the sweep directory, so it counts every worker's trials, local or not."""

    def __init__(self, sweep_dir: sd.SweepDir, mode: str = "auto", interval_s: float = 2.0):
        self.sweep_dir = sweep_dir
        self.interval_s = interval_s
        enabled = mode == "on" or (mode == "auto" and sys.stderr.isatty())
        self._bar = None
        self._stop = threading.Event()
        self._thread = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=0,
                unit="trial",
                file=sys.stderr,
                dynamic_ncols=True,
                desc=sweep_dir.definition().name,
            )
            self.refresh()
            self._thread = threading.Thread(target=self._run, daemon=True, name="sweep-progress")
            self._thread.start()

    def refresh(self) -> None:
        if self._bar is None:
            return
        from sqzexplore.sweep.analyze import status

        with contextlib.suppress(Exception):  # a half-written file: next refresh
            st = status(self.sweep_dir)
            c = st["counts"]
            finished = c["complete"] + c["failed"] + c["stopped"] + c["skipped"]
            self._bar.total = st["total_runs"]
            self._bar.n = finished
            self._bar.set_postfix(
                running=c["running"], failed=c["failed"], stopped=c["stopped"], refresh=False
            )
            self._bar.refresh()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, flush=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.refresh()
        if self._bar is not None:
            self._bar.close()


def run_local_workers(
    commands: Sequence[list[str]],
    envs: Sequence[dict[str, str]],
    log_dir: Path,
    progress: SweepProgress,
) -> int:
    """Start one child process per command, wait for all; 0 when every child succeeded."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    for k, (cmd, env) in enumerate(zip(commands, envs, strict=True)):
        log_path = log_dir / f"worker-{k}.log"
        handle = open(log_path, "ab")  # noqa: SIM115 - the child writes it; closed after wait
        logs.append((log_path, handle))
        procs.append(
            subprocess.Popen(
                cmd,
                env={**os.environ, **env},
                stdout=handle,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        )
    progress.write(f"started {len(procs)} workers; logs in {log_dir}")

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for _, handle in logs:
            handle.close()
    failed = 0
    for k, p in enumerate(procs):
        if p.returncode != 0:
            failed += 1
            tail = logs[k][0].read_text(errors="replace").splitlines()[-15:]
            progress.write(f"worker {k} exited with {p.returncode}; last lines of {logs[k][0]}:")
            for line in tail:
                progress.write(f"  {line}")
    return 0 if failed == 0 else 1
