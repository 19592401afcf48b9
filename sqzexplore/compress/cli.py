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

from sqzexplore.compress.encode import MAX_GAP_BITS, MIN_GAP_BITS, SqzFormatError, format_size_table
from sqzexplore.compress.pipeline import (
    DEFAULT_FINETUNE_LR_SCALE,
    DEFAULT_LR_SCALE,
    MAX_ROUNDS,
    CompressError,
    StageInterrupted,
    check_file,
    compress_run,
    size_only,
)
from sqzexplore.compress.quantize import MAX_BITS, MIN_BITS
from sqzexplore.config import ConfigError
from sqzexplore.models.spec import SpecError

EXIT_USAGE = 2
EXIT_NONFINITE = 3


class _UsageError(Exception):
    """argparse's complaint, turned into our `error:` line instead of its own exit."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - argparse hook
        raise _UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sqz compress",
        description="Deep Compression (prune, quantize, encode) of a finished run: a .sqz file.",
    )
    parser.add_argument("--workdir", metavar="RUN", help="finished run directory (read only)")
    parser.add_argument(
        "--bits",
        help=f"code width in [{MIN_BITS}, {MAX_BITS}], or per layer: 6,conv10=4 or "
        "default=6,conv1=8",
    )
    parser.add_argument(
        "--density",
        default="released",
        help="fraction of conv weights kept, in (0, 1]: 'released' (the released SqueezeNet's "
        "per-layer densities; default), one number, or per layer: fire2/squeeze=0.5,conv10=0.2 "
        "(unnamed layers stay dense)",
    )
    parser.add_argument("--huffman", action="store_true", help="Huffman-code codes and gaps")
    parser.add_argument(
        "--gap-bits",
        type=int,
        default=4,
        help=f"relative index width in [{MIN_GAP_BITS}, "
        f"{MAX_GAP_BITS}] (default 4, as the released file)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help=f"prune-retrain rounds in [1, {MAX_ROUNDS}]"
    )
    parser.add_argument(
        "--retrain-epochs",
        type=float,
        help="epochs of masked retraining per round "
        "(default: a quarter of the source run's, at least 1; 0 skips it)",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=float,
        help="epochs of centroid fine-tuning (default: a tenth "
        "of the source run's, at least 1; 0 skips it)",
    )
    parser.add_argument(
        "--lr-scale",
        type=float,
        default=DEFAULT_LR_SCALE,
        help="retraining lr as a fraction of the source run's, in (0, 1] (default %(default)s)",
    )
    parser.add_argument(
        "--finetune-lr-scale",
        type=float,
        default=DEFAULT_FINETUNE_LR_SCALE,
        help="fine-tuning lr as a fraction of the source run's, in (0, 1] (default %(default)s)",
    )
    parser.add_argument("--out", metavar="DIR", help="output directory (default <RUN>.sqz-<b>b)")
    parser.add_argument("--decode", metavar="FILE", help="check and evaluate a .sqz file on RUN")
    parser.add_argument(
        "--size-only", action="store_true", help="file size without training (needs --bits)"
    )
    parser.add_argument("--preset", help="with --size-only: size a preset's initial weights")
    parser.add_argument("--seed", type=int, default=0, help="with --preset: init seed")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


# ---------------------------------------------------------------------- argument values


def _items(field: str, text: str) -> list[tuple[str | None, str]]:
    items = []
    for raw in text.split(","):
        raw = raw.strip()
        if not raw:
            continue
        key, sep, value = raw.rpartition("=")
        items.append((key.strip() if sep else None, value.strip()))
    if not items:
        raise CompressError(field, "is empty")
    keys = [k for k, _ in items]
    duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicates:
        raise CompressError(field, f"names {', '.join(duplicates)} more than once")
    return items


def parse_bits(text: str) -> int | dict[str, int]:
    """`"6"` -> 6; `"6,conv10=4"` or `"default=6,conv10=4"` -> per-layer mapping."""
    out: dict[str, int] = {}
    for key, value in _items("bits", text):
        try:
            width = int(value)
        except ValueError:
            raise CompressError(
                "bits", f"{value!r} is not an integer in [{MIN_BITS}, {MAX_BITS}]"
            ) from None
        if not MIN_BITS <= width <= MAX_BITS:
            where = f" (layer {key})" if key not in (None, "default") else ""
            raise CompressError("bits", f"must be in [{MIN_BITS}, {MAX_BITS}], got {width}{where}")
        out["default" if key is None else key] = width
    return out["default"] if list(out) == ["default"] else out


def parse_density(text: str) -> str | float | dict[str, float]:
    """`"released"`, one number, or `"layer=d,..."` (values checked against (0, 1])."""
    if text.strip() == "released":
        return "released"
    items = _items("density", text)
    out: dict[str, float] = {}
    for key, value in items:
        try:
            number = float(value)
        except ValueError:
            raise CompressError(
                "density", f"{value!r} is not a number in (0, 1] (or 'released')"
            ) from None
        if not 0.0 < number <= 1.0:
            where = f" (layer {key})" if key else ""
            raise CompressError("density", f"must be in (0, 1], got {number:g}{where}")
        if key is None:
            if len(items) > 1:
                raise CompressError(
                    "density",
                    "give one number, or layer=density pairs only (layers not named stay dense)",
                )
            return number
        out[key] = number
    return out


# ---------------------------------------------------------------------- output


def _top1(metrics: Mapping[str, Any] | None) -> str:
    return "-" if not metrics else f"{metrics['top1']:.4f}"


def format_report(report: Mapping[str, Any]) -> str:
    """The per-layer size table and the totals / accuracy lines of a report."""
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


def _run(args: argparse.Namespace, log) -> dict[str, Any]:
    if args.decode is not None:
        if args.workdir is None:
            raise CompressError("workdir", "--decode needs the run to evaluate on (--workdir=RUN)")
        if args.size_only or args.bits is not None or args.preset is not None:
            raise CompressError("decode", "checks an existing file: give only --workdir (--json)")
        return check_file(args.decode, args.workdir)
    if args.bits is None:
        raise CompressError("bits", f"is required: a code width in [{MIN_BITS}, {MAX_BITS}]")
    bits, density = parse_bits(args.bits), parse_density(args.density)
    if args.size_only:
        return size_only(
            bits=bits,
            density=density,
            huffman=args.huffman,
            gap_bits=args.gap_bits,
            preset=args.preset,
            workdir=args.workdir,
            seed=args.seed,
            out_dir=args.out,
        )
    if args.preset is not None:
        raise CompressError("preset", "only sizes a preset with --size-only (nothing to retrain)")
    if args.workdir is None:
        raise CompressError("workdir", "is required: the finished run to compress")
    return compress_run(
        args.workdir,
        bits=bits,
        density=density,
        huffman=args.huffman,
        gap_bits=args.gap_bits,
        rounds=args.rounds,
        retrain_epochs=args.retrain_epochs,
        finetune_epochs=args.finetune_epochs,
        lr_scale=args.lr_scale,
        finetune_lr_scale=args.finetune_lr_scale,
        out_dir=args.out,
        log=log,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sqz compress` (argv without the program name); returns the exit status."""
    from sqzexplore.train import NonFiniteError, WorkdirConflictError

    try:
        args = _build_parser().parse_args(argv)
    except _UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    # With --json, stdout carries only the report: progress (ours and the trainer's) goes to
    # stderr.
    progress = sys.stderr if args.json else sys.stdout

    def log(message: str) -> None:
        print(message, file=progress, flush=True)

    try:
        with contextlib.redirect_stdout(progress):
            report = _run(args, log)
    except CompressError as err:
        flag = "--" + err.field.replace("_", "-")
        print(f"error: {flag}: {err.message}", file=sys.stderr)
        return EXIT_USAGE
    except SqzFormatError as err:
        print(f"error: {args.decode or '.sqz file'}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, SpecError, WorkdirConflictError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except StageInterrupted as err:
        print(str(err), file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
