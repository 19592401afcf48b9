"""`sqz compress`: Deep Compression of a finished run into a .sqz file, and checks of such files.

    sqz compress --workdir=RUN --bits=6 [--density=released|0.33|fire2/squeeze=0.5,conv10=0.2]
                 [--huffman] [--gap-bits=4] [--rounds=1] [--retrain-epochs=N]
                 [--finetune-epochs=N] [--lr-scale=0.3] [--finetune-lr-scale=0.1] [--out=DIR]
                 [--json]
    sqz compress --decode=FILE --workdir=RUN [--json]
    sqz compress --size-only --bits=8 (--preset=v1.0 | --workdir=RUN) [--density=...]
                 [--huffman] [--gap-bits=4] [--seed=0] [--out=DIR] [--json]

The first form prunes, retrains, quantizes, fine-tunes, writes `<out>/model.sqz` (default out:
`<RUN>.sqz-<bits>b`, next to the run) and evaluates the DECODED model; it prints a per-layer table
(density, bits, bytes) and the totals against fp32 with the accuracy before and after
(`--json`: the report dict, also saved as `<out>/report.json`). Rerunning resumes.
`--bits` is one width in [2, 8] or per layer (`6,conv10=4`: 6 bits except conv10).
`--decode` decodes a .sqz file, checks it was written for RUN's model and evaluates it there.
`--size-only` prunes and quantizes without any training (a preset's initial weights, or a run's
trained ones) and reports the file size: the paper's Table 2 size figures depend only on it.

Every argument is checked before anything is read or compiled: bad input prints
`error: --FLAG: ...` (what is wrong, the allowed range) and exits with status 2. Exit status 3:
a stage hit a non-finite loss. A preempted stage exits 0 after saving; rerun to resume.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Mapping
from typing import Any

# Only jax-free modules at import time: `--help` and argument errors answer before jax loads.
from sqzexplore.compress.plan import (
    MAX_ROUNDS,
    CompressError,
    CompressPlan,
    StagePlan,
    check_integer,
    parse_bits,
    parse_density,
)
from sqzexplore.compress.sqzformat import MAX_BITS, MAX_GAP_BITS, MIN_BITS, MIN_GAP_BITS

EXIT_USAGE = 2
EXIT_NONFINITE = 3
EXIT_IO = 1
MAX_SEED = 2**32 - 1
# Flags that only the training stages read, with their plan field names.
TRAINING_FLAGS = ("rounds", "retrain_epochs", "finetune_epochs", "lr_scale", "finetune_lr_scale")
ENCODING_FLAGS = ("bits", "density", "huffman", "gap_bits", "out")


class _UsageError(Exception):
    """argparse's complaint, turned into our `error:` line instead of its own exit."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - argparse hook
        raise _UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    # Defaults are the plan's (None here), so a flag given where it means nothing is refused.
    retrain, finetune = CompressPlan.retrain, CompressPlan.finetune
    parser = _Parser(
        prog="sqz compress",
        description="Deep Compression (prune, quantize, encode) of a finished run: a .sqz file.",
    )
    add = parser.add_argument
    add("--workdir", metavar="RUN", help="finished run directory (read only)")
    add(
        "--bits",
        help=f"code width in [{MIN_BITS}, {MAX_BITS}], or per layer: 6,conv10=4 or "
        "default=6,conv1=8",
    )
    add(
        "--density",
        help="fraction of conv weights kept, in (0, 1]: 'released' (the released SqueezeNet's "
        "per-layer densities; default), one number, or per layer: fire2/squeeze=0.5,conv10=0.2 "
        "(unnamed layers stay dense)",
    )
    add("--huffman", action="store_true", default=None, help="Huffman-code codes and gaps")
    add(
        "--gap-bits",
        type=int,
        help=f"relative index width in [{MIN_GAP_BITS}, {MAX_GAP_BITS}] "
        f"(default {CompressPlan.gap_bits}, as the released file)",
    )
    add(
        "--rounds",
        type=int,
        help=f"prune-retrain rounds in [1, {MAX_ROUNDS}] (default {CompressPlan.rounds})",
    )
    add(
        "--retrain-epochs",
        type=float,
        help=f"epochs of masked retraining per round (default: {retrain.default_fraction:g} of "
        "the source run's, at least 1; 0 skips it)",
    )
    add(
        "--finetune-epochs",
        type=float,
        help=f"epochs of centroid fine-tuning (default: {finetune.default_fraction:g} of the "
        "source run's, at least 1; 0 skips it)",
    )
    add(
        "--lr-scale",
        type=float,
        help="retraining lr as a fraction of the source run's, in (0, 1] "
        f"(default {retrain.lr_scale:g})",
    )
    add(
        "--finetune-lr-scale",
        type=float,
        help="fine-tuning lr as a fraction of the source run's, in (0, 1] "
        f"(default {finetune.lr_scale:g})",
    )
    add("--out", metavar="DIR", help="output directory (default <RUN>.sqz-<b>b)")
    add("--decode", metavar="FILE", help="check and evaluate a .sqz file on RUN")
    add("--size-only", action="store_true", help="file size without training (needs --bits)")
    add("--preset", help="with --size-only: size a preset's initial weights")
    add("--seed", type=int, help=f"with --preset: init seed in [0, {MAX_SEED}] (default 0)")
    add("--json", action="store_true", help="print the report as JSON")
    return parser


# ---------------------------------------------------------------------- arguments


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return ["--" + name.replace("_", "-") for name in names if getattr(args, name) is not None]


