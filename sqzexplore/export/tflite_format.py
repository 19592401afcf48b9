"""The LiteRT (TFLite) artifact: the folded model's forward pass through `jax2tf` and the
TensorFlow Lite converter, run by LiteRT (`ai_edge_litert`, its XNNPACK delegate on CPU; the
same file runs on Android and iOS).

Checked here (TF 2.21, jax 0.10.2): `jax2tf.convert` now always serialises natively (its
`enable_xla` and `native_serialization` options are deprecated and ignored), and the converter
legalises that StableHLO to builtin TFLite ops (CONV_2D, MAX_POOL_2D, CONCATENATION, ...); the
converter is held to builtins (`TFLITE_BUILTINS`), so a layer it could not lower fails the export
rather than pulling in Flex (TensorFlow) ops. `tf.lite.Interpreter` is deprecated for
the `ai-edge-litert` package, which runs it when installed; TensorFlow's own is the fallback.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Any

import numpy as np

from sqzexplore.models.spec import SqueezeNetSpec


def build_tflite(spec: SqueezeNetSpec, params: dict[str, Any], batch: int, layout: str) -> bytes:
    """The .tflite flatbuffer of the folded `spec`/`params` for `batch` images in `layout`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from jax.experimental import jax2tf

    from sqzexplore.export.source import layout_forward

    forward, shape = layout_forward(spec, params, layout, batch)
    function = tf.function(
        jax2tf.convert(forward, native_serialization_platforms=("cpu",)),
        input_signature=[tf.TensorSpec(shape, tf.float32, name="images")],
        autograph=False,
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bytes(converter.convert())


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806 - a class
    return Interpreter


def tflite_runtime() -> str:
    """The distribution that runs .tflite files here: ai-edge-litert, else tensorflow."""
    import importlib.util

    return "ai-edge-litert" if importlib.util.find_spec("ai_edge_litert") else "tensorflow"


def load_tflite(data: bytes, threads: int | None = None):
    """A callable `images -> logits` running the flatbuffer with `threads` CPU threads (None:
    one per core this process may use; LiteRT's own default leaves the choice to XNNPACK)."""
    if threads is None:
        threads = len(os.sched_getaffinity(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = _interpreter_class()(model_content=data, num_threads=threads)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]

    def call(images: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source, np.ascontiguousarray(images, np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(target)

    return call
