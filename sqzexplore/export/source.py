"""What `sqz export` exports: the weights of a finished run (its final or best checkpoint), of a
compressed `.sqz` model (decoded to its shared-weight values), or of a spec or preset at random
initialisation (for latency, where weight values do not matter), checked before anything is
built; and BatchNorm folded into the convs before export.

Folding: with BatchNorm, a conv has no bias and is followed by
`y = (conv(x) - mean) / sqrt(var + eps) * scale + beta`, which is the conv with kernel
`W * scale / sqrt(var + eps)` (per output channel) and bias `beta - mean * scale / sqrt(var + eps)`.
The folded weights are exactly the parameters of the same spec with `batch_norm=False` (every
conv then has a bias), so both the ONNX graph and the StableHLO module are built from that spec's
layer plan, and `folded_model` is an ordinary Flax model to compare them with.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from sqzexplore.models.spec import SpecError, SqueezeNetSpec, preset

# nnx.BatchNorm's epsilon in the model (models/squeezenet.py `_BN_EPSILON`).
BN_EPSILON = 1e-5
CHECKPOINTS = ("final", "best")


class ExportError(ValueError):
    """Unusable `sqz export` / latency input; `field` is the argument at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass
class Weights:
    """A model to export: its spec and NumPy trees (`params`, `batch_stats`, model paths), and
    where they came from (`origin`: kind, path, step, ...) for the export's manifest."""

    spec: SqueezeNetSpec
    params: dict[str, Any]
    batch_stats: dict[str, Any]
    origin: dict[str, Any]


def from_preset(name: str, seed: int = 0, **overrides: Any) -> Weights:
    try:
        spec = preset(name, **overrides)
    except SpecError as err:
        raise ExportError("preset", str(err)) from None
    return from_spec(spec, seed, origin={"kind": "preset", "preset": name})


def from_spec_file(path: str, seed: int = 0) -> Weights:
    try:
        with open(path) as f:
            spec = SqueezeNetSpec.from_dict(json.load(f))
    except OSError as err:
        raise ExportError("spec", f"cannot read {path}: {err.strerror}") from None
    except (ValueError, TypeError, SpecError) as err:
        raise ExportError("spec", f"{path} is not a spec.json: {err}") from None
    return from_spec(spec, seed, origin={"kind": "spec", "path": os.path.abspath(path)})


def from_spec(spec: SqueezeNetSpec, seed: int = 0, origin: dict | None = None) -> Weights:
    """Random-init weights (the trainer's initialisation for `seed`) of `spec`."""
    import jax
    from flax import nnx

    from sqzexplore.models.squeezenet import init_model

    model = init_model(spec, seed)
    params = jax.tree.map(np.asarray, nnx.state(model, nnx.Param).to_pure_dict())
    stats = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat).to_pure_dict())
    return Weights(spec, params, stats, {"kind": "spec", **(origin or {}), "seed": seed})


def from_sqz(path: str) -> Weights:
    """A `.sqz` file (or a `sqz compress` output directory holding model.sqz), decoded."""
    from sqzexplore.compress.decode import parse_sqz
    from sqzexplore.compress.plan import CompressError
    from sqzexplore.compress.runs import MODEL_FILE, load_sqz_for
    from sqzexplore.compress.sqzformat import SqzFormatError

    if os.path.isdir(path):
        path = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(path):
        raise ExportError("sqz", f"{path} does not exist (a .sqz file from `sqz compress`)")
    try:
        spec = SqueezeNetSpec.from_dict(parse_sqz(path).spec)
        params, stats = load_sqz_for(path, spec, field="sqz")
    except (SqzFormatError, CompressError, SpecError, TypeError) as err:
        raise ExportError("sqz", f"{path}: {err}") from None
    origin = {"kind": "sqz", "path": os.path.abspath(path), "sqz_bytes": os.path.getsize(path)}
    return Weights(spec, params, stats, origin)


def from_run(workdir: str, checkpoint: str = "final") -> Weights:
    """A finished run's final checkpoint (the newest intact one) or its best one (the step of
    its best evaluation, when that checkpoint is still kept). A `sqz compress` output directory
    is read as its model.sqz."""
    from sqzexplore.compress.plan import CompressError
    from sqzexplore.compress.runs import MODEL_FILE, check_finished_run

    if checkpoint not in CHECKPOINTS:
        raise ExportError("checkpoint", f"must be one of {CHECKPOINTS}, got {checkpoint!r}")
    if os.path.isfile(os.path.join(workdir, MODEL_FILE)):
        if checkpoint != "final":
            raise ExportError("checkpoint", f"{workdir} is a compressed model: it has no 'best'")
        return from_sqz(workdir)
    try:
        run = check_finished_run(workdir)
    except CompressError as err:
        message = err.message.replace("can be compressed", "can be exported")
        raise ExportError("workdir", message) from None
    if checkpoint == "final":
        from sqzexplore import checkpoint as ckpt

        loaded = ckpt.load_run(run.workdir)
        params, stats, step = loaded["params"], loaded["batch_stats"], loaded["step"]
    else:
        params, stats, step = _best_checkpoint(run.workdir, run.result)
    origin = {"kind": "run", "path": run.workdir, "checkpoint": checkpoint, "step": step}
    return Weights(run.spec, params, stats, origin)


def _best_checkpoint(workdir: str, result: dict) -> tuple[dict, dict, int]:
    import jax
    import orbax.checkpoint as ocp

    from sqzexplore import checkpoint as ckpt
    from sqzexplore import rundir

    best = result.get("best") or {}
    step = best.get("step")
    if not isinstance(step, int) or step < 0:
        raise ExportError("checkpoint", f"the run in {workdir} recorded no best evaluation step")
    directory = os.path.join(workdir, rundir.CHECKPOINT_DIR)
    kept = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
    if step not in kept:
        raise ExportError(
            "checkpoint",
            f"the best step {step} of {workdir} is no longer kept (kept: {kept}); export "
            "--checkpoint final, or train with a larger keep_checkpoints",
        )
    step_dir = os.path.join(directory, str(step))
    try:
        ckpt.verify_manifest(step_dir)
        with ocp.CheckpointManager(directory) as manager:
            tree = manager.restore(step, args=ocp.args.StandardRestore())
    except Exception as err:  # noqa: BLE001 - any failure: this checkpoint cannot be used
        raise ExportError("checkpoint", f"{step_dir} is unreadable: {err}") from None
    train = tree["train"]
    return (
        jax.tree.map(np.asarray, train["params"]),
        jax.tree.map(np.asarray, train["batch_stats"]),
        step,
    )


def fold_batch_norm(weights: Weights) -> tuple[SqueezeNetSpec, dict[str, Any]]:
    """`(spec, params)` of the same network with every BatchNorm folded into its conv: the
    spec with `batch_norm=False` and float32 compute, the params its model's tree."""
    spec = weights.spec.replace(batch_norm=False, dtype="float32")
    params, stats = weights.params, weights.batch_stats
    folded: dict[str, Any] = {}
    for layer in weights.spec.layer_plan().convs:
        parent, _, conv = layer.name.rpartition("/")
        src = _node(params, parent)
        kernel = np.asarray(src[conv]["kernel"], np.float32)
        if layer.batch_norm:
            bn = src[f"{conv}_bn"]
            moments = _node(stats, parent)[f"{conv}_bn"]
            factor = np.asarray(bn["scale"], np.float64) / np.sqrt(
                np.asarray(moments["var"], np.float64) + BN_EPSILON
            )
            bias = np.asarray(bn["bias"], np.float64) - np.asarray(moments["mean"]) * factor
            kernel = (kernel * factor).astype(np.float32)  # HWIO: the output channel is last
            bias = bias.astype(np.float32)
        else:
            bias = np.asarray(src[conv]["bias"], np.float32)
        out = folded
        for key in filter(None, parent.split("/")):
            out = out.setdefault(key, {})
        out[conv] = {"kernel": kernel, "bias": bias}
    return spec, folded


def _node(tree: dict[str, Any], path: str) -> dict[str, Any]:
    for key in filter(None, path.split("/")):
        tree = tree[key]
    return tree


def flax_model(spec: SqueezeNetSpec, params: dict[str, Any], batch_stats: dict | None = None):
    """The Flax model of `spec` holding these weights (eval-mode reference)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sqzexplore.models.squeezenet import SqueezeNet

    model = nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    pure = {**(batch_stats or {})}
    state.replace_by_pure_dict(_merge(params, pure))
    state = jax.tree.map(jnp.asarray, state)
    return nnx.merge(graphdef, state)


def layout_forward(spec: SqueezeNetSpec, params: dict[str, Any], layout: str, batch: int):
    """The Flax model as a function of images in `layout` ('nhwc' or 'nchw'), and the input
    shape at `batch`: what every traced export (StableHLO, TFLite) starts from."""
    import jax.numpy as jnp

    model = flax_model(spec, params)

    def forward(images):
        if layout == "nchw":
            images = jnp.transpose(images, (0, 2, 3, 1))
        return model(images)

    size, channels = spec.image_size, spec.in_channels
    shape = (batch, size, size, channels) if layout == "nhwc" else (batch, channels, size, size)
    return forward, shape


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if key in out and isinstance(value, dict) else value
    return out
