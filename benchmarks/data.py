"""`sqz bench data`: the streamed ImageNet loader alone, from the original files and a copy.

For an experiment (default experiments/imagenet/squeezenet_v1_0.py) it drives the trainer's own
`StreamingDataset.train_iter` (decode, resize, crop, batch, to numpy: everything the project's
loader does before a batch is placed on the devices) and reports per path:

- images/s (wall), and images per CPU-second of this process (user + system time of every thread,
  so it holds on a shared or loaded machine: it counts the work, not the waiting);
- bytes shipped per image (the uint8 batch the device receives);
- the host cores it would take to feed a given step rate (--target-rate, default the bf16 step on
  one H200: 14,938 img/s for v1.0 and 28,055 for v1.1): rate / (images per CPU-second).

Paths: the original files; the same with full-scale JPEG decoding (only where the recipe shrinks
images 2x or more, so reduced-scale decoding applies); and a prepared copy (`sqz data prepare`;
--prepared DIR, else written into the fixture folder once and reused).

Data: a TFDS dataset (--tfds NAME --data-dir DIR), or --fixture DIR: an ImageNet-like dataset of
variable-size JPEGs (300-500 x 350-560 px, about 110 KB each) written there once by
tests/tfds_fixture.py, so the benchmark runs offline.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BenchError, Section, num

DEFAULT_CONFIG = "experiments/imagenet/squeezenet_v1_0.py"
# The bf16 train step on one H200 (benchmarks/RESULTS.md): v1.0 and v1.1 images/s.
DEFAULT_RATES = (14_938.0, 28_055.0)
FIXTURE_NAME = "fake_imagenet"
FIXTURE_TRAIN, FIXTURE_EVAL, FIXTURE_CLASSES = 2500, 50, 1000
TARGET_PREPARED = 940.0  # img per CPU-second: a 16-core host feeds v1.0 on an H200
TARGET_BYTES = 160 * 1024


def _cells(row: dict) -> list[str]:
    cores = row.get("cores_for_rates") or {}
    return [
        row["experiment"],
        row["path"],
        num(row["img_s"]),
        num(row["img_per_cpu_s"]),
        f"{row['bytes_per_image'] / 1024:,.0f} KiB",
        ", ".join(f"{num(c, 1)} @ {num(float(r))}" for r, c in cores.items()) or "n/a",
        num(row["images"]),
    ]


SECTION = Section(
    name="data",
    title="Loader alone (sqz bench data): the streamed train path, no model",
    columns=(
        "experiment",
        "path",
        "img/s",
        "img per CPU-s",
        "shipped per image",
        "host cores for step img/s",
        "images",
    ),
    cells=_cells,
    line=lambda r: (
        f"data {r['path']}: {r['img_s']:,.0f} img/s, {r['img_per_cpu_s']:,.0f} img per CPU-s, "
        f"{r['bytes_per_image'] / 1024:,.0f} KiB per image"
    ),
)


def _fixture_module(repo_root: Path):
    path = repo_root / "tests" / "tfds_fixture.py"
    if not path.exists():
        raise BenchError(f"--fixture needs {path} (the checkout's test helpers)")
    spec = importlib.util.spec_from_file_location("tfds_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_fixture(repo_root: Path, folder: str, smoke: bool) -> tuple[str, str]:
    """(name, data_dir) of the ImageNet-like JPEG dataset in `folder`, written on first use."""
    folder = os.path.abspath(os.path.expanduser(folder))
    train, evals = (48, 8) if smoke else (FIXTURE_TRAIN, FIXTURE_EVAL)
    name = f"{FIXTURE_NAME}_smoke" if smoke else FIXTURE_NAME
    _fixture_module(repo_root).prepare_jpegs(
        folder, name, {"train": train, "validation": evals}, FIXTURE_CLASSES
    )
    return name, folder


def _config(repo_root: Path, config_path: str | None, image_size: int | None):
    from sqzexplore.config import load_config_file

    path = Path(config_path or repo_root / DEFAULT_CONFIG)
    config = load_config_file(str(path))
    if image_size:
        config.model.image_size = int(image_size)
    config.data.on_device = False
    return config, path


def measure_loader(ds: Any, images: int, batch: int, seed: int = 0) -> dict:
    """Drive `ds.train_iter` for at least `images` images after one untimed batch (the
    pipeline's start); wall and process CPU time of the timed part."""
    it = ds.train_iter(0, batch, seed)
    first = next(it)
    per_image = first["image"].nbytes / len(first["image"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, t0, done = usage.ru_utime + usage.ru_stime, time.perf_counter(), 0
    while done < images:
        done += len(next(it)["label"])
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    return {
        "images": done,
        "img_s": done / wall,
        "img_per_cpu_s": done / max(cpu, 1e-9),
        "cpu_s": cpu,
        "wall_s": wall,
        "bytes_per_image": per_image,
        "dtype": str(first["image"].dtype),
    }


def _rates(text: str | None) -> tuple[float, ...]:
    if not text:
        return DEFAULT_RATES
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BenchError(f"--target-rate must be numbers like 14938,28055, got {text!r}") from None
    if not rates or min(rates) <= 0:
        raise BenchError(f"--target-rate must be positive img/s values, got {text!r}")
    return rates


def check_args(args: Any) -> None:
    """Every `sqz bench data` option checked before anything is read or written."""
    if not args.fixture and not args.data_dir:
        raise BenchError(
            "sqz bench data needs data: --fixture DIR (an ImageNet-like JPEG dataset written "
            "there once) or --data-dir DIR with --tfds NAME (e.g. imagenet2012)"
        )
    _rates(args.target_rate)
    if args.images is not None and args.images < 1:
        raise BenchError(f"--images must be >= 1, got {args.images}")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise BenchError(f"--quality must be in [1, 100], got {args.quality}")


def measure_data(args: Any, repo_root: Path) -> list[dict]:
    """The loader rows of `sqz bench data` (see the module docstring)."""
    from sqzexplore.config import spec_from_config
    from sqzexplore.data import load_dataset
    from sqzexplore.data.prepare import DEFAULT_QUALITY, needed_target
    from sqzexplore.data.prepare_write import prepare_copy

    check_args(args)
    rates = _rates(args.target_rate)
    config, path = _config(repo_root, args.config, args.image_size)
    if args.fixture:
        name, data_dir = write_fixture(repo_root, args.fixture, args.smoke)
    else:
        name, data_dir = args.tfds, os.path.expanduser(args.data_dir)
    config.data.name, config.data.data_dir = name, data_dir
    import tensorflow_datasets as tfds

    classes = tfds.builder(name, data_dir=data_dir).info.features["label"].num_classes
    config.model.num_classes = classes
    spec = spec_from_config(config)
    batch = 16 if args.smoke else 128
    images = args.images or (64 if args.smoke else 2048)
    quality = args.quality or DEFAULT_QUALITY
    experiment = f"{path.stem} {spec.image_size}px {config.data.augment}"

    source = load_dataset(config.data, spec)
    paths: list[tuple[str, Any]] = [("original files", source)]
    target = needed_target(source.recipe)
    if min(_stored_sides(source)) >= 2 * target.size:
        full = load_dataset(config.data, spec)
        full._image.reduced_scale = False
        paths.append(("original files, full-scale decode", full))
    prepared = args.prepared
    if not prepared:
        base = args.fixture or data_dir
        prepared = os.path.join(base, f"prepared-{name}-{target.mode}{target.size}-q{quality}")
        prepare_copy(
            source=name,
            data_dir=data_dir,
            splits=[str(config.data.train_split), str(config.data.eval_split)],
            augment=str(config.data.augment),
            image_size=spec.image_size,
            size=None,
            quality=quality,
            out=prepared,
            workers=os.cpu_count() or 1,
            command="sqz bench data",
        )
    config.data.name = prepared
    paths.append((f"prepared copy (JPEG q{quality})", load_dataset(config.data, spec)))

    rows = []
    for label, ds in paths:
        row = measure_loader(ds, images, batch)
        row.update(experiment=experiment, path=label, batch=batch)
        row["cores_for_rates"] = {f"{r:.0f}": r / row["img_per_cpu_s"] for r in rates}
        rows.append(row)
    return rows


def _stored_sides(ds: Any, sample: int = 16) -> list[int]:
    """Shorter sides of a few source images (JPEG headers only)."""
    import tensorflow_datasets as tfds

    tf = ds._tf
    read = ds.builder.as_dataset(
        split=ds.train_split, decoders={"image": tfds.decode.SkipDecoding()}
    )
    return [
        int(min(tf.image.extract_jpeg_shape(e["image"]).numpy()[:2])) if ds._image.jpeg else 0
        for e in read.take(sample)
    ]
