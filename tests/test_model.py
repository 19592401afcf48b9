"""Tests for the Flax SqueezeNet: equivalence with an independent reference forward pass written
from the paper's layer table (docs/paper.md#table-1), parameter counts, dropout, dtypes, BatchNorm,
init and presets."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec

from sqzexplore.compress.prune import (
    check_against_plan,
    conv_kernels,
    released_densities,
    resolve_densities,
)
from sqzexplore.models import (
    Fire,
    SpecError,
    SqueezeNet,
    SqueezeNetSpec,
    count_params,
    init_model,
    preset,
)
from sqzexplore.models.plan import BypassLayer, ConvLayer, LayerPlan
from sqzexplore.models.spec import BYPASS_MODES, DTYPES

# ---------------------------------------------------------------------------- reference
# docs/paper.md#table-1, written out by hand rather than read from the spec, so a wrong formula
# in spec.py or the model cannot agree with itself. (squeeze, expand1x1, expand3x3) for fire2..9.
FIRE_TABLE = (
    ("fire2", 16, 64, 64),
    ("fire3", 16, 64, 64),
    ("fire4", 32, 128, 128),
    ("fire5", 32, 128, 128),
    ("fire6", 48, 192, 192),
    ("fire7", 48, 192, 192),
    ("fire8", 64, 256, 256),
    ("fire9", 64, 256, 256),
)
LAYER_TABLE = {
    # stem (filters, kernel, stride), layers followed by a 3x3/2 ceil-mode max-pool
    "v1.0": {"stem": (96, 7, 2), "pool_after": ("conv1", "fire4", "fire8")},
    "v1.1": {"stem": (64, 3, 2), "pool_after": ("conv1", "fire3", "fire5")},
}
# Spatial sizes: docs/paper.md#table-1 for v1.0; for v1.1 (docs/paper.md#v1-1),
# (n - 3) // 2 + 1 then ceil pools.
EXPECTED_SIZES = {
    ("v1.0", 224): {"conv1": 109, "maxpool1": 54, "fire4": 54, "maxpool4": 27, "maxpool8": 13},
    ("v1.0", 227): {"conv1": 111, "maxpool1": 55, "fire4": 55, "maxpool4": 27, "maxpool8": 13},
    ("v1.1", 224): {"conv1": 111, "maxpool1": 55, "maxpool3": 27, "maxpool5": 13},
    ("v1.1", 227): {"conv1": 113, "maxpool1": 56, "maxpool3": 28, "maxpool5": 14},
}
HIGHEST = jax.lax.Precision.HIGHEST


def ref_conv(x, kernel, bias, *, stride=1, padding=0):
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=HIGHEST,
    )
    return y + bias


def ref_max_pool_ceil(x, k=3, s=2):
    """Caffe's pooling: out = ceil((n - k) / s) + 1, windows clipped at the border.

    Written as a max over k*k strided slices of a -inf padded map, not with reduce_window, so it
    does not share the model's implementation.
    """
    n, h, w, c = x.shape
    out_h, out_w = (math.ceil((d - k) / s) + 1 for d in (h, w))
    need_h, need_w = (out_h - 1) * s + k, (out_w - 1) * s + k
    x = jnp.pad(x, ((0, 0), (0, need_h - h), (0, need_w - w), (0, 0)), constant_values=-jnp.inf)
    windows = [
        x[:, i : i + (out_h - 1) * s + 1 : s, j : j + (out_w - 1) * s + 1 : s]
        for i in range(k)
        for j in range(k)
    ]
    return jnp.max(jnp.stack(windows), axis=0)


def reference_forward(params, x, version, classifier_padding=0):
    """SqueezeNet from the layer table; returns (logits, {layer: shape})."""
    table = LAYER_TABLE[version]
    relu = jax.nn.relu
    shapes = {}
    filters, kernel, stride = table["stem"]
    assert params["conv1"]["kernel"].shape == (kernel, kernel, 3, filters)
    x = relu(ref_conv(x, params["conv1"]["kernel"], params["conv1"]["bias"], stride=stride))
    shapes["conv1"] = x.shape
    if "conv1" in table["pool_after"]:
        x = ref_max_pool_ceil(x)
        shapes["maxpool1"] = x.shape
    for name, s, e1, e3 in FIRE_TABLE:
        p = params[name]
        assert p["squeeze"]["kernel"].shape == (1, 1, x.shape[-1], s)
        assert p["expand1x1"]["kernel"].shape == (1, 1, s, e1)
        assert p["expand3x3"]["kernel"].shape == (3, 3, s, e3)
        sq = relu(ref_conv(x, p["squeeze"]["kernel"], p["squeeze"]["bias"]))
        a = relu(ref_conv(sq, p["expand1x1"]["kernel"], p["expand1x1"]["bias"]))
        b = relu(ref_conv(sq, p["expand3x3"]["kernel"], p["expand3x3"]["bias"], padding=1))
        x = jnp.concatenate([a, b], axis=-1)
        shapes[name] = x.shape
        if name in table["pool_after"]:
            x = ref_max_pool_ceil(x)
            shapes["maxpool" + name.removeprefix("fire")] = x.shape
    # Dropout is the identity at inference.
    y = ref_conv(
        x, params["conv10"]["kernel"], params["conv10"]["bias"], padding=classifier_padding
    )
    y = relu(y)
    shapes["conv10"] = y.shape
    return jnp.mean(y, axis=(1, 2)), shapes


def model_with_test_weights(spec: SqueezeNetSpec, seed: int) -> SqueezeNet:
    """A model whose convs have He-scaled normal kernels and non-zero biases, drawn with numpy.

    At the real init (conv10 std 0.01, zero biases) logits are ~1e-4, so a 1e-5 tolerance would
    prove nothing and biases would go untested; these weights keep activations O(1). Building the
    model abstractly and filling it from numpy also skips compiling a jax.random call per shape.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        shape, name = leaf.shape, path[-1].key
        if name == "kernel":
            fan_in = math.prod(shape[:3])
            return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape).astype(np.float32)
        if name == "bias":
            return rng.normal(0.0, 0.1, shape).astype(np.float32)
        return np.full(shape, 0.0 if name == "mean" else 1.0, np.float32)  # BN scale, mean, var

    values = jax.tree.map_with_path(fill, nnx.to_pure_dict(abstract))
    nnx.replace_by_pure_dict(abstract, jax.tree.map(jnp.asarray, values))
    return nnx.merge(graphdef, abstract)


