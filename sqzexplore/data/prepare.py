"""Prepared copies: a TFDS image dataset stored once at the size an experiment's recipe resizes to.

The paper recipe's first act is to stretch every image to 256x256 (`Recipe.train_stored_size`), so
a copy stored at that size loses nothing the recipe keeps apart from JPEG re-encoding, and reading
it costs a small decode and a crop instead of a large decode and a resize. Crop and Inception
recipes keep the aspect ratio: their copy has the shorter side resized to a chosen size (at
least what the recipe resizes to, e.g. 256 for 224 crops, or 160 for a low-resolution proxy).

`prepare_copy` writes the copy as a TFDS dataset in a folder (TFRecord shards, dataset_info.json),
which the trainer reads with one config value, `config.data.name=FOLDER` (sources.py). The folder's
manifest (`sqz_prepared.json`) names the source, the mode and size, and the JPEG quality; the
trainer refuses a copy made for another recipe or size (`check_copy`). Shards are written in
parallel, one process per core, each to a temporary file renamed into place when complete: a
killed run keeps its finished shards and a rerun writes only the rest; no reader sees half a shard,
and the TFDS metadata (what makes the folder loadable) is written last (prepare_write.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Callable
from typing import Any

from sqzexplore.data.augment import Recipe, eval_resize_size
from sqzexplore.data.dataset import DataError

MANIFEST = "sqz_prepared.json"
FORMAT = 1
DEFAULT_QUALITY = (
    90  # mean |error| about 1 grey level on photographs; about 40% of ImageNet's bytes
)
SHARD_EXAMPLES = 1024  # ImageNet's train split: 1,252 shards of about 30 MiB at 256x256
COPY_NAME = "sqz_prepared"  # the TFDS dataset name inside the folder (its file names)
TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


@dataclasses.dataclass(frozen=True)
class Target:
    """What a copy stores: 'stretch' (every image size x size) or 'shorter' (aspect kept, the
    shorter side `size`)."""

    mode: str
    size: int

    def describe(self) -> str:
        if self.mode == "stretch":
            return f"every image stretched to {self.size}x{self.size}"
        return f"shorter side resized to {self.size} px"


def needed_target(recipe: Recipe) -> Target:
    """The smallest copy a recipe can read without losing anything it keeps: the paper recipe
    stretches to `train_stored_size`; the others resize the shorter side to at most
    `eval_resize_size(image_size)` (eval) or `train_stored_size` (train crops)."""
    if recipe.fixed_size:
        raise DataError(
            "this dataset's images all have one size already (a fixed-size source): there is "
            "nothing to prepare; train from it directly"
        )
    if recipe.augment == "paper":
        return Target("stretch", recipe.train_stored_size)
    return Target("shorter", max(recipe.train_stored_size, eval_resize_size(recipe.image_size)))


def choose_target(recipe: Recipe, size: int | None) -> Target:
    """The copy `sqz data prepare --size` writes for a recipe; refuses a size the recipe would
    have to upsample (or, for the paper recipe's fixed stretch, any other size)."""
    need = needed_target(recipe)
    if size is None:
        return need
    if need.mode == "stretch" and size != need.size:
        raise DataError(
            f"--size={size}: the paper recipe at image_size {recipe.image_size} stretches every "
            f"image to exactly {need.size}x{need.size}; omit --size or change "
            "config.model.image_size"
        )
    if size < need.size:
        raise DataError(
            f"--size={size} is below what the recipe (augment={recipe.augment!r}, image_size "
            f"{recipe.image_size}) resizes to, {need.size}; use --size >= {need.size}"
        )
    return Target(need.mode, int(size))


def read_manifest(folder: str) -> dict | None:
    """The manifest of a prepared copy in `folder`, or None if it holds none."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_copy(manifest: dict, recipe: Recipe, folder: str) -> None:
    """Refuse (DataError) a copy that is unfinished or was made for another recipe or size."""
    if not manifest.get("complete"):
        raise DataError(
            f"config.data.name={folder!r}: this prepared copy is unfinished; rerun the "
            f"`sqz data prepare` that wrote it (it keeps the finished shards): "
            f"{manifest.get('command', '')}"
        )
    need = needed_target(recipe)
    have = Target(manifest["mode"], int(manifest["size"]))
    ok = have.mode == need.mode and (
        have.size == need.size if need.mode == "stretch" else have.size >= need.size
    )
    if not ok:
        raise DataError(
            f"config.data.name={folder!r} is a copy of {manifest['source']} prepared with "
            f"{have.describe()}, but this experiment (augment={recipe.augment!r}, image_size "
            f"{recipe.image_size}) needs {need.describe()}"
            + (" or more" if need.mode == "shorter" else "")
            + "; prepare a copy for it with `sqz data prepare --config=... --out=OTHER_FOLDER` "
            f"or train from the original (config.data.name={manifest['source']!r})"
        )


# ----------------------------------------------------------------------------- the plan
def shard_plan(
    split_sizes: dict[str, int], per_shard: int | None, source_shards: dict[str, list[int]]
) -> dict[str, list[list[int]]]:
    """[start, stop) example ranges of each split's shards: the source's own shards (so a seed
    reads the copy in the same order as the source: TFDS shuffles whole shards), or about
    `per_shard` examples each."""
    plan = {}
    for split, count in split_sizes.items():
        lengths = source_shards.get(split) or []
        if per_shard is not None or sum(lengths) != count:
            shards = max(1, math.ceil(count / (per_shard or SHARD_EXAMPLES)))
            bounds = [round(i * count / shards) for i in range(shards + 1)]
        else:
            bounds = [sum(lengths[:i]) for i in range(len(lengths) + 1)]
        plan[split] = [[a, b] for a, b in zip(bounds[:-1], bounds[1:])]
    return plan


def shard_path(folder: str, split: str, index: int, total: int) -> str:
    return os.path.join(folder, f"{COPY_NAME}-{split}.tfrecord-{index:05d}-of-{total:05d}")


def make_manifest(
    *,
    source: str,
    data_dir: str | None,
    split_sizes: dict[str, int],
    target: Target,
    quality: int,
    per_shard: int | None = None,
    source_shards: dict[str, list[int]] | None = None,
) -> dict:
    """What a copy is (everything a rerun must agree with before it adds to the folder)."""
    return {
        "format": FORMAT,
        "source": source,
        "data_dir": data_dir,
        "mode": target.mode,
        "size": target.size,
        "quality": int(quality),
        "splits": shard_plan(split_sizes, per_shard, source_shards or {}),
    }


def _same_copy(a: dict, b: dict) -> bool:
    keys = ("format", "source", "mode", "size", "quality", "splits")
    return all(a.get(k) == b.get(k) for k in keys)


def claim_folder(folder: str, manifest: dict) -> dict:
    """Create `folder` for this copy, or reuse it if it holds the same (maybe unfinished) copy;
    refuse a folder holding a different copy or anything else. Returns the manifest on disk."""
    existing = read_manifest(folder)
    if existing is not None:
        if not _same_copy(existing, manifest):
            differ = [
                f"{k} {existing.get(k)!r} (asked {manifest.get(k)!r})"
                for k in ("source", "mode", "size", "quality", "splits")
                if existing.get(k) != manifest.get(k)
            ]
            raise DataError(
                f"--out={folder} holds a different prepared copy ({'; '.join(differ)}); it is "
                "never overwritten: choose another --out, or delete that folder first"
            )
        return existing
    if os.path.isdir(folder) and os.listdir(folder):
        raise DataError(
            f"--out={folder} exists and is not a prepared copy (no {MANIFEST}); choose an "
            "empty or new folder"
        )
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, MANIFEST), manifest)
    return manifest


def write_json(path: str, value: Any) -> None:
    """Write JSON atomically (temp file + rename): readers see the old or the new file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pending_shards(folder: str, manifest: dict) -> list[tuple[str, int, int, int, int]]:
    """(split, index, total, start, stop) of every shard not yet renamed into place; temp files
    a killed run left behind are removed."""
    for name in os.listdir(folder):
        if ".tmp-" in name:
            os.remove(os.path.join(folder, name))
    todo = []
    for split, shards in manifest["splits"].items():
        for index, (start, stop) in enumerate(shards):
            if not os.path.exists(shard_path(folder, split, index, len(shards))):
                todo.append((split, index, len(shards), start, stop))
    return todo


# ----------------------------------------------------------------------------- TF side
def prepare_fn(tf: Any, decoder: Any, target: Target, quality: int) -> Callable:
    """encoded source image -> encoded JPEG of the copy (decoded at reduced scale where the
    target allows, resized like the recipe's own preprocessing, re-encoded at `quality`)."""
    from sqzexplore.data.preprocess import resize_shorter, stretch

    def fn(encoded):
        image = decoder.decode(tf, encoded, target.size)
        if target.mode == "stretch":
            image = stretch(tf, image, target.size)
        else:
            image = resize_shorter(tf, image, target.size)
        return tf.io.encode_jpeg(image, quality=quality, chroma_downsampling=True)

    return fn


def source_decoder(builder: Any) -> Any:
    """Decodes the source's images keeping their channels (RGBA as RGB): a copy changes sizes,
    not channels."""
    from sqzexplore.data.preprocess import ImageDecoder

    channels = builder.info.features["image"].shape[-1] or 3
    return ImageDecoder.for_builder(builder, 3 if channels == 4 else channels)


def copy_features(source_builder: Any, channels: int) -> Any:
    """The copy's features: a JPEG Image of unknown size and the source's ClassLabel."""
    import tensorflow_datasets as tfds

    label = source_builder.info.features["label"]
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, channels), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=label.names),
        }
    )


def write_metadata(folder: str, manifest: dict, features: Any, shard_lengths: dict) -> None:
    """The TFDS metadata that makes `folder` a loadable dataset (written after every shard)."""
    import tensorflow_datasets as tfds

    template = tfds.core.ShardedFileTemplate(
        data_dir=folder, template=TEMPLATE, dataset_name=COPY_NAME, filetype_suffix="tfrecord"
    )
    infos = []
    for split, shards in manifest["splits"].items():
        paths = [shard_path(folder, split, i, len(shards)) for i in range(len(shards))]
        infos.append(
            tfds.core.SplitInfo(
                name=split,
                shard_lengths=shard_lengths[split],
                num_bytes=sum(os.path.getsize(p) for p in paths),
                filename_template=template.replace(split=split),
            )
        )
    tfds.folder_dataset.write_metadata(
        data_dir=folder,
        features=features,
        split_infos=infos,
        filename_template=template,
        check_data=False,
        description=f"{manifest['source']} prepared by sqz data prepare: "
        f"{Target(manifest['mode'], manifest['size']).describe()}, JPEG quality "
        f"{manifest['quality']}",
    )


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def free_bytes(folder: str) -> int:
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(os.path.abspath(probe))
    return shutil.disk_usage(probe).free
