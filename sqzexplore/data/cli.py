"""`sqz data prepare`: write once a copy of an experiment's TFDS image dataset at the recipe's size.

    sqz data prepare --config=experiments/imagenet/squeezenet_v1_0.py --out=DIR \\
        [--config.data.data_dir=TFDS_DIR] [--quality=90] [--size=N] [--workers=N]

The experiment names the source (config.data.name, data_dir, train and eval splits) and the
recipe (config.data.augment, config.model.image_size) the copy is prepared for (prepare.py).
Then train from it with `--config.data.name=DIR`. Rerunning the same command after a kill finishes
the copy; a folder holding a different copy is never overwritten. Exit 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from sqzexplore.data.prepare import DEFAULT_QUALITY, SHARD_EXAMPLES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sqz data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser(
        "prepare",
        help="write a copy of an experiment's dataset at its recipe's size",
        description="Write once a copy of the experiment's TFDS dataset prepared for its recipe "
        "('paper': every image stretched to the recipe's 256x256; crop and inception recipes: "
        "the shorter side resized to --size), then train with --config.data.name=OUT. Other "
        "--config.KEY=VALUE flags override the experiment, as in sqz train.",
    )
    prep.add_argument("--config", required=True, help="experiment file (path.py[:arg])")
    prep.add_argument("--out", required=True, help="folder of the copy (new, or the same copy)")
    prep.add_argument(
        "--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality 1-100 (%(default)s)"
    )
    prep.add_argument(
        "--size",
        type=int,
        default=None,
        help="shorter side of the stored images (crop/inception recipes; default: what the "
        "recipe resizes to, 256 for 224 crops); the paper recipe's size is fixed",
    )
    prep.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (%(default)s: cores)"
    )
    prep.add_argument(
        "--examples-per-shard",
        type=int,
        default=None,
        help="default: the source's own shards (the same seed then reads the copy in the "
        f"source's order), or {SHARD_EXAMPLES} where unknown",
    )
    return p


def _config(path: str, overrides: list[str]):
    from sqzexplore.config import apply_overrides, load_config_file, parse_override

    config = load_config_file(path)
    values = {}
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ValueError(
                f"unexpected argument {item!r}; flags are --config, --out, --quality, --size, "
                "--workers, --examples-per-shard and --config.KEY=VALUE"
            )
        key, text = item[len("--config.") :].split("=", 1)
        values[key] = parse_override(config, key, text)
    apply_overrides(config, values)
    return config


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser().parse_known_args(argv)
    from sqzexplore.config import ConfigError, spec_from_config
    from sqzexplore.data.sources import DataError

    try:
        config = _config(args.config, rest)
        spec = spec_from_config(config)
        name = str(config.data.name)
        if name in ("digits", "synthetic"):
            raise DataError(
                f"config.data.name={name!r} is generated in memory; only TFDS datasets are "
                "prepared (e.g. imagenet2012)"
            )
        from sqzexplore.data.prepare_write import prepare_copy

        data_dir = config.data.data_dir
        prepare_copy(
            source=name,
            data_dir=os.path.expanduser(data_dir) if data_dir else None,
            splits=[str(config.data.train_split), str(config.data.eval_split)],
            augment=str(config.data.augment),
            image_size=spec.image_size,
            size=args.size,
            quality=args.quality,
            out=args.out,
            workers=args.workers,
            examples_per_shard=args.examples_per_shard,
            command="sqz data " + shlex.join(argv),
        )
    except (ConfigError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
