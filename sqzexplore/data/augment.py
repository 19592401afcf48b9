"""Train-time augmentation recipes and their pure-JAX, on-device implementation.

A `Recipe` says, for one dataset and one `config.data.augment` value, at what size images are
stored or decoded before the random crop, how much zero padding the crop sees, whether images may
be flipped and how pixels are normalised. The device-resident path (`augment_batch`, run inside
the jitted train step with `jax.random`) and the tf.data path (`preprocess.py`) both follow it, so
switching `config.data.on_device` changes where the work runs, not the recipe.

Recipes (S = `image_size`, R = round(S / 0.875), the usual "resize 256, crop 224"; P = round(S *
256 / 227), the paper's 256 -> 227):

- `none`: no randomness; train images are preprocessed like eval images.
- `crop_flip`: fixed-size sources (CIFAR, digits, `imagenet_resized`, synthetic) are padded by
  max(1, S // 8) pixels of zeros and randomly cropped back to S (a small translation);
  variable-size sources (ImageNet, imagenette) are resized so the shorter side is R and randomly
  cropped to S. Then a horizontal flip with probability 1/2 where the source allows flips.
- `inception`: a random crop covering 8%-100% of the image with aspect ratio 3/4-4/3, resized
  (bilinear) to S, then the flip as above.
- `paper`: the authors' Caffe recipe (docs/paper.md#training): stretch to P x P, random S x S crop,
  subtract the per-channel means (BGR 104, 117, 123, i.e. RGB 123, 117, 104), no std scaling, no
  flip. Eval: stretch to P x P, centre crop S.

Per-source default: `digits` never flips (a mirrored 2 is not a 2), so its `crop_flip` is a pure
random translation. Every other source flips.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

AUGMENTATIONS = ("none", "crop_flip", "inception", "paper")

# Caffe's BGR means (104, 117, 123) reordered for RGB images.
PAPER_MEAN_RGB = (123.0, 117.0, 104.0)
# ImageNet statistics in 0..255 units: the normalisation of streamed natural images, where
# computing the train statistics would cost a pass over the data.
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# Inception-style crop ranges (Szegedy et al. 2015).
INCEPTION_AREA_RANGE = (0.08, 1.0)
INCEPTION_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)


def eval_resize_size(image_size: int) -> int:
    """Shorter-side size before the eval centre crop of variable-size sources (224 -> 256)."""
    return int(round(image_size / 0.875))


def paper_resize_size(image_size: int) -> int:
    """Square size images are stretched to in the paper recipe (227 -> 256)."""
    return int(round(image_size * 256 / 227))


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel `(x - mean) / std` in 0..255 pixel units."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_images(cls, images: np.ndarray, chunk: int = 4096) -> Normalization:
        """Per-channel mean and std of NHWC images (float64 accumulation, chunked)."""
        channels = images.shape[-1]
        total = np.zeros(channels)
        total_sq = np.zeros(channels)
        count = 0
        for start in range(0, images.shape[0], chunk):
            part = images[start : start + chunk].astype(np.float64).reshape(-1, channels)
            total += part.sum(axis=0)
            total_sq += np.square(part).sum(axis=0)
            count += part.shape[0]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
        # A constant channel (e.g. an all-black synthetic image) must not divide by zero.
        std = np.where(std < 1e-3, 1.0, std)
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))

    @classmethod
    def natural_images(cls, channels: int, augment: str) -> Normalization:
        """Fixed statistics for streamed natural images: paper means, or ImageNet mean/std."""
        if augment == "paper":
            mean, std = PAPER_MEAN_RGB, (1.0, 1.0, 1.0)
        else:
            mean, std = IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
        if channels == 3:
            return cls(tuple(mean), tuple(std))
        # Grayscale (or other) inputs: the channel-average statistics, replicated.
        return cls((float(np.mean(mean)),) * channels, (float(np.mean(std)),) * channels)

    def apply(self, x: jax.Array) -> jax.Array:
        """Normalise a float batch (jax); pure, usable inside jit."""
        mean = jnp.asarray(self.mean, jnp.float32)
        inv_std = 1.0 / jnp.asarray(self.std, jnp.float32)
        return (x.astype(jnp.float32) - mean) * inv_std

    def apply_numpy(self, x: np.ndarray) -> np.ndarray:
        """Normalise on the host (numpy), identical arithmetic to `apply`."""
        mean = np.asarray(self.mean, np.float32)
        inv_std = np.float32(1.0) / np.asarray(self.std, np.float32)
        return (x.astype(np.float32) - mean) * inv_std


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one dataset is preprocessed for training and eval (see the module docstring).

    Attributes:
      augment: one of AUGMENTATIONS.
      image_size: the model's input side S.
      fixed_size: the source images all have one square size (CIFAR, digits, synthetic);
        variable-size sources (ImageNet) get resize + crop preprocessing instead.
      flip: random horizontal flips in training.
    """

    augment: str
    image_size: int
    fixed_size: bool
    flip: bool

    def __post_init__(self):
        if self.augment not in AUGMENTATIONS:
            raise ValueError(
                f"config.data.augment must be one of {', '.join(AUGMENTATIONS)}, "
                f"got {self.augment!r}"
            )
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")

    @classmethod
    def for_source(
        cls, augment: str, image_size: int, *, fixed_size: bool, allow_flip: bool
    ) -> Recipe:
        """The recipe for a source; flips only where the source allows them and the recipe has
        them (never for 'none' or 'paper')."""
        flip = allow_flip and augment in ("crop_flip", "inception")
        return cls(augment=augment, image_size=image_size, fixed_size=fixed_size, flip=flip)

    @property
    def crop_padding(self) -> int:
        """Zero padding before the random crop (crop_flip on fixed-size sources only)."""
        if self.augment == "crop_flip" and self.fixed_size:
            return max(1, self.image_size // 8)
        return 0

    @property
    def train_stored_size(self) -> int:
        """Side of the square train images kept on the device (before the random crop)."""
        if self.augment == "paper":
            return paper_resize_size(self.image_size)
        if self.augment in ("crop_flip", "inception") and not self.fixed_size:
            return eval_resize_size(self.image_size)
        return self.image_size


# ----------------------------------------------------------------------------- jax augmentation
def random_crop(key: jax.Array, images: jax.Array, size: int, padding: int = 0) -> jax.Array:
    """A `size` x `size` crop at an independent uniform offset per image, after zero padding."""
    if padding:
        images = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    batch, height, width, channels = images.shape
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from {height}x{width} images")
    key_y, key_x = jax.random.split(key)
    top = jax.random.randint(key_y, (batch,), 0, height - size + 1)
    left = jax.random.randint(key_x, (batch,), 0, width - size + 1)

    def crop_one(image, y, x):
        return jax.lax.dynamic_slice(image, (y, x, 0), (size, size, channels))

    return jax.vmap(crop_one)(images, top, left)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirror each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def inception_crop(
    key: jax.Array,
    images: jax.Array,
    size: int,
    area_range: tuple[float, float] = INCEPTION_AREA_RANGE,
    aspect_range: tuple[float, float] = INCEPTION_ASPECT_RANGE,
) -> jax.Array:
    """Random-resized crop: a random box (area fraction and log-uniform aspect ratio), resized to
    `size` x `size` with bilinear (antialiased) resampling. Boxes larger than the image are
    clipped to it, so every sample stays fixed-shape (no rejection loop inside jit)."""
    batch, height, width, channels = images.shape
    k_area, k_aspect, k_y, k_x = jax.random.split(key, 4)
    area = jax.random.uniform(k_area, (batch,), minval=area_range[0], maxval=area_range[1])
    log_aspect = jax.random.uniform(
        k_aspect, (batch,), minval=np.log(aspect_range[0]), maxval=np.log(aspect_range[1])
    )
    aspect = jnp.exp(log_aspect)
    box_area = area * height * width
    box_h = jnp.clip(jnp.round(jnp.sqrt(box_area / aspect)), 1, height)
    box_w = jnp.clip(jnp.round(jnp.sqrt(box_area * aspect)), 1, width)
    top = jnp.floor(jax.random.uniform(k_y, (batch,)) * (height - box_h + 1))
    left = jnp.floor(jax.random.uniform(k_x, (batch,)) * (width - box_w + 1))

    def resize_one(image, y, x, h, w):
        scale = jnp.stack([size / h, size / w])
        translation = -jnp.stack([y, x]) * scale
        return jax.image.scale_and_translate(
            image, (size, size, channels), (0, 1), scale, translation, method="linear"
        )

    return jax.vmap(resize_one)(images.astype(jnp.float32), top, left, box_h, box_w)


def augment_batch(recipe: Recipe, key: jax.Array, images: jax.Array) -> jax.Array:
    """Apply a recipe's random train augmentation to a float32 NHWC batch (pixel units).

    Input images are at `recipe.train_stored_size`; the output is at `recipe.image_size`.
    """
    key_crop, key_flip = jax.random.split(key)
    size = recipe.image_size
    if recipe.augment == "inception":
        images = inception_crop(key_crop, images, size)
    elif recipe.augment in ("crop_flip", "paper"):
        images = random_crop(key_crop, images, size, recipe.crop_padding)
    elif images.shape[1] != size or images.shape[2] != size:
        raise ValueError(f"augment='none' needs {size}x{size} images, got {images.shape}")
    if recipe.flip:
        images = random_flip(key_flip, images)
    return images
