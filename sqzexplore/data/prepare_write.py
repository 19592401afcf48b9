"""The parallel writer of `sqz data prepare` (prepare.py says what a prepared copy is).

`prepare_copy` plans the shards, claims the folder (refusing a different copy), states the disk
the copy will take, and writes the missing shards over a pool of processes (one TensorFlow each,
single-threaded) with a progress bar; the TFDS metadata and the manifest's `complete` mark come
last, so a copy is loadable only when whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from sqzexplore.data.augment import Recipe
from sqzexplore.data.prepare import (
    MANIFEST,
    Target,
    _size,
    choose_target,
    claim_folder,
    copy_features,
    free_bytes,
    make_manifest,
    pending_shards,
    prepare_fn,
    shard_path,
    source_decoder,
    write_json,
    write_metadata,
)
from sqzexplore.data.sources import DataError

_WORKER: dict[str, Any] = {}


def _init_worker(source: str, data_dir: str | None, target: Target, quality: int) -> None:
    """One TF per worker process, single-threaded: the pool, not TF, spreads over the cores."""
    import tensorflow_datasets as tfds

    from sqzexplore.data.preprocess import import_tensorflow

    tf = import_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tfds.disable_progress_bar()
    builder = tfds.builder(source, data_dir=data_dir)
    decoder = source_decoder(builder)
    _WORKER.update(
        tf=tf,
        builder=builder,
        fn=prepare_fn(tf, decoder, target, quality),
        features=copy_features(builder, decoder.channels),
    )


def _source_examples(builder: Any, split: str, threads: int = 1) -> Any:
    import tensorflow_datasets as tfds

    from sqzexplore.data.preprocess import import_tensorflow

    tf = import_tensorflow()
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = threads
    return builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(options=options),
    )


def _write_shard(job: tuple) -> tuple[str, int, int]:
    """Write one shard to a temp file and rename it into place once complete."""
    folder, split, index, total, start, stop = job
    tf, fn, features = _WORKER["tf"], _WORKER["fn"], _WORKER["features"]
    ds = _source_examples(_WORKER["builder"], f"{split}[{start}:{stop}]")
    ds = ds.map(lambda example: (fn(example["image"]), example["label"]))
    path = shard_path(folder, split, index, total)
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    with tf.io.TFRecordWriter(tmp) as writer:
        for encoded, label in ds.as_numpy_iterator():
            writer.write(features.serialize_example({"image": encoded, "label": int(label)}))
            count += 1
    if count != stop - start:
        os.remove(tmp)
        raise DataError(f"{split}[{start}:{stop}] yielded {count} examples, not {stop - start}")
    os.replace(tmp, path)
    return split, index, count


def estimate_bytes(builder: Any, split: str, fn: Callable, total: int, sample: int = 64) -> int:
    """Bytes the copy will take: the mean prepared size of the split's first `sample` images
    times every image (plus TFRecord framing)."""
    sizes = [
        len(encoded) + 64
        for encoded in _source_examples(builder, split, threads=2)
        .take(sample)
        .map(lambda example: fn(example["image"]))
        .as_numpy_iterator()
    ]
    return int(sum(sizes) / max(1, len(sizes)) * total)


def prepare_copy(
    *,
    source: str,
    data_dir: str | None,
    splits: list[str],
    augment: str,
    image_size: int,
    size: int | None,
    quality: int,
    out: str,
    workers: int,
    command: str = "",
    examples_per_shard: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Write (or finish) the prepared copy of `source`'s `splits` in `out`; return its manifest."""
    import multiprocessing

    from tqdm.auto import tqdm

    from sqzexplore.data import sources
    from sqzexplore.data.preprocess import import_tensorflow

    if not 1 <= quality <= 100:
        raise DataError(f"--quality must be in [1, 100], got {quality}")
    if workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    if examples_per_shard is not None and examples_per_shard < 1:
        raise DataError(f"--examples-per-shard must be >= 1, got {examples_per_shard}")
    tf = import_tensorflow()
    builder = sources._tfds_builder(source, data_dir)
    height, width = builder.info.features["image"].shape[:2]
    fixed = height is not None and height == width
    recipe = Recipe.for_source(augment, image_size, fixed_size=fixed, allow_flip=False)
    target = choose_target(recipe, size)
    field = {0: "train_split", 1: "eval_split"}
    split_sizes = {
        split: sources._split_size(builder, source, split, field.get(i, "split"), data_dir)
        for i, split in enumerate(dict.fromkeys(s.split("[")[0] for s in splits))
    }
    manifest = make_manifest(
        source=source,
        data_dir=data_dir,
        split_sizes=split_sizes,
        target=target,
        quality=quality,
        per_shard=examples_per_shard,
        source_shards={s: list(builder.info.splits[s].shard_lengths) for s in split_sizes},
    )
    manifest["command"] = command
    out = os.path.abspath(os.path.expanduser(out))
    manifest = claim_folder(out, manifest)
    todo = pending_shards(out, manifest)
    total = sum(split_sizes.values())
    left = sum(stop - start for _, _, _, start, stop in todo)

    decoder = source_decoder(builder)
    fn = prepare_fn(tf, decoder, target, quality)
    first = next(iter(split_sizes))
    need = estimate_bytes(builder, first, fn, left)
    free = free_bytes(out)
    counts = ", ".join(f"{s} {n:,}" for s, n in split_sizes.items())
    echo(
        f"{source} ({counts} images) -> {out}: {target.describe()}, JPEG quality {quality}.\n"
        f"{left:,} of {total:,} images left to write, about {_size(need)} "
        f"(estimated from 64 images; {_size(free)} free); {len(todo)} shards on "
        f"{min(workers, max(1, len(todo)))} processes."
    )
    if need > free:
        raise DataError(f"--out={out}: the copy needs about {_size(need)}, only {_size(free)} free")
    if todo:
        jobs = [(out, *job) for job in todo]
        init = (source, data_dir, target, quality)
        context = multiprocessing.get_context("spawn")  # TF is not fork-safe
        with (
            context.Pool(min(workers, len(jobs)), _init_worker, init) as pool,
            tqdm(total=total, initial=total - left, unit="img", desc="prepare") as bar,
        ):
            for _, _, count in pool.imap_unordered(_write_shard, jobs):
                bar.update(count)
    lengths = {s: [b - a for a, b in shards] for s, shards in manifest["splits"].items()}
    write_metadata(out, manifest, copy_features(builder, decoder.channels), lengths)
    manifest["complete"] = True
    write_json(os.path.join(out, MANIFEST), manifest)
    written = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    echo(f"done ({_size(written)}): train from it with --config.data.name={out}")
    return manifest
