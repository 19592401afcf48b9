"""Experiment configs: the shared defaults, loading and validation.

An experiment is a Python file with `get_config(arg: str | None) -> ConfigDict` (big_vision style).
`arg` is a comma-separated list of `key=value` pairs (`"sr=0.25,runlocal"`), parsed against typed
defaults by `parse_arg`, which rejects unknown keys. `config.model` holds every `SqueezeNetSpec`
field, so any design field can be overridden from the command line or by a sweep
(`--config.model.squeeze_ratio=0.25`). Text is read as a typed value, and values are set on a
config, by `overrides.py` (one parser for experiment arguments, `--config.KEY=VALUE` and `sqz
describe --set`); its names are re-exported here, where experiments and callers import them.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import re
import traceback
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from sqzexplore import rundir
from sqzexplore.models.spec import PRESETS, WIDTH_FIELDS, SpecError, SqueezeNetSpec, field_infos
from sqzexplore.overrides import BOOL_ALLOWED, apply_overrides, bool_word
from sqzexplore.overrides import ConfigError as ConfigError
from sqzexplore.overrides import UnknownKeyError as UnknownKeyError
from sqzexplore.overrides import field_type as field_type
from sqzexplore.overrides import parse_arg as parse_arg
from sqzexplore.overrides import parse_override as parse_override

WANDB_MODES = ("disabled", "offline", "online")
# Where to train: "auto" takes what JAX finds; a named platform is required (train stops with an
# error naming the fix when JAX sees no such device). Not part of the run's identity.
PLATFORMS = ("auto", "cpu", "gpu", "tpu")
POPULATION_LOWERINGS = ("auto", "vmap", "unroll")


# ---------------------------------------------------------------------------------- defaults
def model_config(preset: str = "v1.0", **overrides: Any) -> ml_collections.ConfigDict:
    """All SqueezeNetSpec fields of a preset as a ConfigDict (so every field can be overridden)."""
    if preset not in PRESETS:
        raise ConfigError(
            f"config.model: unknown preset {preset!r}; available: {', '.join(PRESETS)}"
        )
    d = PRESETS[preset].to_dict(full=True)
    unknown = sorted(set(overrides) - set(d))
    if unknown:
        raise ConfigError(f"config.model: unknown spec field(s) {unknown}")
    d.update(overrides)
    return _model_section(d)


def spec_config(spec: SqueezeNetSpec) -> ml_collections.ConfigDict:
    """A config whose `model` section is `spec` (every field typed as in `model_config`)."""
    return ml_collections.ConfigDict({"model": _model_section(spec.to_dict(full=True))})


def _model_section(d: dict[str, Any]) -> ml_collections.ConfigDict:
    # One entry per spec field, typed by the field's metadata (`spec.field_infos`).
    cfg = ml_collections.ConfigDict()
    for key, info in field_infos().items():
        value = d[key]
        if info.kind is tuple:
            # A tuple from the start: a field created as a list stays a list (ConfigDict keeps
            # the first type), and ml_collections' config_flags cannot override list fields from
            # the command line.
            value = None if value is None else _tuple(value)
            if info.optional:  # None or a tuple (fire_widths): a typed reference takes both
                value = ml_collections.FieldReference(value, field_type=tuple)
        cfg[key] = value
    return cfg


def _tuple(value: Any) -> tuple:
    return tuple(_tuple(v) if isinstance(v, (list, tuple)) else v for v in value)


def _tristate_field() -> ml_collections.FieldReference:
    # "auto" or a bool: an `object` field, so a bool can replace the string, and absl parses
    # `--config.progress=false` as the boolean False.
    return ml_collections.FieldReference("auto", field_type=object)


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
            # "auto" | True | False: keep the whole dataset in device memory
            on_device=_tristate_field(),
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
    # Train steps per host call (one lax.scan); 0: auto (train/dispatch.py `steps_per_dispatch`).
    c.steps_per_dispatch = 0
    # How a population's program runs its members (train/dispatch.py `over_members`): vmap (one
    # batched step), unroll (each member's step in turn, in the one program), auto (vmap on
    # GPU/TPU, unroll on CPU).
    c.population_lowering = "auto"
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
            initialize=_tristate_field(),  # "auto" (SLURM/TPU/env detection) | True | False
            coordinator_address=ml_collections.FieldReference(None, field_type=str),
            num_processes=ml_collections.FieldReference(None, field_type=int),
            process_id=ml_collections.FieldReference(None, field_type=int),
        )
    )
    c.progress = _tristate_field()  # "auto" (only on a terminal) | True | False
    c.platform = "auto"  # auto | cpu | gpu | tpu (see PLATFORMS)
    # Persistent XLA cache, per user, shared by all runs and sweep workers ('' leaves JAX's own
    # setting); what is cached per platform: train/xla_options.py, docs/gpu-compile.md.
    c.compilation_cache_dir = os.path.join("~", ".cache", "sqzexplore", "xla")
    # XLA's --xla_gpu_autotune_level on GPU (0-5; None: XLA's default, 4).
    c.xla_gpu_autotune_level = ml_collections.FieldReference(None, field_type=int)
    return c


GPU_AUTOTUNE_LEVELS = range(0, 6)  # XLA's xla_gpu_autotune_level values


def check_compile_fields(config: ml_collections.ConfigDict) -> None:
    """The compile settings: `compilation_cache_dir` a path or '', `xla_gpu_autotune_level`
    None or 0-5 (ConfigError naming the field otherwise)."""
    path = config.get("compilation_cache_dir")
    if not isinstance(path, str):
        raise ConfigError(
            f"config.compilation_cache_dir must be a directory path or '' (off), got {path!r}"
        )
    check_autotune_level(config.get("xla_gpu_autotune_level"))


def check_autotune_level(level: Any) -> None:
    """`config.xla_gpu_autotune_level` is None or an integer in 0..5 (else a ConfigError)."""
    if level is None:
        return
    if isinstance(level, bool) or not isinstance(level, int) or level not in GPU_AUTOTUNE_LEVELS:
        raise ConfigError(
            "config.xla_gpu_autotune_level must be an integer in 0..5 or None (XLA's default, "
            f"4), got {level!r}"
        )


# ---------------------------------------------------------------------------------- loading
def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Load `get_config(arg)` from an experiment file (`path` may be `file.py:arg`).

    Whatever goes wrong in the user's file (missing, a syntax error, a bad `arg`, an exception in
    `get_config`) is a one-line ConfigError naming the file (and the line), never a traceback.
    """
    if arg is None and ":" in path and not os.path.exists(path):
        path, arg = path.split(":", 1)
    if not path:
        raise ConfigError("no config file given (--config=path/to/experiment.py[:arg])")
    module = import_python_file(path, "config file", ConfigError)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {path} defines no get_config(arg=None)")
    try:
        config = module.get_config(arg) if arg is not None else module.get_config()
    except ConfigError as e:
        raise ConfigError(f"config file {path}" + (f":{arg}" if arg else "") + f": {e}") from None
    except Exception as e:
        where = _where(e, path)
        raise ConfigError(
            f"config file {path}{where}: get_config({arg!r}) failed: {_one_line(e)}"
        ) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"config file {path}: get_config must return an ml_collections.ConfigDict, "
            f"got {type(config).__name__}"
        )
    return config


