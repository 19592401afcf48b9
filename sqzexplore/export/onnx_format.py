"""The ONNX artifact: a graph built op by op from a (BatchNorm-folded) spec's layer plan with the
`onnx` package, run by ONNX Runtime (CPU, or ONNX Runtime Mobile / other ONNX runtimes on a
phone).

The graph follows `SqueezeNet.features` exactly: Conv (+ Relu) per plan conv, a Fire module's
expand branches concatenated expand1x1 first, the shortcut added after the concat, max-pools
with the explicit bottom/right padding of the model's ceil mode (ONNX MaxPool ignores padded
cells, as the model's -inf padding does), conv10 (+ Relu unless `classifier_relu` is off), and
global average pooling flattened to `logits` [batch, num_classes]. ONNX convs are NCHW and
OIHW: kernels are transposed from the model's HWIO, and an NHWC input is transposed once at the
start. Opset 17 keeps the file loadable by ONNX Runtime releases of the last years and by the
mobile builds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sqzexplore.models.spec import BypassLayer, ConvLayer, PoolLayer, SqueezeNetSpec

OPSET = 17
INPUT = "images"
OUTPUT = "logits"


def build_onnx(spec: SqueezeNetSpec, params: dict[str, Any], batch: int, layout: str) -> bytes:
    """The serialized ONNX model of the folded `spec` and `params` (every conv with a bias, no
    BatchNorm: `source.fold_batch_norm`) for `batch` images in `layout` ('nhwc' or 'nchw')."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if spec.batch_norm:
        raise ValueError("build_onnx needs a folded spec (batch_norm=False)")
    size, channels = spec.image_size, spec.in_channels
    shape = [batch, size, size, channels] if layout == "nhwc" else [batch, channels, size, size]
    nodes: list = []
    inits: list = []

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(layer: ConvLayer, x: str) -> str:
        parent, _, leaf = layer.name.rpartition("/")
        tree = params
        for key in filter(None, parent.split("/")):
            tree = tree[key]
        kernel = np.ascontiguousarray(np.transpose(tree[leaf]["kernel"], (3, 2, 0, 1)))
        w, b = f"{layer.name}/kernel", f"{layer.name}/bias"
        inits.append(numpy_helper.from_array(kernel.astype(np.float32), w))
        inits.append(numpy_helper.from_array(np.asarray(tree[leaf]["bias"], np.float32), b))
        p, k, s = layer.padding, layer.kernel, layer.stride
        return node(
            "Conv",
            [x, w, b],
            f"{layer.name}/conv",
            kernel_shape=[k, k],
            strides=[s, s],
            pads=[p, p, p, p],
            group=layer.groups,
        )

    x = INPUT
    if layout == "nhwc":
        x = node("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
    plan = spec.layer_plan()
    for block in plan.blocks:
        entries = plan.block(block)
        first = entries[0]
        if isinstance(first, PoolLayer) and first.op == "max":
            x = _max_pool(node, spec, first, x)
        elif isinstance(first, PoolLayer):  # the global average pool
            x = node("GlobalAveragePool", [x], "avgpool")
            x = node("Flatten", [x], OUTPUT, axis=1)
        elif block in plan.fire_blocks:
            x = _fire(node, conv, entries, x)
        elif first.role == "classifier":
            x = conv(first, x)
            if spec.classifier_relu:
                x = node("Relu", [x], "conv10/relu")
        else:  # conv1
            x = node("Relu", [conv(first, x)], "conv1/relu")
    graph = helper.make_graph(
        nodes,
        f"sqzexplore_{spec.name}",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch, spec.num_classes])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        producer_name="sqzexplore",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=f"SqueezeNet design point {spec.to_json()}; input {layout}",
    )
    model.ir_version = 8  # the IR of opset 17: loadable by older runtimes too
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _max_pool(node, spec: SqueezeNetSpec, pool: PoolLayer, x: str) -> str:
    k, s = pool.kernel, pool.stride
    extra = max(0, (pool.out_size - 1) * s + k - pool.in_size)  # ceil mode: bottom/right only
    return node(
        "MaxPool", [x], pool.name, kernel_shape=[k, k], strides=[s, s], pads=[0, 0, extra, extra]
    )


def _fire(node, conv, entries, x: str) -> str:
    convs = {e.role: e for e in entries if isinstance(e, ConvLayer)}
    shortcut = next((e for e in entries if isinstance(e, BypassLayer)), None)
    block = entries[0].block
    squeezed = node("Relu", [conv(convs["squeeze"], x)], f"{block}/squeeze/relu")
    branches = [
        node("Relu", [conv(convs[role], squeezed)], f"{block}/{role}/relu")
        for role in ("expand1x1", "expand3x3")
        if role in convs
    ]
    out = branches[0] if len(branches) == 1 else node("Concat", branches, f"{block}/concat", axis=1)
    if shortcut is not None and shortcut.shortcut == "identity":
        out = node("Add", [out, x], f"{block}/add")
    elif shortcut is not None:
        out = node("Add", [out, conv(convs["bypass"], x)], f"{block}/add")
    return out


def onnx_session(model: bytes | str, threads: int | None = None):
    """An ONNX Runtime CPU session for `model` (bytes or a path) with `threads` intra-op threads
    (None: the runtime's default, one per core); inter-op parallelism off (a chain of convs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT], {INPUT: np.asarray(images, np.float32)})[0]
