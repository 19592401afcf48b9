"""The SqueezeNet model (Flax NNX), built from any valid `SqueezeNetSpec`'s layer plan.

Every conv (kernel, stride, padding, groups, bias, BatchNorm) comes from `spec.layer_plan()`, in
plan order, and the forward pass follows the plan's entries (convs, Fire blocks, max-pools).

With the same weights it computes the same logits as the Caffe and torchvision SqueezeNets:
max-pools round up (ceil mode), conv10 is followed by a ReLU (`spec.classifier_relu`, on in every
paper preset) and global average pooling, and dropout is applied only in training. Layout is
NHWC, kernels HWIO. `features()` returns every layer's output for shape and activation checks.

Parameter paths (`nnx.state(model, nnx.Param)`) follow the paper's layer names:

    conv1/{kernel,bias}
    fire2/squeeze/..., fire2/expand1x1/..., fire2/expand3x3/..., fire2/bypass/...
    ...
    conv10/{kernel,bias}

`fireN/bypass` exists only for the 1x1 conv shortcuts of complex bypass. With `batch_norm`, every
conv except conv10 and the bypass convs loses its bias and is followed by a BatchNorm named
`<conv>_bn` (`conv1_bn`, `fire2/squeeze_bn`, ...) whose running mean/var are `nnx.BatchStat`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sqzexplore.models.plan import BypassLayer, ConvLayer, PlanLayer, PoolLayer
from sqzexplore.models.spec import SqueezeNetSpec

# Caffe "xavier" (its default variance_norm FAN_IN): uniform(+-sqrt(3 / fan_in)).
_CAFFE_CONV_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")
# torch.nn.init.kaiming_uniform_ defaults (a=0, leaky_relu): gain sqrt(2), bound sqrt(6 / fan_in).
_TORCHVISION_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_in", "uniform")
_CLASSIFIER_INIT = nnx.initializers.normal(stddev=0.01)

_CONV_INITS = {"caffe": _CAFFE_CONV_INIT, "torchvision": _TORCHVISION_CONV_INIT}

# PyTorch's BatchNorm2d defaults (momentum 0.1 in its convention), as in the flax ImageNet example.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


class _ConvFactory:
    """Builds the convs (and BatchNorms) of a layer plan with the spec's init scheme and dtypes."""

    def __init__(self, spec: SqueezeNetSpec, rngs: nnx.Rngs):
        self.spec = spec
        self.rngs = rngs
        self.dtype = jnp.dtype(spec.dtype)
        self.kernel_init = _CONV_INITS[spec.init]

    def conv(self, layer: ConvLayer) -> nnx.Conv:
        # Both releases start the classifier small so the initial logits are near-uniform.
        init = _CLASSIFIER_INIT if layer.role == "classifier" else self.kernel_init
        p = layer.padding
        return nnx.Conv(
            layer.in_channels,
            layer.out_channels,
            kernel_size=(layer.kernel, layer.kernel),
            strides=(layer.stride, layer.stride),
            padding=((p, p), (p, p)),
            feature_group_count=layer.groups,
            use_bias=layer.bias,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=init,
            bias_init=nnx.initializers.zeros_init(),
            rngs=self.rngs,
        )

    def batch_norm(self, layer: ConvLayer) -> nnx.BatchNorm | None:
        if not layer.batch_norm:
            return None
        return nnx.BatchNorm(
            layer.out_channels,
            momentum=_BN_MOMENTUM,
            epsilon=_BN_EPSILON,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            rngs=self.rngs,
        )


def _conv_bn_relu(conv: nnx.Conv, bn: nnx.BatchNorm | None, x: jax.Array, train: bool) -> jax.Array:
    x = conv(x)
    if bn is not None:
        x = bn(x, use_running_average=not train)
    return jax.nn.relu(x)


