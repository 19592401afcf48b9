"""Deep Compression of a finished run, end to end: what `sqz compress` does.

    prune (magnitude, per-layer densities) -> retrain with the masks in the train state
        [x rounds, the densities stepping down geometrically to their targets]
    -> k-means weight sharing of the surviving weights (2^b centroids per layer)
    -> centroid fine-tuning (each centroid's gradient is the sum over the weights sharing it)
    -> write the .sqz file -> read it back -> evaluate the DECODED model

Retraining and fine-tuning are ordinary `train_and_evaluate` runs with a `reparam` (the masks, or
codebooks + codes, live in the checkpointed train state as `aux`), so they resume like any run,
and their config is the source run's with fewer epochs and a scaled-down learning rate.

Output directory (default `<RUN>.sqz-<bits>b`, next to the source run, never inside it; the
source run is only read):

    compress.json      the settings the training stages ran with; a rerun must match them
    prune_round1/ ...  trainer workdirs of the masked retraining, one per round
    finetune/          trainer workdir of the centroid fine-tuning
    model.sqz          the compressed model (see `encode.py`)
    report.json        per-layer sizes, totals against fp32, accuracy before and after

`size_only` sizes a preset (its initial weights) or a run without any training: the file size of
SqueezeNet at given densities and bits is what the paper's Table 2 size row depends on.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sqzexplore.compress.encode import (
    MAX_GAP_BITS,
    MIN_GAP_BITS,
    encode_sqz,
    read_sqz,
    size_report,
    write_sqz,
)
from sqzexplore.compress.prune import (
    apply_masks,
    conv_kernels,
    density_report,
    flatten_params,
    layer_name,
    make_masks,
    merge_params,
    resolve_densities,
    unflatten_params,
)
from sqzexplore.compress.quantize import (
    QuantizedLayer,
    codebooks_and_aux,
    dequantize,
    kernels_from_codebooks,
    quantize_params,
    resolve_bits,
)
from sqzexplore.models.spec import SpecError, SqueezeNetSpec
from sqzexplore.rundir import write_json as write_json_atomic

MAX_ROUNDS = 10
# Learning rates as fractions of the source run's. Retraining after pruning needs a real step
# size: on the digits experiment 0.1x left the pruned net 1.1 points down after 5 epochs, 0.3x
# recovered it fully; the centroids start close to a good solution and need less.
DEFAULT_LR_SCALE = 0.3
DEFAULT_FINETUNE_LR_SCALE = 0.1
# Default stage lengths as fractions of the source run's epochs (at least one epoch each).
DEFAULT_RETRAIN_FRACTION = 0.25
DEFAULT_FINETUNE_FRACTION = 0.1
SETTINGS_FILE = "compress.json"
REPORT_FILE = "report.json"
MODEL_FILE = "model.sqz"
FINETUNE_DIR = "finetune"

Log = Callable[[str], None]
_print = functools.partial(print, flush=True)


class CompressError(ValueError):
    """Unusable `sqz compress` input; `field` is the argument at fault ("bits", "density", ...)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class StageInterrupted(RuntimeError):
    """A retraining / fine-tuning run was preempted; rerunning the same command resumes it."""


# ---------------------------------------------------------------------- the source run


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """A completed trainer run (metadata only; `load_run` reads the weights)."""

    workdir: str
    config: ml_collections.ConfigDict
    spec: SqueezeNetSpec
    result: dict


