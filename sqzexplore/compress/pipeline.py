"""Deep Compression of a finished run, end to end: what `sqz compress` does with a `CompressPlan`.

    prune (magnitude, per-layer densities) -> retrain with the masks in the train state
        [x rounds, the densities stepping down geometrically to their targets]
    -> k-means weight sharing of the surviving weights (2^b centroids per layer)
    -> centroid fine-tuning (each centroid's gradient is the sum over the weights sharing it)
    -> write the .sqz file -> read it back -> evaluate the DECODED model

The training stages (`stages.py`) are ordinary resumable trainer runs with fewer epochs and a
scaled-down learning rate.

Output directory (default `<RUN>.sqz-<bits>b`, next to the source run, never inside it; the
source run is only read):

    compress.json      the settings the training stages ran with; a rerun must match them
    prune_round1/ ...  trainer workdirs of the masked retraining, one per round
    finetune/          trainer workdir of the centroid fine-tuning
    model.sqz          the compressed model (see `sqzformat.py`)
    report.json        per-layer sizes, totals against fp32, accuracy before and after

`size_only` sizes a preset (its initial weights) or a run without any training: the file size of
SqueezeNet at given densities and bits is what the paper's Table 2 size row depends on.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import numpy as np
from flax import nnx

from sqzexplore import checkpoint, rundir, train
from sqzexplore.compress.encode import encode_sqz, write_sqz
from sqzexplore.compress.plan import CompressError, CompressPlan
from sqzexplore.compress.prune import (
    apply_masks,
    density_report,
    flatten_params,
    make_masks,
    merge_params,
    unflatten_params,
)
from sqzexplore.compress.quantize import dequantize, quantize_params
from sqzexplore.compress.runs import (
    FINETUNE_DIR,
    MODEL_FILE,
    REPORT_FILE,
    check_finished_run,
    check_out_dir,
    default_out_dir,
    eval_metrics,
    load_sqz_for,
    make_out_dir,
    model_trees,
    pin_settings,
)
from sqzexplore.compress.size import size_report
from sqzexplore.compress.stages import Log, MaskedKernels, SharedWeightKernels, run_stage
from sqzexplore.models.spec import PRESETS
from sqzexplore.models.squeezenet import SqueezeNet

_print = functools.partial(print, flush=True)


def _stored_tree(params: Any, batch_stats: Any) -> dict[str, Any]:
    """Parameters and batch statistics in one tree (their paths never collide) for the file."""
    flat_params, flat_stats = flatten_params(params), flatten_params(batch_stats or {})
    overlap = sorted(set(flat_params) & set(flat_stats))
    if overlap:
        raise ValueError(f"paths both parameters and batch statistics: {overlap}")
    return unflatten_params({**flat_params, **flat_stats})


def _assert_bit_identical(decoded: Any, expected: Any, what: str) -> None:
    decoded, expected = flatten_params(decoded), flatten_params(expected)
    if decoded.keys() != expected.keys():
        raise RuntimeError(f"decoded {what} have other paths than the written ones")
    for path, value in expected.items():
        value = np.asarray(value)
        if decoded[path].dtype != value.dtype or decoded[path].tobytes() != value.tobytes():
            raise RuntimeError(f"decoded {what} {path!r} differs from the written one")


def _accuracy(before: dict | None, after: dict, **stages: Any) -> dict[str, Any]:
    return {
        "before": before,
        **stages,
        "after": after,
        "top1_delta": after["top1"] - before["top1"],
    }


def compress_run(
    workdir: str, plan: CompressPlan, *, out_dir: str | None = None, log: Log = _print
) -> dict[str, Any]:
    """Compress the finished run in `workdir` (see the module docstring); returns the report.

    Every setting is checked against the run's model and the output directory before any weight
    is read or anything compiles (`CompressError` names the setting). Rerunning resumes or
    reuses the stage runs.
    """
    source = check_finished_run(workdir)
    out_dir = check_out_dir(out_dir or default_out_dir(source.workdir, plan.bits), workdir)
    plan = plan.for_model(model_trees(source.spec)[0], source.epochs, source.spec.layer_plan())
    make_out_dir(out_dir)
    pin_settings(out_dir, source, plan)

    run = checkpoint.load_run(source.workdir)
    params, stats = run["params"], run["batch_stats"]
    before = source.final
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
        if plan.retrain.epochs > 0:
            label = f"[{2 * k}/{total_stages}] retrain round {k}"
            trained, stage["retrain"] = run_stage(
                label,
                plan.retrain,
                source,
                os.path.join(out_dir, f"prune_round{k}"),
                MaskedKernels(masks),
                params,
                stats,
                log,
            )
            params = apply_masks(trained["params"], masks)
            stats = trained["batch_stats"]
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
    if plan.finetune.epochs > 0:
        tuned, finetune = run_stage(
            f"[{step + 1}/{total_stages}] fine-tune centroids",
            plan.finetune,
            source,
            os.path.join(out_dir, FINETUNE_DIR),
            SharedWeightKernels(layers),
            params,
            stats,
            log,
        )
        flat_tuned = flatten_params(tuned["params"])
        layers = {p: layer.with_codebook(flat_tuned[p]) for p, layer in layers.items()}
        params, stats = tuned["params"], tuned["batch_stats"]
    quantized = merge_params(params, dequantize(layers))

    # ---- 3. the file, read back and evaluated.
    path = os.path.join(out_dir, MODEL_FILE)
    size = write_sqz(
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
    log(
        f"[{total_stages}/{total_stages}] wrote {path}: {size['total']['file_bytes']:,} bytes; "
        "evaluating the decoded model"
    )
    after = eval_metrics(train.evaluate_params(source.config, decoded_params, decoded_stats))
    last_retrain = stages[f"prune_round{plan.rounds}"]["retrain"]
    report = {
        "mode": "compress",
        "source": source.workdir,
        "out_dir": out_dir,
        "file": path,
        "settings": plan.settings(),
        "stages": {**stages, "finetune": finetune},
        "accuracy": _accuracy(
            before,
            after,
            pruned=(last_retrain or {}).get("final"),
            quantized=finetune and finetune["final"],
        ),
        "size": size,
    }
    rundir.write_json(os.path.join(out_dir, REPORT_FILE), report)
    return report


# ---------------------------------------------------------------------- other modes


def check_file(path: str, workdir: str) -> dict[str, Any]:
    """Decode a .sqz file, check it against the run in `workdir` and evaluate it there."""
    source = check_finished_run(workdir)
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"
        raise CompressError("decode", f"{path} {what}; give a .sqz file")
    params, stats = load_sqz_for(path, source.spec)
    after = eval_metrics(train.evaluate_params(source.config, params, stats))
    return {
        "mode": "decode",
        "source": source.workdir,
        "file": os.path.abspath(path),
        "accuracy": _accuracy(source.final, after),
        "size": size_report(path),
    }


def size_only(
    plan: CompressPlan,
    *,
    preset: str | None = None,
    workdir: str | None = None,
    seed: int = 0,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """File size of a model pruned and quantized WITHOUT retraining: a preset's initial weights
    (`preset`, `seed`) or a finished run's trained ones (`workdir`). Writes model.sqz and
    report.json to `out_dir` if given."""
    if (preset is None) == (workdir is None):
        raise CompressError("preset", "give exactly one of --preset and --workdir")
    source = None
    if workdir is not None:
        source = check_finished_run(workdir)
        spec = source.spec
    else:
        if preset not in PRESETS:
            raise CompressError("preset", f"unknown preset {preset!r}; available: {list(PRESETS)}")
        spec = PRESETS[preset]
    plan = plan.for_model(model_trees(spec)[0], layers=spec.layer_plan())
    if out_dir is not None:
        out_dir = check_out_dir(out_dir, source and source.workdir)
    if source is not None:
        run = checkpoint.load_run(source.workdir)
        params, stats = run["params"], run["batch_stats"]
        weights = f"trained ({source.workdir})"
    else:
        model = SqueezeNet(spec, rngs=nnx.Rngs(seed))
        params = jax.device_get(nnx.state(model, nnx.Param).to_pure_dict())
        stats = jax.device_get(nnx.state(model, nnx.BatchStat).to_pure_dict())
        weights = f"initial (preset {preset}, seed {seed})"
    layers = quantize_params(params, make_masks(params, plan.density), plan.bits)
    stored = _stored_tree(merge_params(params, dequantize(layers)), stats)
    settings = {k: plan.settings()[k] for k in ("densities", "bits", "gap_bits", "huffman")}
    report = {"mode": "size-only", "weights": weights, "spec": spec.name, "settings": settings}
    encoding = dict(gap_bits=plan.gap_bits, huffman=plan.huffman)
    if out_dir is None:
        report["size"] = size_report(encode_sqz(spec.to_dict(), layers, stored, **encoding))
    else:
        make_out_dir(out_dir)
        report["file"] = os.path.join(out_dir, MODEL_FILE)
        report["size"] = write_sqz(report["file"], spec.to_dict(), layers, stored, **encoding)
        rundir.write_json(os.path.join(out_dir, REPORT_FILE), report)
    return report