class Fire(nnx.Module):
    """Fire module: squeeze 1x1 + ReLU, then expand 1x1 and 3x3 (pad 1) + ReLU, concatenated.

    Built from one Fire block of a layer plan (`LayerPlan.block("fire2")`): its convs by role
    (squeeze, expand1x1, expand3x3, and the complex-bypass conv) and its shortcut, if any. The
    expand1x1 channels come first, as in Caffe's concat and torchvision's `torch.cat`, so
    weights port across without permuting conv10's (or the next squeeze's) input channels. The
    shortcut is 'identity' (simple bypass) or 'conv' (complex bypass: a 1x1 conv with bias, no
    BatchNorm, no ReLU), added to the concatenated output.
    """

    def __init__(self, block: Sequence[PlanLayer], *, spec: SqueezeNetSpec, rngs: nnx.Rngs):
        factory = _ConvFactory(spec, rngs)
        convs = {x.role: x for x in block if isinstance(x, ConvLayer)}
        shortcuts = [x for x in block if isinstance(x, BypassLayer)]
        self.bypass_kind = shortcuts[0].shortcut if shortcuts else "none"
        squeeze = convs["squeeze"]
        if self.bypass_kind == "identity":
            expand = sum(convs[r].out_channels for r in ("expand1x1", "expand3x3") if r in convs)
            if squeeze.in_channels != expand:
                raise ValueError(
                    f"identity bypass around {squeeze.block} needs in_channels == expand, got "
                    f"{squeeze.in_channels} and {expand}"
                )
        # Built in plan order (squeeze, expand1x1, expand3x3, bypass): the order the parameter
        # RNG is drawn in, so a seed gives the same weights as ever.
        self.squeeze = factory.conv(squeeze)
        self.squeeze_bn = factory.batch_norm(squeeze)
        # pct_3x3 of 0 or 1 leaves one expand branch empty; the plan then has no such conv.
        for role in ("expand1x1", "expand3x3"):
            layer = convs.get(role)
            setattr(self, role, factory.conv(layer) if layer else None)
            setattr(self, f"{role}_bn", factory.batch_norm(layer) if layer else None)
        self.bypass = factory.conv(convs["bypass"]) if "bypass" in convs else None

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        squeezed = _conv_bn_relu(self.squeeze, self.squeeze_bn, x, train)
        branches = []
        if self.expand1x1 is not None:
            branches.append(_conv_bn_relu(self.expand1x1, self.expand1x1_bn, squeezed, train))
        if self.expand3x3 is not None:
            branches.append(_conv_bn_relu(self.expand3x3, self.expand3x3_bn, squeezed, train))
        out = branches[0] if len(branches) == 1 else jnp.concatenate(branches, axis=-1)
        if self.bypass_kind == "identity":
            out = out + x
        elif self.bypass_kind == "conv":
            out = out + self.bypass(x)
        return out


def max_pool_ceil(x: jax.Array, spec: SqueezeNetSpec) -> jax.Array:
    """Max-pool NHWC `x` with the spec's size and stride, sized exactly as `spec.pool_out`.

    Ceil mode (Caffe/torchvision) is a floor-mode pool over an input padded on the bottom/right
    with -inf, just enough for the extra last window; padded cells never win the max.

    The gradient is `_max_pool_vjp`'s slice/pad formulation rather than XLA's select_and_scatter,
    which XLA:CPU lowers to index tensors plus a scatter (about half of a small model's step).
    It is bit-identical to `jax.grad` of the plain reduce_window: each window's gradient goes to
    its first maximal element in row-major order, as select_and_scatter with `ge` does.
    """
    k, s = spec.pool_size, spec.pool_stride
    pad_h, pad_w = (max(0, (spec.pool_out(size) - 1) * s + k - size) for size in x.shape[1:3])
    return _max_pool(x, k, s, pad_h, pad_w)


