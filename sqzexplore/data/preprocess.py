"""tf.data image preprocessing: decoding TFDS image features and the per-recipe resize/crop/flip.

`eval_image` and `train_image` are the TensorFlow twins of the on-device recipes in augment.py
(`train_image` uses only stateless random ops, seeded by the caller, so a stream is reproducible);
`stored_train_image` is the deterministic part a device-resident TFDS dataset keeps in memory.
All three return uint8 pixels: the cast and normalisation run on the device, inside the compiled
step (a uint8 227x227x3 image ships 151 KiB, a float32 one 604 KiB).

Decoding does only what the recipe needs: an image already at the size a resize would give is
not resized (a prepared copy, prepare.py), a JPEG whose shorter side is at least twice the
resize target is decoded at 1/2, 1/4 or 1/8 scale (DCT scaling), and the resize that follows is
antialiased only where it shrinks more than 2x (`_resize`). The Inception crop decodes just its
window instead.
TensorFlow is imported lazily (`import_tensorflow`), only by the streaming and TFDS code paths.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqzexplore.data.augment import (
    INCEPTION_AREA_RANGE,
    INCEPTION_ASPECT_RANGE,
    Recipe,
    eval_resize_size,
)


def import_tensorflow() -> Any:
    """Import TensorFlow for input pipelines only: hide every GPU from it, so it neither grabs
    accelerator memory nor competes with JAX for it."""
    import tensorflow as tf

    # RuntimeError: TF's devices were already initialised (by an earlier call, or by code that
    # used TF first); visibility can no longer change, so there is nothing more to do.
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")
    return tf


class ImageDecoder:
    """Decodes a TFDS image feature's encoded bytes to uint8 with the model's channel count."""

    def __init__(self, source_channels: int, channels: int, jpeg: bool, reduced_scale=True):
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
        # Decode JPEGs at 1/2..1/8 scale where the recipe shrinks them that much (benchmarks
        # turn it off to measure what it saves).
        self.reduced_scale = reduced_scale

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

    def decode(self, tf: Any, encoded: Any, min_side: int | None = None) -> Any:
        """uint8 [H, W, C]; with `min_side`, a JPEG is decoded at the smallest 1/1, 1/2, 1/4 or
        1/8 scale whose shorter side is still >= `min_side` (what the recipe resizes it to)."""
        if not (self.jpeg and self.reduced_scale and min_side):
            image = tf.io.decode_image(
                encoded, channels=self.source_channels, expand_animations=False
            )
            return self._channels(tf, image)
        shorter = tf.reduce_min(tf.image.extract_jpeg_shape(encoded)[:2])
        # Branch k decodes at ratio 2**k; the largest k with shorter >= 2**k * min_side.
        index = tf.add_n([tf.cast(shorter >= r * min_side, tf.int32) for r in (2, 4, 8)])

        def at(ratio: int):
            return lambda: tf.io.decode_jpeg(encoded, channels=self.source_channels, ratio=ratio)

        image = tf.switch_case(index, [at(1), at(2), at(4), at(8)])
        return self._channels(tf, image)

    def decode_crop(self, tf: Any, encoded: Any, top: Any, left: Any, height: Any, width: Any):
        """Decode only a window: JPEG decodes just the window's blocks (the Inception crop)."""
        if self.jpeg:
            window = tf.stack([top, left, height, width])
            image = tf.image.decode_and_crop_jpeg(encoded, window, channels=self.source_channels)
            return self._channels(tf, image)
        return tf.image.crop_to_bounding_box(self.decode(tf, encoded), top, left, height, width)


