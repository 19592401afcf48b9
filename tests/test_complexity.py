"""The analytic complexity twin: the paper's figures exactly, and agreement with the built model."""

import json
import math
import os
import re

import jax
import pytest
from flax import nnx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sqzexplore.config import spec_from_config, typed_config
from sqzexplore.models.complexity import complexity
from sqzexplore.models.spec import BYPASS_MODES, SpecError, SqueezeNetSpec, preset
from sqzexplore.models.squeezenet import SqueezeNet, count_params
from sqzexplore.models.widths import ChannelMask, channel_masks
from sqzexplore.sweep.runconfig import trial_config
from sqzexplore.sweep.space import config_json
from sqzexplore.sweep.sweepfile import check_against_config, load_base_config, load_sweep

# docs/paper.md#table-1 (the paper's Table 1): params per row, weights + biases.
TABLE1_PARAMS = {
    "conv1": 14_208,
    "maxpool1": 0,
    "fire2": 11_920,
    "fire3": 12_432,
    "fire4": 45_344,
    "maxpool4": 0,
    "fire5": 49_440,
    "fire6": 104_880,
    "fire7": 111_024,
    "fire8": 188_992,
    "maxpool8": 0,
    "fire9": 197_184,
    "conv10": 513_000,
    "avgpool": 0,
}
TABLE1_WIDTHS = {  # (s, e1, e3)
    "fire2": (16, 64, 64),
    "fire3": (16, 64, 64),
    "fire4": (32, 128, 128),
    "fire5": (32, 128, 128),
    "fire6": (48, 192, 192),
    "fire7": (48, 192, 192),
    "fire8": (64, 256, 256),
    "fire9": (64, 256, 256),
}
# Output H (= W) and C of each row at 227 and at 224 with ceil pools.
TABLE1_SHAPES_227 = {
    "conv1": (111, 96),
    "maxpool1": (55, 96),
    "fire2": (55, 128),
    "fire3": (55, 128),
    "fire4": (55, 256),
    "maxpool4": (27, 256),
    "fire5": (27, 256),
    "fire6": (27, 384),
    "fire7": (27, 384),
    "fire8": (27, 512),
    "maxpool8": (13, 512),
    "fire9": (13, 512),
    "conv10": (13, 1000),
    "avgpool": (1, 1000),
}
TABLE1_SHAPES_224 = {
    **TABLE1_SHAPES_227,
    "conv1": (109, 96),
    "maxpool1": (54, 96),
    "fire2": (54, 128),
    "fire3": (54, 128),
    "fire4": (54, 256),
}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_table1_rows_params_and_shapes():
    cx224 = complexity(preset("v1.0"), 224)
    cx227 = complexity(preset("v1.0"), 227)
    assert [r.name for r in cx224.layers] == list(TABLE1_PARAMS)
    for row in cx224.layers:
        assert row.params == TABLE1_PARAMS[row.name], row.name
        assert (row.height, row.channels) == TABLE1_SHAPES_224[row.name], row.name
        assert row.width == row.height
        if row.kind == "fire":
            assert (row.squeeze, row.expand1x1, row.expand3x3) == TABLE1_WIDTHS[row.name]
            assert row.bypass == "none" and row.bypass_params == 0
    for row in cx227.layers:
        assert (row.height, row.channels) == TABLE1_SHAPES_227[row.name], row.name


def test_v1_0_totals():
    cx = complexity(preset("v1.0"), 224)
    assert cx.params == 1_248_424
    assert cx.macs == 818_924_576
    assert cx.fp32_bytes == 1_248_424 * 4
    assert round(cx.fp32_mib, 2) == 4.76  # the paper's "4.8MB"
    assert round(cx.fp32_mib, 1) == 4.8
    # docs/paper.md#released-model: the released model has 1,244,448 weights and 3,976 biases.
    assert sum(c.weights for c in cx.convs) == 1_244_448
    assert sum(c.out_channels for c in cx.convs if c.bias) == 3_976


