"""The SqueezeNet model (Flax NNX), built from any valid `SqueezeNetSpec`.

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

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sqzexplore.models.spec import FireWidths, SqueezeNetSpec

# Caffe "xavier" (its default variance_norm FAN_IN): uniform(+-sqrt(3 / fan_in)).
_CAFFE_CONV_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")
# torch.nn.init.kaiming_uniform_ defaults (a=0, leaky_relu): gain sqrt(2), bound sqrt(6 / fan_in).
_TORCHVISION_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_in", "uniform")
# Both releases start the classifier small so the initial logits are near-uniform.
_CLASSIFIER_INIT = nnx.initializers.normal(stddev=0.01)

_CONV_INITS = {"caffe": _CAFFE_CONV_INIT, "torchvision": _TORCHVISION_CONV_INIT}

# PyTorch's BatchNorm2d defaults (momentum 0.1 in its convention), as in the flax ImageNet example.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


class _ConvFactory:
    """Builds the convs (and BatchNorms) of one spec with its init scheme and dtypes."""

    def __init__(self, spec: SqueezeNetSpec, rngs: nnx.Rngs):
        self.spec = spec
        self.rngs = rngs
        self.dtype = jnp.dtype(spec.dtype)
        self.kernel_init = _CONV_INITS[spec.init]

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        stride: int = 1,
        padding: int = 0,
        normalized: bool = True,
        kernel_init=None,
    ) -> nnx.Conv:
        # A BatchNorm right after the conv makes its bias redundant (BN's own bias replaces it).
        use_bias = not (normalized and self.spec.batch_norm)
        return nnx.Conv(
            in_channels,
            out_channels,
            kernel_size=(kernel, kernel),
            strides=(stride, stride),
            padding=((padding, padding), (padding, padding)),
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=kernel_init or self.kernel_init,
            bias_init=nnx.initializers.zeros_init(),
            rngs=self.rngs,
        )

    def batch_norm(self, channels: int) -> nnx.BatchNorm | None:
        if not self.spec.batch_norm:
            return None
        return nnx.BatchNorm(
            channels,
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

    The expand1x1 channels come first, as in Caffe's concat and torchvision's `torch.cat`, so
    weights port across without permuting conv10's (or the next squeeze's) input channels.
    `bypass_kind` is 'none', 'identity' (simple bypass) or 'conv' (complex bypass: a 1x1 conv
    with bias, no BatchNorm, no ReLU), added to the concatenated output. `spec` supplies the
    init scheme, BatchNorm and compute dtype.
    """

    def __init__(
        self,
        in_channels: int,
        widths: FireWidths,
        *,
        bypass_kind: str = "none",
        spec: SqueezeNetSpec,
        rngs: nnx.Rngs,
    ):
        if bypass_kind == "identity" and in_channels != widths.expand:
            raise ValueError(
                f"identity bypass around {widths.name} needs in_channels == expand, got "
                f"{in_channels} and {widths.expand}"
            )
        factory = _ConvFactory(spec, rngs)
        self.bypass_kind = bypass_kind
        s, e1, e3 = widths.squeeze, widths.expand1x1, widths.expand3x3
        self.squeeze = factory.conv(in_channels, s, 1)
        self.squeeze_bn = factory.batch_norm(s)
        # pct_3x3 of 0 or 1 leaves one expand branch empty; it is then simply not built.
        self.expand1x1 = factory.conv(s, e1, 1) if e1 else None
        self.expand1x1_bn = factory.batch_norm(e1) if e1 else None
        self.expand3x3 = factory.conv(s, e3, 3, padding=1) if e3 else None
        self.expand3x3_bn = factory.batch_norm(e3) if e3 else None
        if bypass_kind == "conv":
            self.bypass = factory.conv(in_channels, widths.expand, 1, normalized=False)
        elif bypass_kind in ("none", "identity"):
            self.bypass = None
        else:
            raise ValueError(
                f"bypass_kind must be 'none', 'identity' or 'conv', got {bypass_kind!r}"
            )

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
    """
    k, s = spec.pool_size, spec.pool_stride
    pads = [(0, 0)]
    for size in x.shape[1:3]:
        out = spec.pool_out(size)
        pads.append((0, max(0, (out - 1) * s + k - size)))
    pads.append((0, 0))
    return jax.lax.reduce_window(
        x,
        -jnp.inf,  # a Python scalar, so JAX uses the differentiable reduce_window_max
        jax.lax.max,
        window_dimensions=(1, k, k, 1),
        window_strides=(1, s, s, 1),
        padding=pads,
    )


def _layer_number(name: str) -> int:
    return int(name.removeprefix("conv").removeprefix("fire"))


class SqueezeNet(nnx.Module):
    """SqueezeNet for any valid spec: `model(x, train=..., dropout_key=...)` -> float32 logits.

    Parameters are float32; the forward pass runs in `spec.dtype` (float32 or bfloat16).
    """

    def __init__(self, spec: SqueezeNetSpec, *, rngs: nnx.Rngs):
        if not isinstance(spec, SqueezeNetSpec):
            raise TypeError(f"spec must be a SqueezeNetSpec, got {type(spec).__name__}")
        self.spec = spec  # validated on construction; frozen, so static in the graphdef
        factory = _ConvFactory(spec, rngs)
        self.conv1 = factory.conv(
            spec.in_channels,
            spec.stem_filters,
            spec.stem_kernel,
            stride=spec.stem_stride,
            padding=spec.stem_padding,
        )
        self.conv1_bn = factory.batch_norm(spec.stem_filters)
        for i, (widths, in_channels) in enumerate(
            zip(spec.fires(), spec.fire_in_channels(), strict=True)
        ):
            fire = Fire(in_channels, widths, bypass_kind=spec.bypass_kind(i), spec=spec, rngs=rngs)
            setattr(self, widths.name, fire)
        self.conv10 = factory.conv(
            spec.classifier_in_channels,
            spec.num_classes,
            1,
            padding=spec.classifier_padding,
            normalized=False,
            kernel_init=_CLASSIFIER_INIT,
        )

    def features(
        self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """Every layer's output, keyed by paper name, in order of computation.

        Keys: 'conv1', 'maxpool1' (a pool is named after the layer it follows, as in Table 1),
        'fire2', ..., 'conv10' (after its ReLU, before global pooling) and 'logits' (float32).
        Under jit, the unused entries cost nothing.
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
        x = _conv_bn_relu(self.conv1, self.conv1_bn, x, train)
        out["conv1"] = x
        if "conv1" in spec.pool_after:
            x = max_pool_ceil(x, spec)
            out["maxpool1"] = x
        for name in spec.fire_names:
            x = getattr(self, name)(x, train=train)
            out[name] = x
            if name in spec.pool_after:
                x = max_pool_ceil(x, spec)
                out[f"maxpool{_layer_number(name)}"] = x
        if train and spec.dropout > 0:
            keep = 1.0 - spec.dropout
            mask = jax.random.bernoulli(dropout_key, keep, x.shape)
            x = jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
        x = self.conv10(x)
        if spec.classifier_relu:
            x = jax.nn.relu(x)
        out["conv10"] = x
        # Average in float32: with bf16 compute, a 13x13 (or larger) mean loses digits otherwise.
        out["logits"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return out

    def __call__(
        self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        """Logits [N, num_classes] in float32 for NHWC images `x`."""
        return self.features(x, train=train, dropout_key=dropout_key)["logits"]


def init_model(spec: SqueezeNetSpec, seed: int = 0) -> SqueezeNet:
    """A freshly initialised SqueezeNet for `spec`; the same seed gives the same weights."""
    return SqueezeNet(spec, rngs=nnx.Rngs(params=seed))


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (`nnx.Param` leaves; BatchNorm statistics excluded).

    Works on abstract models from `nnx.eval_shape` too, since it reads only shapes.
    """
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
