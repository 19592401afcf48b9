"""`sqz sweep ...`: run, watch, report and export design-space sweeps.

    sqz sweep run SWEEP_FILE [--workdir DIR] [--arg ARG] [--workers N] [--storage URL] [--new]
                  [--runner MODULE:FUNCTION] [--population auto|N|off]
                  [--slurm [--dry-run] [--array N] ...]
    sqz sweep worker DIR [--runner MODULE:FUNCTION] [--population auto|N|off] [--no-wait] ...
    sqz sweep status DIR [--json]
    sqz sweep report DIR [--out DIR] [--wandb-mode MODE] [--watch [--interval S]] [--tensorboard]
    sqz sweep export-wandb SWEEP_FILE [--arg ARG] [--output FILE_OR_DIR] [--project P]
                           [--entity E] [--mode online|offline]

`run` checks every argument and the sweep file, creates (or checks) the sweep directory, then
trains; it is idempotent: rerun it (after a crash, a kill, or to add workers) and it continues
the same sweep. `worker` adds one worker to an existing sweep directory (what `run --workers N`
and the SLURM array start); it needs only the directory. The default workdir is
runs/sweeps/<name>[-<arg>]. `run` exits 1 when the sweep finished without training anything:
every trial failed, or every design point was rejected before training.
"""

from __future__ import annotations

import json
import os
import re
import sys

from sqzexplore.config import ConfigError
from sqzexplore.models.spec import SpecError
from sqzexplore.sweep import preflight
from sqzexplore.sweep.claims import LockUnsupportedError
from sqzexplore.sweep.cli_args import build_parser
from sqzexplore.sweep.dashboards import (
    effective_mode,
    name_objectives,
    resolve_mode,
    save_settings,
)
from sqzexplore.sweep.space import SweepError


def one_line(message: str) -> str:
    """An error message as printed: a repeated 'did you mean' hint (added once by the config
    and again by the sweep-file check) shown once."""
    return re.sub(r"(;? ?did you mean '[^']*'\?)(?:;? ?did you mean '[^']*'\?)+", r"\1", message)


class FailureLog:
    """The worker log of `sqz sweep run`: a trial failure prints its first line, once; later
    trials failing the same way (a dataset that is not prepared fails every trial and every
    compile-ahead) add no lines but are counted in the summary."""

    def __init__(self, write):
        self.write = write
        self.seen: dict[str, int] = {}

    def __call__(self, line: str) -> None:
        found = re.match(
            r"(\[[^\]]*\] \S+:? (?:failed|compile-ahead of \S+ failed))(?:: )?(.*)", line, re.S
        )
        if not found:
            self.write(line)
            return
        error = found.group(2).strip().splitlines()[0] if found.group(2).strip() else "?"
        key = re.sub(r"^\w+: ", "", error)  # the run says 'DataError: ...', compile-ahead not
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] == 1:
            self.write(f"{found.group(1)}: {error}")
        elif self.seen[key] == 2:
            self.write("  (the same error again; further repeats are not printed)")


def _parser():
    return build_parser(__doc__.split("\n\n")[0])


def default_workdir(name: str, arg: str | None) -> str:
    suffix = "-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", arg).strip("_") if arg else ""
    return os.path.join("runs", "sweeps", name + suffix)


# ------------------------------------------------------------------------------ run
def _worker_command(args, workdir: str, *, no_wait: bool) -> list[str]:
    """The command a child worker (local or SLURM) runs: `sqz sweep worker DIR`."""
    cmd = [sys.executable, "-m", "sqzexplore.sweep.cli", "worker", os.path.abspath(workdir)]
    cmd += ["--heartbeat-s", str(args.heartbeat_s), "--stale-after-s", str(args.stale_after_s)]
    cmd += ["--poll-s", str(args.poll_s)]
    if args.runner:
        cmd += ["--runner", args.runner]
    if args.max_runs is not None:
        cmd += ["--max-runs", str(args.max_runs)]
    if no_wait:
        cmd.append("--no-wait")
    if args.compile_ahead != "auto":
        cmd += ["--compile-ahead", args.compile_ahead]
    if args.population != "auto":
        cmd += ["--population", str(args.population)]
    return cmd


def _check_population(args, runner) -> None:
    """A population size needs a runner that trains populations (the default trainer does; a
    custom runner without `train_population` trains one run at a time)."""
    if getattr(runner, "train_population", None) is None and args.population not in (
        "auto",
        "off",
        1,
    ):
        raise SweepError(
            f"--population {args.population} needs a runner that trains populations (the "
            f"default trainer); --runner {args.runner} trains one run at a time (use "
            "--population off)"
        )


