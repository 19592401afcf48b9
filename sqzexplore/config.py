"""Experiment configs: the shared defaults, typed `arg` parsing, loading and validation.

An experiment is a Python file with `get_config(arg: str | None) -> ConfigDict` (big_vision style).
`arg` is a comma-separated list of `key=value` pairs (`"sr=0.25,runlocal"`), parsed against typed
defaults by `parse_arg`, which rejects unknown keys. `config.model` holds every `SqueezeNetSpec`
field, so any design field can be overridden from the command line or by a sweep
(`--config.model.squeeze_ratio=0.25`).
"""

from __future__ import annotations

import ast
import difflib
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

from sqzexplore.models.spec import PRESETS, SpecError, SqueezeNetSpec, field_infos


class ConfigError(ValueError):
    """An invalid experiment config; the message names the field and what is allowed."""


class UnknownKeyError(ConfigError, KeyError):
    """A config key the defaults do not have. `str()` quotes the key (what the sweep checks
    parse); `plain` is the one line `sqz train` prints:
    `unknown config key model.squeez_ratio; did you mean model.squeeze_ratio?`."""

    def __init__(self, key: str, close: str | None, known: list[str], where: str = ""):
        self.key, self.close, self.known, self.where = key, close, known, where
        super().__init__(self._format(repr))

    def _format(self, q) -> str:
        message = f"unknown config key {q(self.key)}"
        if self.close:
            return f"{message}; did you mean {q(self.close)}?"
        if self.known:
            of = f" of {self.where}" if self.where else ""
            return f"{message}; known keys{of}: {', '.join(self.known)}"
        return message

    def __str__(self) -> str:  # KeyError's own str() would add quotes around the message
        return self.args[0]

    @property
    def plain(self) -> str:
        return self._format(str)


WANDB_MODES = ("disabled", "offline", "online")
# Where to train: "auto" takes what JAX finds; a named platform is required (train stops with an
# error naming the fix when JAX sees no such device). Not part of the run's identity.
PLATFORMS = ("auto", "cpu", "gpu", "tpu")
POPULATION_LOWERINGS = ("auto", "vmap", "unroll")


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


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(key: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        low = raw.lower()
        if low in _TRUE + _FALSE:
            return low in _TRUE
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
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise ConfigError(
                f"experiment argument {key!r} must be a tuple literal such as (1, 2), got {raw!r}"
            ) from None
        return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return raw


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
    c.steps_per_dispatch = 0  # train steps per host call (one lax.scan); 0: auto (train/loop.py)
    # How a population's program runs its members (train/programs.py `over_members`): vmap (one
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


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Set dotted keys (`model.squeeze_ratio`) on a config; unknown keys are an error.

    The one override path for typed configs: a sweep's fixed values and every trial's design
    point (`typed_config` + this, in sweep/runconfig.py), `sqz describe --set`, and the check of
    a loaded experiment (`check_known_keys`) and `sqz train --config.KEY=VALUE` (its text read
    by `parse_override`) all set values here.

    `ConfigDict.update_from_flattened_dict` on the config locked for the update, so a misspelt key
    is refused (not added: an `UnknownKeyError` with `.key`, `.close` and `.known`) and a value of
    the wrong type is refused by the field's type (a ConfigError naming the key).
    """
    was_locked = config.is_locked
    config.lock()
    try:
        for dotted, value in overrides.items():
            try:
                config.update_from_flattened_dict(
                    {dotted: tuple(value) if isinstance(value, list) else value}
                )
            except KeyError:
                raise unknown_key_error(config, dotted) from None
            except (TypeError, ValueError) as e:
                raise ConfigError(_type_message(config, dotted, value, e)) from None
    finally:
        if not was_locked:
            config.unlock()


def _leaf(config: ml_collections.ConfigDict, dotted: str):
    """(the section holding `dotted`, its parent path, its field name); UnknownKeyError if none."""
    parent, _, field = dotted.rpartition(".")
    node = config
    for part in parent.split(".") if parent else ():
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise unknown_key_error(config, dotted)
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or field not in node:
        raise unknown_key_error(config, dotted)
    return node, parent, field


def field_type(config: ml_collections.ConfigDict, dotted: str) -> type:
    """The declared type of the config field `dotted` (UnknownKeyError if there is none)."""
    node, _, field = _leaf(config, dotted)
    return node.get_type(field)


def parse_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> Any:
    """The value of `--config.KEY=TEXT` read by the field's declared type (bool: true/false/1/0/
    yes/no/on/off; int; float; tuple: a Python literal such as `('fire3', 'fire5')` or a
    comma-separated list; str: the text). The key must exist (an `UnknownKeyError` if not); the
    value is then set through `apply_overrides`, like every other override."""
    node, parent, field = _leaf(config, dotted)
    if isinstance(node[field], ml_collections.ConfigDict):
        first = sorted(node[field].keys())[0]
        raise ConfigError(
            f"--config.{dotted} is a section; override its keys, e.g. --config.{dotted}.{first}=..."
        )
    kind = node.get_type(field)
    raw = text.strip()
    if node[field] is None and raw.lower() == "none":
        return None
    if kind is bool:
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise ConfigError(f"config.{dotted} must be true or false (the field's type), got {text!r}")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            info = field_infos().get(field) if parent == "model" else None
            if info is not None:
                raise ConfigError(f"config.{dotted} must be {info.allowed}, got {text!r}") from None
            raise ConfigError(
                f"config.{dotted} must be {what} (the field's type), got {text!r}"
            ) from None
    if kind in (tuple, list):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = [part.strip() for part in raw.split(",") if part.strip()]
        return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return text


def _type_message(config: ml_collections.ConfigDict, dotted: str, value: Any, e: Exception) -> str:
    """`config.model.freq must be an integer >= 1, got 1.5`: a value its field's type refuses,
    with the spec field's allowed range where there is one."""
    section, _, field = dotted.rpartition(".")
    info = field_infos().get(field) if section == "model" else None
    if info is not None:
        return f"config.{dotted} must be {info.allowed}, got {value!r}"
    current = config
    for part in dotted.split("."):
        current = current[part]
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    kind = kinds.get(type(current))
    if kind is None:
        return f"config.{dotted}: {' '.join(str(e).split())}"
    return f"config.{dotted} must be {kind} (the field's type), got {value!r}"


