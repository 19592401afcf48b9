"""Input data: sources by name (`digits`, `synthetic`, any TFDS dataset) and the two pipelines
the trainer drives (device-resident arrays augmented inside the jitted step, or a tf.data stream).

The trainer calls `load_dataset(config.data, spec, process_index=..., process_count=...)` and
branches on `dataset.on_device`. `sqz data prepare` (cli.py, prepare.py, prepare_write.py) writes
a copy of a TFDS dataset at an experiment's image size, which `config.data.name=FOLDER` reads.
Importing this package does not import TensorFlow.

Modules: sources.py (sources by name, `load_dataset`, `DataError`), augment.py (the augmentation
recipes and their on-device form), dataset.py (`Dataset`, `DeviceDataset`; streamed uint8
batches normalised in the compiled step), stream.py (`StreamingDataset`, the tf.data path),
preprocess.py (tf.data decoding and preprocessing), prepare.py and prepare_write.py (prepared
copies), cli.py (`sqz data prepare`).
"""

from sqzexplore.data.augment import AUGMENTATIONS, Normalization, Recipe
from sqzexplore.data.dataset import Dataset, DeviceDataset
from sqzexplore.data.sources import DataError, load_dataset
from sqzexplore.data.stream import StreamingDataset

__all__ = [
    "AUGMENTATIONS",
    "DataError",
    "Dataset",
    "DeviceDataset",
    "Normalization",
    "Recipe",
    "StreamingDataset",
    "load_dataset",
]