def test_v1_1_totals():
    cx = complexity(preset("v1.1"), 224)
    assert cx.params == 1_235_496
    assert cx.macs == 349_151_936
    assert [r.name for r in cx.layers if r.kind == "maxpool"] == [
        "maxpool1",
        "maxpool3",
        "maxpool5",
    ]


def test_macs_pool_rounding_and_classifier_padding():
    v10 = preset("v1.0")
    assert round(complexity(v10.replace(pool_ceil=False), 224).macs / 1e6, 2) == 777.22
    assert round(complexity(v10, 227).macs / 1e6, 2) == 832.67
    padded = complexity(v10.replace(classifier_padding=1), 227)
    assert round(padded.macs / 1e6, 2) == 861.34
    assert padded.params == 1_248_424  # padding moves compute, not parameters
    assert padded.layer("conv10").height == 15


def test_macs_are_per_conv_products():
    # conv1 at 224: 109 x 109 outputs x 96 filters x 7 x 7 x 3 inputs; fire2's 3x3 expand at 54.
    cx = complexity(preset("v1.0"), 224)
    assert cx.layer("conv1").macs == 109 * 109 * 96 * 7 * 7 * 3
    fire2 = {c.name: c for c in cx.layer("fire2").convs}
    assert fire2["fire2/squeeze"].macs == 54 * 54 * 16 * 96
    assert fire2["fire2/expand1x1"].macs == 54 * 54 * 64 * 16
    assert fire2["fire2/expand3x3"].macs == 54 * 54 * 64 * 9 * 16
    assert cx.layer("maxpool1").macs == 0 and cx.layer("avgpool").macs == 0
    # Activations: every conv output (squeeze and both expand halves inside a Fire module).
    assert cx.layer("fire2").activations == 54 * 54 * (16 + 64 + 64)
    assert cx.activations == sum(c.height * c.width * c.out_channels for c in cx.convs)


@pytest.mark.parametrize(
    "squeeze_ratio, params, mib",
    [
        (0.125, 1_248_424, 4.8),
        (0.25, 1_967_080, 7.5),
        (0.5, 3_404_392, 13.0),
        (0.75, 4_841_704, 18.5),
        (1.0, 6_279_016, 24.0),
    ],
)
def test_squeeze_ratio_table(squeeze_ratio, params, mib):
    cx = complexity(preset("v1.0", squeeze_ratio=squeeze_ratio))
    assert cx.params == params
    assert round(cx.fp32_mib, 1) == mib


@pytest.mark.parametrize(
    "pct_3x3, mib",
    [
        (0.01, 5.6),
        (0.125, 7.4),
        (0.25, 9.2),
        (0.375, 11.1),
        (0.5, 13.0),
        (0.625, 14.9),
        (0.75, 16.7),
        (0.875, 18.6),
        (0.99, 20.3),
    ],
)
def test_pct_3x3_table(pct_3x3, mib):
    cx = complexity(preset("v1.0", squeeze_ratio=0.5, pct_3x3=pct_3x3))
    assert round(cx.fp32_mib, 1) == mib


def test_bypass_params():
    plain = complexity(preset("v1.0"))
    assert complexity(preset("v1.0", bypass="simple")).params == plain.params
    cx = complexity(preset("v1.0", bypass="complex"))
    assert cx.params - plain.params == 341_248
    # 1x1 convs with bias around fire2, fire4, fire6, fire8: 96->128, 128->256, 256->384, 384->512.
    assert {r.name: r.bypass_params for r in cx.layers if r.bypass_params} == {
        "fire2": 96 * 128 + 128,
        "fire4": 128 * 256 + 256,
        "fire6": 256 * 384 + 384,
        "fire8": 384 * 512 + 512,
    }
    assert [r.bypass for r in cx.layers if r.kind == "fire"] == ["conv", "identity"] * 4


def test_batch_norm_params():
    # Every conv but conv10 trades its bias (C) for a BatchNorm scale and bias (2C): +C each.
    # Normalised channels: conv1 96, and s + e1 + e3 per Fire module.
    normalised = 96 + sum(s + e1 + e3 for s, e1, e3 in TABLE1_WIDTHS.values())
    assert normalised == 2_976
    cx = complexity(preset("v1.0", batch_norm=True))
    assert cx.params == 1_248_424 + normalised
    # Complex-bypass convs keep their bias and get no BatchNorm.
    both = complexity(preset("v1.0", batch_norm=True, bypass="complex"))
    assert both.params == cx.params + 341_248