def cmd_run(args) -> int:
    from sqzexplore.sweep import launch
    from sqzexplore.sweep.sweepdir import SweepDir, init_sweep_dir
    from sqzexplore.sweep.sweepfile import check_against_config, load_base_config, load_sweep
    from sqzexplore.sweep.workers import DEFAULT_RUNNER, load_runner

    # Everything the user gave is checked before anything is created on disk.
    wandb_mode = resolve_mode(args.wandb)
    defn = load_sweep(args.sweep_file, args.arg)
    base = load_base_config(defn)
    check_against_config(defn, base)
    _check_population(args, load_runner(args.runner or DEFAULT_RUNNER))
    workdir = args.workdir or default_workdir(defn.name, args.arg)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise SweepError(f"--workdir {workdir} is a file, not a directory")
    # What every trial needs (dataset, devices, storage), before anything is registered.
    preflight.check(
        base.to_dict(),
        storage=args.storage,
        workdir=workdir,
        default_runner=not args.runner,
        devices=not args.slurm,
        defn=defn,
    )
    if args.slurm:
        from sqzexplore.sweep.slurm import run_array

        command = _worker_command(args, workdir, no_wait=True)
        rc = run_array(args, defn, base, workdir, command)
        if SweepDir(workdir).exists():  # submitted (not --dry-run)
            sweep_dir = SweepDir(workdir)
            save_settings(sweep_dir, wandb_mode, args.wandb_project, args.wandb_entity)
            name_objectives(sweep_dir, sweep_dir.state())
        return rc
    sweep_dir, state = init_sweep_dir(
        workdir,
        defn,
        base,
        sweep_file=args.sweep_file,
        arg=args.arg,
        storage=args.storage,
        new=args.new,
    )
    save_settings(sweep_dir, wandb_mode, args.wandb_project, args.wandb_entity)
    name_objectives(sweep_dir, state)
    gpus = launch.visible_gpus()
    n_workers = args.workers or launch.default_workers(gpus)
    progress = launch.SweepProgress(sweep_dir, args.progress)
    try:
        if n_workers == 1:
            _run_worker(args, sweep_dir, log=FailureLog(progress.write))
            rc = 0
        else:
            # How many local workers there will be, for the auto compile-ahead rule: at the
            # first run the others may not have registered yet.
            envs = [
                dict(env, **{launch.LOCAL_WORKERS_ENV: str(n_workers)})
                for env in launch.worker_envs(n_workers, gpus)
            ]
            commands = [
                _worker_command(args, workdir, no_wait=args.no_wait) + ["--worker-name", f"w{k}"]
                for k in range(n_workers)
            ]
            rc = launch.run_local_workers(commands, envs, sweep_dir.logs, progress)
    finally:
        progress.close()
    return _summarize(SweepDir(workdir)) or _wandb_summary(sweep_dir) or rc


def _wandb_summary(sweep_dir) -> int:
    """With wandb on, a finished sweep's summary run (frontier table, accuracy-vs-size scatter,
    the report's figures) in the sweep's group; the report is written on the way."""
    from sqzexplore.sweep.analyze import status
    from sqzexplore.sweep.report import build_report  # matplotlib and wandb: only when asked

    mode = effective_mode(sweep_dir, sweep_dir.state())
    counts = status(sweep_dir)["counts"]
    if mode not in ("offline", "online") or counts["pending"] or counts["running"]:
        return 0
    out = build_report(sweep_dir, wandb_mode=mode, echo=lambda s: None)
    print(f"wandb: {counts['complete']} trial runs and a summary run{_where(out, sweep_dir)}")
    return 0


def _where(out: dict, sweep_dir) -> str:
    """Where the wandb runs are: the summary's URL online, else the command uploading them."""
    from pathlib import Path

    from sqzexplore.sweep.wandb_summary import sync_command

    if out.get("wandb"):
        return f" ({out['wandb']})"
    return f", offline; upload them all with: {sync_command(sweep_dir, Path(out['out_dir']))}"


def _run_worker(args, sweep_dir, log=print) -> None:
    from sqzexplore.sweep.workers import DEFAULT_RUNNER, load_runner, run_worker

    run_worker(
        sweep_dir,
        runner=load_runner(args.runner or DEFAULT_RUNNER),
        worker=getattr(args, "worker_name", None) or f"{os.uname().nodename}-{os.getpid()}",
        heartbeat_s=args.heartbeat_s,
        stale_after_s=args.stale_after_s,
        poll_s=args.poll_s,
        wait_for_others=not args.no_wait,
        max_runs=args.max_runs,
        compile_ahead={"auto": None, "on": True, "off": False}[args.compile_ahead],
        population=args.population,
        log=log,
    )


