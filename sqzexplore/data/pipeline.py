"""The `Dataset` objects the trainer consumes: device-resident arrays or a tf.data stream.

Two modes, chosen by `load_dataset` (sources.py):

- `DeviceDataset` (`on_device` True): the whole split lives in host numpy arrays that the trainer
  places on the devices once. `device_train_batch` is pure JAX, called inside the jitted step: it
  picks this step's examples from a per-epoch permutation and augments them with `jax.random`, so
  a batch is a function of `(rng, step)` alone and a resumed run sees exactly the same batches.
- `StreamingDataset` (`on_device` False): TFDS records decoded and augmented by tf.data, split
  per process with `tfds.split_for_jax_process`. Every epoch has its own seeded file order and
  shuffle, and every random op is stateless, seeded by (seed, epoch, process, position in the
  epoch), so `train_iter(start_step)` yields exactly what an uninterrupted iterator would have.

Both give `eval_iter`: this process's share of the whole eval split exactly once, the last batch
padded and masked so metrics are exact, with the same number of batches on every process.

TensorFlow is imported lazily (`import_tensorflow`), only by the streaming and TFDS code paths.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sqzexplore.data.augment import (
    INCEPTION_AREA_RANGE,
    INCEPTION_ASPECT_RANGE,
    Normalization,
    Recipe,
    augment_batch,
    eval_resize_size,
)

Batch = dict[str, np.ndarray]


def import_tensorflow() -> Any:
    """Import TensorFlow for input pipelines only: hide every GPU from it, so it neither grabs
    accelerator memory nor competes with JAX for it."""
    import tensorflow as tf

    # RuntimeError: TF's devices were already initialised (by an earlier call, or by code that
    # used TF first); visibility can no longer change, so there is nothing more to do.
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")
    return tf


# ----------------------------------------------------------------------------- process split
def process_eval_range(num_examples: int, process_index: int, process_count: int) -> range:
    """This process's examples of an eval split: `tfds.even_splits` arithmetic (the first
    `num_examples % process_count` processes get one extra example), nothing dropped."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    base, extra = divmod(num_examples, process_count)
    start = process_index * base + min(process_index, extra)
    return range(start, start + base + (1 if process_index < extra else 0))


def eval_batches_per_process(num_examples: int, process_count: int, per_process_batch: int) -> int:
    """Eval batches each process yields: enough for the largest share, so all processes run the
    same number of (collective) eval steps."""
    if per_process_batch < 1:
        raise ValueError(f"per_process_batch must be >= 1, got {per_process_batch}")
    largest_share = math.ceil(num_examples / process_count)
    return max(1, math.ceil(largest_share / per_process_batch))