def check_finished_run(workdir: str, field: str = "workdir") -> FinishedRun:
    """The run in `workdir`, checked to be complete with a checkpoint (no weights read)."""
    workdir = os.path.abspath(workdir)
    if not os.path.isdir(workdir):
        raise CompressError(field, f"{workdir} does not exist")
    result_path = os.path.join(workdir, "result.json")
    if not os.path.exists(result_path):
        raise CompressError(
            field,
            f"{workdir} holds no finished run (no result.json); train it to the end first "
            f"(`sqz train --config=... --workdir={workdir}`; rerunning it resumes)",
        )
    try:
        with open(result_path) as f:
            result = json.load(f)
        with open(os.path.join(workdir, "config.json")) as f:
            config = ml_collections.ConfigDict(json.load(f))
        with open(os.path.join(workdir, "spec.json")) as f:
            spec = SqueezeNetSpec.from_dict(json.load(f))
    except (OSError, json.JSONDecodeError, SpecError, TypeError) as err:
        raise CompressError(field, f"{workdir} is not a readable run directory: {err}") from err
    if result.get("status") != "complete":
        raise CompressError(
            field,
            f"the run in {workdir} ended with status {result.get('status')!r}, not 'complete'; "
            "only a run trained to the end can be compressed",
        )
    checkpoints = os.path.join(workdir, "checkpoints")
    steps = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    if not any(name.isdigit() for name in steps):
        raise CompressError(
            field, f"{workdir} has a result.json but no checkpoint in {checkpoints}"
        )
    return FinishedRun(workdir, config, spec, result)


