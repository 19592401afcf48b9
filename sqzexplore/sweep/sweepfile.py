"""Sweep files: import one, find its base experiment, load and check the base config.

`load_sweep(path, arg)` runs the file's `get_sweep(arg)` (which returns a `SweepDefinition`),
`load_base_config` runs the base experiment and applies the sweep's fixed overrides, and
`check_against_config` tries every searched key and value on that config, so a typo or a value
of the wrong type fails before anything is created on disk. `dataset_base` is the helper the
shipped sweeps use to pick `experiments/<dataset>/...` next to themselves.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from pathlib import Path

import ml_collections

from sqzexplore.config import ConfigError, UnknownKeyError, apply_overrides, import_python_file
from sqzexplore.models.spec import SpecError
from sqzexplore.sweep.space import Experiment, SweepDefinition, SweepError, find_experiment


def load_sweep(path: str, arg: str | None = None) -> SweepDefinition:
    """Import a sweep file and return the SweepDefinition its `get_sweep(arg)` builds."""
    module = import_python_file(path, "sweep file", SweepError)
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"sweep file {path} defines no get_sweep(arg=None)")
    if not (module.__doc__ or "").strip():
        raise SweepError(
            f"sweep file {path} has no docstring; its docstring must say what question the "
            "sweep answers"
        )
    try:
        defn = module.get_sweep(arg)
    except (ConfigError, SweepError) as e:
        raise SweepError(f"sweep file {path}: {e}") from None
    except TypeError as e:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if not unknown or "SweepDefinition" not in str(e):
            raise
        fields = [f.name for f in dataclasses.fields(SweepDefinition)]
        close = difflib.get_close_matches(unknown.group(1), fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SweepError(
            f"sweep file {path}: unknown sweep field {unknown.group(1)!r}{hint}; allowed: "
            f"{', '.join(fields)}"
        ) from None
    if not isinstance(defn, SweepDefinition):
        raise SweepError(
            f"sweep file {path}: get_sweep must return a SweepDefinition "
            f"(sqzexplore.sweep.space), got {type(defn).__name__}"
        )
    return defn.with_source(path, module.__doc__)


def dataset_experiment(dataset: str, near: str | None = None) -> str:
    """The experiment a sweep builds on for `dataset`: experiments/<dataset>/frontier.py, else
    experiments/<dataset>/squeezenet.py (found as `find_experiment` does)."""
    for name in ("frontier.py", "squeezenet.py"):
        rel = f"experiments/{dataset}/{name}"
        try:
            find_experiment(rel, near)
            return rel
        except SweepError:
            continue
    roots = [Path.cwd()] + ([Path(near).resolve().parent.parent] if near else [])
    have = sorted(
        {
            p.parent.name
            for r in roots
            for n in ("frontier", "squeezenet")
            for p in (r / "experiments").glob(f"*/{n}.py")
        }
    )
    raise SweepError(
        f"no experiment for dataset {dataset!r} (looked for experiments/{dataset}/frontier.py "
        f"and squeezenet.py); datasets with one: {', '.join(have) or '(none)'}. For another "
        "TFDS dataset, write experiments/<dataset>/squeezenet.py (copy the cifar10 one and set "
        "data.name, model.num_classes, model.image_size)"
    )


def dataset_base(
    dataset: str, runlocal: bool, experiment: str = "", near: str | None = None
) -> Experiment:
    """`base` for the shipped sweeps: the dataset's experiment (or `experiment`, any experiment
    file), shrunk when `runlocal`; `near` is the sweep file (`__file__`)."""
    path = experiment or dataset_experiment(dataset, near)
    return Experiment(path, {"runlocal": True} if runlocal else {}, near=near)


def load_base_config(defn: SweepDefinition) -> ml_collections.ConfigDict:
    """The base experiment's config with the sweep's fixed overrides applied."""
    config = defn.base.load()
    try:
        apply_overrides(config, dict(defn.fixed))
    except ConfigError as e:
        raise SweepError(f"sweep fixed: {_explain_key(e)}") from None
    # A data_dir the sweep sets (e.g. its `data_dir=` argument) must reach the data: a base whose
    # data needs none (a `runlocal` base on synthetic data, digits) would silently ignore it.
    if defn.fixed.get("data.data_dir") and config.data.name in ("synthetic", "digits"):
        raise SweepError(
            f"sweep fixed: data.data_dir={defn.fixed['data.data_dir']!r} has no effect: the base "
            f"experiment's data is {config.data.name!r} (with 'runlocal', drop data_dir)"
        )
    return config


def check_against_config(defn: SweepDefinition, config: ml_collections.ConfigDict) -> None:
    """Every searched key exists in the base config and accepts the values the space can give."""
    for key, param in defn.space.items():
        for value in param.probe_values():
            trial = copy.deepcopy(config)
            try:
                apply_overrides(trial, {key: value})
            except (ConfigError, SpecError) as e:
                raise SweepError(f"sweep space {key}: {_explain_key(e)}") from None


def _explain_key(error: Exception) -> str:
    """An unknown-key error with its close match (once) and the keys that do exist there, read
    from the error's own `.key`, `.close` and `.known`; any other error as it is."""
    if not isinstance(error, UnknownKeyError):
        return str(error)
    hint = f"; did you mean {error.close!r}?" if error.close else ""
    where = error.where or "the config"
    return f"unknown config key {error.key!r}{hint} (keys under {where}: {', '.join(error.known)})"
