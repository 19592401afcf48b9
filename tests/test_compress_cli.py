"""`sqz compress` end to end: reparametrised retraining, the pipeline, the CLI and its errors.

Fast tests run the pruning / fine-tuning reparametrisations under `jax.jit` with a real
SqueezeNet loss and check every bad input is refused before anything is read or compiled (the
trainer and the weight loader are replaced by functions that fail if called). The slow ones train
a tiny digits run and compress it through the real trainer.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sqzexplore import checkpoint, optim, train
from sqzexplore.compress import (
    CompressError,
    CompressPlan,
    conv_kernels,
    dequantize,
    encode_sqz,
    flatten_params,
    make_masks,
    merge_params,
    quantize_params,
    read_sqz,
    unflatten_params,
)
from sqzexplore.compress import cli as compress_cli
from sqzexplore.compress.plan import parse_bits, parse_density
from sqzexplore.compress.runs import load_sqz_for, model_trees
from sqzexplore.compress.stages import MaskedKernels, SharedWeightKernels
from sqzexplore.config import load_config_file, spec_from_config
from sqzexplore.models import SqueezeNet, SqueezeNetSpec, preset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "data", "tiny_digits.py")
# Two Fire modules with BatchNorm: every kind of layer, and a train step that compiles quickly.
SMALL_SPEC = preset(
    "digits",
    stem_filters=16,
    base_e=16,
    incr_e=16,
    num_fire=2,
    pool_after=("fire2",),
    batch_norm=True,
)


def tiny_config(arg: str = "batch_norm=true"):
    return load_config_file(TINY, arg)


def random_trees(spec: SqueezeNetSpec, seed: int = 0) -> tuple[dict, dict]:
    """NumPy `(params, batch_stats)` with the model's paths and shapes (nothing compiled):
    Gaussian kernels and biases, BatchNorm scale 1, mean 0, var 1."""
    rng = np.random.default_rng(seed)
    params_abs, stats_abs = model_trees(spec)

    def fill(path: str, leaf) -> np.ndarray:
        if path.endswith(("/scale", "/var")):
            return np.ones(leaf.shape, np.float32)
        if path.endswith("/mean"):
            return np.zeros(leaf.shape, np.float32)
        return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return tuple(
        unflatten_params({p: fill(p, leaf) for p, leaf in flatten_params(tree).items()})
        for tree in (params_abs, stats_abs)
    )


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def tree_digest(directory: str) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path."""
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def fake_finished_run(directory, config, *, status: str = "complete") -> str:
    """A run directory's metadata (config, spec, result, a checkpoint step folder) without
    weights: enough for every check that must happen before weights are read."""
    os.makedirs(os.path.join(directory, "checkpoints", "3"))
    spec = spec_from_config(config)
    files = {
        "config.json": json.loads(config.to_json_best_effort()),
        "spec.json": spec.to_dict(),
        "result.json": {
            "status": status,
            "final": {"top1": 0.9, "top5": 1.0, "loss": 0.3},
            "epochs": 3.0,
        },
    }
    for name, content in files.items():
        with open(os.path.join(directory, name), "w") as f:
            json.dump(content, f)
    return str(directory)


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if anything loads weights, trains or evaluates."""

    def forbidden(*args, **kwargs):
        raise AssertionError("bad input must be refused before weights are read or compiled")

    for name in ("train_and_evaluate", "evaluate_params"):
        monkeypatch.setattr(train, name, forbidden)
    monkeypatch.setattr(checkpoint, "load_run", forbidden)


# ---------------------------------------------------------------------- reparametrisations


def _loss_and_tx(spec: SqueezeNetSpec, reparam, stats):
    """A real training loss through `reparam.apply` and the trainer's optimiser (AdamW with
    weight decay on >1-D leaves), as `train.py` wires them."""
    graphdef, _, _ = nnx.split(
        nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0))), nnx.Param, nnx.BatchStat
    )
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, spec.image_size, spec.image_size, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, spec.num_classes, 8))

    def loss(trainable, aux):
        model = nnx.merge(graphdef, reparam.apply(trainable, aux), jax.tree.map(jnp.asarray, stats))
        logits = model(x, train=True, dropout_key=jax.random.key(0))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    config = tiny_config().optim
    config.weight_decay = 0.1  # large, so decay of a pruned weight would show at once
    tx, _ = optim.make_optimizer(config, 10, 0)
    return loss, tx


def _train_steps(reparam, params, spec, stats, steps=3):
    """`steps` optimiser steps as the trainer takes them; returns the initial and final
    trainable trees, aux, and the parameters the model sees at the end."""
    loss, tx = _loss_and_tx(spec, reparam, stats)
    # `init` is traced, as inside the trainer's jitted init; one compiled step runs `steps` times.
    trainable, aux = jax.jit(reparam.init)(params)
    first = jax.device_get(trainable)

    @jax.jit
    def step(trainable, opt_state):
        grads = jax.grad(loss)(trainable, aux)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state

    opt_state = tx.init(trainable)
    for _ in range(steps):
        trainable, opt_state = step(trainable, opt_state)
    applied = jax.jit(reparam.apply)(trainable, aux)
    return first, *jax.device_get((trainable, aux, applied))


def test_masked_kernels_keep_pruned_weights_exactly_zero_through_adamw():
    spec = SMALL_SPEC
    params, stats = random_trees(spec)
    masks = make_masks(params, 0.3)
    first, trained, aux, applied = _train_steps(MaskedKernels(masks), params, spec, stats)
    flat_masks = flatten_params(masks)
    np.testing.assert_array_equal(flatten_params(aux)["conv1/kernel"], flat_masks["conv1/kernel"])
    for path, mask in flat_masks.items():
        for tree in (first, trained, applied):  # the state (checkpointed) and what the model sees
            assert np.all(flatten_params(tree)[path][~mask] == 0), path
    moved = [
        p
        for p, m in flat_masks.items()
        if not np.array_equal(flatten_params(trained)[p][m], flatten_params(params)[p][m])
    ]
    assert len(moved) == len(flat_masks)  # the surviving weights did train
    assert not np.array_equal(trained["conv1_bn"]["scale"], params["conv1_bn"]["scale"])


def test_shared_weights_stay_on_the_codebook_and_centroids_train():
    spec = SMALL_SPEC
    params, stats = random_trees(spec)
    masks = make_masks(params, 0.5)
    layers = quantize_params(params, masks, 3)
    reparam = SharedWeightKernels(layers)
    first, trained, aux, applied = _train_steps(reparam, params, spec, stats)
    flat_first, flat_trained, flat_applied = map(flatten_params, (first, trained, applied))
    # Codebooks are 1-D, so the kernels-only weight decay mask leaves them alone.
    assert not any(flatten_params(optim.decay_mask(first))[p] for p in layers)
    for path, layer in layers.items():
        np.testing.assert_array_equal(flat_first[path], layer.codebook)
        np.testing.assert_array_equal(flatten_params(dequantize(layers))[path], layer.dequantize())
        codebook = flat_trained[path]
        assert codebook.shape == (8,)
        kernel = flat_applied[path]
        assert kernel.shape == layer.shape and np.all(kernel[~layer.mask] == 0)
        assert len(np.unique(kernel[layer.mask])) <= 2**3
        np.testing.assert_array_equal(kernel[layer.mask], codebook[layer.codes])
    changed = [p for p in layers if not np.array_equal(flat_trained[p], layers[p].codebook)]
    assert len(changed) == len(layers)
    assert not np.array_equal(trained["conv10"]["bias"], params["conv10"]["bias"])


def test_iterative_masks_are_nested_and_reach_their_targets():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
    params = {"c": {"kernel": kernel}}
    plan = CompressPlan(bits=4, density=0.2, rounds=3).for_model(params)
    densities = [plan.round_densities(k)["c/kernel"] for k in (1, 2, 3)]
    np.testing.assert_allclose(densities, [0.2 ** (1 / 3), 0.2 ** (2 / 3), 0.2])
    masks = None
    for k in (1, 2, 3):
        previous = masks
        masks = make_masks(params, plan.round_densities(k), within=previous)
        if previous is not None:
            assert not np.any(masks["c"]["kernel"] & ~previous["c"]["kernel"])
        params = {"c": {"kernel": np.where(masks["c"]["kernel"], kernel, 0).astype(np.float32)}}
    assert masks["c"]["kernel"].sum() == round(0.2 * kernel.size)
    # Retraining may leave a surviving weight exactly zero: it still outranks the pruned zeros.
    survivor = masks["c"]["kernel"].ravel().copy()
    survivor[0] = False  # a pruned position at the front...
    first = np.flatnonzero(survivor)[0]
    weights = np.where(survivor, kernel.ravel(), 0).astype(np.float32)
    weights[first] = 0.0  # ...and a survivor retrained to exactly zero behind it
    weights = {"c": {"kernel": weights.reshape(kernel.shape)}}
    previous = {"c": {"kernel": survivor.reshape(kernel.shape)}}
    density = survivor.sum() / survivor.size
    unrestricted = make_masks(weights, density)["c"]["kernel"].ravel()
    assert unrestricted[0] and not unrestricted[first]  # by position alone the tie goes wrong
    again = make_masks(weights, density, within=previous)["c"]["kernel"]
    np.testing.assert_array_equal(again, previous["c"]["kernel"])


# ---------------------------------------------------------------------- argument checks


def test_parse_bits_and_density_and_the_plan_checks_their_ranges():
    assert parse_bits("6") == 6
    assert parse_bits("6, conv10=4") == {"default": 6, "conv10": 4}
    assert parse_density("released") == "released"
    assert parse_density("0.33") == 0.33
    assert parse_density("fire2/squeeze=0.5,conv10=0.2") == {
        "fire2/squeeze": 0.5,
        "conv10": 0.2,
    }
    with pytest.raises(CompressError, match=r"bits: must be in \[2, 8\], got 9"):
        CompressPlan(bits=parse_bits("9"))
    with pytest.raises(CompressError, match=r"got 1 \(layer conv1\)"):
        CompressPlan(bits=parse_bits("6,conv1=1"))
    with pytest.raises(CompressError, match="'six' is not an integer"):
        parse_bits("six")
    with pytest.raises(CompressError, match=r"density: must be in \(0, 1\], got 1.5"):
        CompressPlan(bits=6, density=parse_density("1.5"))
    with pytest.raises(CompressError, match="names conv1 more than once"):
        parse_density("conv1=0.5,conv1=0.4")
    with pytest.raises(CompressError, match="one number, or layer=density pairs"):
        parse_density("0.5,conv1=0.4")
    # Resolved against a model, a plan names every conv kernel; unknown layers are refused.
    params, _ = model_trees(SMALL_SPEC)
    plan = CompressPlan(bits={"default": 6, "conv10": 4}, density=0.5).for_model(params, 8.0)
    assert plan.bits["conv10/kernel"] == 4 and set(plan.bits) == set(conv_kernels(params))
    assert plan.retrain.epochs == 2.0 and plan.finetune.epochs == 1.0
    assert plan.for_model(params, 8.0) == plan  # resolving is a fixed point
    with pytest.raises(CompressError, match="density: densities names layer 'conv9'"):
        CompressPlan(bits=6, density={"conv9": 0.5}).for_model(params)


def snapshot(root) -> dict[str, str]:
    """Every path under `root` (directories too) with its file's sha256 and mode."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(directory, name), root)] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, root)] = f"{digest} {os.stat(path).st_mode:o}"
    return out