def typed_config(d: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A config given as JSON (a sweep's base config, a run's config.json) as a typed ConfigDict:
    `base_config()` with every leaf of `d` set by `apply_overrides`, so the leaves regain their
    field types and a key the defaults do not have is refused."""
    config = base_config()
    apply_overrides(config, _flatten(dict(d)))
    return config


def unknown_key_message(config: ml_collections.ConfigDict, dotted: str) -> str:
    """`unknown config key 'a.b'; did you mean 'a.c'?` for the first part of `dotted` not in
    config."""
    return str(unknown_key_error(config, dotted))


def unknown_key_error(config: ml_collections.ConfigDict, dotted: str) -> ConfigError:
    """The error for `dotted`, a key `config` does not have: the first missing part, a close
    match or the keys that do exist there."""
    node, parts = config, dotted.split(".")
    for depth, part in enumerate(parts):
        if isinstance(node, ml_collections.ConfigDict) and part in node:
            node = node[part]
            continue
        prefix = ".".join(parts[:depth])
        if not isinstance(node, ml_collections.ConfigDict):
            return ConfigError(
                f"unknown config key {dotted}: config.{prefix} is a value, not a section"
            )
        keys = sorted(str(k) for k in node)
        where = f"{prefix}." if prefix else ""
        close = difflib.get_close_matches(part, keys, 1, 0.75)
        return UnknownKeyError(where + part, where + close[0] if close else None, keys, prefix)
    return UnknownKeyError(dotted, None, [])


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

    The spelling is `"auto"` or a boolean; the strings "true"/"false" (what a shell passes) are
    accepted as the booleans they name. Anything else is a ConfigError naming `field`.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("auto", "true", "false"):
        return {"auto": None, "true": True, "false": False}[value.strip().lower()]
    raise ConfigError(f"config.{field} must be 'auto', true or false, got {value!r}")


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
