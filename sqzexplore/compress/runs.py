"""The directories and files `sqz compress` works with: the finished source run (only ever read),
the output directory (checked before anything runs, its settings pinned), the model's parameter
shapes, and a `.sqz` file checked against a run's model BEFORE it is decoded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from sqzexplore import rundir
from sqzexplore.compress.decode import parse_sqz, read_sqz
from sqzexplore.compress.plan import Bits, CompressError, CompressPlan
from sqzexplore.compress.prune import flatten_params, unflatten_params
from sqzexplore.models.spec import SpecError, SqueezeNetSpec

SETTINGS_FILE = "compress.json"
REPORT_FILE = "report.json"
MODEL_FILE = "model.sqz"
FINETUNE_DIR = "finetune"


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """A completed trainer run (metadata only; `rundir.load_run` reads the weights)."""

    workdir: str
    config: ml_collections.ConfigDict
    spec: SqueezeNetSpec
    result: dict

    @property
    def epochs(self) -> float:
        return float(self.result.get("epochs") or 0.0)

    @property
    def final(self) -> dict[str, Any] | None:
        """The run's final eval metrics (loss, top1, top5)."""
        return eval_metrics(self.result.get("final"))


def eval_metrics(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`{top1, top5, loss}` of an eval record (None for none)."""
    if not record:
        return None
    return {k: record.get(k) for k in ("top1", "top5", "loss")}


def check_finished_run(workdir: str, field: str = "workdir") -> FinishedRun:
    """The run in `workdir`, checked to be complete with a checkpoint (no weights read)."""
    workdir = os.path.abspath(workdir)
    if not os.path.exists(workdir):
        raise CompressError(field, f"{workdir} does not exist")
    if not os.path.isdir(workdir):
        raise CompressError(field, f"{workdir} is a file, not a run directory")
    result_path = os.path.join(workdir, rundir.RESULT_FILE)
    if not os.path.exists(result_path):
        raise CompressError(
            field,
            f"{workdir} holds no finished run (no result.json); train it to the end first "
            f"(`sqz train --config=... --workdir={workdir}`; rerunning it resumes)",
        )
    try:
        with open(result_path) as f:
            result = json.load(f)
        with open(os.path.join(workdir, rundir.CONFIG_FILE)) as f:
            config = ml_collections.ConfigDict(json.load(f))
        with open(os.path.join(workdir, rundir.SPEC_FILE)) as f:
            spec = SqueezeNetSpec.from_dict(json.load(f))
        if not isinstance(result, dict):
            raise TypeError("result.json is not an object")
    except (OSError, ValueError, SpecError, TypeError, AttributeError) as err:
        raise CompressError(field, f"{workdir} is not a readable run directory: {err}") from None
    if result.get("status") != "complete":
        raise CompressError(
            field,
            f"the run in {workdir} ended with status {result.get('status')!r}, not 'complete'; "
            "only a run trained to the end can be compressed",
        )
    checkpoints = os.path.join(workdir, rundir.CHECKPOINT_DIR)
    steps = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    if not any(name.isdigit() for name in steps):
        raise CompressError(
            field, f"{workdir} has a result.json but no checkpoint in {checkpoints}"
        )
    return FinishedRun(workdir, config, spec, result)


def model_trees(spec: SqueezeNetSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(params, batch_stats)` of `spec`'s model as ShapeDtypeStructs; nothing is computed."""
    from flax import nnx

    from sqzexplore.models.squeezenet import SqueezeNet

    model = nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param).to_pure_dict()
    stats = nnx.state(model, nnx.BatchStat).to_pure_dict()
    return params, stats


# ---------------------------------------------------------------------- the output directory


def default_out_dir(workdir: str, bits: Bits) -> str:
    """`<RUN>.sqz-<bits>b` next to the run (`-mixedb` for per-layer bits)."""
    label = f"{bits}b" if not isinstance(bits, Mapping) else "mixedb"
    return os.path.abspath(workdir).rstrip(os.sep) + f".sqz-{label}"


