"""Prepared copies (`sqz data prepare`) and the uint8 stream, end to end on a written JPEG dataset.

The dataset is ImageNet-like (variable-size JPEGs, tests/tfds_fixture.py `prepare_jpegs`) but
small: 16 train and 8 validation images of 80-140 x 90-160 px, 10 classes; the ImageNet v1.0
experiment is shrunk to 64x64 inputs (paper recipe: stretch to 72, random 64 crop).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sqzexplore.config import load_config_file, spec_from_config
from sqzexplore.data import DataError, load_dataset

EXPERIMENT = "experiments/imagenet/squeezenet_v1_0.py"
NAME = "tiny_jpegs"
# JPEG re-encoding error of a copy at quality 90 on these grainy test images (measured: mean
# |difference| about 3-6 grey levels, the 99th percentile about 20); photographs do better.
MEAN_ABS_BOUND = 8.0
P99_BOUND = 30.0
QUIET = dict(TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def jpeg_dir(tmp_path_factory):
    from tfds_fixture import prepare_jpegs

    folder = str(tmp_path_factory.mktemp("jpegs"))
    counts = {"train": 16, "validation": 8}
    return prepare_jpegs(folder, NAME, counts, 10, heights=(80, 140), widths=(90, 160))


def _overrides(data_dir: str, name: str = NAME, image_size: int = 64) -> list[str]:
    return [
        f"--config.data.name={name}",
        f"--config.data.data_dir={data_dir}",
        "--config.model.num_classes=10",
        f"--config.model.image_size={image_size}",
    ]


def _json(path):
    with open(path) as f:
        return json.load(f)


def _prepare(capsys, *args: str) -> tuple[int, str, str]:
    """`sqz data prepare ARGS` in this process (the refusals and the no-op rerun start no
    workers): (exit status, stdout, stderr)."""
    from sqzexplore.data.cli import main

    status = main(["prepare", f"--config={EXPERIMENT}", *args])
    out, err = capsys.readouterr()
    return status, out, err


def _sqz(*args: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sqzexplore.cli", *args]
    env = dict(os.environ, **QUIET)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, **popen)


def _config(data_dir: str, name: str, image_size: int = 64, **data):
    c = load_config_file(EXPERIMENT)
    c.model.num_classes, c.model.image_size = 10, image_size
    c.data.name, c.data.data_dir, c.data.on_device = name, data_dir, False
    for key, value in data.items():
        c.data[key] = value
    return c


@pytest.fixture(scope="module")
def copy_dir(jpeg_dir, tmp_path_factory):
    """`sqz data prepare` of the paper recipe at 64 px (every image stretched to 72x72)."""
    out = str(tmp_path_factory.mktemp("copies") / "paper72")
    done = _sqz("data", "prepare", f"--config={EXPERIMENT}", f"--out={out}", "--workers=2",
                *_overrides(jpeg_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "every image stretched to 72x72" in done.stdout and "MiB" in done.stdout
    return out


def test_prepare_writes_a_complete_copy_and_reruns_as_a_no_op(jpeg_dir, copy_dir, capsys):
    manifest = _json(os.path.join(copy_dir, "sqz_prepared.json"))
    assert manifest["complete"] and manifest["mode"] == "stretch" and manifest["size"] == 72
    assert manifest["quality"] == 90 and manifest["source"] == NAME
    assert os.path.exists(os.path.join(copy_dir, "dataset_info.json"))
    status, out, _ = _prepare(capsys, f"--out={copy_dir}", *_overrides(jpeg_dir))
    assert status == 0 and "0 of 24 images left to write" in out
    # A different copy into the same folder is refused, naming what differs.
    status, _, err = _prepare(capsys, f"--out={copy_dir}", "--quality=75", *_overrides(jpeg_dir))
    assert status == 2 and "holds a different prepared copy" in err
    assert "quality 90 (asked 75)" in err


def test_prepare_refuses_bad_input(jpeg_dir, tmp_path, capsys):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    cases = [
        (["--quality=0"], "--quality must be in [1, 100]"),
        (["--size=100"], "the paper recipe at image_size 64 stretches every image to exactly 72"),
        (["--out=" + str(tmp_path / "stuff")], "is not a prepared copy"),
    ]
    for extra, message in cases:
        out = [] if any(e.startswith("--out") for e in extra) else [f"--out={tmp_path / 'x'}"]
        status, _, err = _prepare(capsys, *out, *extra, *_overrides(jpeg_dir))
        assert status == 2 and message in err, (extra, err[-2000:])
    assert (tmp_path / "stuff" / "notes.txt").read_text() == "mine"


def test_copy_first_batches_agree_with_the_original_and_wrong_copies_are_refused(
    jpeg_dir, copy_dir
):
    original = load_dataset(_config(jpeg_dir, NAME).data, spec_from_config(_config(jpeg_dir, NAME)))
    config = _config(jpeg_dir, copy_dir)
    copy = load_dataset(config.data, spec_from_config(config))
    # The copy mirrors the source's shards, so one seed reads both in the same order.
    for a, b in [(next(original.train_iter(0, 8, 5)), next(copy.train_iter(0, 8, 5))),
                 (next(original.eval_iter(8)), next(copy.eval_iter(8)))]:  # fmt: skip
        assert a["image"].dtype == b["image"].dtype == np.uint8
        assert np.array_equal(a["label"], b["label"])
        diff = np.abs(a["image"].astype(int) - b["image"].astype(int))
        assert diff.mean() <= MEAN_ABS_BOUND and np.percentile(diff, 99) <= P99_BOUND
    wrongs = (
        (96, "paper", "stretched to 108x108"),
        (64, "crop_flip", "shorter side resized to 73"),
    )
    for image_size, augment, needs in wrongs:
        wrong = _config(jpeg_dir, copy_dir, image_size=image_size, augment=augment)
        with pytest.raises(
            DataError, match=f"prepared with every image stretched to 72x72.*{needs}"
        ):
            load_dataset(wrong.data, spec_from_config(wrong))


@pytest.mark.parametrize("source", ["original", "copy"])
def test_imagenet_v1_0_trains_from_the_original_and_the_copy(jpeg_dir, copy_dir, tmp_path, source):
    """`sqz train` of the ImageNet v1.0 experiment, shrunk: 64 px, batch 4, 2 steps."""
    name = NAME if source == "original" else copy_dir
    done = _sqz("train", f"--config={EXPERIMENT}", f"--workdir={tmp_path / 'run'}",
                *_overrides(jpeg_dir, name), "--config.batch_size=4", "--config.num_steps=2",
                "--config.eval_batch_size=4", "--config.data.shuffle_buffer=16",
                "--config.log_every_steps=1", timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _json(tmp_path / "run" / "result.json")
    assert summary["status"] == "complete" and summary["final"]["count"] == 8


def test_unfinished_copy_is_refused_and_a_rerun_after_a_kill_keeps_finished_shards(
    jpeg_dir, tmp_path
):
    out = str(tmp_path / "copy")
    args = ("data", "prepare", f"--config={EXPERIMENT}", f"--out={out}", "--workers=1",
            "--examples-per-shard=1", *_overrides(jpeg_dir))  # fmt: skip
    env = dict(os.environ, **QUIET)
    proc = subprocess.Popen([sys.executable, "-m", "sqzexplore.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    shards = lambda: sorted(f for f in os.listdir(out) if ".tfrecord-" in f and ".tmp-" not in f)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if os.path.isdir(out) and len(shards()) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its pool worker, mid-copy
    proc.wait()
    kept = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in shards()}
    assert 2 <= len(kept) < 24 and not os.path.exists(os.path.join(out, "dataset_info.json"))
    config = _config(jpeg_dir, out)
    with pytest.raises(DataError, match="this prepared copy is unfinished; rerun"):
        load_dataset(config.data, spec_from_config(config))
    done = _sqz(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{24 - len(kept)} of 24 images left" in done.stdout
    assert all(os.stat(os.path.join(out, f)).st_mtime_ns == t for f, t in kept.items())
    assert len(shards()) == 24 and not [f for f in os.listdir(out) if ".tmp-" in f]
    assert load_dataset(config.data, spec_from_config(config)).train_size == 16


STREAM_SCRIPT = """
import hashlib, sys
from sqzexplore.config import load_config_file, spec_from_config
from sqzexplore.data import load_dataset
c = load_config_file({experiment!r})
c.model.num_classes, c.model.image_size = 10, 64
c.data.name, c.data.data_dir, c.data.on_device = {name!r}, {data_dir!r}, False
ds = load_dataset(c.data, spec_from_config(c))
start, stop = int(sys.argv[1]), int(sys.argv[2])
for step, batch in zip(range(start, stop), ds.train_iter(start, 4, seed=11)):
    digest = hashlib.sha256(batch["image"].tobytes() + batch["label"].tobytes()).hexdigest()
    print(step, digest, flush=True)
