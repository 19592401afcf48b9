"""The `sqz` command: one console script, a subcommand per job.

    sqz describe --preset v1.0 [--json]          per-layer table, params, MACs, sizes
    sqz train --config=EXP.py[:arg] --workdir=D  train one design point (resumable)
    sqz sweep run|status|report|export-wandb ... map a frontier
    sqz compress --workdir=RUN --bits=6          Deep Compression of a finished run
    sqz data prepare --config=EXP.py --out=D     a dataset copy at the recipe's image size
    sqz export --workdir=RUN --out=DIR           ONNX / StableHLO / TFLite inference artifacts
    sqz bench ...                                throughput / compile-time benchmarks

Each is also `python -m sqzexplore.<module>`, except `sqz bench`: the benchmarks are not part of
the installed library but live in a checkout's benchmarks/ directory, which `sqz bench` finds
(see `find_benchmarks_dir`) and loads.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path

COMMANDS = {
    "describe": ("sqzexplore.describe", "per-layer table, parameters, MACs and sizes of a spec"),
    "train": ("sqzexplore.train.cli", "train and evaluate one design point in a workdir"),
    "sweep": ("sqzexplore.sweep.cli", "run, watch and report design-space sweeps"),
    "compress": ("sqzexplore.compress.cli", "prune, quantize and encode a finished run (.sqz)"),
    "data": ("sqzexplore.data.cli", "prepare a dataset copy at an experiment's image size"),
    "export": ("sqzexplore.export.cli", "a run, .sqz or spec as ONNX, StableHLO or TFLite files"),
    "bench": (None, "train-step throughput, compile time and memory benchmarks (a checkout)"),
}
BENCHMARKS_ENV = "SQZ_BENCHMARKS_DIR"
BENCHMARKS_PACKAGE = "benchmarks"


class BenchmarksNotFound(FileNotFoundError):
    """No benchmarks directory where `sqz bench` looked; the message says where and what to do."""


def _is_benchmarks_dir(path: Path) -> bool:
    return (path / "__init__.py").is_file() and (path / "cli.py").is_file()


def find_benchmarks_dir(explicit: str | None = None, cwd: str | None = None) -> Path:
    """The benchmarks/ directory `sqz bench` runs: `explicit` (--benchmarks-dir), else
    $SQZ_BENCHMARKS_DIR, else the first `benchmarks/` in the working directory or a folder above
    it (so it works anywhere inside a checkout). Never derived from where this package is
    installed."""
    for source, value in (
        ("--benchmarks-dir", explicit),
        (BENCHMARKS_ENV, os.environ.get(BENCHMARKS_ENV)),
    ):
        if value:
            path = Path(value).expanduser().resolve()
            if not _is_benchmarks_dir(path):
                raise BenchmarksNotFound(
                    f"{source}={value}: not a benchmarks directory (expected __init__.py and "
                    "cli.py in it: the benchmarks/ folder of a sqzexplore checkout)"
                )
            return path
    start = Path(cwd or os.getcwd()).resolve()
    for folder in (start, *start.parents):
        if _is_benchmarks_dir(folder / "benchmarks"):
            return folder / "benchmarks"
    raise BenchmarksNotFound(
        f"sqz bench: no benchmarks/ directory in {start} or any folder above it. The benchmarks "
        "are not part of the installed package: run sqz bench inside a checkout of the "
        f"repository, or pass --benchmarks-dir PATH (or set {BENCHMARKS_ENV}=PATH) naming its "
        "benchmarks/ directory."
    )


def load_benchmarks(directory: Path):
    """Import `directory` as the package `benchmarks` (reusing it if already imported from
    there) without putting anything on sys.path."""
    loaded = sys.modules.get(BENCHMARKS_PACKAGE)
    if loaded is not None:
        if [str(Path(p).resolve()) for p in getattr(loaded, "__path__", [])] == [str(directory)]:
            return loaded
        for name in [n for n in sys.modules if n.split(".")[0] == BENCHMARKS_PACKAGE]:
            del sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        BENCHMARKS_PACKAGE, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[BENCHMARKS_PACKAGE] = package
    spec.loader.exec_module(package)
    return package


def bench_main(argv: list[str]) -> int:
    """`sqz bench ...`: locate the checkout's benchmarks and hand them the arguments (without
    --benchmarks-dir)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--benchmarks-dir")
    known, rest = pre.parse_known_args(argv)
    try:
        directory = find_benchmarks_dir(known.benchmarks_dir)
    except BenchmarksNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    load_benchmarks(directory)
    cli = importlib.import_module(f"{BENCHMARKS_PACKAGE}.cli")
    return int(cli.main(rest, benchmarks_dir=directory) or 0)


def version_text() -> str:
    """'sqz 0.1.0 (jax 0.10.2, flax 0.12.10, optuna 5.1.0, python 3.11.9)': the installed
    package's version and the libraries results depend on, without importing them."""
    found = []
    for package in ("jax", "flax", "optuna"):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    found.append(f"python {platform.python_version()}")
    try:
        own = importlib.metadata.version("sqzexplore")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout without installing
        own = "(not installed)"
    return f"sqz {own} ({', '.join(found)})"


def _usage() -> str:
    lines = ["usage: sqz COMMAND [ARGS]   (sqz --version)", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "`sqz COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version", "version"):
        print(version_text())
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
        if name == "bench":
            return bench_main(rest)
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
