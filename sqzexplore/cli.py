"""The `sqz` command: one console script, a subcommand per job.

    sqz describe --preset v1.0 [--json]          per-layer table, params, MACs, sizes
    sqz train --config=EXP.py[:arg] --workdir=D  train one design point (resumable)
    sqz sweep run|status|report|export-wandb ... map a frontier
    sqz compress --workdir=RUN --bits=6          Deep Compression of a finished run
    sqz bench ...                                throughput / compile-time benchmarks

Each is also `python -m sqzexplore.<module>`.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import sys

COMMANDS = {
    "describe": ("sqzexplore.describe", "per-layer table, parameters, MACs and sizes of a spec"),
    "train": ("sqzexplore.train.cli", "train and evaluate one design point in a workdir"),
    "sweep": ("sqzexplore.sweep.cli", "run, watch and report design-space sweeps"),
    "compress": ("sqzexplore.compress.cli", "prune, quantize and encode a finished run (.sqz)"),
    "bench": ("sqzexplore.bench", "train-step throughput, compile time and memory benchmarks"),
}


def _usage() -> str:
    lines = ["usage: sqz COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "`sqz COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), 1)
        hint = f"did you mean {close[0]}? " if close else ""
        print(
            f"error: unknown command {name}; {hint}commands: {', '.join(COMMANDS)} (sqz --help)",
            file=sys.stderr,
        )
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader of our output went away (`sqz describe ... | head`): stop quietly.

    Python would otherwise print a BrokenPipeError traceback, and another one when it flushes
    stdout at exit; pointing stdout at /dev/null makes that last flush harmless. The status is
    what a process killed by SIGPIPE reports (128 + 13), as `cat | head` gives.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
