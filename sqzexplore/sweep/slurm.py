"""Many machines: an sbatch array of sweep workers against one shared study.

`sqz sweep run SWEEP --slurm --array N` creates the sweep directory (so the tasks never race to
create it), writes DIR/slurm/sweep.sbatch and submits it with sbatch (`--dry-run` writes and
prints it only). Each array task runs one worker (`--workers 1`) that sees the task's GPUs and
trains data-parallel over them; the tasks share the work through the sweep lock and the claims,
so no trial runs twice and the budget is exact. DIR must be on a filesystem every node mounts
(see `sqzexplore.sweep` for the shared-filesystem and RDB setups). Array tasks exit when nothing
is left to hand out (`--no-wait`); a task killed mid-trial leaves a claim that goes stale after
--stale-after-s, and the next `sqz sweep run` (or array) resumes that trial from its checkpoint.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


class SlurmError(RuntimeError):
    pass


def sbatch_script(
    *,
    name: str,
    worker_command: Sequence[str],
    workdir: Path,
    cwd: Path,
    array: int,
    partition: str | None = None,
    gpus_per_task: int = 1,
    cpus_per_task: int | None = None,
    time_limit: str | None = None,
    mem: str | None = None,
    account: str | None = None,
    extra_sbatch: Sequence[str] = (),
) -> str:
    """The text of an sbatch script running `array` workers of the sweep in `workdir`."""
    if array < 1:
        raise SlurmError(f"--array must be >= 1, got {array}")
    if gpus_per_task < 0:
        raise SlurmError(f"--gpus-per-task must be >= 0, got {gpus_per_task}")
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
        "export PYTHONUNBUFFERED=1",
        f'srun {command} --worker-name "slurm-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"',
        "",
    ]
    return "\n".join(lines)


def write_script(text: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def submit(path: Path) -> str:
    """Submit with sbatch; returns the job id."""
    if shutil.which("sbatch") is None:
        raise SlurmError(
            "sbatch not found: run this on a SLURM login node, or use --dry-run to only write "
            f"the script ({path})"
        )
    out = subprocess.run(
        ["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SlurmError(f"sbatch failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]
