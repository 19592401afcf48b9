"""Tests for sqzexplore.data: sources, the device-resident and tf.data pipelines, augmentation.

TFDS is exercised two ways without network: `tfds.testing.mock_data` for cifar10/imagenet2012
(random examples, every split the same), and a tiny dataset really prepared on disk in a tmp dir
(so split slicing, and therefore the per-process split, is real). TensorFlow is imported inside
the tests that need it, never at collection.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sqzexplore.config import base_config
from sqzexplore.data import DataError, DeviceDataset, Normalization, Recipe, load_dataset
from sqzexplore.data.augment import augment_batch
from sqzexplore.data.dataset import eval_batches_per_process, process_eval_range
from sqzexplore.data.sources import digits_split, resize_bilinear
from sqzexplore.models.spec import preset


def data_config(**overrides):
    config = base_config().data
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def digits():
    return load_dataset(data_config(), preset("digits"))


def indexed_dataset(num_examples: int, size: int = 4, augment: str = "none") -> DeviceDataset:
    """A device dataset whose pixel values are the example index (identity normalisation), so a
    batch can be traced back to the examples it holds."""
    recipe = Recipe.for_source(augment, size, fixed_size=True, allow_flip=True)
    index = np.arange(num_examples, dtype=np.uint8)
    images = np.broadcast_to(index[:, None, None, None], (num_examples, size, size, 1)).copy()
    return DeviceDataset(
        name="indexed",
        num_classes=256,
        train_images=images,
        train_labels=index.astype(np.int32),
        eval_images=images,
        eval_labels=index.astype(np.int32),
        recipe=recipe,
        normalization=Normalization((0.0,), (1.0,)),
    )


# ----------------------------------------------------------------------------- digits
def test_digits_split_is_stratified_deterministic_and_complete():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, test = digits_split(0.2, seed=0)
    assert (len(train), len(test)) == (1437, 360)  # sklearn: test = ceil(0.2 * 1797)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    # Stratified: every class keeps its share in the test split to within one example.
    for digit in range(10):
        in_class = np.sum(labels == digit)
        assert abs(np.sum(labels[test] == digit) - 0.2 * in_class) <= 1
    again_train, again_test = digits_split(0.2, seed=0)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    other_train, _ = digits_split(0.2, seed=1)
    assert not np.array_equal(train, other_train)


def test_digits_dataset_shapes_sizes_and_normalisation(digits):
    assert digits.on_device and digits.name == "digits" and digits.num_classes == 10
    assert (digits.train_size, digits.eval_size) == (1437, 360)
    assert digits.image_shape == (16, 16, 1)
    train_x, train_y = digits.train_arrays()
    eval_x, eval_y = digits.eval_arrays()
    assert train_x.shape == (1437, 16, 16, 1) and train_x.dtype == np.uint8
    assert eval_x.shape == (360, 16, 16, 1) and eval_y.dtype == np.int32
    assert train_x.max() == 255 and train_x.min() == 0  # 0..16 scaled to the full uint8 range
    assert sorted(np.unique(train_y)) == list(range(10))
    # Train statistics: normalised train images have zero mean and unit std.
    normalised = np.asarray(digits.device_eval_batch(jnp.asarray(train_x)))
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised.mean(), 0.0, atol=1e-4)
    np.testing.assert_allclose(normalised.std(), 1.0, atol=1e-4)
    assert digits.steps_per_epoch(128) == 1437 // 128


def test_digits_upscaling_is_bilinear_and_replicates_channels():
    from sklearn.datasets import load_digits

    images = load_digits().images[:5]
    ours = resize_bilinear(images, 16)
    reference = jax.image.resize(jnp.asarray(images), (5, 16, 16), method="bilinear")
    np.testing.assert_allclose(ours, np.asarray(reference), atol=1e-4)

    rgb = load_dataset(data_config(), preset("digits", in_channels=3, image_size=24))
    train_x, _ = rgb.train_arrays()
    assert train_x.shape == (1437, 24, 24, 3) and rgb.image_shape == (24, 24, 3)
    assert np.array_equal(train_x[..., 0], train_x[..., 2])
    assert len(rgb.normalization.mean) == 3


# ----------------------------------------------------------------------------- device batches
def test_device_train_batch_is_deterministic_and_covers_each_epoch_once():
    dataset = indexed_dataset(64)
    images, labels = (jnp.asarray(a) for a in dataset.train_arrays())
    batch = jax.jit(dataset.device_train_batch, static_argnums=4)
    rng = jax.random.key(7)
    steps = dataset.steps_per_epoch(16)
    assert steps == 4

    def examples(step):
        x, y = batch(images, labels, step, rng, 16)
        # augment 'none' + identity normalisation: every pixel is the example index.
        assert np.array_equal(np.asarray(x)[:, 0, 0, 0].astype(int), np.asarray(y))
        return np.asarray(y)

    epoch0 = np.concatenate([examples(s) for s in range(steps)])
    epoch1 = np.concatenate([examples(s) for s in range(steps, 2 * steps)])
    assert np.array_equal(np.sort(epoch0), np.arange(64))
    assert np.array_equal(np.sort(epoch1), np.arange(64))
    assert not np.array_equal(epoch0, epoch1)  # a fresh permutation per epoch
    assert np.array_equal(examples(5), examples(5))  # same (rng, step) -> same batch
    other_rng = np.asarray(batch(images, labels, 0, jax.random.key(8), 16)[1])
    assert not np.array_equal(other_rng, examples(0))


def test_device_train_batch_drops_the_epoch_remainder():
    dataset = indexed_dataset(70)  # 4 steps of 16; 6 examples per epoch are left out
    images, labels = (jnp.asarray(a) for a in dataset.train_arrays())
    batch = jax.jit(dataset.device_train_batch, static_argnums=4)
    seen = [np.asarray(batch(images, labels, s, jax.random.key(0), 16)[1]) for s in range(4)]
    seen = np.concatenate(seen)
    assert dataset.steps_per_epoch(16) == 4 and len(np.unique(seen)) == 64
    with pytest.raises(ValueError, match="batch_size=71"):
        dataset.steps_per_epoch(71)


@pytest.mark.parametrize("augment", ["none", "crop_flip", "inception"])
def test_digits_augmentations_keep_shape(augment):
    dataset = load_dataset(data_config(augment=augment), preset("digits"))
    images, labels = (jnp.asarray(a) for a in dataset.train_arrays())
    x, y = jax.jit(dataset.device_train_batch, static_argnums=4)(
        images, labels, 3, jax.random.key(0), 32
    )
    assert x.shape == (32, 16, 16, 1) and x.dtype == jnp.float32
    assert y.shape == (32,) and y.dtype == jnp.int32
    assert bool(jnp.all(jnp.isfinite(x)))
    assert not dataset.recipe.flip  # digits never flip, whatever the recipe


def _row_directions(flip_allowed: bool) -> set[str]:
    """Directions of the non-padding pixels of each row after crop_flip on images that
    increase left to right: 'up' for unflipped rows, 'down' for mirrored ones."""
    size = 8
    recipe = Recipe.for_source("crop_flip", size, fixed_size=True, allow_flip=flip_allowed)
    ramp = 10.0 + 20.0 * np.arange(size, dtype=np.float32)
    images = jnp.asarray(np.broadcast_to(ramp[None, None, :, None], (64, size, size, 1)))
    out = np.asarray(augment_batch(recipe, jax.random.key(3), images))
    directions = set()
    for row in out[:, size // 2, :, 0]:
        values = row[row > 0]
        diffs = np.diff(values)
        assert np.all(diffs > 0) or np.all(diffs < 0)
        directions.add("up" if np.all(diffs > 0) else "down")
    return directions


def test_crop_flip_without_flip_only_translates():
    assert _row_directions(flip_allowed=False) == {"up"}
    # The same check sees flips when the source allows them.
    assert _row_directions(flip_allowed=True) == {"up", "down"}
    assert Recipe.for_source("crop_flip", 16, fixed_size=True, allow_flip=False).crop_padding == 2


def test_inception_crop_resizes_to_the_model_size():
    recipe = Recipe.for_source("inception", 12, fixed_size=True, allow_flip=True)
    images = jnp.full((6, 12, 12, 3), 100.0)
    out = augment_batch(recipe, jax.random.key(0), images)
    assert out.shape == (6, 12, 12, 3)
    # A constant image stays constant under any crop and bilinear resize.
    np.testing.assert_allclose(np.asarray(out), 100.0, rtol=1e-4)


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_shapes_and_paper_recipe():
    spec = preset("cifar", image_size=24, num_classes=7)
    config = data_config(name="synthetic", synthetic_train_size=40, synthetic_eval_size=9)
    dataset = load_dataset(config, spec)
    train_x, train_y = dataset.train_arrays()
    assert train_x.shape == (40, 24, 24, 3) and train_x.dtype == np.uint8
    assert dataset.eval_arrays()[0].shape == (9, 24, 24, 3)
    assert train_y.min() >= 0 and train_y.max() < 7
    again = load_dataset(config, spec)
    assert np.array_equal(again.train_arrays()[0], train_x)  # fixed seed

    paper = load_dataset(
        data_config(name="synthetic", augment="paper", synthetic_train_size=8),
        preset("v1.0", image_size=227),
    )
    assert paper.train_arrays()[0].shape == (8, 256, 256, 3)  # stretched to 256, crops of 227
    assert paper.normalization == Normalization((123.0, 117.0, 104.0), (1.0, 1.0, 1.0))
    assert not paper.recipe.flip
    images, labels = (jnp.asarray(a) for a in paper.train_arrays())
    x, _ = jax.jit(paper.device_train_batch, static_argnums=4)(
        images, labels, 0, jax.random.key(0), 4
    )
    assert x.shape == (4, 227, 227, 3)


def test_device_eval_iter_pads_masks_and_splits_processes():
    dataset = indexed_dataset(21)
    seen, batch_counts = [], []
    for process in range(2):
        dataset.process_index, dataset.process_count = process, 2
        batches = list(dataset.eval_iter(4))
        batch_counts.append(len(batches))
        for b in batches:
            assert b["image"].shape == (4, 4, 4, 1) and b["mask"].dtype == bool
            assert np.all(b["image"][~b["mask"]] == 0)
            seen.extend(b["label"][b["mask"]])
    assert batch_counts == [3, 3]  # 11 and 10 examples, both in 3 batches of 4
    assert sorted(seen) == list(range(21))
    assert [len(process_eval_range(11, p, 3)) for p in range(3)] == [4, 4, 3]
    assert eval_batches_per_process(11, 3, 4) == 1


# ----------------------------------------------------------------------------- errors
def test_bad_config_values_are_named():
    spec = preset("digits")
    with pytest.raises(DataError, match="config.data.augment"):
        load_dataset(data_config(augment="mixup"), spec)
    with pytest.raises(DataError, match="config.data.on_device"):
        load_dataset(data_config(on_device="sometimes"), spec)
    with pytest.raises(DataError, match="always device-resident"):
        load_dataset(data_config(on_device=False), spec)
    with pytest.raises(DataError, match="num_classes=10"):
        load_dataset(data_config(), preset("digits", num_classes=12))
    with pytest.raises(DataError, match="digits_test_fraction"):
        load_dataset(data_config(digits_test_fraction=1.5), spec)
    with pytest.raises(DataError, match="'paper' is the ImageNet recipe"):
        load_dataset(data_config(augment="paper"), spec)
    with pytest.raises(DataError, match="synthetic_train_size"):
        load_dataset(data_config(name="synthetic", synthetic_train_size=0), spec)


def test_unknown_name_lists_the_sources(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset(data_config(name="no_such_dataset", data_dir=str(tmp_path)), preset("cifar"))
    message = str(error.value)
    assert "'digits'" in message and "'synthetic'" in message
    assert "any TFDS dataset name" in message and "config.data.name" in message


def test_not_prepared_error_says_how_to_prepare(tmp_path):
    config = data_config(name="cifar10", data_dir=str(tmp_path))
    with pytest.raises(DataError) as error:
        load_dataset(config, preset("cifar"))
    assert f"tfds build cifar10 --data_dir={tmp_path}" in str(error.value)

    config = data_config(name="imagenet2012", data_dir=str(tmp_path), eval_split="validation")
    with pytest.raises(DataError) as error:
        load_dataset(config, preset("v1.0"))
    message = str(error.value)
    assert f"{tmp_path}/downloads/manual/" in message
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert f"tfds build imagenet2012 --data_dir={tmp_path}" in message


def test_digits_and_synthetic_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "from sqzexplore.config import base_config\n"
        "from sqzexplore.data import load_dataset\n"
        "from sqzexplore.models.spec import preset\n"
        "c = base_config().data\n"
        "load_dataset(c, preset('digits'))\n"
        "c.name = 'synthetic'; c.synthetic_train_size = 8; c.synthetic_eval_size = 8\n"
        "load_dataset(c, preset('cifar'))\n"
        "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


# ----------------------------------------------------------------------------- TFDS (mocked)
def _same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x["image"], y["image"]) and np.array_equal(x["label"], y["label"])
        for x, y in zip(a, b)
    )


def test_tfds_cifar10_small_dataset_goes_on_device(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24):
        dataset = load_dataset(data_config(name="cifar10", data_dir=str(tmp_path)), preset("cifar"))
    assert dataset.on_device and (dataset.train_size, dataset.eval_size) == (24, 24)
    train_x, train_y = dataset.train_arrays()
    assert train_x.shape == (24, 32, 32, 3) and train_x.dtype == np.uint8
    assert dataset.recipe.flip and dataset.recipe.crop_padding == 4  # CIFAR's pad-4 crop + flip
    x, y = jax.jit(dataset.device_train_batch, static_argnums=4)(
        jnp.asarray(train_x), jnp.asarray(train_y), 1, jax.random.key(0), 8
    )
    assert x.shape == (8, 32, 32, 3) and y.shape == (8,)


def test_tfds_cifar10_streaming_resumes_and_evaluates_exactly(tmp_path):
    import tensorflow_datasets as tfds

    spec = preset("cifar")
    with tfds.testing.mock_data(num_examples=40):
        config = data_config(name="cifar10", data_dir=str(tmp_path), on_device=False)
        stream = load_dataset(config, spec)
        assert not stream.on_device and stream.steps_per_epoch(8) == 5

        # 12 steps cross two epoch boundaries; resuming at 7 (mid epoch 1) yields the tail.
        full = list(itertools.islice(stream.train_iter(0, 8, seed=3), 12))
        resumed = list(itertools.islice(stream.train_iter(7, 8, seed=3), 5))
        assert _same_batches(full[7:], resumed)
        assert full[0]["image"].shape == (8, 32, 32, 3) and full[0]["image"].dtype == np.uint8
        assert full[0]["label"].dtype == np.int32
        assert not np.array_equal(full[0]["image"], full[5]["image"])  # epochs differ
        other = list(itertools.islice(stream.train_iter(0, 8, seed=4), 1))
        assert not np.array_equal(other[0]["image"], full[0]["image"])
        # Each epoch sees every example once (labels as a multiset).
        epoch_labels = np.sort(np.concatenate([b["label"] for b in full[:5]]))
        assert np.array_equal(
            epoch_labels, np.sort(np.concatenate([b["label"] for b in full[5:10]]))
        )

        batches = list(stream.eval_iter(16))
        assert [int(b["mask"].sum()) for b in batches] == [16, 16, 8]
        assert np.all(batches[-1]["image"][8:] == 0) and np.all(batches[-1]["label"][8:] == 0)

        # Same decoded pixels as the device-resident path (both uint8, normalised on the device).
        device = load_dataset(data_config(name="cifar10", data_dir=str(tmp_path)), spec)
    eval_x, eval_y = device.eval_arrays()
    streamed = np.concatenate([b["image"][b["mask"]] for b in batches])
    assert streamed.dtype == np.uint8 and np.array_equal(streamed, eval_x)
    assert np.array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]), eval_y)


def test_tfds_variable_size_images_stream_with_every_recipe(tmp_path):
    import tensorflow_datasets as tfds

    spec = preset("v1.0", image_size=48)
    with tfds.testing.mock_data(num_examples=12):  # mocked ImageNet images are 5-50 px JPEGs
        for augment in ("none", "crop_flip", "inception", "paper"):
            config = data_config(
                name="imagenet2012",
                data_dir=str(tmp_path),
                eval_split="validation",
                on_device=False,
                augment=augment,
            )
            stream = load_dataset(config, spec)
            batch = next(stream.train_iter(0, 4, seed=0))
            assert batch["image"].shape == (4, 48, 48, 3), augment
            assert np.all(np.isfinite(batch["image"]))
        assert next(stream.eval_iter(8))["image"].shape == (8, 48, 48, 3)
        assert stream.normalization.mean == (123.0, 117.0, 104.0)  # paper: means only
        config.on_device = True
        device = load_dataset(config, spec)
    assert device.train_arrays()[0].shape == (12, 54, 54, 3)  # round(48 * 256 / 227)
    assert device.eval_arrays()[0].shape == (12, 48, 48, 3)


# ----------------------------------------------------------------------------- TFDS (on disk)
TINY_TRAIN, TINY_TEST = 30, 21


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    """A real TFDS dataset prepared in a tmp dir: 8x8 images whose label is a unique id."""
    from tfds_fixture import prepare

    ids = lambda first, count: [
        (np.full((8, 8, 3), i, np.uint8), i) for i in range(first, first + count)
    ]
    splits = {"train": ids(0, TINY_TRAIN), "test": ids(32, TINY_TEST)}
    return prepare(str(tmp_path_factory.mktemp("tfds")), "tiny_ids", splits, num_classes=64)


def test_two_processes_split_tfds_disjointly_and_completely(tiny_tfds):
    spec = preset("cifar", num_classes=64, image_size=8)
    config = data_config(name="tiny_ids", data_dir=tiny_tfds, on_device=False, augment="none")
    eval_seen, train_seen, eval_batches = [], [], []
    for process in range(2):
        stream = load_dataset(config, spec, process_index=process, process_count=2)
        assert (stream.train_size, stream.eval_size) == (TINY_TRAIN, TINY_TEST)  # global sizes
        batches = list(stream.eval_iter(4))
        eval_batches.append(len(batches))
        eval_seen.append([int(v) for b in batches for v in b["label"][b["mask"]]])
        # One epoch at a global batch of 10 is 3 steps of 5 examples per process.
        assert stream.steps_per_epoch(10) == 3
        epoch = list(itertools.islice(stream.train_iter(0, 5, seed=0), 3))
        train_seen.append([int(v) for b in epoch for v in b["label"]])
    assert eval_batches == [3, 3]  # 11 and 10 examples, same number of batches
    assert not set(eval_seen[0]) & set(eval_seen[1])
    assert sorted(eval_seen[0] + eval_seen[1]) == list(range(32, 32 + TINY_TEST))
    assert len(eval_seen[0]) + len(eval_seen[1]) == TINY_TEST  # each exactly once
    assert sorted(train_seen[0] + train_seen[1]) == list(range(TINY_TRAIN))


def test_unknown_split_is_named(tiny_tfds):
    config = data_config(name="tiny_ids", data_dir=tiny_tfds, eval_split="validation")
    with pytest.raises(DataError, match="config.data.eval_split='validation'.*train, test"):
        load_dataset(config, preset("cifar", num_classes=64, image_size=8))
    with pytest.raises(DataError, match="config.model.num_classes=64"):
        load_dataset(data_config(name="tiny_ids", data_dir=tiny_tfds), preset("cifar"))
