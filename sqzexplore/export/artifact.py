"""Exporting a model to inference artifacts and checking them against the Flax model.

Formats (`FORMATS`):

    onnx       model.onnx, run by ONNX Runtime (CPU here; ONNX Runtime Mobile on a phone)
    stablehlo  model.stablehlo, JAX's serialised export (`jax.export`), run by any JAX
    tflite     model.tflite, run by LiteRT (ai-edge-litert, XNNPACK; Android and iOS)

ONNX is the default deployment format: ONNX Runtime ships Python 3.11 wheels for Linux, macOS and
Windows, is released monthly, and runs the same file on phones (ONNX Runtime Mobile); the graph is
built op by op from the layer plan with the `onnx` package, so no converter sits in between.
LiteRT/TFLite (`--format tflite`, opt-in: it imports TensorFlow, ~20 s) goes through `jax2tf`,
which here always serialises natively (its other modes are deprecated and ignored), and the
TFLite converter, which legalises that StableHLO to builtin ops (tflite_format.py).

Every export is checked before it is reported: the artifacts' logits on seeded random inputs
of the exported batch must equal the (unfolded) Flax model's within `TOLERANCE` of the largest
logit's magnitude (float32; the difference is summation order in convs, typically 1e-6). The
artifacts compute in float32 whatever the spec's compute dtype: a bfloat16 design point is
exported, and compared, as its float32 twin.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
from typing import Any

import numpy as np

from sqzexplore.export.source import ExportError, Weights, flax_model, fold_batch_norm
from sqzexplore.models.complexity import complexity

LAYOUTS = ("nhwc", "nchw")
TOLERANCE = 1e-4  # max |logit difference| <= TOLERANCE * max(1, max |Flax logit|)
MANIFEST = "export.json"
MAX_BATCH = 1 << 16


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    file: str
    packages: tuple[str, ...]  # import names, all needed
    runtime: str  # the distribution that runs it (its version is reported)
    description: str


FORMATS = {
    "onnx": Format(
        "onnx", "model.onnx", ("onnx", "onnxruntime"), "onnxruntime", "ONNX (ONNX Runtime)"
    ),
    "stablehlo": Format("stablehlo", "model.stablehlo", ("jax",), "jax", "StableHLO (jax.export)"),
    "tflite": Format(
        "tflite", "model.tflite", ("tensorflow",), "ai-edge-litert", "LiteRT / TFLite"
    ),
}


def runtime_version(fmt: Format) -> str:
    """'onnxruntime 1.32.0'."""
    runtime = fmt.runtime
    if fmt.name == "tflite":
        from sqzexplore.export.tflite_format import tflite_runtime

        runtime = tflite_runtime()
    try:
        return f"{runtime} {importlib.metadata.version(runtime)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{runtime} (not installed)"


def check_formats(names: str | list[str]) -> list[Format]:
    """The formats named ('onnx,stablehlo'), each installed, else ExportError."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ExportError("format", f"name at least one of {', '.join(FORMATS)}")
    out = []
    for name in names:
        if name not in FORMATS:
            raise ExportError("format", f"must be among {', '.join(FORMATS)}, got {name!r}")
        fmt = FORMATS[name]
        missing = [p for p in fmt.packages if importlib.util.find_spec(p) is None]
        if missing:
            raise ExportError(
                "format",
                f"{name} needs the Python package(s) {', '.join(missing)}, not installed here "
                f"(pip install {' '.join(missing)}; see requirements.txt)",
            )
        if fmt not in out:
            out.append(fmt)
    return out


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ExportError("layout", f"must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def check_batch(batch: Any, spec, available: int | None = None) -> int:
    """`batch` as an int in [1, MAX_BATCH] whose export check fits in half the free memory."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)):
        raise ExportError("batch", f"must be an integer in [1, {MAX_BATCH}], got {batch!r}")
    batch = int(batch)
    if not 1 <= batch <= MAX_BATCH:
        raise ExportError("batch", f"must be in [1, {MAX_BATCH}], got {batch}")
    per_image = 4 * (spec.image_size**2 * spec.in_channels + complexity(spec).activations)
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    budget = available // 2
    if batch * per_image > budget:
        fits = max(0, budget // per_image)
        raise ExportError(
            "batch",
            f"{batch} images of {spec.image_size}x{spec.image_size} need about "
            f"{batch * per_image / 2**30:.1f} GiB of activations to check the export, more "
            f"than half the {available / 2**30:.1f} GiB of free memory; at most {fits} fits",
        )
    return batch


def build(fmt: Format, spec, params, batch: int, layout: str) -> bytes:
    if fmt.name == "onnx":
        from sqzexplore.export.onnx_format import build_onnx

        return build_onnx(spec, params, batch, layout)
    if fmt.name == "tflite":
        from sqzexplore.export.tflite_format import build_tflite

        return build_tflite(spec, params, batch, layout)
    from sqzexplore.export.stablehlo import build_stablehlo

    return build_stablehlo(spec, params, batch, layout)


def load(fmt: Format, data: bytes | str, threads: int | None = None):
    """A callable `images -> logits` (NumPy) running the artifact `data` (bytes or a path).
    `threads` applies to ONNX Runtime and LiteRT; JAX's CPU threads are fixed when the process
    starts."""
    if isinstance(data, str):
        with open(data, "rb") as f:
            data = f.read()
    if fmt.name == "onnx":
        from sqzexplore.export.onnx_format import onnx_session, run_onnx

        session = onnx_session(data, threads)
        return lambda images: run_onnx(session, images)
    if fmt.name == "tflite":
        from sqzexplore.export.tflite_format import load_tflite

        return load_tflite(data, threads)
    from sqzexplore.export.stablehlo import load_stablehlo, run_stablehlo

    call = load_stablehlo(data)
    return lambda images: run_stablehlo(call, images)


def sample_inputs(spec, batch: int, layout: str, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal images in `layout` (what the export check feeds)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, spec.image_size, spec.image_size, spec.in_channels))
    x = x.astype(np.float32)
    return x if layout == "nhwc" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def reference_logits(weights: Weights, images_nhwc: np.ndarray) -> np.ndarray:
    """The Flax model's eval-mode logits (unfolded BatchNorm, float32 compute)."""
    spec = weights.spec.replace(dtype="float32")
    return np.asarray(flax_model(spec, weights.params, weights.batch_stats)(images_nhwc))


def export_model(
    weights: Weights,
    out_dir: str,
    formats: list[Format],
    batch: int,
    layout: str,
    *,
    check_seed: int = 0,
) -> dict[str, Any]:
    """Write each format's artifact into `out_dir` and `export.json`, each checked against the
    Flax model; returns the manifest. Raises ExportError when an artifact's logits differ."""
    from sqzexplore import rundir

    spec, folded = fold_batch_norm(weights)
    images = sample_inputs(weights.spec, batch, layout, check_seed)
    nhwc = images if layout == "nhwc" else images.transpose(0, 2, 3, 1)
    want = reference_logits(weights, nhwc)
    bound = TOLERANCE * max(1.0, float(np.abs(want).max()))
    cost = complexity(weights.spec)
    manifest: dict[str, Any] = {
        "source": weights.origin,
        "spec": weights.spec.to_dict(),
        "batch": batch,
        "layout": layout,
        "input_shape": list(images.shape),
        "batch_norm_folded": weights.spec.batch_norm,
        "paper_size": {
            "params": cost.params,
            "macs": cost.macs,
            "fp32_bytes": cost.fp32_bytes,
            "fp32_mib": cost.fp32_mib,
            **({"sqz_bytes": weights.origin["sqz_bytes"]} if "sqz_bytes" in weights.origin else {}),
        },
        "tolerance": {"relative_to_max_logit": TOLERANCE, "bound": bound},
        "artifacts": {},
    }
    os.makedirs(out_dir, exist_ok=True)
    for fmt in formats:
        data = build(fmt, spec, folded, batch, layout)
        path = os.path.join(out_dir, fmt.file)
        rundir.write_bytes(path, data)
        got = load(fmt, data)(images)
        diff = float(np.abs(got - want).max())
        manifest["artifacts"][fmt.name] = {
            "file": fmt.file,
            "bytes": os.path.getsize(path),
            "runtime": runtime_version(fmt),
            "max_abs_logit_diff": diff,
            "within_tolerance": diff <= bound,
        }
        if not diff <= bound:
            rundir.write_json(os.path.join(out_dir, MANIFEST), manifest)
            raise ExportError(
                "check",
                f"{path}: logits differ from the Flax model's by {diff:.3g} (bound {bound:.3g})",
            )
    rundir.write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest
