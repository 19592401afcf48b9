"""Dataset sources by name, and `load_dataset`, the one entry point the trainer calls.

- `digits`: scikit-learn's bundled 1,797 real 8x8 handwritten digits (values 0..16; no download).
  A fixed, seeded, stratified train/test split (`digits_test_fraction`, `digits_split_seed`),
  upscaled once on the host with bilinear interpolation (half-pixel centres, edges clamped: the
  same as `jax.image.resize(..., "bilinear")` when upscaling), stored as uint8 0..255 with the
  channel replicated to `spec.in_channels`. Always device-resident. Never flipped.
- `synthetic`: uniform random uint8 images and labels of the spec's shape, from a fixed seed;
  always device-resident. For throughput benchmarks, not for learning.
- any TFDS name (`cifar10`, `cifar100`, `imagenette/160px`, `imagenet2012`,
  `imagenet_resized/32x32`, ...), read from `config.data.data_dir` (TFDS's default when None).
- a prepared copy's folder (`sqz data prepare`, prepare.py): the source's images stored at the
  size the recipe resizes to; refused if it was prepared for another recipe or size.
  With `on_device='auto'` a dataset whose train and eval splits fit `ON_DEVICE_MAX_BYTES` as uint8
  at their stored sizes is decoded into memory once and augmented on the device; larger ones
  stream through tf.data (`stream.StreamingDataset`).

Normalisation: device-resident datasets use the per-channel mean/std of their stored train
images; streamed ones use the ImageNet statistics (computing them would cost a pass over the
data); `augment='paper'` always subtracts the paper's fixed means with no std scaling.
TensorFlow and TFDS are imported only on the TFDS path.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sqzexplore.data.augment import AUGMENTATIONS, Normalization, Recipe
from sqzexplore.data.dataset import DataError, Dataset, DeviceDataset
from sqzexplore.data.preprocess import (
    ImageDecoder,
    eval_image,
    import_tensorflow,
    stored_train_image,
)
from sqzexplore.data.stream import StreamingDataset

# Train + eval splits at most this many bytes (uint8, stored sizes) live on the device under
# on_device='auto': CIFAR-10 (184 MB), imagenette at 128-160 px yes; ImageNet no.
ON_DEVICE_MAX_BYTES = 2 * 2**30
# Sources whose classes change meaning under a horizontal mirror (digits, characters).
NO_FLIP_SOURCES = frozenset({"digits", "mnist", "emnist", "kmnist", "svhn_cropped"})
# Splits that exist but carry no labels (every label is -1).
UNLABELED_SPLITS = {"imagenet2012": ("test",)}
SYNTHETIC_SEED = 0
TFDS_EXAMPLES = "cifar10, cifar100, imagenette/160px, imagenet2012, imagenet_resized/32x32"


def load_dataset(
    data_config: Any, spec: Any, *, process_index: int = 0, process_count: int = 1
) -> Dataset:
    """The dataset named by `config.data`, shaped for `spec` (image_size, in_channels,
    num_classes). `process_index`/`process_count` choose this process's share of streamed data
    (device-resident datasets are held whole by every process)."""
    name = str(data_config.name).strip()
    augment = str(data_config.augment)
    if augment not in AUGMENTATIONS:
        raise DataError(
            f"config.data.augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}"
        )
    if not 0 <= process_index < process_count:
        raise DataError(
            f"process_index must be in [0, process_count={process_count}), got {process_index}"
        )
    if name == "digits":
        return load_digits(data_config, spec, process_index, process_count)
    if name == "synthetic":
        return load_synthetic(data_config, spec, process_index, process_count)
    if not name:
        raise DataError(_unknown_name_message(name, "empty name"))
    return load_tfds(data_config, spec, process_index, process_count)


def parse_on_device(value: Any) -> bool | None:
    """config.data.on_device as True / False / None (auto)."""
    from sqzexplore.config import ConfigError, tristate

    try:
        return tristate(value, "data.on_device")
    except ConfigError as e:
        raise DataError(str(e)) from None


def _require_device_resident(data_config: Any, name: str) -> None:
    if parse_on_device(data_config.on_device) is False:
        raise DataError(
            f"config.data.on_device=false is not supported for {name!r}: it is always "
            "device-resident (set on_device to 'auto' or true)"
        )


def _allow_flip(name: str) -> bool:
    return name.split("/")[0].split(":")[0] not in NO_FLIP_SOURCES


# ----------------------------------------------------------------------------- digits
def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of [N, H, W] or [N, H, W, C] images to size x size (float64).

    Half-pixel centres with clamped edges, as `jax.image.resize(..., "bilinear")` upscales.
    Done once on the host in numpy: no device computation before the trainer sets devices up.
    """

    def weights(in_size: int) -> np.ndarray:
        pos = (np.arange(size) + 0.5) * in_size / size - 0.5
        pos = np.clip(pos, 0.0, in_size - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, in_size - 1)
        frac = pos - lo
        w = np.zeros((size, in_size))
        np.add.at(w, (np.arange(size), lo), 1.0 - frac)
        np.add.at(w, (np.arange(size), hi), frac)
        return w

    rows, cols = weights(images.shape[1]), weights(images.shape[2])
    out = np.einsum("oh,nhw...->now...", rows, images.astype(np.float64))
    return np.einsum("pw,now...->nop...", cols, out)


