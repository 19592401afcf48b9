"""Tiny datasets really prepared in TFDS format on disk, for tests that need the TFDS code path
(split slicing, per-process shares, decoding) without network.

`prepare(data_dir, name, examples)` writes a dataset named `name` (the TFDS name: `tiny_ids`)
whose splits hold the given (image, label) examples; the tests then load it with
`config.data.name = name, config.data.data_dir = data_dir`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Examples = Sequence[tuple[np.ndarray, int]]


def prepare(data_dir: str, name: str, splits: dict[str, Examples], num_classes: int) -> str:
    """Write the TFDS dataset `name` (snake_case) with `splits` into `data_dir`; return data_dir."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    image_shape = next(iter(splits.values()))[0][0].shape

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=image_shape),
                "label": tfds.features.ClassLabel(num_classes=num_classes),
            }
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
