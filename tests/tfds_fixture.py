"""Tiny datasets really prepared in TFDS format on disk, for tests that need the TFDS code path
(split slicing, per-process shares, decoding) without network.

`prepare(data_dir, name, examples)` writes a dataset named `name` (the TFDS name: `tiny_ids`)
whose splits hold the given (image, label) examples; the tests then load it with
`config.data.name = name, config.data.data_dir = data_dir`.

`prepare_jpegs(data_dir, name, counts, ...)` writes an ImageNet-like dataset: variable-size JPEG
files (ImageNet's are mostly 300-500 x 350-560 px, about 110 KB each), made of smooth colour
fields plus grain so they compress like photographs. `sqz bench data --fixture` and the data
tests use it, so neither needs the network or ImageNet.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Examples = Sequence[tuple[np.ndarray, int]]


def prepare(
    data_dir: str,
    name: str,
    splits: dict[str, Examples],
    num_classes: int,
    *,
    image_feature=None,
) -> str:
    """Write the TFDS dataset `name` (snake_case) with `splits` into `data_dir`; return data_dir.
    Images may be arrays (all one shape) or, with `image_feature`, already encoded bytes."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    if image_feature is None:
        image_shape = next(iter(next(iter(splits.values()))))[0].shape
        image_feature = tfds.features.Image(shape=image_shape)

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"image": image_feature, "label": tfds.features.ClassLabel(num_classes=num_classes)}
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(examples) for split, examples in splits.items()}

    def _generate_examples(self, examples):
        for i, (image, label) in enumerate(examples):
            yield i, {"image": image, "label": label}

    class_name = "".join(part.title() for part in name.split("_"))  # tiny_ids -> TinyIds
    builder = type(
        class_name,
        (tfds.core.GeneratorBasedBuilder,),
        {
            "VERSION": tfds.core.Version("1.0.0"),
            "code_path": None,  # defined in a test: no checksums file to look for
            "_info": _info,
            "_split_generators": _split_generators,
            "_generate_examples": _generate_examples,
        },
        skip_registration=True,
    )
    assert builder.name == name, (builder.name, name)
    builder(data_dir=data_dir).download_and_prepare()
    return data_dir


def photo_like(rng: np.random.Generator, height: int, width: int, grain: float = 14.0):
    """A uint8 [height, width, 3] image that JPEG-compresses like a photograph: a smooth random
    colour field (8x8-pixel control points, bilinear) plus Gaussian grain."""
    coarse = rng.uniform(0, 255, (height // 8 + 2, width // 8 + 2, 3))
    ys = np.linspace(0, coarse.shape[0] - 1.001, height)
    xs = np.linspace(0, coarse.shape[1] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    image = top * (1 - fy) + bottom * fy + rng.normal(0, grain, (height, width, 1))
    return np.clip(image, 0, 255).astype(np.uint8)


class _LazyJpegs:
    """`count` JPEG examples made on demand (a thousand ImageNet-sized images never sit in
    memory at once); a Sequence of (encoded bytes, label)."""

    def __init__(self, count, num_classes, heights, widths, quality, seed):
        self.count, self.num_classes = count, num_classes
        self.heights, self.widths, self.quality, self.seed = heights, widths, quality, seed

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        import io

        from PIL import Image

        if not 0 <= i < self.count:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        height = int(rng.integers(self.heights[0], self.heights[1] + 1))
        width = int(rng.integers(self.widths[0], self.widths[1] + 1))
        buffer = io.BytesIO()
        Image.fromarray(photo_like(rng, height, width)).save(
            buffer, format="JPEG", quality=self.quality
        )
        return buffer.getvalue(), i % self.num_classes


def prepare_jpegs(
    data_dir: str,
    name: str,
    counts: dict[str, int],
    num_classes: int,
    *,
    heights: tuple[int, int] = (300, 500),
    widths: tuple[int, int] = (350, 560),
    quality: int = 90,
    seed: int = 0,
) -> str:
    """Write `name`: splits of `counts[split]` variable-size RGB JPEGs (sides drawn uniformly
    from `heights` x `widths`, encoded at `quality`), label = index % num_classes, in TFDS
    format like `imagenet2012` (an Image feature of unknown size, JPEG encoded)."""
    import tensorflow_datasets as tfds

    splits = {
        split: _LazyJpegs(count, num_classes, heights, widths, quality, seed + k)
        for k, (split, count) in enumerate(sorted(counts.items()))
    }
    feature = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
    return prepare(data_dir, name, splits, num_classes, image_feature=feature)