# ----------------------------------------------------------------------------- base class
class Dataset:
    """What every dataset tells the trainer; see `DeviceDataset` and `StreamingDataset`.

    Attributes:
      name: the source name (`digits`, `synthetic`, a TFDS name).
      num_classes: number of labels.
      image_shape: (H, W, C) of the model input.
      train_size, eval_size: GLOBAL number of examples of the train / eval split.
      on_device: True for a `DeviceDataset`.
      recipe: the augmentation recipe; normalization: the pixel normalisation.
    """

    on_device: bool = False

    def __init__(
        self,
        *,
        name: str,
        num_classes: int,
        channels: int,
        recipe: Recipe,
        normalization: Normalization,
        train_size: int,
        eval_size: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(
                f"process_index must be in [0, process_count); got {process_index} of "
                f"{process_count}"
            )
        if len(normalization.mean) != channels or len(normalization.std) != channels:
            raise ValueError(
                f"normalization has {len(normalization.mean)} channels, need {channels}"
            )
        self.name = name
        self.num_classes = int(num_classes)
        self.image_shape = (recipe.image_size, recipe.image_size, int(channels))
        self.recipe = recipe
        self.normalization = normalization
        self.train_size = int(train_size)
        self.eval_size = int(eval_size)
        self.process_index = int(process_index)
        self.process_count = int(process_count)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Steps per epoch at a GLOBAL batch size; the remainder of each epoch is dropped."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        steps = self.train_size // batch_size
        if steps < 1:
            raise ValueError(
                f"batch_size {batch_size} is larger than the {self.train_size} train examples of "
                f"{self.name!r}; use batch_size <= {self.train_size}"
            )
        return steps

    def summary(self) -> dict[str, Any]:
        """JSON-able description for run logs."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "train_size": self.train_size,
            "eval_size": self.eval_size,
            "on_device": self.on_device,
            "augment": self.recipe.augment,
            "flip": self.recipe.flip,
            "crop_padding": self.recipe.crop_padding,
            "train_stored_size": self.recipe.train_stored_size,
            "mean": list(self.normalization.mean),
            "std": list(self.normalization.std),
        }

    def __repr__(self) -> str:
        kind = "device" if self.on_device else "streaming"
        return (
            f"{type(self).__name__}({self.name!r}, {kind}, train={self.train_size}, "
            f"eval={self.eval_size}, image_shape={self.image_shape}, "
            f"augment={self.recipe.augment!r})"
        )

    # The two modes have different train interfaces; calling the wrong one is a trainer bug.
    def train_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        raise TypeError(f"{self!r} is streamed (on_device False): use train_iter()")

    def eval_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        raise TypeError(f"{self!r} is streamed (on_device False): use eval_iter()")

    def train_iter(self, start_step: int, per_process_batch: int, seed: int) -> Iterator[Batch]:
        raise TypeError(f"{self!r} is device-resident: use train_arrays() and device_train_batch()")


# ----------------------------------------------------------------------------- device-resident
class DeviceDataset(Dataset):
    """A dataset held whole in memory and batched/augmented inside the jitted train step.

    Train images are stored at `recipe.train_stored_size` (the random crop happens on device),
    eval images at `recipe.image_size`; both uint8 (or float32) NHWC in pixel units, labels int32.
    """

    on_device = True

    def __init__(
        self,
        *,
        name: str,
        num_classes: int,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        eval_images: np.ndarray,
        eval_labels: np.ndarray,
        recipe: Recipe,
        normalization: Normalization | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        train_images, train_labels = _check_arrays(
            "train", train_images, train_labels, recipe.train_stored_size, num_classes
        )
        eval_images, eval_labels = _check_arrays(
            "eval", eval_images, eval_labels, recipe.image_size, num_classes
        )
        if train_images.shape[-1] != eval_images.shape[-1]:
            raise ValueError(
                f"train images have {train_images.shape[-1]} channels, eval images "
                f"{eval_images.shape[-1]}"
            )
        if normalization is None:
            normalization = Normalization.from_images(train_images)
        super().__init__(
            name=name,
            num_classes=num_classes,
            channels=train_images.shape[-1],
            recipe=recipe,
            normalization=normalization,
            train_size=train_images.shape[0],
            eval_size=eval_images.shape[0],
            process_index=process_index,
            process_count=process_count,
        )
        self._train = (train_images, train_labels)
        self._eval = (eval_images, eval_labels)

    def train_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole train split: images at `recipe.train_stored_size`, labels int32."""
        return self._train

    def eval_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole eval split: images at `image_shape`, labels int32."""
        return self._eval

    def device_train_batch(
        self,
        images: jax.Array,
        labels: jax.Array,
        step: jax.Array | int,
        rng: jax.Array,
        batch_size: int,
    ) -> tuple[jax.Array, jax.Array]:
        """This step's global batch, augmented and normalised. Pure JAX: call inside jit.

        Epoch `step // steps_per_epoch` visits the examples in the order of a permutation drawn
        from `fold_in(rng_perm, epoch)`; the step takes its slice (the remainder of each epoch
        is never used) and is augmented with `fold_in(rng_aug, step)`, where rng_perm, rng_aug
        = split(rng) keep the two streams independent. Deterministic in (rng, step).
        """
        num_examples = images.shape[0]
        steps_per_epoch = num_examples // batch_size
        if steps_per_epoch < 1:
            raise ValueError(
                f"batch_size {batch_size} is larger than the {num_examples} train examples"
            )
        rng_perm, rng_aug = jax.random.split(rng)
        step = jnp.asarray(step, jnp.int32)
        epoch = step // steps_per_epoch
        order = jax.random.permutation(jax.random.fold_in(rng_perm, epoch), num_examples)
        start = (step % steps_per_epoch) * batch_size
        index = jax.lax.dynamic_slice_in_dim(order, start, batch_size)
        x = jnp.take(images, index, axis=0).astype(jnp.float32)
        y = jnp.take(labels, index, axis=0).astype(jnp.int32)
        x = augment_batch(self.recipe, jax.random.fold_in(rng_aug, step), x)
        return self.normalization.apply(x), y

    def device_eval_batch(self, images: jax.Array) -> jax.Array:
        """Eval images (already at `image_shape`) as a normalised float32 batch. Pure JAX."""
        return self.normalization.apply(images)

    def eval_iter(self, per_process_batch: int) -> Iterator[Batch]:
        """Host-side batches of this process's share of the eval split, padded and masked."""
        images, labels = self._eval
        share = process_eval_range(self.eval_size, self.process_index, self.process_count)
        num_batches = eval_batches_per_process(
            self.eval_size, self.process_count, per_process_batch
        )
        for b in range(num_batches):
            lo = min(share.start + b * per_process_batch, share.stop)
            hi = min(lo + per_process_batch, share.stop)
            count = hi - lo
            image = np.zeros((per_process_batch, *self.image_shape), np.float32)
            label = np.zeros((per_process_batch,), np.int32)
            mask = np.zeros((per_process_batch,), bool)
            image[:count] = self.normalization.apply_numpy(images[lo:hi])
            label[:count] = labels[lo:hi]
            mask[:count] = True
            yield {"image": image, "label": label, "mask": mask}


def _check_arrays(
    split: str, images: np.ndarray, labels: np.ndarray, size: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int32)
    if images.ndim != 4 or images.shape[1:3] != (size, size):
        raise ValueError(f"{split} images must be NHWC with H = W = {size}, got {images.shape}")
    if images.dtype not in (np.uint8, np.float32):
        raise ValueError(f"{split} images must be uint8 or float32, got {images.dtype}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{split} labels must have shape ({images.shape[0]},), got {labels.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"the {split} split is empty")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"{split} labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    return images, labels


# ----------------------------------------------------------------------------- tf.data stream
class StreamingDataset(Dataset):
    """A TFDS dataset read, decoded and augmented by tf.data, one share per process."""

    on_device = False

    def __init__(
        self,
        *,
        name: str,
        builder: Any,
        train_split: str,
        eval_split: str,
        num_classes: int,
        channels: int,
        recipe: Recipe,
        normalization: Normalization,
        train_size: int,
        eval_size: int,
        shuffle_buffer: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        super().__init__(
            name=name,
            num_classes=num_classes,
            channels=channels,
            recipe=recipe,
            normalization=normalization,
            train_size=train_size,
            eval_size=eval_size,
            process_index=process_index,
            process_count=process_count,
        )
        if shuffle_buffer < 1:
            raise ValueError(f"config.data.shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.builder = builder
        self.train_split = train_split
        self.eval_split = eval_split
        self.shuffle_buffer = int(shuffle_buffer)
        self._image = ImageDecoder.for_builder(builder, channels)
        self._tf = import_tensorflow()
        import tensorflow_datasets as tfds

        # Train shares are equal (drop_remainder) so every process has the same steps per epoch.
        share = dict(process_index=process_index, process_count=process_count)
        self._train_share = tfds.split_for_jax_process(train_split, drop_remainder=True, **share)
        self._eval_share = tfds.split_for_jax_process(eval_split, drop_remainder=False, **share)
        self._train_share_size = int(
            self._read(self._train_share, shuffle_seed=None).cardinality().numpy()
        )
        if self._train_share_size < 0:  # unknown cardinality: even-split arithmetic
            self._train_share_size = train_size // process_count

    # -- reading
    def _read(self, split: Any, shuffle_seed: int | None) -> Any:
        import tensorflow_datasets as tfds

        tf = import_tensorflow()
        options = tf.data.Options()
        options.deterministic = True  # resumability needs a reproducible element order
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, options=options)
        return self.builder.as_dataset(
            split=split,
            shuffle_files=shuffle_seed is not None,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=read_config,
        )

    def _epoch_seed(self, seed: int, epoch: int) -> int:
        # Distinct per (seed, epoch, process): processes hold different data but must not share
        # augmentation draws position by position.
        state = np.random.SeedSequence([seed, epoch, self.process_index]).generate_state(1)
        return int(state[0] & 0x7FFFFFFF)

    def _train_epoch(
        self, epoch: int, skip_batches: int, per_process_batch: int, steps: int, seed: int
    ) -> Any:
        tf = self._tf
        epoch_seed = self._epoch_seed(seed, epoch)
        ds = self._read(self._train_share, shuffle_seed=epoch_seed)
        ds = ds.shuffle(self.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
        ds = ds.take(steps * per_process_batch).enumerate()
        # Skip before decoding: a resumed epoch reads but does not decode what it skips; the
        # enumerate index (the augmentation seed) is taken before the skip so it is unchanged.
        ds = ds.skip(skip_batches * per_process_batch)
        recipe, decoder, norm = self.recipe, self._image, self.normalization
        mean = tf.constant(norm.mean, tf.float32)
        inv_std = 1.0 / tf.constant(norm.std, tf.float32)

        def preprocess(index, example):
            op_seed = tf.stack([tf.constant(epoch_seed, tf.int64), tf.cast(index, tf.int64)])
            image = train_image(tf, recipe, decoder, example["image"], op_seed)
            return {
                "image": (image - mean) * inv_std,
                "label": tf.cast(example["label"], tf.int32),
            }

        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(per_process_batch, drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    def train_iter(self, start_step: int, per_process_batch: int, seed: int) -> Iterator[Batch]:
        """Endless train batches of this process's share from global step `start_step`.

        Yields {"image": float32 [b, H, W, C] normalised, "label": int32 [b]}; the same
        (seed, start_step) always gives the same batches.
        """
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if per_process_batch < 1:
            raise ValueError(f"per_process_batch must be >= 1, got {per_process_batch}")
        steps = self._train_share_size // per_process_batch
        if steps < 1:
            raise ValueError(
                f"per-process batch {per_process_batch} is larger than this process's "
                f"{self._train_share_size} train examples of {self.name!r}"
            )
        epoch, skip = divmod(start_step, steps)
        while True:
            ds = self._train_epoch(epoch, skip, per_process_batch, steps, seed)
            yield from ds.as_numpy_iterator()
            epoch, skip = epoch + 1, 0

    def eval_iter(self, per_process_batch: int) -> Iterator[Batch]:
        """This process's share of the whole eval split, once; the tail padded and masked.

        Yields {"image": float32, "label": int32, "mask": bool} batches of exactly
        `per_process_batch`; every process yields the same number of batches.
        """
        tf = self._tf
        num_batches = eval_batches_per_process(
            self.eval_size, self.process_count, per_process_batch
        )
        recipe, decoder, norm = self.recipe, self._image, self.normalization
        mean = tf.constant(norm.mean, tf.float32)
        inv_std = 1.0 / tf.constant(norm.std, tf.float32)
        size, channels = recipe.image_size, self.image_shape[-1]

        def preprocess(example):
            image = eval_image(tf, recipe, decoder, example["image"])
            image = tf.ensure_shape((image - mean) * inv_std, (size, size, channels))
            return {
                "image": image,
                "label": tf.cast(example["label"], tf.int32),
                "mask": tf.constant(True),
            }

        padding = tf.data.Dataset.from_tensors(
            {
                "image": tf.zeros((size, size, channels), tf.float32),
                "label": tf.constant(0, tf.int32),
                "mask": tf.constant(False),
            }
        ).repeat()
        ds = self._read(self._eval_share, shuffle_seed=None)
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.concatenate(padding).take(num_batches * per_process_batch)
        ds = ds.batch(per_process_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        yield from ds.as_numpy_iterator()


# ----------------------------------------------------------------------------- tf preprocessing
class ImageDecoder:
    """Decodes a TFDS image feature's encoded bytes to uint8 with the model's channel count."""

    def __init__(self, source_channels: int, channels: int, jpeg: bool):
        if source_channels not in (1, 3, 4):
            raise ValueError(f"unsupported source image channels {source_channels}")
        if channels not in (1, 3) and channels != source_channels:
            raise ValueError(
                f"config.model.in_channels={channels} cannot be made from "
                f"{source_channels}-channel images; use 1 or 3"
            )
        self.source_channels = 3 if source_channels == 4 else source_channels
        self.channels = channels
        self.jpeg = jpeg

    @classmethod
    def for_builder(cls, builder: Any, channels: int) -> ImageDecoder:
        feature = builder.info.features["image"]
        source_channels = feature.shape[-1] or 3
        return cls(source_channels, channels, jpeg=feature.encoding_format == "jpeg")

    def _channels(self, tf: Any, image: Any) -> Any:
        if self.source_channels == self.channels:
            return image
        if self.source_channels == 1:
            return tf.tile(image, [1, 1, self.channels])
        return tf.image.rgb_to_grayscale(image)

    def shape(self, tf: Any, encoded: Any) -> Any:
        """[height, width] of an encoded image (without decoding JPEG pixels)."""
        if self.jpeg:
            return tf.image.extract_jpeg_shape(encoded)[:2]
        return tf.shape(self.decode(tf, encoded))[:2]

    def decode(self, tf: Any, encoded: Any) -> Any:
        image = tf.io.decode_image(encoded, channels=self.source_channels, expand_animations=False)
        return self._channels(tf, image)

    def decode_crop(self, tf: Any, encoded: Any, top: Any, left: Any, height: Any, width: Any):
        """Decode only a window: JPEG decodes just the window's blocks (the Inception crop)."""
        if self.jpeg:
            window = tf.stack([top, left, height, width])
            image = tf.image.decode_and_crop_jpeg(encoded, window, channels=self.source_channels)
            return self._channels(tf, image)
        return tf.image.crop_to_bounding_box(self.decode(tf, encoded), top, left, height, width)


def _stretch(tf: Any, image: Any, size: int) -> Any:
    """Resize to size x size ignoring the aspect ratio (float32 out)."""
    return tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=True)


def _resize_shorter(tf: Any, image: Any, size: int) -> Any:
    """Resize keeping the aspect ratio so the shorter side is `size` (float32 out)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    return tf.image.resize(tf.cast(image, tf.float32), new_shape, antialias=True)


def _center_crop(tf: Any, image: Any, size: int) -> Any:
    shape = tf.shape(image)
    top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


def _fixed_size(tf: Any, image: Any, size: int) -> Any:
    """A fixed-size source at the model size: stretched only where its size differs."""
    return tf.cond(
        tf.reduce_all(tf.shape(image)[:2] == size),
        lambda: tf.cast(image, tf.float32),
        lambda: _stretch(tf, image, size),
    )


def eval_image(tf: Any, recipe: Recipe, decoder: ImageDecoder, encoded: Any) -> Any:
    """Deterministic eval preprocessing to float32 [S, S, C] in pixel units."""
    image = decoder.decode(tf, encoded)
    size = recipe.image_size
    if recipe.augment == "paper":
        image = _center_crop(tf, _stretch(tf, image, recipe.train_stored_size), size)
    elif recipe.fixed_size:
        image = _fixed_size(tf, image, size)
    else:
        image = _center_crop(tf, _resize_shorter(tf, image, eval_resize_size(size)), size)
    return tf.ensure_shape(image, (size, size, decoder.channels))


def stored_train_image(tf: Any, recipe: Recipe, decoder: ImageDecoder, encoded: Any) -> Any:
    """Deterministic preprocessing of a train image kept on the device (float32 [T, T, C],
    T = recipe.train_stored_size); the random part of the recipe runs later, on the device."""
    stored = recipe.train_stored_size
    if recipe.augment == "paper":
        image = _stretch(tf, decoder.decode(tf, encoded), stored)
    elif recipe.augment in ("crop_flip", "inception") and not recipe.fixed_size:
        image = _center_crop(tf, _resize_shorter(tf, decoder.decode(tf, encoded), stored), stored)
    else:
        image = eval_image(tf, recipe, decoder, encoded)
    return tf.ensure_shape(image, (stored, stored, decoder.channels))


def train_image(tf: Any, recipe: Recipe, decoder: ImageDecoder, encoded: Any, seed: Any) -> Any:
    """Random train preprocessing of one image (stateless ops seeded by `seed`), float32
    [S, S, C] in pixel units; the tf.data twin of `augment.augment_batch`."""
    size, channels = recipe.image_size, decoder.channels
    seed_crop, seed_flip = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if recipe.augment == "none":
        image = eval_image(tf, recipe, decoder, encoded)
    elif recipe.augment == "inception":
        shape = decoder.shape(tf, encoded)
        begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.concat([shape, [channels]], axis=0),
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, (1, 1, 4)),
            seed=seed_crop,
            min_object_covered=0.0,
            aspect_ratio_range=INCEPTION_ASPECT_RANGE,
            area_range=INCEPTION_AREA_RANGE,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        image = decoder.decode_crop(tf, encoded, begin[0], begin[1], box_size[0], box_size[1])
        image = _stretch(tf, image, size)
    else:  # crop_flip or paper: a plain random crop of a resized (and maybe padded) image
        image = decoder.decode(tf, encoded)
        if recipe.augment == "paper":
            image = _stretch(tf, image, recipe.train_stored_size)
        elif recipe.fixed_size:
            image = _fixed_size(tf, image, size)
            pad = recipe.crop_padding
            image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        else:
            image = _resize_shorter(tf, image, recipe.train_stored_size)
        image = tf.image.stateless_random_crop(image, (size, size, channels), seed=seed_crop)
    if recipe.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed_flip)
    return tf.ensure_shape(tf.cast(image, tf.float32), (size, size, channels))