def _summarize(sweep_dir) -> int:
    """Print the sweep's status; 1 (with the reason) when it finished without training anything."""
    from sqzexplore.sweep.analyze import collect_runs, format_status, status

    st = status(sweep_dir)
    print(format_status(st))
    c = st["counts"]
    if c["pending"] or c["running"] or c["complete"]:
        return 0
    skipped = st["skipped_points"]
    if c["failed"]:
        failed = [r for r in collect_runs(sweep_dir) if r.failure]
        first = failed[0] if failed else None
        error = (first.failure.get("error") or "?") if first else "?"
        error = error.strip().splitlines()[0]  # the rest is in sweep_failed.json
        print(
            f"error: all {c['failed']} trials failed; the first ({first.trial_id if first else '?'}"
            f"): {error.rstrip('.')}. Details in each trial's {'sweep_failed.json'}.",
            file=sys.stderr,
        )
        return 1
    if not st["registered_points"] and (skipped["constraint"] or skipped["invalid"]):
        print(
            f"error: every design point was rejected before training ({skipped['constraint']} "
            f"over the sweep's constraints, {skipped['invalid']} invalid; reasons in "
            f"{sweep_dir.skipped}): relax the constraints or change the search space",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_worker(args) -> int:
    from sqzexplore.sweep.sweepdir import SweepDir
    from sqzexplore.sweep.workers import DEFAULT_RUNNER, load_runner

    sweep_dir = SweepDir(args.workdir)
    state = sweep_dir.state()  # a clear error when DIR is not a sweep directory
    _check_population(args, load_runner(args.runner or DEFAULT_RUNNER))
    preflight.check(
        state.get("base_config") or {},
        storage=state.get("storage"),
        workdir=args.workdir,
        default_runner=not args.runner,
        defn=sweep_dir.definition(),
    )
    _run_worker(args, sweep_dir, log=FailureLog(print))
    return 0


# ------------------------------------------------------------------------------ others
def cmd_status(args) -> int:
    from sqzexplore.sweep.analyze import format_status, status
    from sqzexplore.sweep.sweepdir import SweepDir

    st = status(SweepDir(args.workdir))
    print(json.dumps(st, indent=2, default=str) if args.json else format_status(st))
    return 0


def cmd_report(args) -> int:
    from sqzexplore.sweep.report import build_report, watch
    from sqzexplore.sweep.sweepdir import SweepDir

    sweep_dir = SweepDir(args.workdir)
    sweep_dir.state()  # a clear error when DIR is not a sweep directory
    os.environ.setdefault("WANDB_SILENT", "true")  # wandb's own lines would bury the report's

    def build(first: bool) -> dict:
        return build_report(
            sweep_dir,
            args.out,
            wandb_mode=args.wandb_mode,
            refresh_s=args.interval if args.watch else None,
            tensorboard=args.tensorboard,
            echo=lambda s: None,
        )

    if args.watch:
        try:
            out = watch(sweep_dir, build, args.interval)
        except KeyboardInterrupt:
            print("stopped watching; the report shows the sweep as of its last update")
            return 0
    else:
        out = build(True)
    if not args.quiet:
        print(out["text"])
    eff, per_worker = out["efficiency"], out["efficiency_per_worker"]
    if eff == eff:  # not NaN
        print(
            f"\nsweep efficiency (sum of train-step time / sweep wall time): {eff:.2f}; "
            f"per worker: {per_worker:.2f} ({out['max_parallel_workers']} at once)"
        )
    print(f"\nreport: {out['report_html']}  (tables: {out['results_csv']}, {out['frontier_csv']})")
    if out.get("tensorboard"):
        print(f"tensorboard: tensorboard --logdir {out['tensorboard']}")
    if out.get("wandb_mode") in ("offline", "online"):
        print(f"wandb: a summary run{_where(out, sweep_dir)}")
    return 0


def cmd_export_wandb(args) -> int:
    from sqzexplore.sweep.wandb_export import export_command

    return export_command(args)


def main(argv: list[str] | None = None) -> int:
    from sqzexplore.sweep.slurm import SlurmError
    from sqzexplore.sweep.sweepdir import SweepChangedError, SweepDirError

    parser = _parser()
    parser.argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    commands = {
        "run": cmd_run,
        "worker": cmd_worker,
        "status": cmd_status,
        "report": cmd_report,
        "export-wandb": cmd_export_wandb,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume the sweep", file=sys.stderr)
        return 130
    except (
        SweepError,
        SweepChangedError,
        SweepDirError,
        SlurmError,
        ConfigError,
        SpecError,
        LockUnsupportedError,
    ) as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
