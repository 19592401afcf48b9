"""`StreamingDataset`: a TFDS dataset read, decoded and augmented by tf.data, one share per process.

Used when a dataset is too large to hold on the devices (`on_device` False or 'auto' over the
budget). Each process reads its share (`tfds.split_for_jax_process`). Every epoch has its own
seeded file order and shuffle, and every random op is stateless, seeded by (seed, epoch, process,
position in the epoch), so `train_iter(start_step)` yields exactly what an uninterrupted iterator
would have. Batches ship uint8 pixels (a quarter of float32's bytes); the trainer's compiled step
casts and normalises them (`Dataset.device_stream_batch`, `device_eval_batch`). The dataset may be
a prepared copy (prepare.py): images already at the recipe's size are then only cropped.
TensorFlow is imported when a `StreamingDataset` is built, never at import.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from sqzexplore import durations
from sqzexplore.data.augment import Normalization, Recipe
from sqzexplore.data.dataset import Batch, Dataset, eval_batches_per_process
from sqzexplore.data.preprocess import ImageDecoder, eval_image, import_tensorflow, train_image


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
        recipe, decoder = self.recipe, self._image

        def preprocess(index, example):
            op_seed = tf.stack([tf.constant(epoch_seed, tf.int64), tf.cast(index, tf.int64)])
            return {
                "image": train_image(tf, recipe, decoder, example["image"], op_seed),
                "label": tf.cast(example["label"], tf.int32),
            }

        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(per_process_batch, drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    def train_iter(self, start_step: int, per_process_batch: int, seed: int) -> Iterator[Batch]:
        """Endless train batches of this process's share from global step `start_step`.

        Yields {"image": uint8 [b, H, W, C] (normalised on the device), "label": int32 [b]};
        the same (seed, start_step) always gives the same batches.
        """
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if per_process_batch < 1:
            raise ValueError(f"per_process_batch must be >= 1, got {per_process_batch}")
        # This process's share at its share of the batch: the same count as the global
        # steps_per_epoch, since train shares are equal (drop_remainder).
        steps = durations.steps_per_epoch(self._train_share_size, per_process_batch)
        epoch, skip = divmod(start_step, steps)
        while True:
            ds = self._train_epoch(epoch, skip, per_process_batch, steps, seed)
            yield from ds.as_numpy_iterator()
            epoch, skip = epoch + 1, 0

    def eval_iter(self, per_process_batch: int) -> Iterator[Batch]:
        """This process's share of the whole eval split, once; the tail padded and masked.

        Yields {"image": uint8, "label": int32, "mask": bool} batches of exactly
        `per_process_batch`; every process yields the same number of batches.
        """
        tf = self._tf
        num_batches = eval_batches_per_process(
            self.eval_size, self.process_count, per_process_batch
        )
        recipe, decoder = self.recipe, self._image
        size, channels = recipe.image_size, self.image_shape[-1]

        def preprocess(example):
            return {
                "image": eval_image(tf, recipe, decoder, example["image"]),
                "label": tf.cast(example["label"], tf.int32),
                "mask": tf.constant(True),
            }

        padding = tf.data.Dataset.from_tensors(
            {
                "image": tf.zeros((size, size, channels), tf.uint8),
                "label": tf.constant(0, tf.int32),
                "mask": tf.constant(False),
            }
        ).repeat()
        ds = self._read(self._eval_share, shuffle_seed=None)
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.concatenate(padding).take(num_batches * per_process_batch)
        ds = ds.batch(per_process_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        yield from ds.as_numpy_iterator()
