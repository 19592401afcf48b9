"""The run directory: what a finished or interrupted run leaves on disk, and how it is written.

A run directory (a `sqz train` workdir, a sweep trial, a compression stage) holds

    config.json       the full config (what was asked)
    spec.json         the design point (SqueezeNetSpec.to_dict())
    complexity.json   analytic params / MACs / sizes
    metrics.jsonl     one JSON object per log / eval point
    checkpoints/      orbax checkpoints (keep-N)
    result.json       written last, atomically: its presence means the run is finished

Every file is written atomically (temporary file in the same directory, fsync, rename), so a reader
or a rerun after a kill never sees half a file, and with the mode the process umask gives any
ordinary file (teammates on a shared sweep filesystem can read results). Train, sweep and compress
all read and write runs through this module. It is a leaf: it imports only the standard library
(the weights of a finished run are read by `checkpoint.load_run`, beside the checkpointer).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
SPEC_FILE = "spec.json"
COMPLEXITY_FILE = "complexity.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoints"

# Config keys whose change does not change what a run computes (safe to differ on resume).
NON_SEMANTIC_KEYS = (
    "progress",
    "wandb",
    "compilation_cache_dir",
    "xla_gpu_autotune_level",
    "distributed",
    "platform",
    "steps_per_dispatch",  # how steps are dispatched, not what they compute
    "population_lowering",  # how a population's members are run, not what they compute
)


class WorkdirConflictError(RuntimeError):
    """The workdir holds a run with a different config."""


# ---------------------------------------------------------------------------------- atomic files
def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically, with the umask's mode (not mkstemp's 0600)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _to_builtin(x: Any) -> Any:
    if hasattr(x, "item") and getattr(x, "ndim", 0) == 0:
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    return str(x)


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """The project's JSON: sorted keys; numpy scalars/arrays as Python values."""
    return json.dumps(obj, indent=indent, sort_keys=True, default=_to_builtin)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to `path` atomically: readers never see half a file."""
    write_bytes(path, (dumps(obj) + "\n").encode())


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON in `path`, or `default` when it is missing or unparseable."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return default


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any], *, fsync: bool = True) -> None:
    """Append one record as a line (sorted keys), flushed (and fsynced) before returning."""
    with open(path, "a") as f:
        f.write(dumps(dict(record), indent=None) + "\n")
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    """Replace a JSONL file atomically with `records`."""
    text = "".join(dumps(dict(r), indent=None) + "\n" for r in records)
    write_bytes(path, text.encode())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSONL file; a line torn by a kill (or a missing file) is skipped."""
    out = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def finite_or_str(v: Any) -> Any:
    """A JSON-safe scalar: numpy scalars as Python values, NaN/Inf as strings."""
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


# ---------------------------------------------------------------------------------- config check
def flat_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths at which two JSON trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += flat_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def semantic(config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a config that decides what a run computes."""
    return {k: v for k, v in config_dict.items() if k not in NON_SEMANTIC_KEYS}


_MISSING = object()


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def config_diffs(
    old: Mapping[str, Any], new: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> list[str]:
    """Dotted keys at which two configs differ in what a run computes.

    Non-semantic keys are ignored. So is a key that `old` lacks (it was written by an earlier
    sqzexplore, before the key existed) while `new` holds the value `defaults` (dotted key ->
    value) gives it: that default computes what the older version did, so runs and sweeps made
    before a new config key was added still resume.
    """
    diffs = flat_diff(semantic(old), semantic(json.loads(dumps(new))))
    if defaults:
        diffs = [
            d
            for d in diffs
            if not (
                _lookup(old, d) is _MISSING
                and d in defaults
                and _lookup(json.loads(dumps(new)), d) == defaults[d]
            )
        ]
    return diffs


def check_config(
    workdir: str | os.PathLike,
    config_dict: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Refuse a workdir whose config.json differs from `config_dict` in anything semantic
    (`config_diffs`: a key added since config.json was written, at its default, is no
    difference)."""
    old = read_json(Path(workdir) / CONFIG_FILE)
    if old is None:
        return
    diffs = config_diffs(old, config_dict, defaults)
    if diffs:
        shown = ", ".join(diffs[:10]) + (f" (+{len(diffs) - 10} more)" if len(diffs) > 10 else "")
        raise WorkdirConflictError(
            f"workdir {workdir} already holds a run with a different config (differs in: "
            f"{shown}); use a new --workdir, or delete it to start over"
        )


def read_result(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The finished run's result.json, or None while the run is unfinished.

    A result without a final evaluation (as an interrupted attempt of an older version could
    leave) is not a finished run: None, so that the run is completed.
    """
    result = read_json(Path(workdir) / RESULT_FILE)
    if not isinstance(result, dict) or not isinstance(result.get("final"), dict):
        return None
    return result if result["final"] else None


# ---------------------------------------------------------------------------------- checks
class WorkdirError(OSError):
    """A directory the run must write to cannot be used; the message names it and why."""


def check_writable_dir(path: str | os.PathLike, what: str = "--workdir") -> None:
    """Refuse a directory a run could not create or write, before anything is loaded or made.

    `path` may not exist yet: every existing part of it must be a directory, and the deepest
    existing one must be writable (so `os.makedirs` and the run's files will succeed). Nothing
    is created. `what` names the setting in the message.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    probe = path
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        kind = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise WorkdirError(f"{what} {path} {kind}, not a directory; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" (its existing parent {probe} is not writable)"
        raise WorkdirError(
            f"{what} {path} is not writable{where}; choose a directory you can write to, "
            "or fix its permissions"
        )