def test_to_dict_and_table():
    cx = complexity(preset("v1.0"), 224)
    d = json.loads(json.dumps(cx.to_dict()))
    assert {"params", "macs", "fp32_bytes", "fp32_mib", "activations", "layers"} <= set(d)
    assert d["params"] == 1_248_424 and d["macs"] == 818_924_576
    assert [layer["name"] for layer in d["layers"]] == list(TABLE1_PARAMS)
    fire4 = d["layers"][4]
    assert (fire4["squeeze"], fire4["expand1x1"], fire4["expand3x3"]) == (32, 128, 128)
    assert [c["name"] for c in fire4["convs"]] == [
        "fire4/squeeze",
        "fire4/expand1x1",
        "fire4/expand3x3",
    ]
    assert sum(layer["params"] for layer in d["layers"]) == d["params"]
    assert cx.totals() == {
        k: d[k] for k in ("params", "macs", "fp32_bytes", "fp32_mib", "activations")
    }

    text = cx.table()
    lines = text.splitlines()
    for name, params in TABLE1_PARAMS.items():
        (row,) = [line for line in lines if line.split()[0] == name]
        assert f"{params:,}" in row
    fire9 = next(line for line in lines if line.startswith("fire9"))
    assert fire9.split()[1:5] == ["13x13x512", "64", "256", "256"]
    assert "1,248,424" in lines[-2] and "818.92M" in lines[-2]
    assert "4.76 MiB" in lines[-1]
    # Title, header, a rule under it, one line per row, a rule above the total, the summary.
    assert lines[1].split() == ["layer", "output", "size", "s", "e1", "e3", "params", "MACs"]
    assert set(lines[2]) == set(lines[-3]) == {"-", " "}
    assert len(lines) == 1 + 2 + len(TABLE1_PARAMS) + 3
    # Numbers are right-aligned: the params (and MACs) cells of every row end in one column.
    cells = [list(re.finditer(r"\S+", line))[-2:] for line in [*lines[3:-3], lines[-2]]]
    assert len({params.end() for params, _ in cells}) == 1
    assert len({macs.end() for _, macs in cells}) == 1


def test_collapse_raises_spec_error():
    with pytest.raises(SpecError, match="collapses"):
        complexity(preset("v1.0"), 16)


def test_empty_expand_branch_is_not_counted():
    # pct_3x3 = 1 leaves no 1x1 expand filters; the model then builds no expand1x1 conv.
    cx = complexity(preset("cifar", pct_3x3=1.0))
    names = [c.name for c in cx.layer("fire2").convs]
    assert names == ["fire2/squeeze", "fire2/expand3x3"]


# ------------------------------------------------------------------ agreement with the model
def _param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """'fire2/squeeze/kernel' -> shape, for every nnx.Param of the model."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        if keys[-1] == "value":  # the Variable's own field, where it is flattened as a pytree
            keys = keys[:-1]
        out["/".join(keys)] = tuple(leaf.shape)
    return out


def _analytic_shapes(cx) -> dict[str, tuple[int, ...]]:
    out = {}
    for c in cx.convs:
        out[f"{c.name}/kernel"] = c.kernel_shape
        if c.bias:
            out[f"{c.name}/bias"] = (c.out_channels,)
        if c.batch_norm:
            out[f"{c.name}_bn/scale"] = (c.out_channels,)
            out[f"{c.name}_bn/bias"] = (c.out_channels,)
    return out


@st.composite
def specs(draw) -> tuple[SqueezeNetSpec, int]:
    # sampled_from draws uniformly; integers() would favour the smallest networks.
    num_fire = draw(st.sampled_from(range(9)))
    fire_names = [f"fire{i + 2}" for i in range(num_fire)]
    bypass = draw(st.sampled_from(("none", *BYPASS_MODES)))  # half the draws without bypass
    # An identity shortcut needs equal widths in and out; formula widths give that when every
    # odd Fire module shares its expand width with the one before it (an even freq).
    freq = draw(st.sampled_from([2, 4])) if bypass != "none" else draw(st.integers(1, 4))
    explicit = bypass == "none" and draw(st.booleans())
    fire_widths = None
    if explicit:
        width = st.tuples(st.integers(1, 24), st.integers(0, 24), st.integers(1, 24))
        fire_widths = tuple(draw(width) for _ in range(num_fire))
    fields = dict(
        num_classes=draw(st.integers(1, 20)),
        in_channels=draw(st.integers(1, 4)),
        stem_filters=draw(st.integers(1, 32)),
        stem_kernel=draw(st.integers(1, 7)),
        stem_stride=draw(st.integers(1, 3)),
        stem_padding=draw(st.integers(0, 3)),
        num_fire=num_fire,
        base_e=draw(st.integers(4, 64)),
        incr_e=draw(st.integers(0, 64)),
        freq=freq,
        pct_3x3=draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0))),
        squeeze_ratio=draw(st.one_of(st.sampled_from([0.125, 0.25, 1.0]), st.floats(0.1, 1.0))),
        fire_widths=fire_widths,
        pool_after=tuple(p for p in ["conv1", *fire_names] if draw(st.booleans())),
        pool_ceil=draw(st.booleans()),
        bypass=bypass,
        classifier_padding=draw(st.integers(0, 1)),
        batch_norm=draw(st.booleans()),
    )
    image_size = draw(st.integers(16, 96))
    try:
        spec = SqueezeNetSpec(**fields)
        spec.feature_sizes(image_size)
    except SpecError:
        assume(False)
    # Grouped 3x3 expand convs: any group count that divides every width they touch.
    widths = [w for f in spec.fires() if f.expand3x3 for w in (f.squeeze, f.expand3x3)]
    common = math.gcd(*widths) if widths else 1
    groups = draw(st.sampled_from([g for g in range(1, common + 1) if common % g == 0]))
    return spec.replace(expand3x3_groups=groups), image_size


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_analytic_params_and_shapes_match_model(spec_and_size):
    spec, image_size = spec_and_size
    cx = complexity(spec, image_size)
    model = nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0)))
    assert cx.params == count_params(model)
    # Not just the total: the same parameter tensors, path by path.
    assert _analytic_shapes(cx) == _param_shapes(model)
    # And the output size of every row, from an abstract forward pass.
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, image_size, image_size, spec.in_channels), "float32")
    features = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).features(x), state, x)
    for row in cx.layers:
        if row.kind == "avgpool":
            assert features["logits"].shape == (1, row.channels)
        else:
            assert features[row.name].shape == (1, row.height, row.width, row.channels), row.name
    assert math.isclose(cx.fp32_mib, cx.params * 4 / 2**20)


# ------------------------------------------------------------------ grouped 3x3 expand convs
@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_grouped_expand3x3_params_macs_and_model(groups):
    spec = preset("digits", expand3x3_groups=groups)
    cx, dense = complexity(spec), complexity(preset("digits"))
    # Written from the widths, not the plan: each 3x3 expand kernel loses (1 - 1/g) of its
    # 9 * s * e3 weights, and its MACs shrink by the same factor at every output position.
    fewer = sum(9 * f.squeeze * f.expand3x3 * (groups - 1) // groups for f in spec.fires())
    assert dense.params - cx.params == fewer
    sizes = spec.feature_sizes()
    assert dense.macs - cx.macs == sum(
        sizes[f.name][0] ** 2 * 9 * f.squeeze * f.expand3x3 * (groups - 1) // groups
        for f in spec.fires()
    )
    model = nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0)))
    assert cx.params == count_params(model)
    assert _analytic_shapes(cx) == _param_shapes(model)
    assert _param_shapes(model)["fire2/expand3x3/kernel"] == (3, 3, 8 // groups, 32)
    # The default leaves spec.json (and .sqz headers) as they were before the field existed.
    assert ("expand3x3_groups" in spec.to_dict()) == (groups != 1)
    assert SqueezeNetSpec.from_json(spec.to_json()) == spec


def test_expand3x3_groups_must_divide_every_width():
    with pytest.raises(
        SpecError, match=r"expand3x3_groups must divide .* allowed here: 1, 2, 4, 8"
    ):
        preset("digits", expand3x3_groups=3)
    with pytest.raises(SpecError, match="expand3x3_groups must be an integer >= 1, got 0"):
        preset("digits", expand3x3_groups=0)


# ------------------------------------------------------------------ width-padding masks
def test_channel_masks_embed_a_narrow_plan_in_a_padded_one():
    # Two Fire modules, base_e 8 vs 16 (SR 0.25, half 3x3): fire2 s/e1/e3 2/4/4 in 4/8/8.
    narrow = SqueezeNetSpec(
        num_classes=3,
        image_size=8,
        in_channels=1,
        stem_filters=4,
        stem_kernel=3,
        stem_padding=1,
        num_fire=2,
        base_e=8,
        incr_e=0,
        squeeze_ratio=0.25,
        pool_after=(),
        bypass="simple",
    )
    wide = narrow.replace(stem_filters=6, base_e=16)
    masks = channel_masks(narrow.layer_plan(), wide.layer_plan())
    t, f = True, False
    assert masks["conv1"] == ChannelMask((t,), (t, t, t, t, f, f))
    assert masks["fire2/squeeze"] == ChannelMask((t, t, t, t, f, f), (t, t, f, f))
    assert masks["fire2/expand3x3"] == ChannelMask((t, t, f, f), (t,) * 4 + (f,) * 4)
    # fire3 reads concat(expand1x1, expand3x3): the kept channels of each half.
    fire2_out = (t,) * 4 + (f,) * 4 + (t,) * 4 + (f,) * 4
    assert masks["fire3/squeeze"].inputs == fire2_out
    assert masks["conv10"] == ChannelMask(fire2_out, (t, t, t))
    assert list(masks) == [c.name for c in narrow.layer_plan().convs]
    with pytest.raises(ValueError, match="conv1 is wider"):
        channel_masks(wide.layer_plan(), narrow.layer_plan())
    with pytest.raises(ValueError, match="differ"):
        channel_masks(narrow.layer_plan(), wide.replace(num_fire=1, bypass="none").layer_plan())


def test_expand3x3_groups_sweep_points_build_what_the_analytic_count_says():
    # Every point of sweeps/expand3x3_groups.py, through the trial config the sweep writes.
    defn = load_sweep(os.path.join(ROOT, "sweeps", "expand3x3_groups.py"), "runlocal")
    base = config_json(load_base_config(defn))
    check_against_config(defn, load_base_config(defn))
    params = {}
    for groups in defn.space["model.expand3x3_groups"].values:
        config = trial_config(base, defn, {"model.expand3x3_groups": groups}, 0, "p-s0")
        spec = spec_from_config(typed_config(config))
        model = nnx.eval_shape(lambda spec=spec: SqueezeNet(spec, rngs=nnx.Rngs(0)))
        params[groups] = count_params(model)
        assert complexity(spec).params == params[groups]
    assert params[1] > params[2] > params[4] > params[8]


def test_the_spec_module_keeps_the_names_its_callers_import():
    """models/spec.py was split (field metadata, the layer plan, width padding); the names callers
    import from it are the new modules' own objects, and the plan is built (and cached) there."""
    from sqzexplore.models import fields, plan, spec, widths

    for module, names in [
        (fields, ["SpecError", "FieldInfo", "SPEC_FIELD"]),
        (plan, ["ConvLayer", "PoolLayer", "BypassLayer", "PlanLayer", "LayerPlan", "CONV_ROLES"]),
        (plan, ["FIRE_ROLES", "conv_order_key", "conv_block_role"]),
        (widths, ["WIDTH_FIELDS", "ChannelMask", "channel_masks", "padded_fire_widths"]),
    ]:
        for name in names:
            assert getattr(spec, name) is getattr(module, name), name
    v10 = preset("v1.0")
    assert v10.layer_plan() is plan.build_plan(v10, 224)  # one cached plan per (spec, size)
    assert v10.layer_plan().params == 1_248_424