def check_out_dir(out_dir: str, source_workdir: str | None = None) -> str:
    """`out_dir` made absolute, refused if it is (inside) the source run or cannot be made a
    writable directory. Nothing is created."""
    out_dir = os.path.abspath(out_dir)
    if source_workdir is not None:
        source = os.path.abspath(source_workdir)
        if os.path.commonpath([out_dir, source]) == source:
            raise CompressError(
                "out", f"{out_dir} is inside the source run {source}, which is never written to"
            )
    # The deepest existing path on the way to out_dir must be a writable directory.
    existing = out_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "exists" if existing == out_dir else f"cannot be made: {existing} exists"
        raise CompressError("out", f"{out_dir} {what} and is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CompressError("out", f"{out_dir} cannot be written: {existing} is not writable")
    return out_dir


def make_out_dir(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise CompressError("out", f"cannot create {out_dir}: {err.strerror}") from None


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def pin_settings(out_dir: str, source: FinishedRun, plan: CompressPlan) -> None:
    """Record the stage settings in out_dir, or refuse if it holds a different compression:
    its trainer runs would otherwise be silently reused with other masks or codebooks."""
    settings = {
        "source": source.workdir,
        "source_result_sha256": _sha256(os.path.join(source.workdir, rundir.RESULT_FILE)),
        **plan.training_settings(),
    }
    settings = json.loads(json.dumps(settings))
    path = os.path.join(out_dir, SETTINGS_FILE)
    if os.path.exists(path):
        old = rundir.read_json(path)
        if old != settings:
            old = old if isinstance(old, dict) else {}
            differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise CompressError(
                "out",
                f"{out_dir} holds a compression with other settings (differ in: "
                f"{', '.join(differ)}); pass another --out, or delete it to start over",
            )
        return
    rundir.write_json(path, settings)


# ---------------------------------------------------------------------- a file for a run's model


def _spec_json(spec: SqueezeNetSpec) -> dict[str, Any]:
    return json.loads(json.dumps(spec.to_dict()))


def load_sqz_for(path: str, spec: SqueezeNetSpec, field: str = "decode") -> tuple[dict, dict]:
    """`(params, batch_stats)` decoded from a .sqz file written for `spec`'s model.

    Raises `SqzFormatError` for a damaged file and CompressError when its spec or its
    parameters (paths, shapes, dtypes) do not match the model; both are found from the header
    alone, before any array is allocated.
    """
    sqz = parse_sqz(path)
    expected = _spec_json(spec)
    if sqz.spec != expected:
        fields = sorted(set(sqz.spec) | set(expected))
        differ = [
            f"{k} (file {sqz.spec.get(k)!r}, run {expected.get(k)!r})"
            for k in fields
            if sqz.spec.get(k) != expected.get(k)
        ]
        raise CompressError(
            field,
            f"{path} was written for another model: spec fields differ: {'; '.join(differ[:5])}",
        )
    params_abs, stats_abs = model_trees(spec)
    stored = sqz.leaves()
    model_leaves = {**flatten_params(params_abs), **flatten_params(stats_abs)}
    missing = sorted(set(model_leaves) - set(stored))
    extra = sorted(set(stored) - set(model_leaves))
    if missing or extra:
        raise CompressError(
            field,
            f"{path} does not hold this model's parameters (missing: {missing[:5]}, "
            f"unexpected: {extra[:5]})",
        )
    for p, leaf in model_leaves.items():
        shape, dtype = stored[p]
        if shape != tuple(leaf.shape) or dtype != np.dtype(leaf.dtype):
            raise CompressError(
                field,
                f"{path}: parameter {p!r} is {dtype}{list(shape)}, the model needs "
                f"{leaf.dtype}{list(leaf.shape)}",
            )
    _, tree = read_sqz(sqz)
    flat = flatten_params(tree)
    params = unflatten_params({p: flat[p] for p in flatten_params(params_abs)})
    stats = unflatten_params({p: flat[p] for p in flatten_params(stats_abs)})
    return params, stats