def plan_from_args(args: argparse.Namespace) -> CompressPlan:
    """The one CompressPlan of the command line; CompressError names the flag at fault."""
    if args.bits is None:
        raise CompressError("bits", f"is required: a code width in [{MIN_BITS}, {MAX_BITS}]")
    given = {
        "bits": parse_bits(args.bits),
        "density": None if args.density is None else parse_density(args.density),
        "huffman": args.huffman,
        "gap_bits": args.gap_bits,
        "rounds": args.rounds,
    }
    stages = {
        "retrain": StagePlan.retrain(
            args.retrain_epochs,
            CompressPlan.retrain.lr_scale if args.lr_scale is None else args.lr_scale,
        ),
        "finetune": StagePlan.finetune(
            args.finetune_epochs,
            CompressPlan.finetune.lr_scale
            if args.finetune_lr_scale is None
            else args.finetune_lr_scale,
        ),
    }
    return CompressPlan(**{k: v for k, v in given.items() if v is not None}, **stages)


def check_args(args: argparse.Namespace) -> CompressPlan | None:
    """Every check that needs no file and no model: the mode's flags and the plan (None for
    --decode, which has none)."""
    if args.decode is not None:
        if args.workdir is None:
            raise CompressError("workdir", "--decode needs the run to evaluate on (--workdir=RUN)")
        extra = _given(args, (*ENCODING_FLAGS, *TRAINING_FLAGS, "preset", "seed"))
        if args.size_only or extra:
            extra = extra or ["--size-only"]
            raise CompressError(
                "decode",
                f"checks an existing file: give only --workdir (and --json), not {extra[0]}",
            )
        return None
    plan = plan_from_args(args)
    if args.size_only:
        if (args.preset is None) == (args.workdir is None):
            raise CompressError("preset", "--size-only needs exactly one of --preset and --workdir")
        extra = _given(args, TRAINING_FLAGS)
        if extra:
            raise CompressError(extra[0][2:], "means nothing with --size-only (nothing is trained)")
        if args.seed is not None:
            if args.preset is None:
                raise CompressError("seed", "only seeds a preset's initial weights (--preset)")
            check_integer("seed", args.seed, 0, MAX_SEED)
        return plan
    if args.preset is not None:
        raise CompressError("preset", "only sizes a preset with --size-only (nothing to retrain)")
    if args.seed is not None:
        raise CompressError("seed", "only seeds a preset's initial weights with --size-only")
    if args.workdir is None:
        raise CompressError("workdir", "is required: the finished run to compress")
    return plan


# ---------------------------------------------------------------------- output


def _top1(metrics: Mapping[str, Any] | None) -> str:
    return "-" if not metrics else f"{metrics['top1']:.4f}"


def format_report(report: Mapping[str, Any]) -> str:
    """The per-layer size table and the totals / accuracy lines of a report."""
    from sqzexplore.compress.size import format_size_table

    lines = [format_size_table(report["size"])]
    accuracy = report.get("accuracy")
    if accuracy:
        delta = 100 * accuracy["top1_delta"]
        lines.append(
            f"top1: before {_top1(accuracy['before'])}, after {_top1(accuracy['after'])} "
            f"(decoded from the file), {delta:+.2f} points"
        )
        if report["mode"] == "compress":
            lines.append(
                f"stages: pruned + retrained {_top1(accuracy['pruned'])}, quantized + "
                f"fine-tuned {_top1(accuracy['quantized'])} (in memory)"
            )
    if report["mode"] == "size-only":
        lines.append(f"weights: {report['weights']}; pruned and quantized without retraining")
    if report.get("file"):
        lines.append(f"file: {report['file']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- entry point


def _run(args: argparse.Namespace, plan: CompressPlan | None, log) -> dict[str, Any]:
    from sqzexplore.compress import pipeline

    if plan is None:
        return pipeline.check_file(args.decode, args.workdir)
    if args.size_only:
        seed = 0 if args.seed is None else args.seed
        return pipeline.size_only(
            plan, preset=args.preset, workdir=args.workdir, seed=seed, out_dir=args.out
        )
    return pipeline.compress_run(args.workdir, plan, out_dir=args.out, log=log)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sqz compress` (argv without the program name); returns the exit status."""
    try:
        args = _build_parser().parse_args(argv)
        plan = check_args(args)
    except _UsageError as err:
        _error(str(err))
        return EXIT_USAGE
    except CompressError as err:
        _error(f"--{err.field.replace('_', '-')}: {err.message}")
        return EXIT_USAGE
    # Only now, with the arguments sound, load what the stages need (jax among it).
    from sqzexplore.compress.sqzformat import SqzFormatError
    from sqzexplore.compress.stages import StageInterrupted
    from sqzexplore.config import ConfigError
    from sqzexplore.models.spec import SpecError
    from sqzexplore.rundir import WorkdirConflictError
    from sqzexplore.train import NonFiniteError

    # With --json, stdout carries only the report: progress (ours and the trainer's) goes to
    # stderr.
    progress = sys.stderr if args.json else sys.stdout

    def log(message: str) -> None:
        print(message, file=progress, flush=True)

    try:
        with contextlib.redirect_stdout(progress):
            report = _run(args, plan, log)
    except CompressError as err:
        _error(f"--{err.field.replace('_', '-')}: {err.message}")
        return EXIT_USAGE
    except SqzFormatError as err:
        _error(f"{args.decode or '.sqz file'}: {err}")
        return EXIT_USAGE
    except (ConfigError, SpecError, WorkdirConflictError) as err:
        _error(str(err))
        return EXIT_USAGE
    except NonFiniteError as err:
        _error(str(err))
        return EXIT_NONFINITE
    except StageInterrupted as err:
        print(str(err), file=sys.stderr)
        return 0
    except OSError as err:
        # The disk, not the program: say which file and why, without a traceback.
        _error(f"{err.filename or 'I/O'}: {err.strerror or err}")
        return EXIT_IO
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