def images(shape: tuple[int, ...], seed: int = 0) -> jax.Array:
    """Standard-normal test inputs from numpy (a jax.random draw compiles per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def jit_features(model: nnx.Module):
    """The model's per-layer outputs through the functional split/jit/merge pattern."""
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, x: nnx.merge(graphdef, state).features(x))
    return lambda x: fn(state, x)


# ---------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize(
    "version,size,classifier_padding",
    [("v1.0", 224, 0), ("v1.0", 227, 0), ("v1.1", 224, 0), ("v1.1", 227, 0), ("v1.0", 227, 1)],
)
def test_matches_reference_forward(version, size, classifier_padding):
    spec = preset(version, image_size=size, classifier_padding=classifier_padding)
    model = model_with_test_weights(spec, seed=1)
    x = images((1, size, size, 3), seed=2)

    with jax.default_matmul_precision("highest"):
        features = jit_features(model)(x)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    ref_logits, ref_shapes = jax.jit(
        lambda p, x: reference_forward(p, x, version, classifier_padding)
    )(params, x)

    logits = features["logits"]
    assert logits.shape == (1, 1000) and logits.dtype == jnp.float32
    assert float(jnp.std(ref_logits)) > 0.05, "reference logits too small for a 1e-5 check"
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)

    # Intermediate shapes: the model's, the reference's, the paper table's and the spec's agree.
    assert {k: v.shape for k, v in features.items() if k != "logits"} == ref_shapes
    for layer, side in EXPECTED_SIZES[(version, size)].items():
        assert features[layer].shape[1:3] == (side, side), layer
    assert features["conv1"].shape[-1] == LAYER_TABLE[version]["stem"][0]
    for layer, (before, after) in spec.feature_sizes(size).items():
        assert features[layer].shape[1] == before, layer
        if layer in spec.pool_after:
            pooled = "maxpool" + layer.removeprefix("conv").removeprefix("fire")
            assert features[pooled].shape[1] == after, pooled
    # Caffe's v1.0 prototxt pads conv10 by 1: 13x13 -> 15x15 before global pooling.
    final_pool = "maxpool8" if version == "v1.0" else "maxpool5"
    side = EXPECTED_SIZES[(version, size)][final_pool] + 2 * classifier_padding
    assert features["conv10"].shape == (1, side, side, 1000)
    if classifier_padding:
        assert side == 15


