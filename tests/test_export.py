"""`sqz export`: the ONNX and StableHLO artifacts' logits equal the Flax model's (presets, a
grouped-expand point with BatchNorm, simple and complex bypass, a trained digits run, its best
checkpoint and its compressed .sqz), read back with the runtimes' own APIs only; and bad input
(an unfinished run, a format not installed, a batch that does not fit, an unknown layout) is one
line before anything is built."""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
import onnxruntime as ort
import pytest
from jax import export as jax_export

from sqzexplore import checkpoint
from sqzexplore import cli as sqz_cli
from sqzexplore.compress.runs import load_sqz_for
from sqzexplore.export import artifact, source
from sqzexplore.export.source import ExportError, Weights
from sqzexplore.models.spec import SqueezeNetSpec, preset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "data", "tiny_digits.py")
# A small digits point: 4 Fire modules, one pool, every kind of conv.
SMALL = dict(
    stem_filters=16, base_e=16, incr_e=16, squeeze_ratio=0.5, num_fire=4, pool_after=("fire3",)
)


def _json(path: str):
    with open(path) as f:
        return json.load(f)


def _outside_logits(out_dir: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """Each artifact in `out_dir` run with its runtime's own API (no sqzexplore code)."""
    found = {}
    onnx_path = os.path.join(out_dir, "model.onnx")
    if os.path.exists(onnx_path):
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        found["onnx"] = session.run(None, {session.get_inputs()[0].name: images})[0]
    tflite_path = os.path.join(out_dir, "model.tflite")
    if os.path.exists(tflite_path):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=tflite_path)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
        interpreter.invoke()
        found["tflite"] = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    hlo_path = os.path.join(out_dir, "model.stablehlo")
    if os.path.exists(hlo_path):
        with open(hlo_path, "rb") as f:
            exported = jax_export.deserialize(bytearray(f.read()))
        found["stablehlo"] = np.asarray(exported.call(images))
    return found


