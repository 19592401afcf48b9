"""Many machines: an sbatch array of sweep workers against one shared study.

`sqz sweep run SWEEP --slurm --array N` creates the sweep directory (so the tasks never race to
create it), writes DIR/slurm/sweep.sbatch and submits it with sbatch (`--dry-run` only prints it
and writes nothing). Each task asks for --gpus-per-task (1), or --gres (e.g. gpu:2, for sites
without `cons_tres`), and --cpus-per-task (8); memory and time limits only when given (--mem,
--time, or as --sbatch-arg lines), so the partition's own defaults and limits apply otherwise.

Where the code runs: each node `cd`s into --checkout (default: the checkout the running
sqzexplore comes from) and runs the worker with --venv's Python (default: the running Python's
venv), after activating it (--env-activate; default `source <venv>/bin/activate`), so the nodes
use the same installation (e.g. the CUDA build of jax: a task granted GPUs that sees only CPU
devices stops with an error saying so). The script checks both paths, and that the Python
imports sqzexplore, on the node before starting, and stops with an error naming the flag to fix.

Each array task runs one worker (`--workers 1`) that sees the task's GPUs and trains data-parallel
over them; the tasks share the work through the sweep's run store (flock or database, see
store.py), so no trial runs twice and the budget is exact. DIR must be on a filesystem every node
mounts (see `sqzexplore.sweep` for the shared-filesystem and database setups). Array tasks exit
when nothing is left to hand out (`--no-wait`).

Time limits and preemption: the job is requeueable (`--requeue`) and asks SLURM for SIGUSR1
--signal-s seconds (default 300) before its time limit (`--signal=B:USR1@S`). The batch script
then requeues its own array task (`scontrol requeue`) and sends SIGTERM to the worker; on
preemption SLURM sends SIGTERM itself (and requeues the task where the site's PreemptMode is
REQUEUE). Either way the trainer saves a checkpoint on SIGTERM and the worker hands its run back,
so the resubmitted task (or any other worker) resumes it from that checkpoint. `--no-requeue`
leaves all of this out.
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

DEFAULTS = {"gpus_per_task": 1, "cpus_per_task": 8, "signal_s": 300}
# sbatch --gres: name[:type]:count, e.g. gpu:2 or gpu:a100:2 (several joined by commas).
_GRES = re.compile(r"^[A-Za-z][\w.-]*(:[\w.-]+)?:\d+(,[A-Za-z][\w.-]*(:[\w.-]+)?:\d+)*$")
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


def parse_gres(text: str) -> str:
    """A valid sbatch --gres value (with a count), or ValueError naming the accepted form."""
    text = text.strip()
    if not _GRES.match(text):
        raise ValueError(
            f"--gres must be NAME[:TYPE]:COUNT, e.g. gpu:2 or gpu:a100:2, got {text!r}"
        )
    return text


def default_checkout() -> Path:
    """The checkout the running sqzexplore comes from (an editable install), else the current
    directory."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


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
    checkout: Path,
    python: str,
    array: int,
    partition: str | None = None,
    gpus_per_task: int | None = None,
    gres: str | None = None,
    cpus_per_task: int | None = DEFAULTS["cpus_per_task"],
    time_limit: str | None = None,
    mem: str | None = None,
    account: str | None = None,
    env_activate: str | None = None,
    extra_sbatch: Sequence[str] = (),
    requeue: bool = True,
    signal_s: int = DEFAULTS["signal_s"],
) -> str:
    """The text of an sbatch script running `array` workers of the sweep in `workdir`.

    `worker_command`: the worker's arguments after the Python interpreter (`-m ...`); `python`:
    the interpreter's path on the nodes; `checkout`: the directory the worker runs in there.
    `gpus_per_task`: None means 1 unless `gres` is given. `env_activate`: a shell line run
    before the worker (e.g. `source venv/bin/activate`).
    """
    if array < 1:
        raise SlurmError(f"--array must be >= 1, got {array}")
    if gpus_per_task is not None and gpus_per_task < 0:
        raise SlurmError(f"--gpus-per-task must be >= 0, got {gpus_per_task}")
    if gres is not None and gpus_per_task is not None:
        raise SlurmError("--gres and --gpus-per-task both ask for GPUs: give one of them")
    if cpus_per_task is not None and cpus_per_task < 1:
        raise SlurmError(f"--cpus-per-task must be >= 1, got {cpus_per_task}")
    if signal_s < 1:
        raise SlurmError(f"--signal-s must be >= 1, got {signal_s}")
    try:
        time_limit = None if time_limit is None else parse_time(time_limit)
        mem = None if mem is None else parse_mem(mem)
        gres = None if gres is None else parse_gres(gres)
    except ValueError as e:
        raise SlurmError(str(e)) from None
    log_dir = workdir / "slurm"
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=sqz-sweep-{name}",
        f"#SBATCH --array=0-{array - 1}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --output={log_dir}/%x-%A_%a.out",
        "#SBATCH --open-mode=append",  # a requeued task appends to its log
    ]
    if gres is not None:
        lines.append(f"#SBATCH --gres={gres}")
    elif gpus_per_task is None or gpus_per_task:
        lines.append(f"#SBATCH --gpus-per-task={1 if gpus_per_task is None else gpus_per_task}")
    optional = {
        "partition": partition,
        "cpus-per-task": cpus_per_task,
        "time": time_limit,
        "mem": mem,
        "account": account,
    }
    lines += [f"#SBATCH --{k}={v}" for k, v in optional.items() if v is not None]
    if requeue:
        lines += ["#SBATCH --requeue", f"#SBATCH --signal=B:USR1@{signal_s}"]
    for extra in extra_sbatch:
        lines.append(f"#SBATCH {extra}")
    args = " ".join(shlex.quote(c) for c in worker_command)
    task = "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    lines += [
        "",
        f"# Sweep '{name}': each array task is one worker; all share the study and the trial",
        f"# directories under {workdir} (a shared filesystem). Rerunning this script (or",
        "# `sqz sweep run`) resumes: finished trials are kept, interrupted ones resume.",
        "set -euo pipefail",
        f"CHECKOUT={shlex.quote(str(checkout))}",
        f"PYTHON={shlex.quote(python)}",
        "# Checked on the node before anything starts: the paths are this machine's.",
        'if [ ! -d "$CHECKOUT" ]; then',
        '  echo "error: the checkout $CHECKOUT is not on $(hostname): pass --checkout with its'
        ' path on the nodes" >&2; exit 2',
        "fi",
        'if [ ! -x "$PYTHON" ]; then',
        '  echo "error: the Python $PYTHON is not on $(hostname): pass --venv with the'
        " environment's path on the nodes\" >&2; exit 2",
        "fi",
        'cd "$CHECKOUT"',
    ]
    if env_activate:
        # Activation scripts read unset variables; relax -u around them.
        lines += ["set +u", env_activate, "set -u"]
    lines += [
        "export PYTHONUNBUFFERED=1",
        'if ! "$PYTHON" -c "import sqzexplore" >/dev/null 2>&1; then',
        '  echo "error: $PYTHON cannot import sqzexplore on $(hostname) (from $CHECKOUT): pass'
        ' --venv and --checkout of an installed environment on the nodes" >&2; exit 2',
        "fi",
    ]
    srun = f'srun "$PYTHON" {args} --worker-name "slurm-{task}"'
    if not requeue:
        return "\n".join([*lines, srun, ""])
    return "\n".join([*lines, *_requeue_lines(srun, task)])


def _requeue_lines(srun: str, task: str) -> list[str]:
    """The end of a requeueing script: the worker in the background, SIGUSR1 requeues."""
    return [
        "",
        "# Near the time limit (SIGUSR1, --signal) this task requeues itself and the worker",
        "# checkpoints and stops (SIGTERM); on preemption SLURM sends SIGTERM itself. The",
        "# requeued task, or any other worker, resumes the run from its checkpoint.",
        "requeue_task() {",
        f'  echo "sqz: time limit near on $(hostname): requeueing task {task}"',
        f'  scontrol requeue "{task}" || echo "sqz: scontrol requeue failed" >&2',
        '  kill -TERM "$worker" 2>/dev/null || true',
        "}",
        "trap requeue_task USR1",
        "trap 'kill -TERM \"$worker\" 2>/dev/null || true' TERM",
        f"{srun} &",
        "worker=$!",
        "set +e",
        'wait "$worker"; status=$?',
        "# wait returns early when a trapped signal arrives: wait again until the worker ends.",
        'while kill -0 "$worker" 2>/dev/null; do wait "$worker"; status=$?; done',
        'exit "$status"',
        "",
    ]


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
        default=None,
        help="GPUs of each task (default 1 unless --gres; 0 for CPU-only tasks)",
    )
    slurm.add_argument(
        "--gres",
        type=_text_type(parse_gres, "--gres"),
        default=None,
        help="generic resources instead of --gpus-per-task, e.g. gpu:2 or gpu:a100:2 (sites "
        "without cons_tres)",
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
        default=None,
        help="wall-time limit of each task, e.g. 04:00:00 or 2-00:00:00 (default: the "
        "partition's); tasks resume each other's trials",
    )
    slurm.add_argument(
        "--mem",
        type=_text_type(parse_mem, "--mem"),
        default=None,
        help="memory of each task, e.g. 32G (default: the partition's)",
    )
    slurm.add_argument(
        "--signal-s",
        type=bounded(int, 1, "--signal-s"),
        default=DEFAULTS["signal_s"],
        help="seconds before the time limit at which a task checkpoints and requeues itself "
        "(default %(default)s)",
    )
    slurm.add_argument(
        "--no-requeue",
        dest="requeue",
        action="store_false",
        help="no --requeue / --signal: a task stopped by its time limit or preemption is not "
        "resubmitted",
    )
    slurm.add_argument(
        "--checkout",
        default=None,
        help="the sqzexplore checkout's path on the nodes (default: this one, "
        f"{default_checkout()}); checked on each node at start",
    )
    slurm.add_argument(
        "--venv",
        default=None,
        help="the Python environment's path on the nodes (default: the running one's); its "
        "bin/python runs the worker; checked on each node at start",
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

    python, env_activate = worker_command[0], args.env_activate
    if args.venv:
        venv = Path(args.venv).absolute()
        python = str(venv / "bin" / "python")
        if env_activate is None:
            env_activate = f"source {shlex.quote(str(venv / 'bin' / 'activate'))}"
    if env_activate is None:
        env_activate = default_env_activate()
    elif env_activate.strip().lower() in ("", "none"):
        env_activate = None
    root = SweepDir(workdir).root
    text = sbatch_script(
        name=defn.name,
        worker_command=worker_command[1:],
        workdir=root,
        checkout=Path(args.checkout).absolute() if args.checkout else default_checkout(),
        python=python,
        array=args.array,
        partition=args.partition,
        gpus_per_task=args.gpus_per_task,
        gres=args.gres,
        cpus_per_task=args.cpus_per_task,
        time_limit=args.time_limit,
        mem=args.mem,
        account=args.account,
        env_activate=env_activate,
        extra_sbatch=args.sbatch_arg,
        requeue=args.requeue,
        signal_s=args.signal_s,
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
