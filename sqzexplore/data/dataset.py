"""The `Dataset` interface the trainer consumes, and `DeviceDataset`: a split held whole in memory.

- `Dataset`: what every dataset tells the trainer (sizes, shapes, recipe, normalisation) and the
  eval split's per-process arithmetic. Two modes: `DeviceDataset` here, and `StreamingDataset`
  (stream.py, TFDS records through tf.data).
- `DeviceDataset` (`on_device` True): the whole split lives in host numpy arrays that the trainer
  places on the devices once. `device_train_batch` is pure JAX, called inside the jitted step: it
  picks this step's examples from a per-epoch permutation and augments them with `jax.random`, so
  a batch is a function of `(rng, step)` alone and a resumed run sees exactly the same batches.

Both give `eval_iter`: this process's share of the whole eval split exactly once, the last batch
padded and masked so metrics are exact, with the same number of batches on every process.
An epoch is `durations.steps_per_epoch(train_size, batch_size)` steps, as the trainer counts it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sqzexplore import durations
from sqzexplore.data.augment import Normalization, Recipe, augment_batch

Batch = dict[str, np.ndarray]


class DataError(ValueError):
    """A dataset that cannot be loaded as configured; the message says what to change."""


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
        return durations.steps_per_epoch(self.train_size, batch_size)

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

    # What train_iter and eval_iter ship to the devices: raw pixels, normalised in the step.
    batch_dtype = np.uint8

    def device_stream_batch(
        self, images: jax.Array, labels: jax.Array, step: jax.Array | int, rng: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """A shipped train batch (`train_iter`) made ready for the model inside the compiled
        step: cast to float32 and normalised. Pure JAX; the `batch_fn` of a streamed step."""
        del step, rng  # the stream already drew this step's examples and augmentation
        return self.normalization.apply(images), labels.astype(jnp.int32)

    def device_eval_batch(self, images: jax.Array) -> jax.Array:
        """Shipped eval images (already at `image_shape`) as a normalised float32 batch."""
        return self.normalization.apply(images)

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
        steps_per_epoch = durations.steps_per_epoch(num_examples, batch_size)
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

    def eval_iter(self, per_process_batch: int) -> Iterator[Batch]:
        """Host-side batches of this process's share of the eval split, padded and masked;
        images as stored (normalised on the device by `device_eval_batch`)."""
        images, labels = self._eval
        share = process_eval_range(self.eval_size, self.process_index, self.process_count)
        num_batches = eval_batches_per_process(
            self.eval_size, self.process_count, per_process_batch
        )
        for b in range(num_batches):
            lo = min(share.start + b * per_process_batch, share.stop)
            hi = min(lo + per_process_batch, share.stop)
            count = hi - lo
            image = np.zeros((per_process_batch, *self.image_shape), images.dtype)
            label = np.zeros((per_process_batch,), np.int32)
            mask = np.zeros((per_process_batch,), bool)
            image[:count] = images[lo:hi]
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