# ---------------------------------------------------------------------------- structure
TABLE1_LAYER_PARAMS = {  # docs/paper.md#table-1, weights + biases per layer
    "conv1": 14_208,
    "fire2": 11_920,
    "fire3": 12_432,
    "fire4": 45_344,
    "fire5": 49_440,
    "fire6": 104_880,
    "fire7": 111_024,
    "fire8": 188_992,
    "fire9": 197_184,
    "conv10": 513_000,
}


def abstract_model(spec: SqueezeNetSpec) -> SqueezeNet:
    return nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0)))


def param_leaves(model) -> dict[str, tuple[int, ...]]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, path)): tuple(v.shape) for path, v in flat}


def test_parameter_counts_match_the_paper():
    v10 = abstract_model(preset("v1.0"))
    assert count_params(v10) == 1_248_424
    assert count_params(abstract_model(preset("v1.1"))) == 1_235_496
    state = nnx.state(v10, nnx.Param)
    for layer, expected in TABLE1_LAYER_PARAMS.items():
        got = sum(math.prod(p.shape) for p in jax.tree.leaves(state[layer]))
        assert got == expected, layer

    # The 1x1 shortcuts around fire2/4/6/8 map 96->128, 128->256, 256->384, 384->512 channels:
    # 96*128+128 + 128*256+256 + 256*384+384 + 384*512+512 = 341,248 (docs/paper.md#table-3).
    assert count_params(abstract_model(preset("v1.0", bypass="complex"))) == 1_248_424 + 341_248
    assert count_params(abstract_model(preset("v1.0", bypass="simple"))) == 1_248_424


def test_parameter_leaves_and_paths():
    # conv1 and conv10 have a kernel and a bias (4 leaves); each of the 8 Fire modules has three
    # convs with a kernel and a bias (8 * 3 * 2 = 48): 52 leaves.
    leaves = param_leaves(abstract_model(preset("v1.0")))
    assert len(leaves) == 52
    assert leaves["conv1/kernel"] == (7, 7, 3, 96)
    assert leaves["fire2/squeeze/kernel"] == (1, 1, 96, 16)
    assert leaves["fire2/expand1x1/kernel"] == (1, 1, 16, 64)
    assert leaves["fire2/expand3x3/kernel"] == (3, 3, 16, 64)
    assert leaves["fire9/expand3x3/bias"] == (256,)
    assert leaves["conv10/kernel"] == (1, 1, 512, 1000)

    # Simple bypass is identity adds only: same 52 leaves. Complex bypass adds a kernel and a
    # bias around fire2, fire4, fire6 and fire8: 52 + 4 * 2 = 60.
    assert param_leaves(abstract_model(preset("v1.0", bypass="simple"))).keys() == leaves.keys()
    complex_leaves = param_leaves(abstract_model(preset("v1.0", bypass="complex")))
    assert len(complex_leaves) == 60
    assert complex_leaves["fire4/bypass/kernel"] == (1, 1, 128, 256)
    assert "fire3/bypass/kernel" not in complex_leaves

    # BatchNorm: the 25 convs other than conv10 drop their bias and gain a BN scale and bias
    # (25 * 3 = 75), conv10 keeps kernel + bias (2), the 4 bypass convs keep theirs (8): 85.
    bn = abstract_model(preset("v1.0", bypass="complex", batch_norm=True))
    bn_leaves = param_leaves(bn)
    assert len(bn_leaves) == 85
    assert "conv1/bias" not in bn_leaves and "fire2/squeeze/bias" not in bn_leaves
    assert bn_leaves["conv1_bn/scale"] == (96,)
    assert bn_leaves["fire2/squeeze_bn/bias"] == (16,)
    assert bn_leaves["fire2/bypass/bias"] == (128,)
    assert bn_leaves["conv10/bias"] == (1000,)
    stats = nnx.to_flat_state(nnx.state(bn, nnx.BatchStat))
    stat_paths = {"/".join(map(str, p)) for p, _ in stats}
    assert len(stat_paths) == 25 * 2 and "fire2/expand3x3_bn/mean" in stat_paths