def model_trees(spec: SqueezeNetSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(params, batch_stats)` of `spec`'s model as ShapeDtypeStructs; nothing is computed."""
    from sqzexplore.models.squeezenet import SqueezeNet

    model = nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param).to_pure_dict()
    stats = nnx.state(model, nnx.BatchStat).to_pure_dict()
    return params, stats


def _metrics(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not record:
        return None
    return {k: record.get(k) for k in ("top1", "top5", "loss")}


# ---------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class CompressPlan:
    """Validated settings, resolved per conv kernel path ("fire2/squeeze/kernel")."""

    densities: dict[str, float]
    bits: dict[str, int]
    rounds: int
    retrain_epochs: float
    finetune_epochs: float
    lr_scale: float
    finetune_lr_scale: float
    gap_bits: int
    huffman: bool

    def round_densities(self, k: int) -> dict[str, float]:
        """Densities after pruning round k of `rounds`: d^(k/rounds), so each round removes the
        same fraction of the remaining weights and the last round reaches d."""
        return {p: d ** (k / self.rounds) for p, d in self.densities.items()}

    def training_settings(self) -> dict[str, Any]:
        """What the retraining / fine-tuning stages depend on (pinned in compress.json)."""
        return {
            "densities": {layer_name(p): d for p, d in self.densities.items()},
            "bits": {layer_name(p): b for p, b in self.bits.items()},
            "rounds": self.rounds,
            "retrain_epochs": self.retrain_epochs,
            "finetune_epochs": self.finetune_epochs,
            "lr_scale": self.lr_scale,
            "finetune_lr_scale": self.finetune_lr_scale,
        }


def _number(field: str, value: Any, low: float, high: float, *, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CompressError(field, f"must be a number, got {value!r}")
    value = float(value)
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        raise CompressError(field, f"must be in {bounds}, got {value:g}")
    return value


def _integer(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CompressError(field, f"must be an integer in [{low}, {high}], got {value!r}")
    if not low <= int(value) <= high:
        raise CompressError(field, f"must be in [{low}, {high}], got {value}")
    return int(value)


def make_plan(
    params: Any,
    *,
    bits: int | Mapping[str, int],
    density: float | str | Mapping[str, float] = "released",
    huffman: bool = False,
    gap_bits: int = 4,
    rounds: int = 1,
    retrain_epochs: float | None = None,
    finetune_epochs: float | None = None,
    lr_scale: float = DEFAULT_LR_SCALE,
    finetune_lr_scale: float = DEFAULT_FINETUNE_LR_SCALE,
    source_epochs: float = 0.0,
) -> CompressPlan:
    """Validate every setting against the model's conv layers (`params`: any tree with the
    model's parameter paths, e.g. `model_trees(spec)[0]`) before anything is loaded or compiled.

    Epoch defaults: a quarter (retraining, per round) and a tenth (fine-tuning) of
    `source_epochs`, at least one epoch each. 0 epochs skips the stage.
    """
    kernels = list(conv_kernels(params))
    try:
        per_layer_bits = resolve_bits(kernels, bits)
    except ValueError as err:
        raise CompressError("bits", str(err)) from None
    try:
        densities = resolve_densities(params, density)
    except ValueError as err:
        raise CompressError("density", str(err)) from None
    if huffman not in (False, True):
        raise CompressError("huffman", f"must be True or False, got {huffman!r}")
    gap_bits = _integer("gap_bits", gap_bits, MIN_GAP_BITS, MAX_GAP_BITS)
    rounds = _integer("rounds", rounds, 1, MAX_ROUNDS)
    if retrain_epochs is None:
        retrain_epochs = max(1.0, DEFAULT_RETRAIN_FRACTION * source_epochs)
    if finetune_epochs is None:
        finetune_epochs = max(1.0, DEFAULT_FINETUNE_FRACTION * source_epochs)
    return CompressPlan(
        densities=densities,
        bits=per_layer_bits,
        rounds=rounds,
        retrain_epochs=_number("retrain_epochs", retrain_epochs, 0, 1e6, low_open=False),
        finetune_epochs=_number("finetune_epochs", finetune_epochs, 0, 1e6, low_open=False),
        lr_scale=_number("lr_scale", lr_scale, 0, 1, low_open=True),
        finetune_lr_scale=_number("finetune_lr_scale", finetune_lr_scale, 0, 1, low_open=True),
        gap_bits=gap_bits,
        huffman=bool(huffman),
    )


def default_out_dir(workdir: str, bits: int | Mapping[str, int]) -> str:
    """`<RUN>.sqz-<bits>b` next to the run (`-mixedb` for per-layer bits)."""
    label = f"{bits}b" if not isinstance(bits, Mapping) else "mixedb"
    return os.path.abspath(workdir).rstrip(os.sep) + f".sqz-{label}"


def check_out_dir(out_dir: str, source_workdir: str) -> str:
    """`out_dir` made absolute, refused if it is the source run or inside it."""
    out_dir = os.path.abspath(out_dir)
    source = os.path.abspath(source_workdir)
    if os.path.commonpath([out_dir, source]) == source:
        raise CompressError(
            "out", f"{out_dir} is inside the source run {source}, which is never written to"
        )
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CompressError("out", f"{out_dir} exists and is not a directory")
    return out_dir


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _pin_settings(out_dir: str, source: FinishedRun, plan: CompressPlan) -> None:
    """Record the stage settings in out_dir, or refuse if it holds a different compression:
    its trainer runs would otherwise be silently reused with other masks or codebooks."""
    settings = {
        "source": source.workdir,
        "source_result_sha256": _sha256(os.path.join(source.workdir, "result.json")),
        **plan.training_settings(),
    }
    settings = json.loads(json.dumps(settings))
    path = os.path.join(out_dir, SETTINGS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != settings:
            differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise CompressError(
                "out",
                f"{out_dir} holds a compression with other settings (differ in: "
                f"{', '.join(differ)}); pass another --out, or delete it to start over",
            )
        return
    write_json_atomic(path, settings)


# ---------------------------------------------------------------------- reparametrisations


class MaskedKernels:
    """Trainer reparam for pruned retraining: trainable = the parameters, aux = the masks;
    the model sees every masked kernel with its pruned weights exactly zero.

    `init` zeroes the pruned weights of the incoming parameters, so their gradient (zero through
    `where`) and weight decay (of zero) keep them exactly zero in the checkpointed state too.
    """

    def __init__(self, masks: Any):
        flat = flatten_params(masks)
        self.masks = unflatten_params({p: np.asarray(m, dtype=bool) for p, m in flat.items()})

    def init(self, params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        masks = jax.tree.map(jnp.asarray, self.masks)
        return apply_masks(params, masks), masks

    def apply(self, trainable: Any, aux: Any) -> dict[str, Any]:
        return apply_masks(trainable, aux)


class SharedWeightKernels:
    """Trainer reparam for centroid fine-tuning.

    trainable = the parameter tree with every quantized kernel replaced by its codebook (float32
    [2^b]; 1-D, so the optimiser's kernels-only weight decay leaves it alone); aux = the codes and
    masks (`codebooks_and_aux`). The model sees `where(mask, codebook[codes], 0)`, so each
    centroid's gradient is the sum of the gradients of the weights sharing it.
    """

    def __init__(self, layers: Mapping[str, QuantizedLayer]):
        self.codebooks, self.aux = codebooks_and_aux(layers)

    def init(self, params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        codebooks = jax.tree.map(jnp.asarray, self.codebooks)
        return merge_params(params, codebooks), jax.tree.map(jnp.asarray, self.aux)

    def apply(self, trainable: Any, aux: Mapping[str, Any]) -> dict[str, Any]:
        flat = flatten_params(trainable)
        codebooks = {path: flat[path] for path in flatten_params(aux["mask"])}
        return merge_params(trainable, kernels_from_codebooks(codebooks, aux))


# ---------------------------------------------------------------------- stages


def stage_config(
    config: ml_collections.ConfigDict, *, epochs: float, lr_scale: float
) -> ml_collections.ConfigDict:
    """The source run's config for a retraining stage: `epochs` epochs, lr x `lr_scale`, no
    warmup, one evaluation at the end, wandb off (the stage is not a new design point)."""
    d = json.loads(config.to_json_best_effort())
    d["num_steps"] = 0
    d["num_epochs"] = float(epochs)
    d["optim"]["lr"] = float(d["optim"]["lr"]) * lr_scale
    d["optim"]["warmup_epochs"] = 0.0
    d["eval_every_epochs"] = float(epochs)
    d["checkpoint_every_epochs"] = min(float(d["checkpoint_every_epochs"]), float(epochs))
    d["wandb"]["mode"] = "disabled"
    return ml_collections.ConfigDict(d)


def _train_stage(
    name: str,
    config: ml_collections.ConfigDict,
    workdir: str,
    reparam: Any,
    init_params: dict[str, Any],
    log: Log,
) -> dict[str, Any]:
    from sqzexplore.train import train_and_evaluate

    resumed = os.path.exists(os.path.join(workdir, "result.json"))
    log(
        f"{name}: {'reusing the finished run in' if resumed else 'training'} {workdir} "
        f"({config.num_epochs:.3g} epochs, lr {config.optim.lr:.3g})"
    )
    result = train_and_evaluate(config, workdir, reparam=reparam, init_params=init_params)
    if result.get("status") != "complete":
        raise StageInterrupted(
            f"{name} in {workdir} stopped with status {result.get('status')!r}; rerun the same "
            "command to resume it"
        )
    final = result["final"]
    log(f"{name}: done, top1 {final['top1']:.4f}")
    return result


def _check_equal_trees(found: Any, expected: Any, what: str) -> None:
    found, expected = flatten_params(found), flatten_params(expected)
    if found.keys() != expected.keys() or any(
        not np.array_equal(np.asarray(found[p]), np.asarray(expected[p])) for p in expected
    ):
        raise CompressError(
            "out", f"{what} differ from the ones computed now; delete that run and rerun"
        )


def _stored_tree(params: Any, batch_stats: Any) -> dict[str, Any]:
    """Parameters and batch statistics in one tree (their paths never collide) for the file."""
    flat_params, flat_stats = flatten_params(params), flatten_params(batch_stats or {})
    overlap = sorted(set(flat_params) & set(flat_stats))
    if overlap:
        raise ValueError(f"paths both parameters and batch statistics: {overlap}")
    return unflatten_params({**flat_params, **flat_stats})


def _spec_json(spec: SqueezeNetSpec) -> dict[str, Any]:
    return json.loads(json.dumps(spec.to_dict()))


def load_sqz_for(path: str, spec: SqueezeNetSpec, field: str = "decode") -> tuple[dict, dict]:
    """`(params, batch_stats)` decoded from a .sqz file written for `spec`'s model.

    Raises `SqzFormatError` for a damaged file and CompressError when its spec or its
    parameters (paths, shapes, dtypes) do not match the model.
    """
    file_spec, tree = read_sqz(path)
    expected = _spec_json(spec)
    if file_spec != expected:
        fields = sorted(set(file_spec) | set(expected))
        differ = [
            f"{k} (file {file_spec.get(k)!r}, run {expected.get(k)!r})"
            for k in fields
            if file_spec.get(k) != expected.get(k)
        ]
        raise CompressError(
            field,
            f"{path} was written for another model: spec fields differ: {'; '.join(differ)}",
        )
    params_abs, stats_abs = model_trees(spec)
    flat = flatten_params(tree)
    model_leaves = {**flatten_params(params_abs), **flatten_params(stats_abs)}
    missing = sorted(set(model_leaves) - set(flat))
    extra = sorted(set(flat) - set(model_leaves))
    if missing or extra:
        raise CompressError(
            field,
            f"{path} does not hold this model's parameters (missing: {missing[:5]}, "
            f"unexpected: {extra[:5]})",
        )
    for p, leaf in model_leaves.items():
        if tuple(flat[p].shape) != tuple(leaf.shape) or flat[p].dtype != leaf.dtype:
            raise CompressError(
                field,
                f"{path}: parameter {p!r} is {flat[p].dtype}{list(flat[p].shape)}, the model "
                f"needs {leaf.dtype}{list(leaf.shape)}",
            )
    params = unflatten_params({p: flat[p] for p in flatten_params(params_abs)})
    stats = unflatten_params({p: flat[p] for p in flatten_params(stats_abs)})
    return params, stats


def _assert_bit_identical(decoded: Any, expected: Any, what: str) -> None:
    decoded, expected = flatten_params(decoded), flatten_params(expected)
    if decoded.keys() != expected.keys():
        raise RuntimeError(f"decoded {what} have other paths than the written ones")
    for path, value in expected.items():
        value = np.asarray(value)
        if decoded[path].dtype != value.dtype or decoded[path].tobytes() != value.tobytes():
            raise RuntimeError(f"decoded {what} {path!r} differs from the written one")


def compress_run(
    workdir: str,
    *,
    bits: int | Mapping[str, int],
    density: float | str | Mapping[str, float] = "released",
    huffman: bool = False,
    gap_bits: int = 4,
    rounds: int = 1,
    retrain_epochs: float | None = None,
    finetune_epochs: float | None = None,
    lr_scale: float = DEFAULT_LR_SCALE,
    finetune_lr_scale: float = DEFAULT_FINETUNE_LR_SCALE,
    out_dir: str | None = None,
    log: Log = _print,
) -> dict[str, Any]:
    """Compress the finished run in `workdir` (see the module docstring); returns the report.

    Every argument is validated before any weight is read or anything compiles
    (`CompressError` names the argument). Rerunning resumes or reuses the stage runs.
    """
    from sqzexplore.train import evaluate_params, load_run

    source = check_finished_run(workdir)
    params_abs, _ = model_trees(source.spec)
    plan = make_plan(
        params_abs,
        bits=bits,
        density=density,
        huffman=huffman,
        gap_bits=gap_bits,
        rounds=rounds,
        retrain_epochs=retrain_epochs,
        finetune_epochs=finetune_epochs,
        lr_scale=lr_scale,
        finetune_lr_scale=finetune_lr_scale,
        source_epochs=float(source.result.get("epochs") or 0.0),
    )
    out_dir = check_out_dir(out_dir or default_out_dir(source.workdir, bits), source.workdir)
    os.makedirs(out_dir, exist_ok=True)
    _pin_settings(out_dir, source, plan)

    run = load_run(source.workdir)
    params, stats = run["params"], run["batch_stats"]
    before = _metrics(source.result.get("final"))
    log(f"source: {source.workdir} (top1 {before['top1']:.4f}); output: {out_dir}")
    stages: dict[str, Any] = {}
    total_stages = 2 * plan.rounds + 3

    # ---- 1. pruning, with masked retraining after each round.
    masks = None
    for k in range(1, plan.rounds + 1):
        masks = make_masks(params, plan.round_densities(k), within=masks)
        kept = density_report(masks)["total"]
        log(
            f"[{2 * k - 1}/{total_stages}] prune round {k}/{plan.rounds}: kept "
            f"{kept['kept']:,} of {kept['params']:,} conv weights ({100 * kept['density']:.1f}%)"
        )
        params = apply_masks(params, masks)
        stage = {"kept": kept["kept"], "density": kept["density"], "retrain": None}
        if plan.retrain_epochs > 0:
            name = f"prune_round{k}"
            stage_dir = os.path.join(out_dir, name)
            result = _train_stage(
                f"[{2 * k}/{total_stages}] retrain round {k}",
                stage_config(source.config, epochs=plan.retrain_epochs, lr_scale=plan.lr_scale),
                stage_dir,
                MaskedKernels(masks),
                {"params": params, "batch_stats": stats},
                log,
            )
            trained = load_run(stage_dir)
            _check_equal_trees(trained["aux"], masks, f"the masks in {stage_dir}")
            params = apply_masks(trained["params"], masks)
            stats = trained["batch_stats"]
            stage["retrain"] = {"workdir": stage_dir, "final": _metrics(result["final"])}
        stages[f"prune_round{k}"] = stage

    # ---- 2. trained quantization.
    step = 2 * plan.rounds + 1
    layers = quantize_params(params, masks, plan.bits)
    widths = sorted(set(plan.bits.values()))
    log(
        f"[{step}/{total_stages}] k-means weight sharing: {len(layers)} layers, "
        f"{'/'.join(map(str, widths))}-bit codes"
    )
    finetune = None
    if plan.finetune_epochs > 0:
        stage_dir = os.path.join(out_dir, FINETUNE_DIR)
        result = _train_stage(
            f"[{step + 1}/{total_stages}] fine-tune centroids",
            stage_config(
                source.config, epochs=plan.finetune_epochs, lr_scale=plan.finetune_lr_scale
            ),
            stage_dir,
            SharedWeightKernels(layers),
            {"params": params, "batch_stats": stats},
            log,
        )
        tuned = load_run(stage_dir)
        _check_equal_trees(
            tuned["aux"], codebooks_and_aux(layers)[1], f"the codes and masks in {stage_dir}"
        )
        flat_tuned = flatten_params(tuned["params"])
        layers = {p: layer.with_codebook(flat_tuned[p]) for p, layer in layers.items()}
        params, stats = tuned["params"], tuned["batch_stats"]
        finetune = {"workdir": stage_dir, "final": _metrics(result["final"])}
    quantized = merge_params(params, dequantize(layers))

    # ---- 3. the file, read back and evaluated.
    path = os.path.join(out_dir, MODEL_FILE)
    write_sqz(
        path,
        source.spec.to_dict(),
        layers,
        _stored_tree(quantized, stats),
        gap_bits=plan.gap_bits,
        huffman=plan.huffman,
    )
    decoded_params, decoded_stats = load_sqz_for(path, source.spec)
    _assert_bit_identical(decoded_params, quantized, "parameter")
    _assert_bit_identical(decoded_stats, stats, "batch statistic")
    size = size_report(path)
    log(
        f"[{total_stages}/{total_stages}] wrote {path}: {size['total']['file_bytes']:,} bytes; "
        "evaluating the decoded model"
    )
    after = _metrics(evaluate_params(source.config, decoded_params, decoded_stats))

    last_retrain = stages[f"prune_round{plan.rounds}"]["retrain"]
    report = {
        "mode": "compress",
        "source": source.workdir,
        "out_dir": out_dir,
        "file": path,
        "settings": {
            **plan.training_settings(),
            "gap_bits": plan.gap_bits,
            "huffman": plan.huffman,
        },
        "stages": {**stages, "finetune": finetune},
        "accuracy": {
            "before": before,
            "pruned": (last_retrain or {}).get("final"),
            "quantized": finetune and finetune["final"],
            "after": after,
            "top1_delta": after["top1"] - before["top1"],
        },
        "size": size,
    }
    write_json_atomic(os.path.join(out_dir, REPORT_FILE), report)
    return report


# ---------------------------------------------------------------------- other modes


def check_file(path: str, workdir: str) -> dict[str, Any]:
    """Decode a .sqz file, check it against the run in `workdir` and evaluate it there."""
    from sqzexplore.train import evaluate_params

    source = check_finished_run(workdir)
    if not os.path.isfile(path):
        raise CompressError("decode", f"{path} is not a file")
    params, stats = load_sqz_for(path, source.spec)
    before = _metrics(source.result.get("final"))
    after = _metrics(evaluate_params(source.config, params, stats))
    return {
        "mode": "decode",
        "source": source.workdir,
        "file": os.path.abspath(path),
        "accuracy": {
            "before": before,
            "after": after,
            "top1_delta": after["top1"] - before["top1"],
        },
        "size": size_report(path),
    }


def size_only(
    *,
    bits: int | Mapping[str, int],
    density: float | str | Mapping[str, float] = "released",
    huffman: bool = False,
    gap_bits: int = 4,
    preset: str | None = None,
    workdir: str | None = None,
    seed: int = 0,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """File size of a model pruned and quantized WITHOUT retraining: a preset's initial weights
    (`preset`, `seed`) or a finished run's trained ones (`workdir`). Writes model.sqz and
    report.json to `out_dir` if given."""
    from sqzexplore.models.spec import PRESETS
    from sqzexplore.models.squeezenet import SqueezeNet

    if (preset is None) == (workdir is None):
        raise CompressError("preset", "give exactly one of a preset and a workdir")
    source = None
    if workdir is not None:
        source = check_finished_run(workdir)
        spec = source.spec
    else:
        if preset not in PRESETS:
            raise CompressError("preset", f"unknown preset {preset!r}; available: {list(PRESETS)}")
        spec = PRESETS[preset]
    params_abs, _ = model_trees(spec)
    plan = make_plan(params_abs, bits=bits, density=density, huffman=huffman, gap_bits=gap_bits)
    if out_dir is not None:
        out_dir = os.path.abspath(out_dir)
        if source is not None:
            out_dir = check_out_dir(out_dir, source.workdir)
    if source is not None:
        from sqzexplore.train import load_run

        run = load_run(source.workdir)
        params, stats = run["params"], run["batch_stats"]
        weights = f"trained ({source.workdir})"
    else:
        model = SqueezeNet(spec, rngs=nnx.Rngs(seed))
        params = jax.device_get(nnx.state(model, nnx.Param).to_pure_dict())
        stats = jax.device_get(nnx.state(model, nnx.BatchStat).to_pure_dict())
        weights = f"initial (preset {preset}, seed {seed})"
    masks = make_masks(params, plan.densities)
    layers = quantize_params(params, masks, plan.bits)
    stored = _stored_tree(merge_params(params, dequantize(layers)), stats)
    settings = {
        "densities": {layer_name(p): d for p, d in plan.densities.items()},
        "bits": {layer_name(p): b for p, b in plan.bits.items()},
        "gap_bits": plan.gap_bits,
        "huffman": plan.huffman,
    }
    report = {"mode": "size-only", "weights": weights, "spec": spec.name, "settings": settings}
    encoding = dict(gap_bits=plan.gap_bits, huffman=plan.huffman)
    if out_dir is None:
        report["size"] = size_report(encode_sqz(spec.to_dict(), layers, stored, **encoding))
    else:
        os.makedirs(out_dir, exist_ok=True)
        report["file"] = os.path.join(out_dir, MODEL_FILE)
        report["size"] = write_sqz(report["file"], spec.to_dict(), layers, stored, **encoding)
        write_json_atomic(os.path.join(out_dir, REPORT_FILE), report)
    return report
