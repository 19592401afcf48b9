"""Deploying a design point: `sqz export` writes a finished run, a compressed `.sqz` model or a
spec as inference artifacts that run outside the project (ONNX for ONNX Runtime, StableHLO for
JAX, TFLite for LiteRT), BatchNorm folded and each checked against the Flax model's logits; and
`latency` measures them on this host (batch 1, median and p90), cached per spec, host and runtime
so sweeps can use latency as an objective.

    source.py         what is exported: weights of a run / .sqz / spec; BatchNorm folding
    artifact.py       the formats, the checks of batch, layout and format, export + logit check
    onnx_format.py    the ONNX graph from the layer plan; an ONNX Runtime session
    stablehlo.py      jax.export serialisation and loading
    tflite_format.py  jax2tf + TFLite converter; a LiteRT interpreter
    latency.py        timing, the per-spec/host/runtime cache
    cli.py            `sqz export`
"""