# ---------------------------------------------------------------------------- presets, specs
@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(graphdef, state, x, train, dropout_key):
    model = nnx.merge(graphdef, state)
    logits = model(x, train=train, dropout_key=dropout_key)
    return logits, nnx.state(model)


def jit_apply(model, x, *, train=False, dropout_key=None):
    """Call the model through split/jit/merge, as the trainer does; BatchNorm updates stick."""
    graphdef, state = nnx.split(model)
    logits, new_state = _apply(graphdef, state, x, train, dropout_key)
    nnx.update(model, new_state)
    return logits


def test_small_presets_produce_logits():
    # Weights from numpy: jax.random's per-shape compiles cost ~10 s of CPU for a whole preset;
    # the real initialisers are tested in test_init_schemes.
    digits, cifar = preset("digits"), preset("cifar")
    logits = jit_apply(model_with_test_weights(digits, seed=0), jnp.ones((3, 16, 16, 1)))
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    features = jit_features(model_with_test_weights(cifar, seed=0))(jnp.ones((3, 32, 32, 3)))
    assert features["logits"].shape == (3, 10) and bool(jnp.all(jnp.isfinite(features["logits"])))
    # digits: 16 -> 8 -> 4 -> 2 (pools after fire3, fire5, fire7).
    assert jax.eval_shape(model_with_test_weights(digits, 0).features, jnp.ones((1, 16, 16, 1)))[
        "conv10"
    ].shape == (1, 2, 2, 10)
    # cifar keeps 32x32 through fire4, then 16 and 8 (its docstring in spec.py).
    assert features["fire4"].shape[1:3] == (32, 32)
    assert features["maxpool4"].shape[1:3] == (16, 16)
    assert features["conv10"].shape[1:3] == (8, 8)


@st.composite
def valid_specs(draw) -> SqueezeNetSpec:
    """Small design points across every spec field the model reads; invalid draws are rejected."""
    num_fire = draw(st.integers(0, 4))
    bypass = draw(st.sampled_from(BYPASS_MODES))
    fields = {
        "num_classes": draw(st.integers(1, 12)),
        "image_size": draw(st.integers(6, 40)),
        "in_channels": draw(st.integers(1, 3)),
        "stem_filters": draw(st.integers(1, 16)),
        "stem_kernel": draw(st.integers(1, 5)),
        "stem_stride": draw(st.integers(1, 2)),
        "stem_padding": draw(st.integers(0, 2)),
        "num_fire": num_fire,
        "base_e": draw(st.integers(8, 24)),
        "incr_e": draw(st.integers(0, 16)),
        # Identity shortcuts need equal widths in and out: freq=2 gives that, as in the paper.
        "freq": 2 if bypass != "none" else draw(st.integers(1, 3)),
        "pct_3x3": draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])),
        "squeeze_ratio": draw(st.sampled_from([0.125, 0.25, 0.75, 1.0])),
        "pool_after": tuple(
            draw(
                st.lists(
                    st.sampled_from(["conv1", *(f"fire{i + 2}" for i in range(num_fire))]),
                    unique=True,
                    max_size=3,
                )
            )
        ),
        "pool_size": draw(st.integers(1, 3)),
        "pool_stride": draw(st.integers(1, 3)),
        "pool_ceil": draw(st.booleans()),
        "bypass": bypass,
        "classifier_padding": draw(st.integers(0, 1)),
        "classifier_relu": draw(st.booleans()),
        "batch_norm": draw(st.booleans()),
        "dtype": draw(st.sampled_from(DTYPES)),
    }
    if bypass == "none" and draw(st.booleans()):
        widths = st.tuples(st.integers(1, 6), st.integers(0, 6), st.integers(0, 6))
        fields["fire_widths"] = tuple(
            draw(
                st.lists(
                    widths.filter(lambda w: w[1] + w[2] > 0), min_size=num_fire, max_size=num_fire
                )
            )
        )
    try:
        return SqueezeNetSpec(**fields)
    except SpecError:
        reject()


