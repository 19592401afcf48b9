"""Tests for the Flax SqueezeNet: equivalence with an independent reference forward pass written
from REFERENCE.md's layer table, parameter counts, dropout, dtypes, BatchNorm, init and presets."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from sqzexplore.models import SqueezeNet, SqueezeNetSpec, count_params, init_model, preset

# ---------------------------------------------------------------------------- reference
# REFERENCE.md section 3, written out by hand rather than read from the spec, so a wrong formula
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
# Spatial sizes: REFERENCE.md's table for v1.0; for v1.1, (n - 3) // 2 + 1 then ceil pools.
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


def randomize_for_comparison(model: nnx.Module, seed: int) -> None:
    """Give every conv He-scaled weights and non-zero biases.

    At the real init (conv10 std 0.01, zero biases) logits are ~1e-4, so a 1e-5 tolerance would
    prove nothing and biases would go untested; these weights keep activations O(1).
    """
    key = jax.random.key(seed)
    for _, module in nnx.iter_graph(model):
        if isinstance(module, nnx.Conv):
            key, k_w, k_b = jax.random.split(key, 3)
            shape = module.kernel[...].shape
            fan_in = shape[0] * shape[1] * shape[2]
            module.kernel[...] = jax.random.normal(k_w, shape) * math.sqrt(2.0 / fan_in)
            module.bias[...] = 0.1 * jax.random.normal(k_b, (shape[-1],))


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
    model = init_model(spec, seed=0)
    randomize_for_comparison(model, seed=1)
    x = jax.random.normal(jax.random.key(2), (1, size, size, 3))

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

    # Intermediate shapes: the model's, the reference's, REFERENCE.md's and the spec's agree.
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
REFERENCE_LAYER_PARAMS = {  # REFERENCE.md section 3, weights + biases per layer
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
    for layer, expected in REFERENCE_LAYER_PARAMS.items():
        got = sum(math.prod(p.shape) for p in jax.tree.leaves(state[layer]))
        assert got == expected, layer

    # The 1x1 shortcuts around fire2/4/6/8 map 96->128, 128->256, 256->384, 384->512 channels:
    # 96*128+128 + 128*256+256 + 256*384+384 + 384*512+512 = 341,248 (REFERENCE.md section 5).
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
@pytest.mark.parametrize("name", ["cifar", "digits"])
def test_small_presets_produce_logits(name):
    spec = preset(name)
    model = init_model(spec, seed=0)
    x = jnp.ones((3, spec.image_size, spec.image_size, spec.in_channels))
    logits = model(x)
    assert logits.shape == (3, spec.num_classes) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize(
    "overrides,image_size",
    [
        # no 3x3 expand branch at all, and a pure-3x3 expand layer
        ({"num_fire": 2, "base_e": 16, "incr_e": 16, "pct_3x3": 0.0, "squeeze_ratio": 0.25}, 20),
        ({"num_fire": 2, "base_e": 16, "incr_e": 16, "pct_3x3": 1.0, "squeeze_ratio": 0.25}, 20),
        # explicit widths, simple bypass, floor-mode 2x2 pools, non-default pool positions
        (
            {
                "num_fire": 3,
                "fire_widths": ((4, 8, 8), (4, 8, 8), (8, 12, 4)),
                "bypass": "simple",
                "pool_after": ("fire2", "fire4"),
                "pool_size": 2,
                "pool_ceil": False,
            },
            23,
        ),
        # no Fire modules: stem straight into the classifier, padded stem and classifier
        ({"num_fire": 0, "stem_padding": 2, "classifier_padding": 1}, 19),
    ],
)
def test_any_valid_spec_builds_with_the_spec_feature_sizes(overrides, image_size):
    base = {"num_classes": 7, "image_size": image_size, "stem_filters": 16, "stem_kernel": 3}
    base["pool_after"] = ("conv1",)
    spec = SqueezeNetSpec(**{**base, **overrides})
    model = init_model(spec, seed=3)
    features = model.features(jnp.ones((2, image_size, image_size, 3)))
    assert features["logits"].shape == (2, 7)
    for layer, (before, after) in spec.feature_sizes().items():
        assert features[layer].shape[1:3] == (before, before), layer
        if layer in spec.pool_after:
            pooled = "maxpool" + layer.removeprefix("conv").removeprefix("fire")
            assert features[pooled].shape[1:3] == (after, after), pooled
    for fire in spec.fires():
        assert features[fire.name].shape[-1] == fire.expand


def test_bad_input_is_rejected_with_a_clear_error():
    model = init_model(preset("digits"), seed=0)
    with pytest.raises(ValueError, match="in_channels"):
        model(jnp.ones((1, 16, 16, 3)))
    with pytest.raises(TypeError, match="SqueezeNetSpec"):
        SqueezeNet({"name": "v1.0"}, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------- behaviour
def test_dropout_only_in_training():
    spec = preset("digits", dropout=0.5)
    model = init_model(spec, seed=0)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))
    eval_a, eval_b = model(x), model(x, train=False, dropout_key=jax.random.key(9))
    np.testing.assert_array_equal(eval_a, eval_b)

    k1, k2 = jax.random.key(1), jax.random.key(2)
    train_1 = model(x, train=True, dropout_key=k1)
    np.testing.assert_array_equal(train_1, model(x, train=True, dropout_key=k1))
    assert not np.allclose(train_1, model(x, train=True, dropout_key=k2))
    assert not np.allclose(train_1, eval_a)

    with pytest.raises(ValueError, match="dropout_key"):
        model(x, train=True)
    # Without dropout, training needs no key and equals eval (no BatchNorm here).
    no_dropout = init_model(preset("digits", dropout=0.0), seed=0)
    np.testing.assert_allclose(no_dropout(x, train=True), no_dropout(x), rtol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    f32 = init_model(preset("cifar"), seed=0)
    bf16 = init_model(preset("cifar", dtype="bfloat16"), seed=0)
    for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)):
        assert p.dtype == jnp.float32
    features = bf16.features(x)
    assert features["fire5"].dtype == jnp.bfloat16
    assert features["logits"].dtype == jnp.float32
    ref = f32(x)
    # Same seed, same float32 weights: bf16 compute differs only by rounding.
    np.testing.assert_allclose(features["logits"], ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_batch_norm_train_updates_stats_and_eval_uses_them():
    spec = preset("digits", batch_norm=True, bypass="complex", dropout=0.0)
    model = init_model(spec, seed=0)
    x = 3.0 + jax.random.normal(jax.random.key(0), (8, 16, 16, 1))
    before = nnx.state(model, nnx.BatchStat)
    mean0 = np.asarray(before["conv1_bn"]["mean"][...])
    eval_0 = model(x)
    np.testing.assert_array_equal(nnx.state(model, nnx.BatchStat)["conv1_bn"]["mean"][...], mean0)

    train_out = model(x, train=True)
    assert train_out.shape == (8, 10)
    after = nnx.state(model, nnx.BatchStat)
    assert not np.allclose(after["conv1_bn"]["mean"][...], mean0)
    assert not np.allclose(after["fire9"]["expand3x3_bn"]["var"][...], 1)
    eval_1 = model(x)
    np.testing.assert_array_equal(eval_1, model(x))  # eval is deterministic ...
    assert not np.allclose(eval_0, eval_1)  # ... and reads the updated running statistics


def test_batch_norm_statistics_span_the_sharded_global_batch():
    """Under jit with the batch sharded over 4 devices, BN sees the whole batch, not shards."""
    spec = preset("digits", batch_norm=True, dropout=0.0)
    x = jax.random.normal(jax.random.key(0), (8, 16, 16, 1)) * jnp.arange(1, 9)[:, None, None, None]
    graphdef, state = nnx.split(init_model(spec, seed=0))

    @jax.jit
    def train_forward(state, x):
        model = nnx.merge(graphdef, state)
        logits = model(x, train=True)
        return logits, nnx.state(model)

    mesh = jax.make_mesh((4,), ("data",))
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    logits_1, state_1 = train_forward(state, x)
    logits_4, state_4 = train_forward(state, sharded)
    np.testing.assert_allclose(logits_4, logits_1, rtol=1e-5, atol=1e-6)
    mean_1 = state_1["conv1_bn"]["mean"][...]
    np.testing.assert_allclose(state_4["conv1_bn"]["mean"][...], mean_1, rtol=1e-5, atol=1e-7)
    # Running mean after one step is 0.1 * batch mean (momentum 0.9 from zeros): check it is the
    # mean over all 8 images of the stem's pre-BN output.
    conv1 = nnx.merge(graphdef, state).conv1
    batch_mean = jnp.mean(conv1(x), axis=(0, 1, 2))
    np.testing.assert_allclose(mean_1, 0.1 * batch_mean, rtol=1e-4, atol=1e-6)


def test_gradients_reach_every_parameter():
    spec = preset("digits", bypass="complex", dropout=0.0)
    model = init_model(spec, seed=0)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))
    labels = jnp.arange(4)

    def loss_fn(model):
        logits = model(x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

    grads = nnx.grad(loss_fn)(model)
    flat = nnx.to_flat_state(grads)
    assert len(flat) == len(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, g in flat:
        g = g[...]
        assert bool(jnp.all(jnp.isfinite(g))), path
        if path[-1] == "kernel":
            assert float(jnp.abs(g).max()) > 0, path


# ---------------------------------------------------------------------------- init
def kernel_stats(model):
    """(path, fan_in, std, max |w|) for every conv kernel, and all biases."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    kernels, biases = [], []
    for path, v in flat:
        value = np.asarray(v[...])
        name = "/".join(map(str, path))
        if path[-1] == "kernel":
            fan_in = math.prod(value.shape[:3])
            kernels.append((name, fan_in, value.std(), np.abs(value).max()))
        else:
            biases.append(value)
    return kernels, biases


@pytest.mark.parametrize("init,gain", [("caffe", 1.0), ("torchvision", 2.0)])
def test_init_schemes(init, gain):
    # Caffe xavier: U(+-sqrt(3/fan_in)); torchvision kaiming_uniform_: U(+-sqrt(2)*sqrt(3/fan_in)).
    # A uniform on [-b, b] has std b / sqrt(3). conv10 is N(0, 0.01) in both. Biases are zero.
    spec = preset("v1.1", init=init, bypass="complex")
    kernels, biases = kernel_stats(init_model(spec, seed=0))
    assert len(kernels) == 1 + 8 * 3 + 4 + 1  # conv1, fire convs, complex bypass, conv10
    for name, fan_in, std, max_abs in kernels:
        if name == "conv10/kernel":
            assert std == pytest.approx(0.01, rel=0.02)
            continue
        bound = math.sqrt(gain * 3.0 / fan_in)
        assert max_abs <= bound, name
        assert max_abs > 0.95 * bound, name
        assert std == pytest.approx(bound / math.sqrt(3.0), rel=0.1), name
    assert all(not b.any() for b in biases)
