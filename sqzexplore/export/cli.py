"""`sqz export`: a finished run, a compressed model or a spec as inference artifacts.

    sqz export --workdir RUN [--checkpoint final|best] --out DIR
    sqz export --sqz RUN.sqz-6b/model.sqz --out DIR      (or --workdir RUN.sqz-6b)
    sqz export --preset v1.1 [--seed 0] --out DIR        (random init: for latency)
    sqz export --spec spec.json --out DIR

    options: --format onnx,stablehlo[,tflite] (default onnx,stablehlo)  --batch 1
             --layout nhwc|nchw  --json

Writes DIR/model.onnx, DIR/model.stablehlo (DIR/model.tflite) and DIR/export.json (the source,
the spec, the batch and layout, each artifact's size on disk, runtime and measured logit
difference, and the paper-style size: parameters x 4 bytes, and the .sqz file's size for a
compressed model).
Every option is checked before anything is loaded or built; bad input exits 2 with one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sqz export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a finished run (or a `sqz compress` output directory)")
    source.add_argument("--sqz", help="a .sqz file written by `sqz compress`")
    source.add_argument("--preset", help="a preset (v1.0, v1.1, cifar, digits), random init")
    source.add_argument("--spec", help="a spec.json, random init")
    p.add_argument("--checkpoint", default="final", help="final (default) or best (a run only)")
    p.add_argument("--seed", type=int, default=0, help="init seed for --preset/--spec (0)")
    p.add_argument(
        "--format",
        default="onnx,stablehlo",
        help="comma list of onnx, stablehlo, tflite (default onnx,stablehlo)",
    )
    p.add_argument("--batch", default="1", help="batch size the artifacts take (default 1)")
    p.add_argument("--layout", default="nhwc", help="input layout: nhwc (default) or nchw")
    p.add_argument("--out", required=True, help="directory for the artifacts (created)")
    p.add_argument("--json", action="store_true", help="print export.json instead of a table")
    return p


class _Usage(Exception):
    pass


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _check_out(out: str, source: str | None) -> str:
    from sqzexplore.export.source import ExportError

    out = os.path.abspath(out)
    if source is not None:
        source = os.path.abspath(source)
        if os.path.isdir(source) and os.path.commonpath([out, source]) == source:
            raise ExportError("out", f"{out} is inside the source {source}, which is only read")
    existing = out
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError("out", f"{out} cannot be made a writable directory ({existing})")
    return out


def _load(args):
    from sqzexplore.export import source

    if args.workdir:
        return source.from_run(args.workdir, args.checkpoint)
    if args.checkpoint != "final":
        raise source.ExportError("checkpoint", "best applies to --workdir (a run) only")
    if args.sqz:
        return source.from_sqz(args.sqz)
    if args.preset:
        return source.from_preset(args.preset, args.seed)
    return source.from_spec_file(args.spec, args.seed)


def format_manifest(manifest: dict) -> str:
    """The human summary: one row per artifact, then the paper-style size and tolerance."""
    from tabulate import tabulate

    rows = [
        [
            name,
            a["file"],
            f"{a['bytes']:,}",
            f"{a['bytes'] / 2**20:.2f}",
            a["runtime"],
            f"{a['max_abs_logit_diff']:.2g}",
        ]
        for name, a in manifest["artifacts"].items()
    ]
    headers = ["format", "file", "bytes", "MiB", "runtime", "max |dlogit|"]
    table = tabulate(rows, headers=headers, disable_numparse=True)
    size = manifest["paper_size"]
    line = (
        f"paper-style size: {size['params']:,} params x 4 B = {size['fp32_bytes']:,} B "
        f"({size['fp32_mib']:.2f} MiB fp32); {size['macs'] / 1e6:,.1f} M MACs"
    )
    if "sqz_bytes" in size:
        line += f"; .sqz {size['sqz_bytes']:,} B (artifacts hold its decoded weights as fp32)"
    tol = manifest["tolerance"]
    head = (
        f"batch {manifest['batch']}, layout {manifest['layout']}, input "
        f"{manifest['input_shape']}, BatchNorm: "
        f"{'folded into the convs' if manifest['batch_norm_folded'] else 'none in this model'}"
    )
    check = (
        f"logits equal the Flax model's within {tol['bound']:.2g} "
        f"({tol['relative_to_max_logit']:g} x max(1, max |logit|))"
    )
    return "\n".join([head, table, line, check])


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sqz export`; returns the exit status."""
    args = _parser().parse_args(argv)
    from sqzexplore.export import artifact
    from sqzexplore.export.source import ExportError

    try:
        formats = artifact.check_formats(args.format)
        layout = artifact.check_layout(args.layout)
        try:
            batch = int(args.batch)
        except ValueError:
            raise ExportError("batch", f"must be an integer >= 1, got {args.batch!r}") from None
        if batch < 1:
            raise ExportError("batch", f"must be an integer >= 1, got {batch}")
        out = _check_out(args.out, args.workdir or args.sqz)
        weights = _load(args)
        batch = artifact.check_batch(batch, weights.spec)
        manifest = artifact.export_model(weights, out, formats, batch, layout)
    except ExportError as err:
        _error(f"--{err.field}: {err.message}")
        return EXIT_USAGE
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print(f"exported {manifest['spec'].get('name')} to {out}")
        print(format_manifest(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