def _rebuild(data: bytes, edit) -> bytes:
    """`data` with its header edited by `edit(header)`, both CRCs consistent again."""
    (length,) = struct.unpack_from("<I", data, 4)
    header, payload = json.loads(data[12 : 12 + length]), data[12 + length :]
    edit(header)
    header["payload_length"], header["payload_crc32"] = len(payload), zlib.crc32(payload)
    blob = json.dumps(header).encode()
    return b"SQZ1" + struct.pack("<II", len(blob), zlib.crc32(blob)) + blob + payload


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> str:
    """Runs and files that bad input is given against: a finished run (metadata only), broken
    runs, a plain file, and .sqz files good, damaged and for other models."""
    root = tmp_path_factory.mktemp("world")
    config = tiny_config()
    run = fake_finished_run(root / "run", config)
    fake_finished_run(root / "pruned", config, status="pruned")
    fake_finished_run(root / "badresult", config)
    (root / "badresult" / "result.json").write_text("{not json")
    fake_finished_run(root / "nockpt", config)
    os.rmdir(root / "nockpt" / "checkpoints" / "3")
    (root / "unfinished").mkdir()
    (root / "unfinished" / "config.json").write_text(config.to_json_best_effort())
    (root / "afile").write_text("not a directory\n")
    (root / "adir").mkdir()
    spec = spec_from_config(config)
    params, stats = random_trees(spec)
    layers = quantize_params(params, make_masks(params, 0.5), 4)
    stored = unflatten_params({**flatten_params(params), **flatten_params(stats)})
    good = encode_sqz(spec.to_dict(), layers, stored)
    other_spec = spec.replace(base_e=32, incr_e=32)
    other_params, other_stats = random_trees(other_spec)
    other_stored = unflatten_params({**flatten_params(other_params), **flatten_params(other_stats)})
    other = encode_sqz(other_spec.to_dict(), quantize_params(other_params, None, 4), other_stored)

    def huge(header):
        header["layers"][0]["shape"] = [10**6, 10**6, 3, 3]

    def claim_run_spec(header):
        header["spec"] = json.loads(json.dumps(spec.to_dict()))

    files = {
        "good.sqz": good,
        "truncated.sqz": good[:-10],
        "flipped.sqz": good[:-5] + bytes([good[-5] ^ 1]) + good[-4:],
        "foreign.sqz": b"PK\x03\x04" + good[4:],
        "empty.sqz": b"",
        "huge.sqz": _rebuild(good, huge),
        "other.sqz": other,
        "othershapes.sqz": _rebuild(other, claim_run_spec),
        "nostats.sqz": encode_sqz(spec.to_dict(), layers, params),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    assert run == str(root / "run")
    return str(root)


BITS_RANGE = r"\[2, 8\]"
DENSITY_RANGE = r"\(0, 1\]"
# (id, argv with {w} for the world directory, what stderr must say). Every row names the flag or
# file at fault and, where there is one, the allowed range or the values to choose from.
BAD_INPUT = [
    ("bits-high", ["--workdir={w}/run", "--bits=9"], rf"--bits: must be in {BITS_RANGE}, got 9"),
    ("bits-low", ["--workdir={w}/run", "--bits=1"], rf"--bits: must be in {BITS_RANGE}, got 1"),
    (
        "bits-text",
        ["--workdir={w}/run", "--bits=x"],
        rf"--bits: 'x' is not an integer in {BITS_RANGE}",
    ),
    ("bits-missing", ["--workdir={w}/run"], rf"--bits: is required: a code width in {BITS_RANGE}"),
    ("bits-empty", ["--workdir={w}/run", "--bits="], "--bits: is empty"),
    (
        "bits-layer-range",
        ["--workdir={w}/run", "--bits=6,conv1=1"],
        rf"--bits: must be in {BITS_RANGE}, got 1 \(layer conv1\)",
    ),
    (
        "bits-layer-twice",
        ["--workdir={w}/run", "--bits=6,conv1=4,conv1=5"],
        "--bits: names conv1 more than once",
    ),
    (
        "bits-layer-unknown",
        ["--workdir={w}/run", "--bits=6,fire99/squeeze=4"],
        "--bits: bits names layer 'fire99/squeeze', which is not a conv layer .*conv layers: conv1",
    ),
    (
        "bits-layer-missing",
        ["--workdir={w}/run", "--bits=conv1=4"],
        "--bits: bits has no entry for layer 'fire2/squeeze'; name it or add 'default'",
    ),
    (
        "density-high",
        ["--workdir={w}/run", "--bits=6", "--density=1.5"],
        rf"--density: must be in {DENSITY_RANGE}, got 1.5",
    ),
    (
        "density-zero",
        ["--workdir={w}/run", "--bits=6", "--density=0"],
        rf"--density: must be in {DENSITY_RANGE}, got 0",
    ),
    (
        "density-nan",
        ["--workdir={w}/run", "--bits=6", "--density=nan"],
        rf"--density: must be a number in {DENSITY_RANGE}, got nan",
    ),
    (
        "density-text",
        ["--workdir={w}/run", "--bits=6", "--density=most"],
        rf"--density: 'most' is not a number in {DENSITY_RANGE} \(or 'released'\)",
    ),
    (
        "density-layer-range",
        ["--workdir={w}/run", "--bits=6", "--density=conv1=2"],
        rf"--density: must be in {DENSITY_RANGE}, got 2 \(layer conv1\)",
    ),
    (
        "density-mixed",
        ["--workdir={w}/run", "--bits=6", "--density=0.5,conv1=0.4"],
        "--density: give one number, or layer=density pairs only",
    ),
    (
        "density-layer-unknown",
        ["--workdir={w}/run", "--bits=6", "--density=fire99/squeeze=0.5"],
        "--density: densities names layer 'fire99/squeeze', which is not a conv layer",
    ),
    (
        "gap-bits-low",
        ["--workdir={w}/run", "--bits=6", "--gap-bits=0"],
        r"--gap-bits: must be in \[1, 16\], got 0",
    ),
    (
        "gap-bits-high",
        ["--workdir={w}/run", "--bits=6", "--gap-bits=17"],
        r"--gap-bits: must be in \[1, 16\], got 17",
    ),
    (
        "gap-bits-text",
        ["--workdir={w}/run", "--bits=6", "--gap-bits=four"],
        "argument --gap-bits: invalid int value: 'four'",
    ),
    (
        "rounds-low",
        ["--workdir={w}/run", "--bits=6", "--rounds=0"],
        r"--rounds: must be in \[1, 10\], got 0",
    ),
    (
        "rounds-high",
        ["--workdir={w}/run", "--bits=6", "--rounds=11"],
        r"--rounds: must be in \[1, 10\], got 11",
    ),
    (
        "lr-scale-high",
        ["--workdir={w}/run", "--bits=6", "--lr-scale=2"],
        rf"--lr-scale: must be in {DENSITY_RANGE}, got 2",
    ),
    (
        "lr-scale-zero",
        ["--workdir={w}/run", "--bits=6", "--lr-scale=0"],
        rf"--lr-scale: must be in {DENSITY_RANGE}, got 0",
    ),
    (
        "finetune-lr-negative",
        ["--workdir={w}/run", "--bits=6", "--finetune-lr-scale=-0.1"],
        rf"--finetune-lr-scale: must be in {DENSITY_RANGE}, got -0.1",
    ),
    (
        "retrain-epochs-negative",
        ["--workdir={w}/run", "--bits=6", "--retrain-epochs=-1"],
        r"--retrain-epochs: must be in \[0, 1e\+06\], got -1",
    ),
    (
        "finetune-epochs-inf",
        ["--workdir={w}/run", "--bits=6", "--finetune-epochs=inf"],
        r"--finetune-epochs: must be a number in \[0, 1e\+06\], got inf",
    ),
    (
        "unknown-flag",
        ["--workdir={w}/run", "--bits=6", "--prune=0.5"],
        "unrecognized arguments: --prune=0.5",
    ),
    ("workdir-missing", ["--bits=6"], "--workdir: is required: the finished run to compress"),
    ("workdir-absent", ["--workdir={w}/nosuch", "--bits=6"], "--workdir: .*/nosuch does not exist"),
    (
        "workdir-is-file",
        ["--workdir={w}/afile", "--bits=6"],
        "--workdir: .*/afile is a file, not a run directory",
    ),
    (
        "workdir-unfinished",
        ["--workdir={w}/unfinished", "--bits=6"],
        r"--workdir: .*/unfinished holds no finished run \(no result.json\)",
    ),
    (
        "workdir-pruned",
        ["--workdir={w}/pruned", "--bits=6"],
        "--workdir: the run in .*/pruned ended with status 'pruned', not 'complete'",
    ),
    (
        "workdir-bad-result",
        ["--workdir={w}/badresult", "--bits=6"],
        "--workdir: .*/badresult is not a readable run directory",
    ),
    (
        "workdir-no-checkpoint",
        ["--workdir={w}/nockpt", "--bits=6"],
        "--workdir: .*/nockpt has a result.json but no checkpoint",
    ),
    (
        "out-inside-run",
        ["--workdir={w}/run", "--bits=6", "--out={w}/run/compressed"],
        "--out: .*/run/compressed is inside the source run",
    ),
    (
        "out-is-file",
        ["--workdir={w}/run", "--bits=6", "--out={w}/afile"],
        "--out: .*/afile exists and is not a directory",
    ),
    (
        "out-under-file",
        ["--workdir={w}/run", "--bits=6", "--out={w}/afile/out"],
        "--out: .*/afile/out cannot be made: .*/afile exists and is not a directory",
    ),
    (
        "size-only-out-under-file",
        ["--size-only", "--preset=digits", "--bits=6", "--out={w}/afile/out"],
        "--out: .*/afile/out cannot be made",
    ),
    (
        "preset-without-size-only",
        ["--workdir={w}/run", "--bits=6", "--preset=v1.0"],
        "--preset: only sizes a preset with --size-only",
    ),
    (
        "size-only-two-sources",
        ["--size-only", "--bits=6", "--preset=v1.0", "--workdir={w}/run"],
        "--preset: --size-only needs exactly one of --preset and --workdir",
    ),
    (
        "size-only-no-source",
        ["--size-only", "--bits=6"],
        "--preset: --size-only needs exactly one of --preset and --workdir",
    ),
    (
        "size-only-unknown-preset",
        ["--size-only", "--bits=6", "--preset=v9"],
        r"--preset: unknown preset 'v9'; available: \['v1.0'",
    ),
    (
        "size-only-training-flag",
        ["--size-only", "--bits=6", "--preset=v1.0", "--rounds=2"],
        "--rounds: means nothing with --size-only",
    ),
    (
        "size-only-seed-range",
        ["--size-only", "--bits=6", "--preset=v1.0", "--seed=-1"],
        r"--seed: must be in \[0, 4294967295\], got -1",
    ),
    (
        "seed-without-preset",
        ["--workdir={w}/run", "--bits=6", "--seed=3"],
        "--seed: only seeds a preset's initial weights",
    ),
    (
        "decode-no-workdir",
        ["--decode={w}/good.sqz"],
        r"--workdir: --decode needs the run to evaluate on \(--workdir=RUN\)",
    ),
    (
        "decode-with-bits",
        ["--decode={w}/good.sqz", "--workdir={w}/run", "--bits=6"],
        "--decode: checks an existing file: give only --workdir .*not --bits",
    ),
    (
        "decode-absent",
        ["--decode={w}/none.sqz", "--workdir={w}/run"],
        "--decode: .*/none.sqz does not exist; give a .sqz file",
    ),
    (
        "decode-directory",
        ["--decode={w}/adir", "--workdir={w}/run"],
        "--decode: .*/adir is a directory; give a .sqz file",
    ),
    (
        "decode-empty",
        ["--decode={w}/empty.sqz", "--workdir={w}/run"],
        r"empty.sqz: truncated .sqz file: 0 bytes",
    ),
    (
        "decode-truncated",
        ["--decode={w}/truncated.sqz", "--workdir={w}/run"],
        "truncated.sqz: truncated .sqz file",
    ),
    (
        "decode-flipped",
        ["--decode={w}/flipped.sqz", "--workdir={w}/run"],
        "flipped.sqz: corrupted .sqz payload: CRC32 mismatch",
    ),
    (
        "decode-foreign",
        ["--decode={w}/foreign.sqz", "--workdir={w}/run"],
        "foreign.sqz: not a .sqz file: magic is b'PK",
    ),
    (
        "decode-huge-shape",
        ["--decode={w}/huge.sqz", "--workdir={w}/run"],
        r"huge.sqz: corrupted .sqz header: its shapes hold [\d,]+ weights, more than the 1024 "
        "per byte",
    ),
    (
        "decode-other-model",
        ["--decode={w}/other.sqz", "--workdir={w}/run"],
        r"--decode: .*other.sqz was written for another model: spec fields differ: "
        r"base_e \(file 32, run 16\); incr_e \(file 32, run 16\)",
    ),
    (
        "decode-other-shapes",
        ["--decode={w}/othershapes.sqz", "--workdir={w}/run"],
        r"--decode: .*othershapes.sqz: parameter '.*' is float32\[.*\], the model needs float32\[",
    ),
    (
        "decode-no-stats",
        ["--decode={w}/nostats.sqz", "--workdir={w}/run"],
        "--decode: .*does not hold this model's parameters .*conv1_bn/mean",
    ),
    (
        "decode-workdir-is-file",
        ["--decode={w}/good.sqz", "--workdir={w}/afile"],
        "--workdir: .*/afile is a file, not a run directory",
    ),
]


@pytest.mark.parametrize(
    "argv, message", [row[1:] for row in BAD_INPUT], ids=[row[0] for row in BAD_INPUT]
)
def test_bad_input_is_a_clear_error_and_changes_nothing(world, capsys, no_training, argv, message):
    before = snapshot(os.path.dirname(world))
    status = compress_cli.main([arg.format(w=world) for arg in argv])
    out, err = capsys.readouterr()
    assert status == 2, (status, err)
    assert err.startswith("error: ") and len(err.splitlines()) <= 3, err
    assert "Traceback" not in err and out == ""
    assert re.search(message, err), err
    assert snapshot(os.path.dirname(world)) == before  # nothing created, changed or removed


def test_bad_input_table_is_large_and_distinct():
    assert len(BAD_INPUT) >= 15
    assert len({row[0] for row in BAD_INPUT}) == len({tuple(row[1]) for row in BAD_INPUT})


def test_the_model_is_checked_before_the_file_is_decoded(world, monkeypatch, no_training):
    from sqzexplore.compress.decode import SqzFile

    spec = spec_from_config(tiny_config())

    def no_decoding(self):
        raise AssertionError("a file for another model must be refused before decoding")

    with monkeypatch.context() as patch:
        patch.setattr(SqzFile, "decode", no_decoding)
        for name in ("other.sqz", "othershapes.sqz", "nostats.sqz"):
            with pytest.raises(CompressError, match="decode: "):
                load_sqz_for(os.path.join(world, name), spec)
    # The good file decodes to the written parameters, bit for bit.
    decoded, decoded_stats = load_sqz_for(os.path.join(world, "good.sqz"), spec)
    params, stats = random_trees(spec)
    layers = quantize_params(params, make_masks(params, 0.5), 4)
    expected = flatten_params(merge_params(params, dequantize(layers)))
    for path, value in flatten_params(decoded).items():
        assert value.tobytes() == expected[path].tobytes()
    assert flatten_params(decoded_stats).keys() == flatten_params(stats).keys()


def test_help_answers_without_importing_jax():
    """`--help` and argument errors answer before jax, flax, numpy, orbax or TensorFlow are
    imported (importing them is what makes an answer slow; no duration is asserted)."""
    code = (
        "import sys\n"
        "from sqzexplore.cli import main\n"
        "try:\n"
        "    main(['compress', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('jax', 'flax', 'numpy', 'orbax', 'tensorflow') "
        "if m in sys.modules)\n"
        "print(heavy, file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0 and "--bits BITS" in done.stdout, done.stderr
    assert done.stderr.strip() == "[]", done.stderr
    # An argument error, from the real command: one line, no traceback.
    done = subprocess.run(
        [sys.executable, "-m", "sqzexplore.cli", "compress", "--bits=9", "--workdir=x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == "error: --bits: must be in [2, 8], got 9\n"


def test_size_only_on_a_preset(tmp_path, capsys):
    out = tmp_path / "sized"
    argv = ["--size-only", "--preset=digits", "--bits=6", "--density=0.4", "--huffman"]
    assert compress_cli.main([*argv, f"--out={out}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    total = report["size"]["total"]
    assert report["mode"] == "size-only" and report["weights"].startswith("initial")
    assert total["file_bytes"] == os.path.getsize(out / "model.sqz") < total["fp32_bytes"] / 4
    assert total["density"] == pytest.approx(0.4, abs=0.01)
    assert set(report["settings"]["bits"].values()) == {6}
    spec, params = read_sqz(out / "model.sqz")
    assert spec == preset("digits").to_dict()
    kernels = conv_kernels(params)
    assert all(len(np.unique(k[k != 0])) <= 64 for k in kernels.values())
    assert json.loads((out / "report.json").read_text())["size"] == report["size"]
    assert compress_cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "conv10" in text and "fp32" in text and "without retraining" in text


@pytest.mark.slow
def test_size_only_v1_0_matches_the_papers_sizes(capsys):
    assert compress_cli.main(["--size-only", "--preset=v1.0", "--bits=8", "--json"]) == 0
    eight = json.loads(capsys.readouterr().out)["size"]["total"]
    assert eight["file_bytes"] <= 0.66 * 2**20 and eight["surviving"] == 419_865
    assert (
        compress_cli.main(["--size-only", "--preset=v1.0", "--bits=6", "--huffman", "--json"]) == 0
    )
    six = json.loads(capsys.readouterr().out)["size"]["total"]
    assert six["file_bytes"] < 0.5 * 2**20


# ---------------------------------------------------------------------- end to end (trainer)


# The tests of the `source_run` / `compressed` fixtures on one xdist worker (built once).
COMPRESSED = pytest.mark.xdist_group("compressed_digits")


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> str:
    workdir = str(tmp_path_factory.mktemp("source") / "run")
    result = train.train_and_evaluate(tiny_config("epochs=3,batch_norm=true"), workdir)
    assert result["status"] == "complete"
    return workdir


@pytest.fixture(scope="module")
def compressed(source_run, tmp_path_factory):
    before = tree_digest(source_run)
    out = str(tmp_path_factory.mktemp("out") / "compressed")
    argv = [
        f"--workdir={source_run}",
        "--bits=6",
        "--density=0.5",
        "--retrain-epochs=1",
        "--finetune-epochs=1",
        f"--out={out}",
        "--json",
    ]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # capsys is per test; this fixture is per module
        status = compress_cli.main(argv)
    return {"status": status, "out": out, "argv": argv, "before": before, "stdout": stdout}


@COMPRESSED
@pytest.mark.slow
def test_compress_digits_run_end_to_end(source_run, compressed, capsys):
    assert compressed["status"] == 0
    out = compressed["out"]
    report = read_json(os.path.join(out, "report.json"))
    assert json.loads(compressed["stdout"].getvalue()) == report  # --json: stdout is the report
    # The source run was only read.
    assert tree_digest(source_run) == compressed["before"]
    # The file: smaller than fp32, one row per conv layer with density, bits and bytes.
    size = report["size"]
    assert os.path.getsize(os.path.join(out, "model.sqz")) == size["total"]["file_bytes"]
    assert size["total"]["file_bytes"] < size["total"]["fp32_bytes"] / 2
    params_abs, _ = model_trees(checkpoint.load_run(source_run)["spec"])
    assert len(size["layers"]) == len(conv_kernels(params_abs))
    for row in size["layers"].values():
        assert row["bits"] == 6 and row["density"] == pytest.approx(0.5, abs=0.02)
        assert row["total_bytes"] > 0
    # The decoded model is the fine-tuned in-memory one: same predictions on the eval split.
    accuracy = report["accuracy"]
    assert accuracy["after"]["top1"] == accuracy["quantized"]["top1"]
    assert accuracy["after"]["loss"] == pytest.approx(accuracy["quantized"]["loss"], rel=1e-5)
    assert accuracy["before"]["top1"] == read_json(f"{source_run}/result.json")["final"]["top1"]
    assert accuracy["top1_delta"] == pytest.approx(
        accuracy["after"]["top1"] - accuracy["before"]["top1"]
    )


@COMPRESSED
@pytest.mark.slow
def test_masks_survive_retraining(compressed):
    out = compressed["out"]
    retrained = checkpoint.load_run(os.path.join(out, "prune_round1"))  # the checkpointed state
    masks = retrained["aux"]
    kernels = conv_kernels(retrained["params"])
    assert flatten_params(masks).keys() == kernels.keys()
    for path, mask in flatten_params(masks).items():
        assert mask.dtype == bool
        assert np.all(kernels[path][~mask] == 0), path
        assert np.all(kernels[path][mask] != 0), path
    # The file keeps exactly these zeros, whatever fine-tuning did to the centroids.
    _, decoded = read_sqz(os.path.join(out, "model.sqz"))
    for path, mask in flatten_params(masks).items():
        assert np.all(flatten_params(decoded)[path][~mask] == 0), path


@COMPRESSED
@pytest.mark.slow
def test_finetuned_centroids_stay_shared_and_move(compressed):
    out = compressed["out"]
    retrained = checkpoint.load_run(os.path.join(out, "prune_round1"))
    initial = quantize_params(retrained["params"], retrained["aux"], 6)  # before fine-tuning
    tuned = checkpoint.load_run(os.path.join(out, "finetune"))
    trainable = flatten_params(tuned["params"])
    codes = flatten_params(tuned["aux"]["codes_full"])
    _, decoded = read_sqz(os.path.join(out, "model.sqz"))
    moved = 0
    for path, kernel in conv_kernels(decoded).items():
        codebook, layer = trainable[path], initial[path]
        assert codebook.shape == (64,)
        np.testing.assert_array_equal(codes[path], layer.codes_full)  # codes stay fixed
        assert len(np.unique(kernel[layer.mask])) <= 64 and np.all(kernel[~layer.mask] == 0)
        np.testing.assert_array_equal(kernel[layer.mask], codebook[layer.codes])
        moved += not np.array_equal(codebook, layer.codebook)
    assert moved == len(initial)


@COMPRESSED
@pytest.mark.slow
def test_decode_and_rerun(source_run, compressed, capsys):
    out = compressed["out"]
    report = read_json(os.path.join(out, "report.json"))
    capsys.readouterr()
    argv = [f"--decode={out}/model.sqz", f"--workdir={source_run}", "--json"]
    assert compress_cli.main(argv) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["accuracy"]["after"]["top1"] == report["accuracy"]["after"]["top1"]
    assert checked["size"] == report["size"]
    # Other settings into the same output directory: refused before any training.
    argv = [a if not a.startswith("--density") else "--density=0.3" for a in compressed["argv"]]
    assert compress_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--out: " in err and "other settings (differ in: densities)" in err
