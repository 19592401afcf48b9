"""`sqz describe`: print a design point's per-layer size and compute before anything trains.

    sqz describe --preset v1.0
    sqz describe --config=experiments/imagenet/squeezenet_v1_0.py --image-size 224 --json
    sqz describe --preset v1.0 --set squeeze_ratio=0.25 --set pool_after=conv1,fire4

The spec comes from a named preset or from an experiment file's `config.model`; `--set` then
replaces spec fields, each value read exactly as `sqz train --config.model.FIELD=VALUE` reads it
(`overrides.parse_override`: `pool_after=fire4,fire8` or `"('fire4','fire8')"`, `batch_norm=yes`),
with the same errors, so a design can be sized while exploring. Output is the paper's Table 1
layout with totals and the spec's design dimensions (the fields its metadata marks as such,
`spec.DESIGN_FIELDS`), or JSON (`--json`):
`{"spec", "params", "macs", "fp32_bytes", "fp32_mib", "activations", "image_size", "layers"}`.
The paper's presets (v1.0, v1.1) are described at the paper's 227x227 input (conv1 111x111, as
in its Table 1) unless --image-size says otherwise; they train at their spec's 224. The table's
first line always names the size. An invalid spec, preset or config prints `error: ...` naming
the field and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from sqzexplore.config import (
    ConfigError,
    UnknownKeyError,
    apply_overrides,
    load_config_file,
    parse_override,
    spec_config,
    spec_from_config,
)
from sqzexplore.models.complexity import complexity
from sqzexplore.models.spec import (
    DESIGN_FIELDS,
    PRESETS,
    SpecError,
    SqueezeNetSpec,
    field_infos,
)

EXIT_USAGE = 2
# The paper's Table 1 (and the Caffe prototxts) use 227x227 inputs; the v1.0/v1.1 presets train
# at 224 (torchvision's size). `sqz describe --preset` shows the paper's numbers by default.
PAPER_IMAGE_SIZE = 227
PAPER_PRESETS = ("v1.0", "v1.1")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqz describe",
        description="Per-layer params, MACs and activations of a SqueezeNet design point.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help=f"named spec preset: {', '.join(PRESETS)}", metavar="NAME")
    source.add_argument(
        "--config",
        help="experiment file, optionally with its argument: path/to/experiment.py[:arg]",
        metavar="FILE[:ARG]",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help=f"input height and width (default: {PAPER_IMAGE_SIZE}, the paper's, for the presets "
        f"{', '.join(PAPER_PRESETS)}; else the spec's image_size)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="FIELD=VALUE",
        help="replace a spec field, e.g. --set squeeze_ratio=0.25 --set pool_after=fire4,fire8 "
        "(repeatable; values read as --config.model.FIELD=VALUE reads them)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def split_set(item: str) -> tuple[str, str]:
    """`"field=value"` -> (field, the value's text); `model.field` names the same field."""
    field, sep, text = item.partition("=")
    field = field.strip()
    if not sep or not field:
        raise SpecError(f"--set needs FIELD=VALUE, got {item!r}")
    # `model.squeeze_ratio` is how the same field is spelled in an experiment config.
    return field.removeprefix("model."), text


def apply_spec_overrides(spec: SqueezeNetSpec, overrides: Sequence[str]) -> SqueezeNetSpec:
    """The spec with `--set` fields replaced, validated again.

    Each value is read by `config.parse_override` against the spec's typed config section and set
    by `config.apply_overrides`, as `sqz train --config.model.FIELD=VALUE` is, so the same text
    gives the same value or the same error (a ConfigError naming `config.model.FIELD`; a bad
    design point is a SpecError as `config.spec_from_config` words it). An unknown field is a
    SpecError naming the close match and the spec's fields."""
    if not overrides:
        return spec
    config = spec_config(spec)
    for item in overrides:
        field, text = split_set(item)
        try:
            value = parse_override(config, f"model.{field}", text)
        except UnknownKeyError as e:
            hint = (
                f"did you mean {e.close.removeprefix('model.')!r}?"
                if e.close
                else f"known fields: {', '.join(field_infos())}"
            )
            raise SpecError(f"--set: unknown spec field {field!r}; {hint}") from None
        apply_overrides(config, {f"model.{field}": value})
    return spec_from_config(config)


def load_spec(preset_name: str | None, config_path: str | None) -> SqueezeNetSpec:
    """The spec of a named preset or of an experiment file's `config.model`."""
    if preset_name is not None:
        if preset_name not in PRESETS:
            raise SpecError(
                f"--preset: unknown preset {preset_name!r}; available: {', '.join(PRESETS)}"
            )
        return PRESETS[preset_name]
    return spec_from_config(load_config_file(config_path))


def describe(spec: SqueezeNetSpec, image_size: int | None = None, as_json: bool = False) -> str:
    """The text `sqz describe` prints for `spec` (a table, or JSON)."""
    cx = complexity(spec, image_size)
    if as_json:
        return json.dumps({"spec": spec.to_dict(), **cx.to_dict()}, indent=2)
    return f"{cx.table()}\n{design_line(spec)}"


def design_line(spec: SqueezeNetSpec) -> str:
    """`design: base_e=128, ..., bypass=none`: the spec's design dimensions (`DESIGN_FIELDS`)."""
    values = {k: getattr(spec, k) for k in DESIGN_FIELDS}
    return "design: " + ", ".join(
        f"{k}={v!r}" if isinstance(v, tuple) else f"{k}={v}" for k, v in values.items()
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sqz describe` (argv without the program name); returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        spec = load_spec(args.preset, args.config)
        spec = apply_spec_overrides(spec, args.overrides)
        if args.image_size is not None and args.image_size < 1:
            raise SpecError(f"--image-size must be a positive integer, got {args.image_size}")
        image_size, note = args.image_size, None
        if image_size is None and args.preset in PAPER_PRESETS:
            image_size = PAPER_IMAGE_SIZE
            note = (
                f"input {PAPER_IMAGE_SIZE}x{PAPER_IMAGE_SIZE} as in the paper's Table 1 (the "
                f"{args.preset} preset trains at {spec.image_size}: --image-size "
                f"{spec.image_size} for its sizes)"
            )
        text = describe(spec, image_size, args.json)
    except (SpecError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.overrides and not args.json:
        print("overrides: " + ", ".join(args.overrides))
    if note and not args.json:
        print(note)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