def import_python_file(path: str, what: str, error: type[Exception]):
    """Import the user's Python file `path` (an experiment or a sweep file) as a fresh module.

    Anything wrong with the file itself (missing, not a file, a syntax error, an exception while
    it runs) is one line `{what} PATH [line N]: ...` raised as `error`, never a traceback.
    """
    if not os.path.exists(path):
        raise error(f"{what} {path} does not exist")
    if not os.path.isfile(path):
        raise error(f"{what} {path} is not a file")
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"sqz_{what.split()[0]}_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise error(f"{what} {path} is not a Python file (.py)")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise error(f"{what} {path} line {e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        raise error(f"{what} {path}{_where(e, path)}: {_one_line(e)}") from None
    return module


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    return text if isinstance(e, ConfigError) else f"{type(e).__name__}: {text}"


def _where(e: BaseException, path: str) -> str:
    """` line N` of the deepest traceback frame inside `path` (empty when none is)."""
    line = None
    for frame in traceback.extract_tb(e.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            line = frame.lineno
    return f" line {line}" if line is not None else ""


def typed_config(d: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A config given as JSON (a sweep's base config, a run's config.json) as a typed ConfigDict:
    `base_config()` with every leaf of `d` set by `apply_overrides`, so the leaves regain their
    field types and a key the defaults do not have is refused."""
    config = base_config()
    apply_overrides(config, _flatten(dict(d)))
    return config


def check_known_keys(config: ml_collections.ConfigDict) -> None:
    """Refuse a config with a key the defaults do not have (a typo would be silently ignored).

    Every leaf of `config` is set on a locked copy of `base_config()`: the locked ConfigDict
    refuses unknown keys and values of the wrong type.
    """
    apply_overrides(base_config(), _flatten(config.to_dict()))


def flat_defaults() -> dict[str, Any]:
    """Every config key's default (dotted key -> JSON value): what a key added by a later
    sqzexplore means in a run or sweep written before it existed (`rundir.config_diffs`)."""
    return _flatten(json.loads(base_config().to_json_best_effort()))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def tristate(value: Any, field: str) -> bool | None:
    """An `auto | true | false` setting as None (auto) / True / False.

    The spelling is `"auto"` or a boolean; a boolean word as a string (`"true"`, `"no"`: what a
    shell passes, `overrides.BOOL_WORDS`) is the boolean it names. Anything else is a
    ConfigError naming `field`.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    word = bool_word(value) if isinstance(value, str) else None
    if word is not None:
        return word
    raise ConfigError(f"config.{field} must be 'auto' or {BOOL_ALLOWED}, got {value!r}")


def width_free(config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """What a run computes (`rundir.semantic`) apart from its seed and its channel widths (the
    spec's `WIDTH_FIELDS`), of a config dict (`to_json_best_effort`): configs equal under it are
    one program up to width padding (a padded population, train/padding.py; a sweep's padded
    groups, sweep/grouping.py)."""
    d = copy.deepcopy(rundir.semantic(config_dict))
    d.pop("seed", None)
    model = d.get("model")
    if isinstance(model, dict):
        d["model"] = {k: v for k, v in model.items() if k not in WIDTH_FIELDS}
    return d


def validate_config(config: ml_collections.ConfigDict) -> SqueezeNetSpec:
    """Check every field that can be checked before data loading or compilation; return the spec."""
    from sqzexplore import optim

    check_compile_fields(config)  # before the type check: its message names the range
    check_known_keys(config)
    spec = spec_from_config(config)
    for field in ("batch_size", "eval_batch_size", "log_every_steps", "keep_checkpoints"):
        value = config[field]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"config.{field} must be an integer >= 1, got {value!r}")
    num_steps = config.num_steps
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 0:
        raise ConfigError(f"config.num_steps must be an integer >= 0, got {num_steps!r}")
    if num_steps == 0 and not _finite(config.num_epochs, above=0):
        raise ConfigError(
            "config.num_epochs must be a finite number > 0 when num_steps is 0, "
            f"got {config.num_epochs!r}"
        )
    k = config.get("steps_per_dispatch", 0)
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= 10_000:
        raise ConfigError(
            f"config.steps_per_dispatch must be an integer in [0, 10000] (0: auto), got {k!r}"
        )
    lowering = config.get("population_lowering", "auto")
    if lowering not in POPULATION_LOWERINGS:
        raise ConfigError(
            f"config.population_lowering must be one of {', '.join(POPULATION_LOWERINGS)}, "
            f"got {lowering!r}"
        )
    for field in ("eval_every_epochs", "checkpoint_every_epochs"):
        if not _finite(config[field], above=0):
            raise ConfigError(f"config.{field} must be a finite number > 0, got {config[field]!r}")
    platform = config.get("platform", "auto")
    if platform not in PLATFORMS:
        raise ConfigError(
            f"config.platform must be one of {', '.join(PLATFORMS)}, got {platform!r}"
        )
    try:
        optim.validate(config.optim)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.wandb.mode not in WANDB_MODES:
        raise ConfigError(
            f"config.wandb.mode must be one of {WANDB_MODES}, got {config.wandb.mode!r}"
        )
    tristate(config.progress, "progress")
    tristate(config.data.on_device, "data.on_device")
    tristate(config.distributed.initialize, "distributed.initialize")
    data_dir = os.path.expanduser(config.data.get("data_dir") or "")
    if data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ConfigError(
            f"config.data.data_dir {data_dir} is a file; give the TFDS data directory "
            "(the one holding <dataset>/<config>/<version>/)"
        )
    return spec


def _finite(value: Any, above: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value > above


def spec_from_config(config: ml_collections.ConfigDict) -> SqueezeNetSpec:
    """The validated spec of a config's `model` section (SpecError on a bad design point)."""
    d = config.model.to_dict()
    try:
        return SqueezeNetSpec.from_dict(d)
    except SpecError as e:
        raise SpecError(f"config.model: {e}") from None
    except TypeError as e:
        raise SpecError(f"config.model: {e}") from None