def _digits_images(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """8x8 digits (0..16) -> uint8 [N, size, size, channels] in 0..255."""
    scaled = resize_bilinear(images * (255.0 / 16.0), size)
    out = np.clip(np.round(scaled), 0, 255).astype(np.uint8)[..., None]
    return np.repeat(out, channels, axis=-1) if channels > 1 else out


def digits_split(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (sorted) of the stratified digits train and test examples."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise DataError(
            f"config.data.digits_test_fraction must be in (0, 1), got {test_fraction!r}"
        )
    labels = load_digits().target
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    return np.sort(train), np.sort(test)


def load_digits(data_config: Any, spec: Any, process_index: int, process_count: int) -> Dataset:
    """scikit-learn's bundled digits, split, upscaled and device-resident (module docstring)."""
    from sklearn.datasets import load_digits as sklearn_digits

    _require_device_resident(data_config, "digits")
    if spec.num_classes != 10:
        raise DataError(
            f"digits has 10 classes; set config.model.num_classes=10, not {spec.num_classes}"
        )
    if data_config.augment == "paper":
        raise DataError(
            "config.data.augment='paper' is the ImageNet recipe (256 -> 227 crops, RGB mean "
            "subtraction); for digits use 'none', 'crop_flip' or 'inception'"
        )
    digits = sklearn_digits()
    train, test = digits_split(
        float(data_config.digits_test_fraction), int(data_config.digits_split_seed)
    )
    recipe = Recipe.for_source(
        data_config.augment, spec.image_size, fixed_size=True, allow_flip=_allow_flip("digits")
    )
    channels = spec.in_channels
    return DeviceDataset(
        name="digits",
        num_classes=10,
        train_images=_digits_images(digits.images[train], recipe.train_stored_size, channels),
        train_labels=digits.target[train],
        eval_images=_digits_images(digits.images[test], recipe.image_size, channels),
        eval_labels=digits.target[test],
        recipe=recipe,
        process_index=process_index,
        process_count=process_count,
    )


# ----------------------------------------------------------------------------- synthetic
def load_synthetic(data_config: Any, spec: Any, process_index: int, process_count: int) -> Dataset:
    """Uniform random uint8 images and labels (fixed seed), device-resident."""
    _require_device_resident(data_config, "synthetic")
    sizes = {}
    for field in ("synthetic_train_size", "synthetic_eval_size"):
        value = int(data_config[field])
        if value < 1:
            raise DataError(f"config.data.{field} must be >= 1, got {value}")
        sizes[field] = value
    recipe = Recipe.for_source(
        data_config.augment, spec.image_size, fixed_size=True, allow_flip=True
    )
    rng = np.random.default_rng(SYNTHETIC_SEED)
    channels, classes = spec.in_channels, spec.num_classes

    def split(count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, (count, size, size, channels), dtype=np.uint8)
        return images, rng.integers(0, classes, (count,), dtype=np.int32)

    train_images, train_labels = split(sizes["synthetic_train_size"], recipe.train_stored_size)
    eval_images, eval_labels = split(sizes["synthetic_eval_size"], recipe.image_size)
    return DeviceDataset(
        name="synthetic",
        num_classes=classes,
        train_images=train_images,
        train_labels=train_labels,
        eval_images=eval_images,
        eval_labels=eval_labels,
        recipe=recipe,
        normalization=_fixed_normalization(recipe, channels),
        process_index=process_index,
        process_count=process_count,
    )


def _fixed_normalization(recipe: Recipe, channels: int) -> Normalization | None:
    """The paper's fixed mean subtraction, or None: normalise with the train statistics."""
    if recipe.augment == "paper":
        return Normalization.natural_images(channels, "paper")
    return None


# ----------------------------------------------------------------------------- TFDS
def _unknown_name_message(name: str, detail: str) -> str:
    return (
        f"config.data.name={name!r} is not a known dataset: use 'digits' (bundled with "
        f"scikit-learn), 'synthetic', or any TFDS dataset name (e.g. {TFDS_EXAMPLES}). "
        f"TFDS said: {detail}"
    )


def not_prepared_message(name: str, builder: Any, data_dir: str | None) -> str:
    """How to prepare a TFDS dataset that is missing from `data_dir`."""
    root = str(getattr(builder, "data_dir_root", None) or data_dir or "~/tensorflow_datasets")
    head = f"TFDS dataset {name!r} is not prepared in data_dir {root}."
    if name.split("/")[0].split(":")[0] == "imagenet2012":
        return (
            f"{head} ImageNet cannot be downloaded automatically: put ILSVRC2012_img_train.tar "
            f"and ILSVRC2012_img_val.tar (from https://image-net.org) in {root}/downloads/manual/"
            f", then run `tfds build imagenet2012 --data_dir={root}` (about 150 GB of disk and "
            "some hours of CPU), and set config.data.data_dir to that directory."
        )
    manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if manual:
        return (
            f"{head} It needs a manual download: put the files below in {root}/downloads/manual/"
            f" and run `tfds build {name} --data_dir={root}`.\n{manual.strip()}"
        )
    return (
        f"{head} Prepare it on a machine with network access: `tfds build {name} "
        f"--data_dir={root}` (copy {root}/{name.split('/')[0]} here if this machine is offline), "
        "and set config.data.data_dir to that directory."
    )


def _tfds_builder(name: str, data_dir: str | None) -> Any:
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as e:
        raise DataError(_unknown_name_message(name, str(e).splitlines()[0])) from None
    except ValueError as e:  # e.g. an unknown builder config ("imagenette/999px")
        raise DataError(_unknown_name_message(name, str(e).splitlines()[0])) from None


def _prepared_manifest(name: str) -> dict | None:
    """The manifest of the prepared copy in folder `name` (None if `name` is not one); an
    unfinished copy is refused here, before TFDS reads its missing metadata."""
    from sqzexplore.data.prepare import read_manifest

    folder = os.path.expanduser(name)
    manifest = read_manifest(folder) if os.path.isdir(folder) else None
    if manifest is not None and not manifest.get("complete"):
        raise DataError(
            f"config.data.name={name!r}: this prepared copy is unfinished; rerun the "
            f"`sqz data prepare` that wrote it (it keeps the finished shards): "
            f"{manifest.get('command', '')}"
        )
    return manifest


def _split_size(builder: Any, name: str, split: str, field: str, data_dir: str | None) -> int:
    """Examples in a split (from the dataset's cardinality); clear errors when the data is
    missing or the split does not exist."""
    import tensorflow_datasets as tfds

    unlabeled = UNLABELED_SPLITS.get(builder.name, ())
    if split.split("[")[0] in unlabeled:
        raise DataError(
            f"config.data.{field}={split!r}: the {split!r} split of {name} has no labels; "
            f"available splits: {', '.join(builder.info.splits) or 'see the TFDS catalog'}"
        )
    try:
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    except AssertionError:
        # TFDS asserts that the prepared files exist before it builds anything.
        raise DataError(not_prepared_message(name, builder, data_dir)) from None
    except (ValueError, KeyError) as e:
        raise DataError(
            f"config.data.{field}={split!r} is not a split of {name} "
            f"(splits: {', '.join(builder.info.splits) or 'unknown'}): {e}"
        ) from None
    count = int(ds.cardinality().numpy())
    if count < 0:
        count = builder.info.splits[split].num_examples
    if count < 1:
        raise DataError(f"config.data.{field}={split!r} of {name} is empty")
    return count


def _load_arrays(
    builder: Any, split: str, preprocess: Any, count: int, size: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a whole split once into uint8 [count, size, size, channels] and int32 labels."""
    import tensorflow_datasets as tfds

    tf = import_tensorflow()
    options = tf.data.Options()
    options.deterministic = True
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(options=options),
    )

    def to_uint8(example):  # the preprocess functions already give uint8 pixels
        return preprocess(example["image"]), tf.cast(example["label"], tf.int32)

    ds = ds.map(to_uint8, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
    images = np.empty((count, size, size, channels), np.uint8)  # filled in place: no 2x peak
    labels = np.empty((count,), np.int32)
    filled = 0
    for image, label in ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        if filled + len(label) > count:
            raise DataError(f"split {split!r} has more than the {count} examples it declares")
        images[filled : filled + len(label)] = image
        labels[filled : filled + len(label)] = label
        filled += len(label)
    if filled != count:
        raise DataError(f"split {split!r} yielded {filled} examples, expected {count}")
    return images, labels


def load_tfds(data_config: Any, spec: Any, process_index: int, process_count: int) -> Dataset:
    """A TFDS dataset, device-resident when small (see ON_DEVICE_MAX_BYTES), else streamed."""
    import_tensorflow()  # hides GPUs from TF before TFDS touches it
    name = str(data_config.name).strip()
    data_dir = data_config.data_dir
    if data_dir is not None:
        data_dir = os.path.expanduser(str(data_dir))
    copy = _prepared_manifest(name)
    if copy is not None:  # a prepared copy: its folder is the dataset
        import tensorflow_datasets as tfds

        builder = tfds.builder_from_directory(os.path.expanduser(name))
    else:
        builder = _tfds_builder(name, data_dir)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(
            f"config.data.name={name!r}: an image classification dataset needs 'image' and "
            f"'label' features; it has {', '.join(features)}"
        )
    dataset_classes = getattr(features["label"], "num_classes", None)
    if dataset_classes is None:
        raise DataError(f"config.data.name={name!r}: its 'label' feature is not a ClassLabel")
    if dataset_classes != spec.num_classes:
        raise DataError(
            f"{name} has {dataset_classes} classes; set config.model.num_classes="
            f"{dataset_classes}, not {spec.num_classes}"
        )
    height, width = features["image"].shape[:2]
    fixed_size = height is not None and height == width
    recipe = Recipe.for_source(
        data_config.augment,
        spec.image_size,
        fixed_size=fixed_size,
        allow_flip=_allow_flip(copy["source"] if copy else name),
    )
    if copy is not None:
        from sqzexplore.data.prepare import check_copy

        check_copy(copy, recipe, name)
    train_split, eval_split = str(data_config.train_split), str(data_config.eval_split)
    train_size = _split_size(builder, name, train_split, "train_split", data_dir)
    eval_size = _split_size(builder, name, eval_split, "eval_split", data_dir)
    channels = spec.in_channels
    decoder = ImageDecoder.for_builder(builder, channels)

    on_device = parse_on_device(data_config.on_device)
    if on_device is None:
        stored = recipe.train_stored_size
        nbytes = (train_size * stored**2 + eval_size * recipe.image_size**2) * channels
        on_device = nbytes <= ON_DEVICE_MAX_BYTES
    if on_device:
        tf = import_tensorflow()
        stored = recipe.train_stored_size
        train_images, train_labels = _load_arrays(
            builder,
            train_split,
            lambda encoded: stored_train_image(tf, recipe, decoder, encoded),
            train_size,
            stored,
            channels,
        )
        eval_images, eval_labels = _load_arrays(
            builder,
            eval_split,
            lambda encoded: eval_image(tf, recipe, decoder, encoded),
            eval_size,
            recipe.image_size,
            channels,
        )
        return DeviceDataset(
            name=name,
            num_classes=dataset_classes,
            train_images=train_images,
            train_labels=train_labels,
            eval_images=eval_images,
            eval_labels=eval_labels,
            recipe=recipe,
            normalization=_fixed_normalization(recipe, channels),
            process_index=process_index,
            process_count=process_count,
        )
    return StreamingDataset(
        name=name,
        builder=builder,
        train_split=train_split,
        eval_split=eval_split,
        num_classes=dataset_classes,
        channels=channels,
        recipe=recipe,
        normalization=Normalization.natural_images(channels, recipe.augment),
        train_size=train_size,
        eval_size=eval_size,
        shuffle_buffer=int(data_config.shuffle_buffer),
        process_index=process_index,
        process_count=process_count,
    )
