"""What one `sqz bench` invocation measures: the cases, their timing, and their trainer configs.

Without --preset/--batch/--dtype each command uses a plan for the platform: the Performance
issue's sizes on an accelerator (v1.0 and v1.1 at 224px batch 256, the 32x32 net at batch 512,
bf16 and fp32), modest sizes on a CPU, tiny ones with --smoke.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from benchmarks.common import SMOKE_OVERRIDES, BenchError, is_accelerator
from sqzexplore.models.spec import DTYPES, PRESETS

# The experiment file each end-to-end case runs (relative to the repository root).
EXPERIMENTS = {
    "digits": "experiments/digits/squeezenet.py",
    "cifar": "experiments/cifar10/squeezenet.py",
}
TORCHVISION_MODELS = {"v1.0": "squeezenet1_0", "v1.1": "squeezenet1_1"}
# Compile-ahead runs one design point after another; these squeeze ratios make them distinct
# programs (what a sweep's worker meets), as the README's squeeze-ratio sweep does.
AHEAD_SQUEEZE_RATIOS = (0.125, 0.25, 0.5)


@dataclasses.dataclass(frozen=True)
class StepCase:
    """One train-step measurement: a preset at a batch size and compute dtype."""

    preset: str
    batch: int
    dtype: str
    image_size: int | None = None  # None: the preset's own size
    squeeze_ratio: float | None = None  # None: the preset's own


@dataclasses.dataclass(frozen=True)
class E2ECase:
    """One end-to-end run: an experiment (digits or cifar) on a data source."""

    experiment: str  # "digits" | "cifar"
    source: str  # "digits" | "synthetic" | a TFDS name
    batch: int
    dtype: str
    on_device: str = "auto"  # "auto" (device-resident) | "false" (tf.data)


@dataclasses.dataclass(frozen=True)
class Timing:
    """How a step is timed (see `common.timed_windows`)."""

    steps_per_window: int | None  # None: adapt to window_seconds
    windows: int
    warmup: int
    window_seconds: float


@dataclasses.dataclass
class Plan:
    """Everything one `sqz bench` invocation measures."""

    steps: list[StepCase]
    e2e: list[E2ECase]
    torch: list[StepCase]
    maxbatch: list[StepCase]
    ahead: list[StepCase]  # the runs compile-ahead trains one after another
    timing: Timing
    e2e_steps: int
    ahead_steps: int
    synthetic_train_size: int
    synthetic_eval_size: int
    smoke: bool


def _product(presets, batches, dtypes, size=None) -> list[StepCase]:
    return [StepCase(p, b, d, size) for p in presets for b in batches for d in dtypes]


def _check_args(args: argparse.Namespace) -> None:
    """Every option's range, before anything compiles."""
    for p in args.preset or ():
        if p not in PRESETS:
            raise BenchError(f"--preset must be one of {', '.join(PRESETS)}, got {p!r}")
    for d in args.dtype or ():
        if d not in DTYPES:
            raise BenchError(f"--dtype must be one of {', '.join(DTYPES)}, got {d!r}")
    for b in args.batch or ():
        if b < 1:
            raise BenchError(f"--batch must be >= 1, got {b}")
    for r in args.squeeze_ratio or ():
        if not 0 < r <= 1:
            raise BenchError(f"--squeeze-ratio must be in (0, 1], got {r}")
    if args.image_size is not None and args.image_size < 1:
        raise BenchError(f"--image-size must be >= 1, got {args.image_size}")
    for field in ("steps", "warmup", "windows", "e2e_steps", "run_steps"):
        value = getattr(args, field)
        low = 0 if field == "warmup" else 1
        if value is not None and value < low:
            raise BenchError(f"--{field.replace('_', '-')} must be >= {low}, got {value}")