def plan_param_leaves(plan: LayerPlan) -> dict[str, tuple[int, ...]]:
    """The parameter leaves a layer plan promises: each conv's HWIO kernel, its bias or its
    BatchNorm scale and bias."""
    out = {}
    for c in plan.convs:
        out[f"{c.name}/kernel"] = c.kernel_shape
        if c.bias:
            out[f"{c.name}/bias"] = (c.out_channels,)
        if c.batch_norm:
            out[f"{c.name}_bn/scale"] = out[f"{c.name}_bn/bias"] = (c.out_channels,)
    return out


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(spec=valid_specs(), batch=st.integers(1, 3), train=st.booleans())
def test_any_valid_spec_builds_its_layer_plan(spec, batch, train):
    size = spec.image_size
    x = jax.ShapeDtypeStruct((batch, size, size, spec.in_channels), jnp.float32)
    key = jax.random.key(0) if train and spec.dropout > 0 else None
    model = nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0)))
    # Shapes only (no compile): every layer is traced, so any shape error would surface here.
    graphdef, state = nnx.split(model)
    features = jax.eval_shape(
        lambda state, x: nnx.merge(graphdef, state).features(x, train=train, dropout_key=key),
        state,
        x,
    )
    assert features["logits"].shape == (batch, spec.num_classes)
    assert features["logits"].dtype == jnp.float32
    plan = spec.layer_plan()
    # The built model is the plan: the same parameter tensors, path by path, ...
    assert param_leaves(model) == plan_param_leaves(plan)
    assert count_params(model) == plan.params
    # ... and every block's output has the plan's size and channels.
    for block in plan.blocks:
        entries = plan.block(block)
        if block == "avgpool":
            continue
        if block in plan.fire_blocks:
            size = entries[0].out_size
            expands = [c for c in entries if getattr(c, "role", "") in ("expand1x1", "expand3x3")]
            channels = sum(c.out_channels for c in expands)
        elif entries[0].kind == "pool":
            size, channels = entries[0].out_size, entries[0].channels
        else:
            size, channels = entries[0].out_size, entries[0].out_channels
        assert features[block].shape == (batch, size, size, channels), block


@pytest.mark.parametrize(
    "spec",
    [preset("v1.0", bypass="complex"), preset("v1.1"), preset("digits", num_fire=4, pool_after=())],
    ids=["v1.0-complex", "v1.1", "digits-4-fires"],
)
def test_compression_takes_order_roles_and_densities_from_the_plan(spec):
    params = nnx.state(abstract_model(spec), nnx.Param).to_pure_dict()
    plan = spec.layer_plan()
    assert list(conv_kernels(params)) == [f"{c.name}/kernel" for c in plan.convs]
    # The released densities by the plan's roles equal those read back from parameter names.
    assert resolve_densities(params, "released", plan) == resolve_densities(params, "released")
    released = released_densities(plan)
    assert released["conv1/kernel"] == 0.985 and released["conv10/kernel"] == 0.207
    last = plan.fire_blocks[-1]
    assert released[f"{last}/expand3x3/kernel"] == 0.30  # the paper's fire9
    with pytest.raises(ValueError, match="layer plan"):
        check_against_plan(params, spec.replace(stem_filters=spec.stem_filters + 1).layer_plan())


