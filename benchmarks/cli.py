"""`sqz bench`: train-step throughput, compile time, memory, end-to-end loops, torchvision.

For a design-space tool speed is trials per hour, so this measures what a trial spends its time
on, on whatever devices exist, and writes rows that name the machine:

    sqz bench step           the trainer's own jitted step on a synthetic batch resident on the
                             devices: compile time, steady-state img/s, memory, XLA FLOP/bytes
    sqz bench e2e            `train_and_evaluate` on digits and a CIFAR-shaped dataset (or TFDS
                             with --data-dir): loop img/s against the same step (target >= 0.9)
    sqz bench torch          torchvision squeezenet1_0 / 1_1, eager AMP channels-last and
                             torch.compile, as ratios to the JAX bf16 step (needs torch)
    sqz bench maxbatch       the largest batch (and power of two) whose step fits (GPU/TPU)
    sqz bench compile-ahead  runs at several squeeze ratios, compiled one after another vs the
                             next one compiled in a background thread while the current trains
    sqz bench population     N seeds of one point as one vmapped program vs one after another:
                             members x img/s and trials per hour (--members 1,2,4,8)
    sqz bench data           the streamed loader alone for an experiment, from the original files
                             and a prepared copy: img/s, img per CPU-s, host cores for a step rate
    sqz bench all            all of the above but population and data
    sqz bench latency        batch-1 inference latency of exported models (ONNX Runtime, JAX):
                             median and p90, threads 1 and all (benchmarks/latency.py)

Without --preset/--batch/--dtype each command uses a plan for the platform (benchmarks/plan.py).
`--smoke` shrinks everything to seconds (for tests). `--json PATH` writes machine-readable
results (rewritten after every row, so a killed run keeps what it measured); `--results
benchmarks/RESULTS.md` appends markdown tables with the machine, versions, date and the exact
command. `--profile` traces a few steps of each step row and lists where device time goes.

The benchmarks live in the repository's benchmarks/ directory, not in the installed library:
run `sqz bench` inside a checkout, or point at one with --benchmarks-dir or SQZ_BENCHMARKS_DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.common import BenchError, Section, Stopped, is_accelerator
from benchmarks.plan import Plan, build_plan, step_config
from sqzexplore.models.spec import DTYPES, PRESETS

if TYPE_CHECKING:  # the heavy modules are imported after the arguments are parsed
    from benchmarks.report import Report

COMMANDS = ("step", "e2e", "torch", "maxbatch", "compile-ahead", "population", "data", "all")
HELPS = {
    "step": "train-step img/s, compile time and memory on synthetic device-resident data",
    "e2e": "train_and_evaluate loop img/s vs the synthetic-data step (digits, CIFAR-shaped)",
    "torch": "torchvision squeezenet1_0/1_1 eager AMP and torch.compile, as ratios",
    "maxbatch": "largest batch whose step fits on one device (GPU/TPU)",
    "compile-ahead": "sequential compiles vs compiling the next run while this one trains",
    "population": "N seeds of a point as one program: members x img/s, trials/h vs sequential",
    "data": "the streamed loader alone: img/s, img per CPU-s, host cores to feed a step",
    "all": "all of the above but population and data",
}


def parser() -> argparse.ArgumentParser:
    """The command line (imports no jax: `sqz bench --help` answers at once)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--preset", action="append", help=f"one of {', '.join(PRESETS)}; repeatable"
    )
    common.add_argument("--batch", action="append", type=int, help="global batch size; repeatable")
    common.add_argument("--dtype", action="append", help=f"one of {', '.join(DTYPES)}; repeatable")
    common.add_argument("--image-size", type=int, help="input side (default: the preset's)")
    common.add_argument("--steps", type=int, help="steps per timed window (default: ~2-4 s worth)")
    common.add_argument("--warmup", type=int, help="untimed steps after compilation (default 2)")
    common.add_argument(
        "--windows", type=int, help="timed windows; img/s is their median (default 3)"
    )
    common.add_argument("--e2e-steps", type=int, help="steps of each end-to-end run")
    common.add_argument(
        "--squeeze-ratio", action="append", type=float,
        help="compile-ahead: one run per squeeze ratio (default 0.125, 0.25, 0.5); repeatable",
    )  # fmt: skip
    common.add_argument(
        "--run-steps", type=int,
        help="compile-ahead: train steps per run (default 1500 on an accelerator, 40 on a CPU)",
    )  # fmt: skip
    common.add_argument(
        "--members", help="population: population sizes, e.g. 1,2,4,8 (the default)"
    )
    common.add_argument(
        "--config", help="population: the experiment (default experiments/digits/squeezenet.py)"
    )
    common.add_argument(
        "--steps-per-dispatch", help="population: steps per dispatch to measure, e.g. 1,8 (1)"
    )
    common.add_argument(
        "--lowering",
        help="population: how members run, vmap and/or unroll, e.g. vmap,unroll (default: the "
        "platform's auto, unroll on CPU and vmap elsewhere)",
    )
    common.add_argument(
        "--widths",
        nargs="?",
        const="",
        help="population: the squeeze-ratio sweep's points (or these, e.g. 0.125,0.5,1.0) as one "
        "width-padded program vs one program per point",
    )
    common.add_argument("--data-dir", help="TFDS data_dir: adds e2e rows on a real TFDS dataset")
    common.add_argument("--tfds", default="cifar10", help="TFDS dataset for --data-dir (cifar10)")
    common.add_argument("--fixture", help="data: write/reuse an ImageNet-like JPEG dataset here")
    common.add_argument("--prepared", help="data: a prepared copy (default: made in --fixture)")
    common.add_argument("--images", type=int, help="data: images timed per path (2048)")
    common.add_argument("--quality", type=int, help="data: JPEG quality of the prepared copy")
    common.add_argument("--target-rate", help="data: step img/s to feed (14938,28055)")
    common.add_argument("--profile", action="store_true", help="trace each step row; top ops")
    common.add_argument("--smoke", action="store_true", help="tiny spec, few steps (tests)")
    common.add_argument("--json", help="write machine-readable results here")
    common.add_argument("--results", help="append markdown tables here (benchmarks/RESULTS.md)")
    common.add_argument(
        "--benchmarks-dir", default=argparse.SUPPRESS,
        help="the checkout's benchmarks/ directory (default: found from the working directory, "
        "or $SQZ_BENCHMARKS_DIR)",
    )  # fmt: skip
    top = argparse.ArgumentParser(
        prog="sqz bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        sub.add_parser(name, parents=[common], help=HELPS[name])
    return top


def run(args: argparse.Namespace, plan: Plan, report: Report, benchmarks_dir: Path) -> None:
    """Run the benchmarks of `args.command` ('all' runs each in turn), adding rows to `report`.

    A row that fails (other than for a bad request) becomes a note naming the case and the
    error, and the run goes on: one broken case must not cost the others' measurements.
    """
    wanted = COMMANDS[:-3] if args.command == "all" else (args.command,)
    if "step" in wanted:
        from benchmarks.step import measure_step

        for case in plan.steps:
            with _row_errors(report, f"step {case}"):
                config = step_config(case, smoke=plan.smoke)
                report.add("step", measure_step(config, plan, profile=args.profile))
    if "e2e" in wanted:
        from benchmarks.e2e import measure_e2e

        for case in plan.e2e:
            with _row_errors(report, f"e2e {case}"):
                row = measure_e2e(
                    case, plan, benchmarks_dir.parent, args.data_dir, profile=args.profile
                )
                report.add("e2e", row)
    if "torch" in wanted:
        from benchmarks.torch_compare import run_torch

        with _row_errors(report, "torch"):
            run_torch(plan, benchmarks_dir, report, profile=args.profile)
    if "maxbatch" in wanted:
        from benchmarks.maxbatch import measure_maxbatch

        if not is_accelerator():
            report.note(
                "maxbatch skipped: it needs a GPU/TPU (host RAM on a CPU is not a device-memory "
                "limit worth measuring)"
            )
        else:
            for case in plan.maxbatch:
                with _row_errors(report, f"maxbatch {case}"):
                    report.add("maxbatch", measure_maxbatch(case, plan))
    if "compile-ahead" in wanted:
        from benchmarks.compile_ahead import measure_compile_ahead

        with _row_errors(report, f"compile-ahead {plan.ahead}"):
            report.add("compile_ahead", measure_compile_ahead(plan.ahead, plan))
    if "population" in wanted:
        from benchmarks.population import measure_population

        if args.widths is not None:
            from benchmarks.population import measure_widths

            with _row_errors(report, "population --widths"):
                for row in measure_widths(args, plan):
                    report.add("population_widths", row)
        else:
            with _row_errors(report, "population"):
                for row in measure_population(args, plan):
                    report.add("population", row)

    if "data" in wanted:
        from benchmarks.data import measure_data

        with _row_errors(report, "data"):
            for row in measure_data(args, benchmarks_dir.parent):
                report.add("data", row)


@contextlib.contextmanager
def _row_errors(report: Report, what: str):
    try:
        yield
    except (BenchError, Stopped, KeyboardInterrupt):
        raise
    except Exception as e:
        report.data["failed"] = report.data.get("failed", 0) + 1
        report.note(f"{what} FAILED: {type(e).__name__}: {str(e)[:500]}")


def main(argv: list[str], *, benchmarks_dir: Path) -> int:
    """`sqz bench COMMAND [options]` (see the module docstring); `benchmarks_dir` is this
    package's directory, as `sqz` found it (the repository root is its parent)."""
    argv = list(argv)
    if argv[:1] == ["_torch-worker"]:  # internal: the child process of `torch_compare`
        from benchmarks.torch_compare import worker_main

        return worker_main(argv[1])
    if argv[:1] == ["latency"]:  # its own options (benchmarks/latency.py)
        from benchmarks.latency import main as latency_main

        return latency_main(argv[1:])
    args = parser().parse_args(argv)
    import jax

    from benchmarks.report import Report, append_results, devices_line, machine_info

    machine = machine_info()
    print(devices_line(machine), flush=True)
    try:  # every option checked before anything compiles or any file is written
        plan = build_plan(args, jax.device_count())
        if args.command == "population":
            from benchmarks.population import check_args

            check_args(args)
        if args.command == "data":
            from benchmarks.data import check_args

            check_args(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Before anything compiles, as in every process that compiles: the GPU compile options and
    # the precision line; the benchmarks measure cold compiles, so the persistent cache is
    # JAX's own setting (off unless JAX_COMPILATION_CACHE_DIR is set, as gpu_check.sh does).
    from sqzexplore.config import base_config
    from sqzexplore.train import xla_options

    settings = base_config()
    settings.compilation_cache_dir = ""
    machine["xla"] = xla_options.configure(settings)
    sections = report_sections()
    report = Report("sqz bench " + shlex.join(argv), args.json, sections, machine)
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: no SIGTERM handling
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
    status = 0
    try:
        run(args, plan, report, benchmarks_dir)
        report.data["complete"] = True
        status = 1 if report.data.get("failed") else 0
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (Stopped, KeyboardInterrupt):
        report.note("stopped by a signal before the end; the rows above are what finished")
        status = 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    with contextlib.suppress(OSError):
        report.data["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    report.flush()
    if args.results and (report.data["complete"] or report.has_rows()):
        append_results(args.results, report.data, sections)
        print(f"appended to {args.results}", flush=True)
    return status


def report_sections() -> list[Section]:
    """Every benchmark's report sections, in the order of their RESULTS.md tables (each module
    declares its own; importing them imports jax, so this runs after the arguments parse)."""
    from benchmarks import compile_ahead, data, e2e, maxbatch, population, step, torch_compare

    return [
        step.SECTION,
        e2e.SECTION,
        torch_compare.TORCH_SECTION,
        torch_compare.RATIO_SECTION,
        maxbatch.SECTION,
        compile_ahead.SECTION,
        population.SECTION,
        population.WIDTHS_SECTION,
        data.SECTION,
    ]


def _raise_stopped(signum, frame):
    raise Stopped()
