"""Experiment configs: the shared defaults, typed `arg` parsing, loading and validation.

An experiment is a Python file with `get_config(arg: str | None) -> ConfigDict` (big_vision style).
`arg` is a comma-separated list of `key=value` pairs (`"sr=0.25,runlocal"`), parsed against typed
defaults by `parse_arg`, which rejects unknown keys. `config.model` holds every `SqueezeNetSpec`
field, so any design field can be overridden from the command line or by a sweep
(`--config.model.squeeze_ratio=0.25`).
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
from typing import Any

import ml_collections

from sqzexplore.models.spec import PRESETS, SpecError, SqueezeNetSpec


class ConfigError(ValueError):
    """An invalid experiment config; the message names the field and what is allowed."""


# ---------------------------------------------------------------------------------- arg parsing
def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse `"a=1,b=x,flag"` against typed defaults; unknown keys are an error.

    A bare key means True. Values are coerced to the type of their default (bool accepts
    true/false/1/0/yes/no).
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(
                f"unknown experiment argument {key!r}; allowed: "
                f"{', '.join(sorted(defaults)) or '(none)'}"
            )
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ConfigError(f"experiment argument {key!r} needs a value ({key}=...)")
            out[key] = True
            continue
        out[key] = _coerce(key, raw.strip(), default)
    return out


def _coerce(key: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"experiment argument {key!r} must be a boolean, got {raw!r}")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"experiment argument {key!r} must be {type(default).__name__}, got {raw!r}"
        ) from None
    if isinstance(default, (tuple, list)):
        value = ast.literal_eval(raw)
        return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return raw


# ---------------------------------------------------------------------------------- defaults
def model_config(preset: str = "v1.0", **overrides: Any) -> ml_collections.ConfigDict:
    """All SqueezeNetSpec fields of a preset as a ConfigDict (so every field can be overridden)."""
    if preset not in PRESETS:
        raise ConfigError(
            f"config.model: unknown preset {preset!r}; available: {', '.join(PRESETS)}"
        )
    d = PRESETS[preset].to_dict()
    d.update(overrides)
    # fire_widths may be None or a list; ConfigDict needs a placeholder type that accepts both.
    fire_widths = d.pop("fire_widths")
    # A tuple from the start: a field created as a list stays a list (ConfigDict keeps the first
    # type), and ml_collections' config_flags cannot override list fields from the command line.
    d["pool_after"] = tuple(d["pool_after"])
    cfg = ml_collections.ConfigDict(d)
    cfg.fire_widths = ml_collections.FieldReference(
        None if fire_widths is None else tuple(tuple(w) for w in fire_widths), field_type=tuple
    )
    return cfg


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every experiment; experiments change what they need."""
    c = ml_collections.ConfigDict()
    c.model = model_config("digits")
    c.data = ml_collections.ConfigDict(
        dict(
            name="digits",  # digits | synthetic | any TFDS name (cifar10, imagenet2012, ...)
            data_dir=ml_collections.FieldReference(None, field_type=str),
            train_split="train",
            eval_split="test",
            # train augmentation: 'none' | 'crop_flip' (pad+random crop, flip) | 'inception'
            # (random-resized crop + flip) | 'paper' (resize 256, random 227 crop, mean-subtract,
            # no flip)
            augment="crop_flip",
            on_device="auto",  # auto | true | false: keep the whole dataset in device memory
            shuffle_buffer=10_000,
            synthetic_train_size=4096,
            synthetic_eval_size=1024,
            digits_test_fraction=0.2,
            digits_split_seed=0,
        )
    )
    c.seed = 0
    c.batch_size = 128  # global, over all devices and processes
    c.eval_batch_size = 512
    # Duration: exactly one of num_epochs / num_steps is used (num_steps wins when > 0).
    c.num_epochs = 10.0
    c.num_steps = 0
    c.optim = ml_collections.ConfigDict(
        dict(
            name="sgd",  # sgd | adamw
            lr=0.04,
            momentum=0.9,
            nesterov=False,
            b1=0.9,
            b2=0.999,
            weight_decay=2e-4,
            decay_kernels_only=True,
            schedule="poly",  # poly | cosine | constant
            power=1.0,
            warmup_epochs=0.0,
            end_lr_fraction=0.0,
            grad_clip_norm=0.0,
            label_smoothing=0.0,
        )
    )
    c.eval_every_epochs = 1.0
    c.log_every_steps = 50
    c.checkpoint_every_epochs = 1.0
    c.keep_checkpoints = 3
    c.wandb = ml_collections.ConfigDict(
        dict(
            mode="disabled",  # disabled | offline | online
            project="sqzexplore",
            entity=ml_collections.FieldReference(None, field_type=str),
            group=ml_collections.FieldReference(None, field_type=str),
            name=ml_collections.FieldReference(None, field_type=str),
            tags=(),
        )
    )
    c.distributed = ml_collections.ConfigDict(
        dict(
            initialize="auto",  # auto (SLURM/TPU/env detection) | true | false
            coordinator_address=ml_collections.FieldReference(None, field_type=str),
            num_processes=ml_collections.FieldReference(None, field_type=int),
            process_id=ml_collections.FieldReference(None, field_type=int),
        )
    )
    c.progress = "auto"  # auto (only on a terminal) | true | false
    c.compilation_cache_dir = os.path.join("~", ".cache", "sqzexplore", "xla")
    return c


# ---------------------------------------------------------------------------------- loading
def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Load `get_config(arg)` from an experiment file (`path` may be `file.py:arg`)."""
    if arg is None and ":" in path and not os.path.exists(path):
        path, arg = path.split(":", 1)
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    name = "sqz_experiment_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(arg)")
    return module.get_config(arg) if arg is not None else module.get_config()


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
    """Set dotted keys (`model.squeeze_ratio`) on a config; unknown keys are an error."""
    for dotted, value in overrides.items():
        node = config
        parts = dotted.split(".")
        for p in parts[:-1]:
            if p not in node:
                raise ConfigError(f"unknown config key {dotted!r} (no {p!r})")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key {dotted!r}")
        try:
            node[parts[-1]] = tuple(value) if isinstance(value, list) else value
        except TypeError as e:
            raise ConfigError(f"config key {dotted!r}: {e}") from None


def spec_from_config(config: ml_collections.ConfigDict) -> SqueezeNetSpec:
    """The validated spec of a config's `model` section (SpecError on a bad design point)."""
    d = config.model.to_dict()
    try:
        return SqueezeNetSpec.from_dict(d)
    except SpecError as e:
        raise SpecError(f"config.model: {e}") from None
    except TypeError as e:
        raise SpecError(f"config.model: {e}") from None


# ---------------------------------------------------------------------------------- durations
def steps_for(config: ml_collections.ConfigDict, train_size: int) -> int:
    """Total training steps from num_steps, or num_epochs x ceil(train_size / batch_size)."""
    if config.num_steps and config.num_steps > 0:
        return int(config.num_steps)
    return max(1, int(math.ceil(config.num_epochs * train_size / config.batch_size)))


def epochs_to_steps(epochs: float, train_size: int, batch_size: int) -> int:
    """Steps covering `epochs` epochs (at least 1)."""
    return max(1, int(round(epochs * train_size / batch_size)))