def build_plan(args: argparse.Namespace, device_count: int) -> Plan:
    """The cases for the command line: explicit --preset/--batch/--dtype, else the platform's
    plan (the issue's sizes on an accelerator, modest ones on a CPU, tiny ones with --smoke)."""
    _check_args(args)
    accel = is_accelerator()
    size = args.image_size
    ratios = tuple(args.squeeze_ratio or AHEAD_SQUEEZE_RATIOS)
    if args.smoke:
        presets, batches = args.preset or ["digits"], args.batch or [8]
        dtypes = args.dtype or ["float32"]
        steps = _product(presets, batches, dtypes, size)
        e2e = [E2ECase("digits", "digits", batches[0], dtypes[0])]
        torch_cases = [StepCase(p, batches[0], "bfloat16", size or 64) for p in TORCHVISION_MODELS]
        maxbatch = _product(args.preset or ["v1.0"], batches[:1], ["bfloat16"], size)
        ahead_base = StepCase(presets[0], batches[0], dtypes[0], size)
        ratios = tuple(args.squeeze_ratio or ratios[1:])  # two runs
    elif args.preset or args.batch or args.dtype:
        presets = args.preset or (["v1.0", "v1.1"] if accel else ["digits"])
        batches = args.batch or ([256] if accel else [64])
        dtypes = args.dtype or (["bfloat16", "float32"] if accel else ["float32"])
        steps = _product(presets, batches, dtypes, size)
        e2e = [
            E2ECase(p, "digits" if p == "digits" else "synthetic", b, d)
            for p in presets
            if p in EXPERIMENTS
            for b in batches
            for d in dtypes
        ]
        torch_cases = _product([p for p in presets if p in TORCHVISION_MODELS], batches,
                               ["bfloat16"], size)  # fmt: skip
        maxbatch = _product(presets, batches[:1], dtypes, size)
        ahead_base = StepCase(presets[0], batches[0], dtypes[0], size)
    elif accel:
        sizes = (("v1.0", 256), ("v1.1", 256), ("cifar", 512))
        steps = [StepCase(p, b, d) for d in ("bfloat16", "float32") for p, b in sizes]
        e2e = [
            E2ECase("cifar", "synthetic", 512, "bfloat16"),
            E2ECase("digits", "digits", 64, "float32"),
        ]
        torch_cases = _product(("v1.0", "v1.1"), [256], ["bfloat16"])
        maxbatch = [StepCase("v1.0", 256, "bfloat16")]
        ahead_base = StepCase("cifar", 512, "bfloat16")
    else:
        sizes = (("digits", 64), ("digits", 128), ("cifar", 64), ("v1.0", 8))
        steps = [StepCase(p, b, "float32") for p, b in sizes]
        e2e = [
            E2ECase("digits", "digits", 64, "float32"),
            E2ECase("cifar", "synthetic", 64, "float32"),
        ]
        torch_cases = [StepCase("v1.0", 8, "bfloat16")]
        maxbatch = []
        ahead_base = StepCase("digits", 64, "float32")
    if args.data_dir:
        # The real CIFAR pipelines: decoded once into device memory, and streamed by tf.data.
        b = (args.batch or [512 if accel else 64])[0]
        d = (args.dtype or ["bfloat16" if accel else "float32"])[0]
        e2e += [
            E2ECase("cifar", args.tfds, b, d, "auto"),
            E2ECase("cifar", args.tfds, b, d, "false"),
        ]
    ahead = [dataclasses.replace(ahead_base, squeeze_ratio=r) for r in ratios]
    for case in [*steps, *maxbatch, *e2e, *ahead]:
        if case.batch % device_count:
            raise BenchError(
                f"--batch {case.batch} must be a multiple of the device count {device_count} "
                "(the batch is split evenly over the 'data' mesh axis)"
            )
    smoke = bool(args.smoke)
    return Plan(
        steps=steps,
        e2e=e2e,
        torch=torch_cases,
        maxbatch=maxbatch,
        ahead=ahead,
        timing=Timing(
            steps_per_window=args.steps if args.steps else (2 if smoke else None),
            windows=args.windows or (2 if smoke else 3),
            warmup=args.warmup if args.warmup is not None else (1 if smoke else 2),
            window_seconds=0.0 if smoke else (2.0 if accel else 4.0),
        ),
        e2e_steps=args.e2e_steps or (6 if smoke else (1000 if accel else 40)),
        ahead_steps=args.run_steps or (3 if smoke else (1500 if accel else 40)),
        synthetic_train_size=256 if smoke else (50_000 if accel else 4096),
        synthetic_eval_size=64 if smoke else (10_000 if accel else 512),
        smoke=smoke,
    )


def step_config(case: StepCase, *, smoke: bool = False):
    """A trainer config for a plain step measurement: the preset, batch and dtype, the paper's
    optimiser (SGD momentum 0.9, weight decay 2e-4), synthetic data, no persistent cache."""
    from sqzexplore.config import base_config, model_config

    overrides: dict[str, Any] = {"dtype": case.dtype}
    if case.image_size is not None:
        overrides["image_size"] = case.image_size
    if smoke:
        overrides.update(SMOKE_OVERRIDES)
    if case.squeeze_ratio is not None:
        overrides["squeeze_ratio"] = case.squeeze_ratio
    c = base_config()
    c.model = model_config(case.preset, **overrides)
    c.data.name = "synthetic"
    c.batch_size = case.batch
    c.eval_batch_size = case.batch
    c.num_steps = 1_000_000  # only shapes the lr schedule; nothing runs that long
    c.optim.name = "sgd"
    c.optim.lr = 0.04
    c.optim.weight_decay = 2e-4
    c.progress = "false"
    c.compilation_cache_dir = ""
    return c