def _perturbed(weights: Weights, seed: int = 1) -> Weights:
    """Weights with non-trivial BatchNorm statistics and scales (a fresh init has mean 0, var
    1, scale 1, bias 0, so folding it would test nothing)."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: (a + 0.1 * rng.normal(size=a.shape)).astype(np.float32),
                          weights.params)  # fmt: skip
    stats = jax.tree.map(lambda a: (a + rng.uniform(0.1, 1.0, a.shape)).astype(np.float32),
                         weights.batch_stats)  # fmt: skip
    return Weights(weights.spec, params, stats, weights.origin)


def _check_export(weights: Weights, tmp_path, batch: int, layout: str, formats=None) -> dict:
    """Export, then compare the artifacts (read back independently) with the Flax model."""
    out = str(tmp_path / f"export-{layout}-{batch}")
    formats = formats or list(artifact.FORMATS.values())
    manifest = artifact.export_model(weights, out, formats, batch, layout)
    images = artifact.sample_inputs(weights.spec, batch, layout, seed=7)
    nhwc = images if layout == "nhwc" else images.transpose(0, 2, 3, 1)
    want = artifact.reference_logits(weights, nhwc)
    bound = artifact.TOLERANCE * max(1.0, float(np.abs(want).max()))
    got = _outside_logits(out, images)
    assert sorted(got) == sorted(f.name for f in formats)
    for name, logits in got.items():
        assert logits.shape == (batch, weights.spec.num_classes), name
        assert np.abs(logits - want).max() <= bound, name
        assert manifest["artifacts"][name]["within_tolerance"]
        assert manifest["artifacts"][name]["bytes"] == os.path.getsize(
            os.path.join(out, f"model.{name}")
        )
    return manifest


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v1.0", "v1.1"])
def test_presets_export_with_equal_logits(name, tmp_path):
    manifest = _check_export(source.from_preset(name), tmp_path, batch=1, layout="nhwc")
    size = manifest["paper_size"]
    # The artifacts hold fp32 weights: their size on disk is about the paper-style size (the
    # StableHLO module stores an all-zero bias as one splat constant, so it may be a bit less).
    for row in manifest["artifacts"].values():
        assert 0.98 * size["fp32_bytes"] < row["bytes"] < 1.02 * size["fp32_bytes"]
    assert size["params"] == {"v1.0": 1_248_424, "v1.1": 1_235_496}[name]


@pytest.mark.parametrize(
    "overrides, layout",
    [
        (dict(expand3x3_groups=4, batch_norm=True), "nchw"),  # grouped expand, folded BN
        (dict(bypass="simple", batch_norm=True), "nhwc"),
        (dict(bypass="complex", classifier_relu=False), "nchw"),
        (dict(pool_ceil=False, pool_after=("fire2", "fire4")), "nhwc"),
    ],
    ids=["grouped-expand-bn", "simple-bypass-bn", "complex-bypass", "floor-pools"],
)
def test_design_points_export_with_equal_logits(overrides, layout, tmp_path):
    spec = preset("digits", **{**SMALL, **overrides})
    weights = _perturbed(source.from_spec(spec, seed=3))
    manifest = _check_export(weights, tmp_path, batch=3, layout=layout)
    assert manifest["batch_norm_folded"] == spec.batch_norm
    assert manifest["input_shape"] == ([3, 16, 16, 1] if layout == "nhwc" else [3, 1, 16, 16])


def test_litert_artifact_of_a_grouped_complex_bypass_point(tmp_path):
    # TFLite's CONV_2D with groups, the 1x1 bypass convs, folded BatchNorm, NCHW transposed.
    spec = preset("digits", **SMALL, expand3x3_groups=2, bypass="complex", batch_norm=True)
    weights = _perturbed(source.from_spec(spec, seed=4))
    formats = [artifact.FORMATS["tflite"]]
    manifest = _check_export(weights, tmp_path, batch=2, layout="nchw", formats=formats)
    assert manifest["artifacts"]["tflite"]["runtime"].startswith("ai-edge-litert ")


def test_folding_removes_every_batch_norm_and_keeps_the_logits():
    spec = preset("digits", **SMALL, batch_norm=True, expand3x3_groups=2)
    weights = _perturbed(source.from_spec(spec))
    folded_spec, folded = source.fold_batch_norm(weights)
    assert not folded_spec.batch_norm
    assert all("_bn" not in k for k in json.dumps(jax.tree.map(lambda a: 0, folded)).split('"'))
    images = artifact.sample_inputs(spec, 2, "nhwc")
    want = artifact.reference_logits(weights, images)
    got = np.asarray(source.flax_model(folded_spec, folded)(images))
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


# ---------------------------------------------------------------------- a trained digits run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> str:
    workdir = str(tmp_path_factory.mktemp("digits") / "run")
    argv = [
        "train", f"--config={TINY}:batch_norm=true", f"--workdir={workdir}",
        "--config.num_steps=8", "--config.eval_every_epochs=0.2",
        "--config.checkpoint_every_epochs=0.2",
    ]  # fmt: skip
    assert sqz_cli.main(argv) == 0
    return workdir


@pytest.fixture(scope="module")
def digits_sqz(digits_run, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("digits") / "run.sqz-6b")
    argv = ["compress", f"--workdir={digits_run}", "--bits=6", "--density=0.5",
            "--retrain-epochs=0", "--finetune-epochs=0", f"--out={out}"]  # fmt: skip
    assert sqz_cli.main(argv) == 0
    return out


# The tests of the `digits_run` / `digits_sqz` fixtures on one xdist worker (built once).
DIGITS = pytest.mark.xdist_group("export_digits")


@DIGITS
@pytest.mark.slow
def test_digits_run_exports_from_the_command_line(digits_run, tmp_path, capsys):
    out = str(tmp_path / "final")
    argv = ["export", f"--workdir={digits_run}", "--batch=2", "--layout=nchw", f"--out={out}"]
    assert sqz_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "model.onnx" in printed and "model.stablehlo" in printed
    assert "paper-style size: 24,090 params" in printed
    manifest = _json(os.path.join(out, "export.json"))
    assert manifest["source"]["kind"] == "run" and manifest["batch_norm_folded"]
    loaded = checkpoint.load_run(digits_run)
    assert manifest["source"]["step"] == loaded["step"]
    weights = Weights(loaded["spec"], loaded["params"], loaded["batch_stats"], {})
    images = artifact.sample_inputs(weights.spec, 2, "nchw", seed=5)
    want = artifact.reference_logits(weights, images.transpose(0, 2, 3, 1))
    for name, got in _outside_logits(out, images).items():
        assert np.abs(got - want).max() <= artifact.TOLERANCE * max(1, np.abs(want).max()), name
    # The best checkpoint: the run's best evaluation step, kept on disk.
    best_out = str(tmp_path / "best")
    argv = ["export", f"--workdir={digits_run}", "--checkpoint=best", "--format=onnx",
            f"--out={best_out}", "--json"]  # fmt: skip
    assert sqz_cli.main(argv) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["source"]["step"] == _json(f"{digits_run}/result.json")["best"]["step"]
    assert best["artifacts"]["onnx"]["within_tolerance"]


@DIGITS
@pytest.mark.slow
def test_compressed_digits_run_exports_its_decoded_weights(
    digits_run, digits_sqz, tmp_path, capsys
):
    import onnx
    from onnx import numpy_helper

    sqz_file = os.path.join(digits_sqz, "model.sqz")
    spec = SqueezeNetSpec.from_dict(_json(os.path.join(digits_run, "spec.json")))
    params, stats = load_sqz_for(sqz_file, spec)
    weights = Weights(spec, params, stats, {})
    images = artifact.sample_inputs(spec, 1, "nhwc", seed=2)
    want = artifact.reference_logits(weights, images)
    for flag, value in (("sqz", sqz_file), ("workdir", digits_sqz)):
        out = str(tmp_path / flag)
        assert sqz_cli.main(["export", f"--{flag}={value}", f"--out={out}"]) == 0
        assert f".sqz {os.path.getsize(sqz_file):,} B" in capsys.readouterr().out
        got = _outside_logits(out, images)
        assert sorted(got) == ["onnx", "stablehlo"]
        for logits in got.values():
            assert np.abs(logits - want).max() <= artifact.TOLERANCE * max(1, np.abs(want).max())
    # The shared weights survive: a 6-bit kernel has at most 2^6 values plus the pruned zeros,
    # and folding scales each output channel by one factor, so each ONNX output channel too.
    model = onnx.load(os.path.join(tmp_path, "sqz", "model.onnx"))
    kernels = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert len(np.unique(params["fire2"]["squeeze"]["kernel"])) <= 2**6 + 1
    for channel in kernels["fire2/squeeze/kernel"]:  # OIHW
        assert len(np.unique(channel)) <= 2**6 + 1


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset=v1.1", "--batch=0"], "--batch: must be an integer >= 1, got 0"),
        (["--preset=v1.1", "--batch=two"], "--batch: must be an integer >= 1, got 'two'"),
        (["--preset=v1.1", "--batch=100000"], r"--batch: must be in [1, 65536], got 100000"),
        (["--preset=v1.1", "--layout=chwn"], "--layout: must be one of nhwc, nchw, got 'chwn'"),
        (["--preset=v1.1", "--format=coreml"], "--format: must be among onnx, stablehlo, tflite"),
        (["--preset=v9"], "--preset: unknown preset 'v9'"),
        (["--preset=v1.1", "--checkpoint=best"], "--checkpoint: best applies to --workdir"),
        (["--workdir={tmp}/missing"], "does not exist"),
        (["--workdir={tmp}/unfinished"], "holds no finished run (no result.json)"),
        (["--workdir={tmp}/stopped"], "status 'preempted', not 'complete'; only a run trained to"
                                      " the end can be exported"),
        (["--sqz={tmp}/unfinished/config.json"], "--sqz:"),
    ],
    ids=["batch-0", "batch-word", "batch-huge", "layout", "format", "preset", "best-preset",
         "missing-run", "unfinished-run", "stopped-run", "not-sqz"],
)  # fmt: skip
def test_bad_input_is_one_line_before_anything_is_built(argv, message, tmp_path, capsys):
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.json").write_text("{}")
    (tmp_path / "stopped").mkdir()  # a run that ended early (its result says so)
    (tmp_path / "stopped" / "config.json").write_text("{}")
    (tmp_path / "stopped" / "spec.json").write_text(preset("digits").to_json())
    (tmp_path / "stopped" / "result.json").write_text('{"status": "preempted"}')
    out = tmp_path / "out"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert sqz_cli.main(["export", *argv, f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not out.exists()


def test_a_format_not_installed_is_named(monkeypatch):
    real = artifact.importlib.util.find_spec
    monkeypatch.setattr(
        artifact.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    with pytest.raises(ExportError, match=r"format: onnx needs the Python package\(s\) onnxrun"):
        artifact.check_formats("stablehlo,onnx")
    assert [f.name for f in artifact.check_formats("stablehlo")] == ["stablehlo"]


def test_a_batch_too_big_for_memory_says_what_fits():
    spec = preset("v1.0")
    with pytest.raises(ExportError, match=r"batch: 64 images of 224x224 need about") as raised:
        artifact.check_batch(64, spec, available=2**30)
    fits = int(re.search(r"at most (\d+) fits", str(raised.value)).group(1))
    assert 1 <= fits < 64
    assert artifact.check_batch(fits, spec, available=2**30) == fits
    with pytest.raises(ExportError, match="at most"):
        artifact.check_batch(fits + 1, spec, available=2**30)


def test_best_checkpoint_no_longer_kept_is_one_line(tmp_path):
    with pytest.raises(ExportError, match="checkpoint: the best step 3 .* no longer kept"):
        os.makedirs(tmp_path / "checkpoints" / "9")
        source._best_checkpoint(str(tmp_path), {"best": {"step": 3}})