"""


def test_stream_resumed_after_a_kill_yields_the_same_images(jpeg_dir, copy_dir, tmp_path):
    """A process streaming the prepared copy is killed mid-epoch-2; a new one started at the
    next step yields exactly the batches (uint8 bytes) an uninterrupted stream does."""
    script = tmp_path / "stream.py"
    script.write_text(STREAM_SCRIPT.format(experiment=EXPERIMENT, name=copy_dir, data_dir=jpeg_dir))
    env = dict(os.environ, **QUIET)
    run = lambda a, b: subprocess.run([sys.executable, str(script), str(a), str(b)], env=env,
                                      capture_output=True, text=True, timeout=300)  # fmt: skip
    whole = run(0, 10)
    assert whole.returncode == 0, whole.stderr[-2000:]
    expected = dict(line.split() for line in whole.stdout.split("\n") if line)
    proc = subprocess.Popen([sys.executable, str(script), "0", "10"], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    seen = {}
    for line in proc.stdout:
        step, digest = line.split()
        seen[step] = digest
        if len(seen) == 6:  # 4 steps per epoch: killed in the second epoch
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    resumed = run(6, 10)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    seen.update(line.split() for line in resumed.stdout.split("\n") if line)
    assert seen == expected and len(set(expected.values())) == 10


def test_reduced_scale_decode_picks_the_largest_ratio_that_keeps_the_target(jpeg_dir):
    """A JPEG is decoded at 1/2 (1/4, 1/8) scale only where its shorter side stays >= the
    resize target; the resized result is within a few grey levels of full-scale decoding."""
    import tensorflow_datasets as tfds

    from sqzexplore.data.preprocess import ImageDecoder, import_tensorflow, resize_shorter

    tf = import_tensorflow()
    builder = tfds.builder(NAME, data_dir=jpeg_dir)
    decoder = ImageDecoder.for_builder(builder, 3)
    read = builder.as_dataset(split="train[:4]", decoders={"image": tfds.decode.SkipDecoding()})
    for example in read:
        encoded = example["image"]
        height, width = (int(v) for v in tf.image.extract_jpeg_shape(encoded)[:2])
        shorter = min(height, width)
        for target, ratio in ((shorter, 1), (shorter // 2, 2), (shorter // 4 - 1, 4), (9, 8)):
            image = decoder.decode(tf, encoded, target)
            assert tuple(image.shape[:2]) == (-(-height // ratio), -(-width // ratio)), target
        decoder.reduced_scale = False  # the switch the benchmark uses: full-scale decoding
        assert tuple(decoder.decode(tf, encoded, 9).shape[:2]) == (height, width)
        decoder.reduced_scale = True
    # Against the ideal 2x shrink of the full image (antialiased), on a photograph-like image
    # with little grain (white-noise grain, all high frequencies, is where filters disagree).
    import io

    from PIL import Image
    from tfds_fixture import photo_like

    buffer = io.BytesIO()
    Image.fromarray(photo_like(np.random.default_rng(0), 200, 240, grain=2.0)).save(
        buffer, format="JPEG", quality=90
    )
    encoded = tf.constant(buffer.getvalue())
    reduced = resize_shorter(tf, decoder.decode(tf, encoded, 100), 100)
    assert tuple(reduced.shape) == (100, 120, 3) and reduced.dtype == tf.uint8
    full = tf.cast(decoder.decode(tf, encoded), tf.float32)
    ideal = tf.image.resize(full, (100, 120), antialias=True).numpy()
    assert np.abs(ideal - reduced.numpy()).mean() < 4.0  # measured 3.1 grey levels