def _reduce_window_max(x: jax.Array, k: int, s: int, pad_h: int, pad_w: int) -> jax.Array:
    return jax.lax.reduce_window(
        x,
        -jnp.inf,  # a Python scalar, so JAX uses the differentiable reduce_window_max
        jax.lax.max,
        window_dimensions=(1, k, k, 1),
        window_strides=(1, s, s, 1),
        padding=((0, 0), (0, pad_h), (0, pad_w), (0, 0)),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool(x: jax.Array, k: int, s: int, pad_h: int, pad_w: int) -> jax.Array:
    return _reduce_window_max(x, k, s, pad_h, pad_w)


def _max_pool_fwd(x, k, s, pad_h, pad_w):
    y = _reduce_window_max(x, k, s, pad_h, pad_w)
    return y, (x, y)


def _max_pool_vjp(k, s, pad_h, pad_w, residuals, grad_y):
    """Route each window's gradient to its first maximal element, with slices and pads only.

    For window offset (di, dj) the strided slice of the padded input holds, for every window
    (i, j), the element at (i*s + di, j*s + dj). Offsets are scanned in row-major order and a
    running `taken` mask keeps only the first one equal to the window max, which is the element
    XLA's select_and_scatter (select = `ge`, scanning the window row-major) picks on ties.

    Input cell (r*s + a, c*s + b) is reached only by offsets of stride phase (a, b), i.e.
    di = a + s*mi, dj = b + s*mj, from window (r - mi, c - mj). So each phase's gradient is a sum
    of shifted masked copies of `grad_y` at output resolution, and the s*s phases are interleaved
    once into the input grid (rather than k*k full-resolution scatters).
    """
    x, y = residuals
    n, height, width, channels = x.shape
    _, out_h, out_w, _ = y.shape
    dtype = grad_y.dtype
    zero = jnp.zeros((), dtype)
    padded = jax.lax.pad(
        x, jnp.array(-jnp.inf, x.dtype), ((0, 0, 0), (0, pad_h, 0), (0, pad_w, 0), (0, 0, 0))
    )
    span_h, span_w = (out_h - 1) * s + 1, (out_w - 1) * s + 1
    taken = jnp.zeros(y.shape, bool)
    routed = {}
    for di in range(k):
        for dj in range(k):
            seen = jax.lax.slice(
                padded, (0, di, dj, 0), (n, di + span_h, dj + span_w, channels), (1, s, s, 1)
            )
            first = (seen == y) & ~taken
            taken = taken | first
            routed[di, dj] = jnp.where(first, grad_y, zero)
    # Phase grids are rows_p x cols_p cells: enough for the farthest offset of phase 0.
    rows_p, cols_p = out_h - 1 + -(-k // s), out_w - 1 + -(-k // s)
    phases = []
    for a in range(s):
        for b in range(s):
            # select_and_scatter adds into a cell in window order (row-major over (i, j)); a
            # later window reaches the cell through a smaller (mi, mj), so summing offsets in
            # reverse row-major order keeps the float sums bit-identical.
            total = None
            for di in reversed(range(a, k, s)):
                for dj in reversed(range(b, k, s)):
                    mi, mj = di // s, dj // s
                    shifted = jax.lax.pad(
                        routed[di, dj],
                        zero,
                        (
                            (0, 0, 0),
                            (mi, rows_p - out_h - mi, 0),
                            (mj, cols_p - out_w - mj, 0),
                            (0, 0, 0),
                        ),
                    )
                    total = shifted if total is None else total + shifted
            if total is None:  # k < s: this phase is never inside a window
                total = jnp.zeros((n, rows_p, cols_p, channels), dtype)
            phases.append(total)
    # Interleave: phase (a, b) cell (r, c) is input cell (r*s + a, c*s + b).
    grid = jnp.stack(phases, axis=3).reshape(n, rows_p, cols_p, s, s, channels)
    grid = grid.transpose(0, 1, 3, 2, 4, 5).reshape(n, rows_p * s, cols_p * s, channels)
    # Crop to the input, or zero-fill floor mode's rows/cols that no window covers.
    grad_x = jax.lax.pad(
        grid,
        zero,
        ((0, 0, 0), (0, height - rows_p * s, 0), (0, width - cols_p * s, 0), (0, 0, 0)),
    )
    return (grad_x,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_vjp)


class SqueezeNet(nnx.Module):
    """SqueezeNet for any valid spec: `model(x, train=..., dropout_key=...)` -> float32 logits.

    Parameters are float32; the forward pass runs in `spec.dtype` (float32 or bfloat16).
    """

    def __init__(self, spec: SqueezeNetSpec, *, rngs: nnx.Rngs):
        if not isinstance(spec, SqueezeNetSpec):
            raise TypeError(f"spec must be a SqueezeNetSpec, got {type(spec).__name__}")
        self.spec = spec  # validated on construction; frozen, so static in the graphdef
        plan = spec.layer_plan()
        factory = _ConvFactory(spec, rngs)
        # Convs are created in plan order (conv1, fire2 ..., conv10): the parameter RNG's order.
        for block in plan.blocks:
            entries = plan.block(block)
            if block in plan.fire_blocks:
                setattr(self, block, Fire(entries, spec=spec, rngs=rngs))
            elif isinstance(entries[0], ConvLayer):  # conv1, conv10
                setattr(self, block, factory.conv(entries[0]))
                if entries[0].role == "conv1":
                    self.conv1_bn = factory.batch_norm(entries[0])

    def features(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        dropout_key: jax.Array | None = None,
        dropout_channels: tuple[jax.Array, jax.Array] | None = None,
    ) -> dict[str, jax.Array]:
        """Every layer's output, keyed by paper name, in order of computation.

        Keys: 'conv1', 'maxpool1' (a pool is named after the layer it follows, as in Table 1),
        'fire2', ..., 'conv10' (after its ReLU, before global pooling) and 'logits' (float32).
        Under jit, the unused entries cost nothing.

        `dropout_channels` (a width-padded model, train/padding.py): `(index, n)`, for each
        channel entering conv10 its channel in a narrower network of `n` such channels (-1: a
        padded channel). The dropout mask is then the one that network draws at its own shape.
        """
        spec = self.spec
        if x.ndim != 4 or x.shape[-1] != spec.in_channels:
            raise ValueError(
                f"input must be NHWC with {spec.in_channels} channels (spec.in_channels), "
                f"got shape {tuple(x.shape)}"
            )
        for side in x.shape[1:3]:
            spec.feature_sizes(side)  # trace-time only: a clear SpecError if maps would collapse
        if train and spec.dropout > 0 and dropout_key is None:
            raise ValueError(
                f"train=True with dropout={spec.dropout} needs dropout_key (a jax.random key); "
                "pass one, or set dropout=0"
            )
        out: dict[str, jax.Array] = {}
        x = x.astype(spec.dtype)
        for layer in spec.layer_plan().layers:
            if isinstance(layer, PoolLayer) and layer.op == "max":
                x = max_pool_ceil(x, spec)
                out[layer.name] = x
            elif layer.block in out or isinstance(layer, (PoolLayer, BypassLayer)):
                continue  # a Fire module's further convs and shortcut; the average pool
            elif layer.role == "conv1":
                x = _conv_bn_relu(self.conv1, self.conv1_bn, x, train)
                out["conv1"] = x
            elif layer.role == "classifier":
                if train and spec.dropout > 0:
                    keep = 1.0 - spec.dropout
                    mask = _dropout_mask(dropout_key, keep, x.shape, dropout_channels)
                    x = jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
                x = self.conv10(x)
                if spec.classifier_relu:
                    x = jax.nn.relu(x)
                out["conv10"] = x
            else:  # the first conv of a Fire block: run the whole module
                x = getattr(self, layer.block)(x, train=train)
                out[layer.block] = x
        # Average in float32: with bf16 compute, a 13x13 (or larger) mean loses digits otherwise.
        out["logits"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return out

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        dropout_key: jax.Array | None = None,
        dropout_channels: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array:
        """Logits [N, num_classes] in float32 for NHWC images `x`."""
        out = self.features(
            x, train=train, dropout_key=dropout_key, dropout_channels=dropout_channels
        )
        return out["logits"]


def _dropout_mask(
    key: jax.Array,
    keep: float,
    shape: tuple[int, ...],
    channels: tuple[jax.Array, jax.Array] | None,
) -> jax.Array:
    """The keep mask of dropout over an NHWC tensor of `shape`.

    With `channels = (index, n)` it is the mask a network with `n` channels here draws, placed
    at its channels' positions (False on padded ones): the bits of `jax.random.bernoulli` are a
    function of each element's flat index alone (threefry in its partitionable mode, JAX's
    default), so the narrow mask's element (b, h, w, c) is element ((b*H + h)*W + w)*n + c of
    one flat draw at least that long.
    """
    if channels is None:
        return jax.random.bernoulli(key, keep, shape)
    index, n = channels
    pixels, width = math.prod(shape[:-1]), shape[-1]  # the padded width bounds every n
    flat = jax.random.bernoulli(key, keep, (pixels * width,))
    where = jnp.arange(pixels, dtype=jnp.int32)[:, None] * n + jnp.maximum(index, 0)[None, :]
    return jnp.where(index[None, :] >= 0, flat[where], False).reshape(shape)


def init_model(spec: SqueezeNetSpec, seed: int = 0) -> SqueezeNet:
    """A freshly initialised SqueezeNet for `spec`; the same seed gives the same weights."""
    return SqueezeNet(spec, rngs=nnx.Rngs(params=seed))


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (`nnx.Param` leaves; BatchNorm statistics excluded).

    Works on abstract models from `nnx.eval_shape` too, since it reads only shapes.
    """
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