def test_bad_input_is_rejected_with_a_clear_error():
    model = nnx.eval_shape(lambda: SqueezeNet(preset("digits"), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="in_channels"):
        model(jnp.ones((1, 16, 16, 3)))
    # digits pools after fire3, fire5, fire7: a 4x4 input is 2x2 before the second pool.
    with pytest.raises(SpecError, match="collapses at the max-pool after fire5"):
        model(jnp.ones((1, 4, 4, 1)))
    with pytest.raises(TypeError, match="SqueezeNetSpec"):
        SqueezeNet({"name": "v1.0"}, rngs=nnx.Rngs(0))
    # A plan block whose identity shortcut joins 16 input channels to 4 + 4 output channels.
    conv = functools.partial(
        ConvLayer,
        block="fire3",
        kernel=1,
        stride=1,
        padding=0,
        groups=1,
        batch_norm=False,
        bias=True,
        in_size=4,
        out_size=4,
    )
    block = (
        conv(name="fire3/squeeze", role="squeeze", in_channels=16, out_channels=2),
        conv(name="fire3/expand1x1", role="expand1x1", in_channels=2, out_channels=4),
        conv(name="fire3/expand3x3", role="expand3x3", in_channels=2, out_channels=4),
        BypassLayer("fire3/shortcut", "fire3", "identity", None, 8, 4),
    )
    with pytest.raises(ValueError, match="identity bypass around fire3"):
        Fire(block, spec=preset("digits"), rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------- behaviour
# Two Fire modules, one pool, both bypass kinds (a 1x1 conv around fire2, identity around fire3)
# and BatchNorm: every code path, small enough that XLA compiles its backward pass quickly.
SMALL_BN_SPEC = SqueezeNetSpec(
    num_classes=4,
    image_size=12,
    in_channels=1,
    stem_filters=8,
    stem_kernel=3,
    stem_stride=1,
    stem_padding=1,
    num_fire=2,
    base_e=16,
    pool_after=("fire2",),
    bypass="complex",
    batch_norm=True,
    dropout=0.0,
)


def test_grouped_expand3x3_is_a_grouped_convolution():
    # Each of the 2 groups of fire2's 3x3 expand filters sees its own half of the squeeze output.
    spec = preset("digits", expand3x3_groups=2, batch_norm=False)
    fire = init_model(spec, seed=1).fire2
    squeezed = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))
    out = fire.expand3x3(squeezed)
    kernel, bias = fire.expand3x3.kernel.value, fire.expand3x3.bias.value
    assert kernel.shape == (3, 3, 4, 32)
    halves = [
        ref_conv(
            squeezed[..., 4 * g : 4 * (g + 1)],
            kernel[..., 16 * g : 16 * (g + 1)],
            bias[16 * g : 16 * (g + 1)],
            padding=1,
        )
        for g in range(2)
    ]
    np.testing.assert_allclose(out, jnp.concatenate(halves, axis=-1), rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
    spec = SMALL_BN_SPEC.replace(batch_norm=False, dropout=0.5)
    model = model_with_test_weights(spec, seed=0)
    x = images((4, 12, 12, 1))
    eval_a = jit_apply(model, x)
    np.testing.assert_array_equal(eval_a, jit_apply(model, x))

    k1, k2 = jax.random.key(1), jax.random.key(2)
    train_1 = jit_apply(model, x, train=True, dropout_key=k1)
    np.testing.assert_array_equal(train_1, jit_apply(model, x, train=True, dropout_key=k1))
    assert not np.allclose(train_1, jit_apply(model, x, train=True, dropout_key=k2))
    assert not np.allclose(train_1, eval_a)

    with pytest.raises(ValueError, match="dropout_key"):
        model(x, train=True)
    # Without dropout, training needs no key and equals eval (no BatchNorm here).
    no_dropout = model_with_test_weights(spec.replace(dropout=0.0), seed=0)
    np.testing.assert_allclose(jit_apply(no_dropout, x, train=True), jit_apply(no_dropout, x))


def test_classifier_relu_can_be_turned_off():
    x = images((2, 12, 12, 1))
    spec = SMALL_BN_SPEC.replace(batch_norm=False)
    with_relu = jit_features(model_with_test_weights(spec, seed=0))(x)
    without = jit_features(model_with_test_weights(spec.replace(classifier_relu=False), 0))(x)
    # Same weights: the paper's ReLU clips exactly the negative conv10 outputs.
    assert float(without["conv10"].min()) < 0
    np.testing.assert_allclose(with_relu["conv10"], np.maximum(without["conv10"], 0), atol=1e-6)
    np.testing.assert_allclose(without["logits"], without["conv10"].mean(axis=(1, 2)), atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    x = images((2, 12, 12, 1))
    spec = SMALL_BN_SPEC.replace(batch_norm=False)
    f32 = model_with_test_weights(spec, seed=0)
    bf16 = model_with_test_weights(spec.replace(dtype="bfloat16"), seed=0)
    for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)):
        assert p.dtype == jnp.float32
    features = jit_features(bf16)(x)
    assert features["fire3"].dtype == jnp.bfloat16
    assert features["logits"].dtype == jnp.float32
    ref = jit_apply(f32, x)
    # Same float32 weights: bf16 compute differs only by rounding (8-bit mantissa per layer).
    scale = float(jnp.abs(ref).max())
    assert scale > 0.1
    np.testing.assert_allclose(features["logits"], ref, atol=0.05 * scale)


