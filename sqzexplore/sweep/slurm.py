"""Many machines: an sbatch array of sweep workers against one shared study.

`sqz sweep run SWEEP --slurm --array N` creates the sweep directory (so the tasks never race to
create it), writes DIR/slurm/sweep.sbatch and submits it with sbatch (`--dry-run` only prints it
and writes nothing). Each task asks for --gpus-per-task (1), --cpus-per-task (8), --mem (32G) and
--time (24:00:00) unless told otherwise, and activates the environment the command ran from
(--env-activate; default: `source <venv>/bin/activate` of the running Python's venv) before
starting its worker, so the nodes use the same installation (e.g. the CUDA build of jax: a task
granted GPUs that sees only CPU devices stops with an error saying so).

Each array task runs one worker (`--workers 1`) that sees the task's GPUs and trains data-parallel
over them; the tasks share the work through the sweep lock and the claims, so no trial runs twice
and the budget is exact. DIR must be on a filesystem every node mounts (see `sqzexplore.sweep` for
the shared-filesystem and RDB setups). Array tasks exit when nothing is left to hand out
(`--no-wait`); a task killed mid-trial leaves a claim that goes stale after --stale-after-s, and
the next `sqz sweep run` (or array) resumes that trial from its checkpoint.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULTS = {"gpus_per_task": 1, "cpus_per_task": 8, "mem": "32G", "time_limit": "24:00:00"}
# sbatch --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds; or no limit.
_TIME = re.compile(r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2}|infinite|unlimited)$", re.IGNORECASE)
# sbatch --mem: an integer with an optional unit (K, M, G, T; M when none); 0 means all of it.
_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


class SlurmError(RuntimeError):
    pass


def parse_time(text: str) -> str:
    """A valid sbatch --time value, or ValueError naming the accepted forms."""
    text = text.strip()
    if not _TIME.match(text):
        raise ValueError(
            f"--time must be MINUTES, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (e.g. 04:00:00, "
            f"2-00:00:00), got {text!r}"
        )
    return text


def parse_mem(text: str) -> str:
    """A valid sbatch --mem value, or ValueError naming the accepted forms."""
    text = text.strip()
    if not _MEM.match(text):
        raise ValueError(
            f"--mem must be an integer with an optional unit K, M, G or T (e.g. 32G, 64000M; "
            f"0: all of the node's memory), got {text!r}"
        )
    return text


def default_env_activate() -> str | None:
    """The line that activates the running Python's environment on the nodes, or None.

    A venv (`sys.prefix` differs from `sys.base_prefix`): `source <venv>/bin/activate`; a conda
    environment: `conda activate <prefix>`. The worker command itself already runs this
    interpreter by its absolute path; activating also gives the tasks the environment's PATH
    and variables (e.g. CUDA libraries installed into it).
    """
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        return f"source {shlex.quote(str(activate))}"
    conda = os.environ.get("CONDA_PREFIX")
    if conda and Path(sys.prefix) == Path(conda):
        return f"conda activate {shlex.quote(conda)}"
    return None


def sbatch_script(
    *,
    name: str,
    worker_command: Sequence[str],
    workdir: Path,
    cwd: Path,
    array: int,
    partition: str | None = None,
    gpus_per_task: int = DEFAULTS["gpus_per_task"],
    cpus_per_task: int | None = DEFAULTS["cpus_per_task"],
    time_limit: str | None = DEFAULTS["time_limit"],
    mem: str | None = DEFAULTS["mem"],
    account: str | None = None,
    env_activate: str | None = None,
    extra_sbatch: Sequence[str] = (),
) -> str:
    """The text of an sbatch script running `array` workers of the sweep in `workdir`.

    `env_activate`: a shell line run before the worker (e.g. `source venv/bin/activate`).
    """
    if array < 1:
        raise SlurmError(f"--array must be >= 1, got {array}")
    if gpus_per_task < 0:
        raise SlurmError(f"--gpus-per-task must be >= 0, got {gpus_per_task}")
    if cpus_per_task is not None and cpus_per_task < 1:
        raise SlurmError(f"--cpus-per-task must be >= 1, got {cpus_per_task}")
    try:
        time_limit = None if time_limit is None else parse_time(time_limit)
        mem = None if mem is None else parse_mem(mem)
    except ValueError as e:
        raise SlurmError(str(e)) from None
    log_dir = workdir / "slurm"
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=sqz-sweep-{name}",
        f"#SBATCH --array=0-{array - 1}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --output={log_dir}/%x-%A_%a.out",
    ]
    if gpus_per_task:
        lines.append(f"#SBATCH --gpus-per-task={gpus_per_task}")
    optional = {
        "partition": partition,
        "cpus-per-task": cpus_per_task,
        "time": time_limit,
        "mem": mem,
        "account": account,
    }
    lines += [f"#SBATCH --{k}={v}" for k, v in optional.items() if v is not None]
    for extra in extra_sbatch:
        lines.append(f"#SBATCH {extra}")
    command = " ".join(shlex.quote(c) for c in worker_command)
    lines += [
        "",
        f"# Sweep '{name}': each array task is one worker; all share the study and the trial",
        f"# directories under {workdir} (a shared filesystem). Rerunning this script (or",
        "# `sqz sweep run`) resumes: finished trials are kept, interrupted ones resume.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(cwd))}",
    ]
    if env_activate:
        # Activation scripts read unset variables; relax -u around them.
        lines += ["set +u", env_activate, "set -u"]
    lines += [
        "export PYTHONUNBUFFERED=1",
        f'srun {command} --worker-name "slurm-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"',
        "",
    ]
    return "\n".join(lines)


def check_sbatch() -> None:
    """Refuse to go on (before the sweep directory is made) where sbatch cannot be run."""
    if shutil.which("sbatch") is None:
        raise SlurmError(
            "sbatch not found: run this on a SLURM login node, or add --dry-run to print the "
            "script without submitting it"
        )


def write_script(text: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def submit(path: Path) -> str:
    """Submit with sbatch; returns the job id."""
    check_sbatch()
    out = subprocess.run(
        ["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SlurmError(f"sbatch failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]


# ------------------------------------------------------------------------------ the CLI
def _text_type(parse, flag: str):
    """An argparse type from a `slurm.parse_*` function (its ValueError names the forms)."""

    def convert(text: str) -> str | None:
        if text.strip().lower() in ("", "none"):
            return None  # leave the line out: the cluster's default
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = flag
    return convert


def add_options(run: argparse.ArgumentParser, bounded: Callable) -> None:
    """The SLURM flags of `sqz sweep run` (`bounded(kind, low, name)`: a range-checked
    argparse type)."""
    slurm = run.add_argument_group("SLURM (many machines)")
    slurm.add_argument("--slurm", action="store_true", help="submit an sbatch array of workers")
    slurm.add_argument(
        "--dry-run",
        action="store_true",
        help="print the sbatch script only: write nothing (not even the sweep directory)",
    )
    slurm.add_argument(
        "--array", type=bounded(int, 1, "--array"), default=4, help="array tasks (workers), >= 1"
    )
    slurm.add_argument("--partition", default=None)
    slurm.add_argument(
        "--gpus-per-task",
        type=bounded(int, 0, "--gpus-per-task"),
        default=DEFAULTS["gpus_per_task"],
        help="GPUs of each task (default %(default)s; 0 for CPU-only tasks)",
    )
    slurm.add_argument(
        "--cpus-per-task",
        type=bounded(int, 1, "--cpus-per-task"),
        default=DEFAULTS["cpus_per_task"],
        help="CPU cores of each task for data loading (default %(default)s)",
    )
    slurm.add_argument(
        "--time",
        dest="time_limit",
        type=_text_type(parse_time, "--time"),
        default=DEFAULTS["time_limit"],
        help="wall-time limit of each task, e.g. 04:00:00 or 2-00:00:00 (default %(default)s; "
        "'none': the partition's); tasks resume each other's trials",
    )
    slurm.add_argument(
        "--mem",
        type=_text_type(parse_mem, "--mem"),
        default=DEFAULTS["mem"],
        help="memory of each task, e.g. 32G (default %(default)s; 'none': the partition's)",
    )
    slurm.add_argument("--account", default=None)
    slurm.add_argument(
        "--env-activate",
        default=None,
        help="shell line that activates the environment on the nodes (default: `source "
        "<venv>/bin/activate` of the running Python's venv; 'none' for no line)",
    )
    slurm.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        help="extra '#SBATCH' line, e.g. --sbatch-arg=--qos=high (repeatable)",
    )


def run_array(
    args: argparse.Namespace, defn: Any, base: Any, workdir: str, worker_command: Sequence[str]
) -> int:
    """`sqz sweep run --slurm`: print the sbatch script (--dry-run: and nothing else), or create
    the sweep directory, write the script into it and submit it."""
    from sqzexplore.sweep.sweepdir import SweepDir, init_sweep_dir

    env_activate = args.env_activate
    if env_activate is None:
        env_activate = default_env_activate()
    elif env_activate.strip().lower() in ("", "none"):
        env_activate = None
    root = SweepDir(workdir).root
    text = sbatch_script(
        name=defn.name,
        worker_command=worker_command,
        workdir=root,
        cwd=Path.cwd(),
        array=args.array,
        partition=args.partition,
        gpus_per_task=args.gpus_per_task,
        cpus_per_task=args.cpus_per_task,
        time_limit=args.time_limit,
        mem=args.mem,
        account=args.account,
        env_activate=env_activate,
        extra_sbatch=args.sbatch_arg,
    )
    if args.dry_run:
        print(text)
        print(f"# not submitted, nothing written (--dry-run); would be {root}/slurm/sweep.sbatch")
        return 0
    check_sbatch()  # before the sweep directory exists: no stub left behind
    sweep_dir, _ = init_sweep_dir(
        workdir,
        defn,
        base,
        sweep_file=args.sweep_file,
        arg=args.arg,
        storage=args.storage,
        new=args.new,
    )
    path = write_script(text, sweep_dir.slurm / "sweep.sbatch")
    job = submit(path)
    print(f"submitted SLURM array job {job} ({args.array} workers) from {path}")
    print(f"watch it with: sqz sweep status {workdir}")
    return 0
