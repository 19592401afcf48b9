"""`sqz train --config=experiments/x.py[:arg] --workdir=DIR [--config.key=value ...]`.

Exit codes: 0 finished, or preempted by SIGTERM (the message says whether a checkpoint was
saved; rerun the same command to resume); 2 bad input (config, spec, workdir); 3 non-finite loss.
"""

from __future__ import annotations

import sys

from sqzexplore.train.preempt import PreemptionFlag


def main(argv: list[str] | None = None) -> int:
    """Train one experiment in a workdir (resuming it); see the module docstring for exit codes."""
    # Before anything heavy is imported: a SIGTERM while JAX loads is a clean preemption too.
    stop = PreemptionFlag()
    try:
        return _main(argv)
    finally:
        stop.restore()


def _main(argv: list[str] | None) -> int:
    from absl import flags
    from ml_collections import config_flags

    from sqzexplore.config import ConfigError
    from sqzexplore.models.spec import SpecError
    from sqzexplore.rundir import WorkdirConflictError
    from sqzexplore.train.loop import NonFiniteError, train_and_evaluate

    argv = list(sys.argv if argv is None else ["sqz train", *argv])
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment file (path.py[:arg]).",
        flag_values=fv,
        lock_config=True,
        sys_argv=argv,  # overrides are read from here, not from the process's sys.argv
    )
    flags.DEFINE_string(
        "workdir", None, "Run directory (created; resumed if it exists).", flag_values=fv
    )
    try:
        fv(argv)
        if fv.config is None or fv.workdir is None:
            raise flags.Error("--config and --workdir are required")
        config = fv.config
    except (flags.Error, ConfigError, SpecError, KeyError, AttributeError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = train_and_evaluate(config, fv.workdir)
    except (ConfigError, SpecError, WorkdirConflictError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if result.get("status") == "preempted":
        return 0
    final = result["final"]
    print(
        f"done: {result['steps']} steps, top1 {final['top1']:.4f}"
        + (f", top5 {final['top5']:.4f}" if final.get("top5") is not None else "")
        + f", {result['complexity']['params']:,} params; results in {fv.workdir}/result.json",
        flush=True,
    )
    return 0