def test_batch_norm_train_updates_stats_and_eval_uses_them():
    model = init_model(INIT_SPEC.replace(batch_norm=True, dropout=0.0), seed=0)
    x = 3.0 + images((8, 20, 20, 3))
    mean0 = np.asarray(model.conv1_bn.mean[...])
    np.testing.assert_array_equal(mean0, 0.0)
    eval_0 = jit_apply(model, x)
    np.testing.assert_array_equal(model.conv1_bn.mean[...], mean0)  # eval leaves stats alone

    train_out = jit_apply(model, x, train=True)
    assert train_out.shape == (8, 100) and bool(jnp.all(jnp.isfinite(train_out)))
    assert not np.allclose(model.conv1_bn.mean[...], mean0)
    assert not np.allclose(model.fire3.expand3x3_bn.var[...], 1.0)
    eval_1 = jit_apply(model, x)
    np.testing.assert_array_equal(eval_1, jit_apply(model, x))  # eval is deterministic ...
    assert not np.allclose(eval_0, eval_1)  # ... and reads the updated running statistics


def test_batch_norm_statistics_span_the_sharded_global_batch():
    """Under jit with the batch sharded over 4 devices, BN sees the whole batch, not shards."""
    x = images((8, 12, 12, 1)) * jnp.arange(1, 9)[:, None, None, None]
    model = model_with_test_weights(SMALL_BN_SPEC, seed=0)
    graphdef, state = nnx.split(model)
    mesh = jax.make_mesh((4,), ("data",))
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    logits_1, state_1 = _apply(graphdef, state, x, True, None)
    logits_4, state_4 = _apply(graphdef, state, sharded, True, None)
    np.testing.assert_allclose(logits_4, logits_1, rtol=1e-5, atol=1e-6)
    mean_1 = state_1["conv1_bn"]["mean"][...]
    np.testing.assert_allclose(state_4["conv1_bn"]["mean"][...], mean_1, rtol=1e-5, atol=1e-7)
    # From zeros with momentum 0.9, one step leaves 0.1 * the batch mean of conv1's output:
    # the mean over all 8 images, which differ in scale, so a per-shard mean would not match.
    batch_mean = jnp.mean(model.conv1(x), axis=(0, 1, 2))
    np.testing.assert_allclose(mean_1, 0.1 * batch_mean, rtol=1e-4, atol=1e-6)