def to_uint8(tf: Any, image: Any) -> Any:
    """Float pixels rounded and clipped to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _resize(tf: Any, image: Any, shape: Any) -> Any:
    """Bilinear resize of uint8 pixels to `shape` (uint8 out). An image already of that shape
    is passed through untouched (a prepared copy costs no resize). Shrinking by at most 2x,
    plain bilinear already weighs every source pixel (Caffe's recipe used it, OpenCV's
    INTER_LINEAR); beyond 2x it would skip pixels and alias, so that is antialiased (2.3x the
    CPU of plain bilinear at ImageNet sizes). Reduced-scale decoding keeps most shrinks <= 2x."""
    old = tf.shape(image)[:2]
    smallest = tf.reduce_min(tf.cast(shape, tf.float32) / tf.cast(old, tf.float32))
    branch = tf.where(tf.reduce_all(old == shape), 0, tf.where(smallest >= 0.5, 1, 2))

    def resize(antialias: bool):
        pixels = tf.cast(image, tf.float32)
        return lambda: to_uint8(tf, tf.image.resize(pixels, shape, antialias=antialias))

    return tf.switch_case(branch, [lambda: image, resize(False), resize(True)])


def stretch(tf: Any, image: Any, size: int) -> Any:
    """Resize to size x size ignoring the aspect ratio."""
    return _resize(tf, image, tf.constant([size, size], tf.int32))


def resize_shorter(tf: Any, image: Any, size: int) -> Any:
    """Resize keeping the aspect ratio so the shorter side is `size`."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    return _resize(tf, image, new_shape)


def _center_crop(tf: Any, image: Any, size: int) -> Any:
    shape = tf.shape(image)
    top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


def eval_image(tf: Any, recipe: Recipe, decoder: ImageDecoder, encoded: Any) -> Any:
    """Deterministic eval preprocessing to uint8 [S, S, C]."""
    size = recipe.image_size
    if recipe.augment == "paper":
        stored = recipe.train_stored_size
        image = stretch(tf, decoder.decode(tf, encoded, stored), stored)
        image = _center_crop(tf, image, size)
    elif recipe.fixed_size:
        image = stretch(tf, decoder.decode(tf, encoded, size), size)
    else:
        resized = eval_resize_size(size)
        image = resize_shorter(tf, decoder.decode(tf, encoded, resized), resized)
        image = _center_crop(tf, image, size)
    return tf.ensure_shape(image, (size, size, decoder.channels))


def stored_train_image(tf: Any, recipe: Recipe, decoder: ImageDecoder, encoded: Any) -> Any:
    """Deterministic preprocessing of a train image kept on the device (uint8 [T, T, C],
    T = recipe.train_stored_size); the random part of the recipe runs later, on the device."""
    stored = recipe.train_stored_size
    if recipe.augment == "paper":
        image = stretch(tf, decoder.decode(tf, encoded, stored), stored)
    elif recipe.augment in ("crop_flip", "inception") and not recipe.fixed_size:
        image = resize_shorter(tf, decoder.decode(tf, encoded, stored), stored)
        image = _center_crop(tf, image, stored)
    else:
        image = eval_image(tf, recipe, decoder, encoded)
    return tf.ensure_shape(image, (stored, stored, decoder.channels))


def train_image(tf: Any, recipe: Recipe, decoder: ImageDecoder, encoded: Any, seed: Any) -> Any:
    """Random train preprocessing of one image (stateless ops seeded by `seed`), uint8
    [S, S, C]; the tf.data twin of `augment.augment_batch`."""
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
        image = stretch(tf, image, size)
    else:  # crop_flip or paper: a plain random crop of a resized (and maybe padded) image
        stored = recipe.train_stored_size
        if recipe.augment == "paper":
            image = stretch(tf, decoder.decode(tf, encoded, stored), stored)
        elif recipe.fixed_size:
            image = stretch(tf, decoder.decode(tf, encoded, size), size)
            pad = recipe.crop_padding
            image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        else:
            image = resize_shorter(tf, decoder.decode(tf, encoded, stored), stored)
        image = tf.image.stateless_random_crop(image, (size, size, channels), seed=seed_crop)
    if recipe.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed_flip)
    return tf.ensure_shape(image, (size, size, channels))