def test_gradients_reach_every_parameter():
    model = model_with_test_weights(SMALL_BN_SPEC, seed=0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = images((4, 12, 12, 1))
    labels = jnp.arange(4)

    @jax.jit
    def grad_step(params, rest):
        # rest goes in as an argument: Variables merged inside grad must belong to its trace.
        def loss_fn(params, rest):
            model = nnx.merge(graphdef, params, rest, copy=True)
            logits = model(x, train=True)
            loss = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])
            return loss, nnx.state(model, nnx.BatchStat)

        return jax.grad(loss_fn, has_aux=True)(params, rest)

    grads, new_stats = grad_step(params, rest)
    assert not np.allclose(new_stats["conv1_bn"]["mean"][...], rest["conv1_bn"]["mean"][...])
    flat = nnx.to_flat_state(grads)
    assert len(flat) == len(nnx.to_flat_state(params))
    for path, g in flat:
        g = np.asarray(g[...])
        assert np.isfinite(g).all() and np.abs(g).max() > 0, path


# ---------------------------------------------------------------------------- init
# Few distinct kernel shapes (each costs a jax.random compile), each with >= 2,048 weights so the
# sample std is within a few percent: conv1 3x3x3x64, fire2 64->32->64+64 with a 1x1 bypass conv
# 64->128, fire3 128->32->64+64 with an identity bypass, conv10 128->100.
INIT_SPEC = SqueezeNetSpec(
    num_classes=100,
    image_size=20,
    stem_filters=64,
    stem_kernel=3,
    num_fire=2,
    base_e=128,
    incr_e=0,
    squeeze_ratio=0.25,
    pool_after=("conv1",),
    bypass="complex",
)


@pytest.mark.parametrize(
    "init,gain,batch_norm,dtype",
    [("caffe", 1.0, False, "float32"), ("torchvision", 2.0, True, "bfloat16")],
)
def test_init_schemes(init, gain, batch_norm, dtype):
    # Caffe xavier: U(+-sqrt(3/fan_in)); torchvision kaiming_uniform_: U(+-sqrt(2)*sqrt(3/fan_in)).
    # A uniform on [-b, b] has std b / sqrt(3). conv10 is N(0, 0.01) in both. Biases are zero.
    spec = INIT_SPEC.replace(init=init, batch_norm=batch_norm, dtype=dtype)
    model = init_model(spec, seed=0)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert {v[...].dtype for _, v in flat} == {np.dtype("float32")}  # whatever the compute dtype
    kernels = {"/".join(p): np.asarray(v[...]) for p, v in flat if p[-1] == "kernel"}
    biases = {"/".join(p): np.asarray(v[...]) for p, v in flat if p[-1] == "bias"}
    assert len(kernels) == 1 + 2 * 3 + 1 + 1  # conv1, the Fire convs, fire2's bypass, conv10
    for name, kernel in kernels.items():
        if name == "conv10/kernel":
            assert kernel.std() == pytest.approx(0.01, rel=0.03)  # 12,800 samples
            assert abs(kernel.mean()) < 0.0005
            continue
        bound = math.sqrt(gain * 3.0 / math.prod(kernel.shape[:3]))
        assert np.abs(kernel).max() <= bound, name
        assert np.abs(kernel).max() > 0.99 * bound, name
        assert kernel.std() == pytest.approx(bound / math.sqrt(3.0), rel=0.06), name
        assert abs(kernel.mean()) < 0.1 * bound, name
    assert all(not b.any() for b in biases.values())
    # With BatchNorm only conv10 and the bypass conv keep a bias; BN starts as the identity.
    if batch_norm:
        assert biases.keys() == {
            "conv10/bias",
            "fire2/bypass/bias",
            *("/".join(p) for p, _ in flat if p[-1] == "bias" and p[-2].endswith("_bn")),
        }
        np.testing.assert_array_equal(model.fire3.squeeze_bn.scale[...], 1.0)
        np.testing.assert_array_equal(model.fire3.squeeze_bn.var[...], 1.0)
    # The same seed gives the same weights; another seed does not.
    again = init_model(spec, seed=0)
    np.testing.assert_array_equal(
        again.fire3.expand3x3.kernel[...], kernels["fire3/expand3x3/kernel"]
    )
    other = init_model(spec, seed=1)
    assert not np.allclose(other.fire3.expand3x3.kernel[...], kernels["fire3/expand3x3/kernel"])
