"""The layer plan: every conv, pool and bypass of a design point, as plain data, no jax.

`build_plan(spec, image_size)` (what `SqueezeNetSpec.layer_plan()` returns) lists, in order of
computation, a `ConvLayer` per convolution (name = its parameter path prefix such as
`fire2/expand3x3`, Table 1 block, role, kernel, stride, padding, channels, groups, BatchNorm,
bias, input and output size), a `PoolLayer` per max-pool and the final average pool, and a
`BypassLayer` per shortcut. The model (`squeezenet.py`) builds its convs from it and walks it in
its forward pass, the analytic complexity (`complexity.py`) sums it, compression takes its layer
order and roles from it (`conv_order_key`, `conv_block_role`), and the tests check the built
model against it. This module reads a spec but does not import `spec.py` (which imports it).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

# Roles of the convs in a plan, in the order a Fire module builds them.
CONV_ROLES = ("conv1", "squeeze", "expand1x1", "expand3x3", "bypass", "classifier")
FIRE_ROLES = ("squeeze", "expand1x1", "expand3x3", "bypass")


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One convolution of the network (with its BatchNorm, if any), as the model builds it.

    `name` is its parameter path prefix ('conv1', 'fire2/squeeze', 'fire3/bypass', 'conv10');
    `block` the Table 1 row it belongs to ('conv1', 'fire2', 'conv10'). Sizes are square.
    """

    name: str
    block: str
    role: str  # one of CONV_ROLES
    kernel: int
    stride: int
    padding: int
    in_channels: int
    out_channels: int
    groups: int
    batch_norm: bool
    bias: bool
    in_size: int
    out_size: int

    kind: ClassVar[str] = "conv"

    @property
    def height(self) -> int:
        return self.out_size

    @property
    def width(self) -> int:
        return self.out_size

    @property
    def weights(self) -> int:
        """Kernel scalars: a grouped conv sees `in_channels / groups` inputs per filter."""
        return self.kernel * self.kernel * (self.in_channels // self.groups) * self.out_channels

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """HWIO, as the model's (and every checkpoint's) kernel."""
        return (self.kernel, self.kernel, self.in_channels // self.groups, self.out_channels)

    @property
    def params(self) -> int:
        extra = self.out_channels if self.bias else 0
        if self.batch_norm:
            extra += 2 * self.out_channels  # BatchNorm scale and bias
        return self.weights + extra

    @property
    def macs(self) -> int:
        return self.out_size * self.out_size * self.weights

    @property
    def activations(self) -> int:
        return self.out_size * self.out_size * self.out_channels

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "kernel": self.kernel,
            "stride": self.stride,
            "padding": self.padding,
            "groups": self.groups,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "height": self.height,
            "width": self.width,
            "bias": self.bias,
            "batch_norm": self.batch_norm,
            "params": self.params,
            "macs": self.macs,
            "activations": self.activations,
        }


@dataclasses.dataclass(frozen=True)
class PoolLayer:
    """A pool: a max-pool named after the layer it follows ('maxpool4' after fire4, as in
    Table 1), or the final global average pool ('avgpool')."""

    name: str
    block: str  # its own Table 1 row: the same as `name`
    after: str  # the block it follows
    op: str  # 'max' | 'avg'
    kernel: int
    stride: int
    ceil: bool
    channels: int
    in_size: int
    out_size: int

    kind: ClassVar[str] = "pool"


@dataclasses.dataclass(frozen=True)
class BypassLayer:
    """The shortcut added to a Fire module's output (paper section 6): 'identity' (simple
    bypass) or 'conv' (complex bypass, through the 1x1 conv named `conv`)."""

    name: str  # '<fire>/shortcut'
    block: str
    shortcut: str  # 'identity' | 'conv'
    conv: str | None  # the bypass conv's name for 'conv'
    channels: int
    size: int

    kind: ClassVar[str] = "bypass"


PlanLayer = ConvLayer | PoolLayer | BypassLayer


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """Every layer of a design point in order of computation, at one input size.

    Plain data, no jax: the model builds its convs from `convs`, the analytic complexity sums
    them, compression takes its layer order and roles from them, and tests check the built model
    against them.
    """

    image_size: int
    layers: tuple[PlanLayer, ...]

    @property
    def convs(self) -> tuple[ConvLayer, ...]:
        return tuple(x for x in self.layers if isinstance(x, ConvLayer))

    @property
    def pools(self) -> tuple[PoolLayer, ...]:
        return tuple(x for x in self.layers if isinstance(x, PoolLayer))

    @property
    def bypasses(self) -> tuple[BypassLayer, ...]:
        return tuple(x for x in self.layers if isinstance(x, BypassLayer))

    @property
    def blocks(self) -> tuple[str, ...]:
        """Table 1 rows in order: 'conv1', 'maxpool1', 'fire2', ..., 'conv10', 'avgpool'."""
        return tuple(dict.fromkeys(x.block for x in self.layers))

    def block(self, name: str) -> tuple[PlanLayer, ...]:
        """The entries of one Table 1 row."""
        found = tuple(x for x in self.layers if x.block == name)
        if not found:
            raise KeyError(f"no block {name!r}; blocks: {', '.join(self.blocks)}")
        return found

    def conv(self, name: str) -> ConvLayer:
        for c in self.convs:
            if c.name == name:
                return c
        raise KeyError(f"no conv {name!r}; convs: {', '.join(c.name for c in self.convs)}")

    @property
    def fire_blocks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.block for c in self.convs if c.role in FIRE_ROLES))

    @property
    def params(self) -> int:
        return sum(c.params for c in self.convs)


def conv_order_key(name: str) -> tuple:
    """Sort key putting a parameter path ('fire2/squeeze/kernel', 'conv1_bn/scale') in the order a
    plan lists its convs: conv1, fire2 ... fireN (each in FIRE_ROLES order), conv10, then anything
    else alphabetically. It parses the names `layer_plan` gives, for parameter trees that come
    without their spec (a .sqz file's payload, a mask tree)."""
    head, _, rest = name.partition("/")
    role = rest.split("/")[0].removesuffix("_bn")
    if head in ("conv1", "conv1_bn"):
        return (0, 0, (0, name))
    if head.startswith("fire") and head[4:].isdigit():
        rank = FIRE_ROLES.index(role) if role in FIRE_ROLES else len(FIRE_ROLES)
        return (1, int(head[4:]), (rank, rest))
    if head == "conv10":
        return (2, 0, (0, name))
    return (3, 0, (0, name))


def conv_block_role(name: str) -> tuple[str, str | None]:
    """`(block, role)` of a conv named as `layer_plan` names them ('fire2/expand3x3' ->
    ('fire2', 'expand3x3'), 'conv10' -> ('conv10', 'classifier')); role None for a name no plan
    gives."""
    head, _, rest = name.partition("/")
    if name == "conv1":
        return "conv1", "conv1"
    if name == "conv10":
        return "conv10", "classifier"
    if head.startswith("fire") and head[4:].isdigit() and rest in FIRE_ROLES:
        return head, rest
    return head, None


# ---------------------------------------------------------------------- building a plan
@functools.lru_cache(maxsize=256)
def build_plan(spec: Any, image_size: int) -> LayerPlan:
    """Every layer of `spec` (a `SqueezeNetSpec`) at `image_size`, in order of computation;
    SpecError (from `spec.feature_sizes`) when the feature map collapses at that size."""
    builder = _Builder(spec, image_size)
    builder.stem()
    c_in, size_in = spec.stem_filters, builder.sizes["conv1"][1]
    for i, fire in enumerate(spec.fires()):
        builder.fire(i, fire, c_in, size_in)
        c_in, size_in = fire.expand, builder.sizes[fire.name][1]
    builder.classifier(c_in, size_in)
    return LayerPlan(image_size, tuple(builder.layers))


class _Builder:
    """The plan's entries of one spec, appended block by block."""

    def __init__(self, spec: Any, image_size: int):
        self.spec, self.image_size = spec, image_size
        self.sizes = spec.feature_sizes(image_size)
        self.layers: list[PlanLayer] = []

    def conv(
        self,
        name: str,
        role: str,
        c_in: int,
        c_out: int,
        size_in: int,
        size_out: int,
        *,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        normalized: bool = True,
    ) -> None:
        # A BatchNorm right after a conv makes its bias redundant (BN's own bias replaces it);
        # conv10 and the complex-bypass convs are never normalised.
        bn = normalized and self.spec.batch_norm
        self.layers.append(
            ConvLayer(
                name=name,
                block=name.partition("/")[0],
                role=role,
                kernel=kernel,
                stride=stride,
                padding=padding,
                in_channels=c_in,
                out_channels=c_out,
                groups=groups,
                batch_norm=bn,
                bias=not bn,
                in_size=size_in,
                out_size=size_out,
            )
        )

    def pool(self, after: str, channels: int) -> None:
        before, out = self.sizes[after]
        name = "maxpool" + after.removeprefix("conv").removeprefix("fire")
        spec = self.spec
        self.layers.append(
            PoolLayer(
                name=name,
                block=name,
                after=after,
                op="max",
                kernel=spec.pool_size,
                stride=spec.pool_stride,
                ceil=spec.pool_ceil,
                channels=channels,
                in_size=before,
                out_size=out,
            )
        )

    def stem(self) -> None:
        spec = self.spec
        self.conv(
            "conv1",
            "conv1",
            spec.in_channels,
            spec.stem_filters,
            self.image_size,
            self.sizes["conv1"][0],
            kernel=spec.stem_kernel,
            stride=spec.stem_stride,
            padding=spec.stem_padding,
        )
        if "conv1" in spec.pool_after:
            self.pool("conv1", spec.stem_filters)

    def fire(self, i: int, fire: Any, c_in: int, size_in: int) -> None:
        """Fire module `i` (a `FireWidths`), entered by `c_in` channels of `size_in` pixels."""
        spec = self.spec
        name, size = fire.name, self.sizes[fire.name][0]  # a Fire module keeps its input's size
        s, e1, e3 = fire.squeeze, fire.expand1x1, fire.expand3x3
        self.conv(f"{name}/squeeze", "squeeze", c_in, s, size_in, size)
        # pct_3x3 of 0 or 1 empties one expand branch; it is then simply not built.
        if e1:
            self.conv(f"{name}/expand1x1", "expand1x1", s, e1, size, size)
        if e3:
            self.conv(
                f"{name}/expand3x3",
                "expand3x3",
                s,
                e3,
                size,
                size,
                kernel=3,
                padding=1,
                groups=spec.expand3x3_groups,
            )
        shortcut = spec.bypass_kind(i)
        if shortcut == "conv":
            self.conv(
                f"{name}/bypass", "bypass", c_in, fire.expand, size_in, size, normalized=False
            )
        if shortcut != "none":
            self.layers.append(
                BypassLayer(
                    name=f"{name}/shortcut",
                    block=name,
                    shortcut=shortcut,
                    conv=f"{name}/bypass" if shortcut == "conv" else None,
                    channels=fire.expand,
                    size=size,
                )
            )
        if name in spec.pool_after:
            self.pool(name, fire.expand)

    def classifier(self, c_in: int, size_in: int) -> None:
        """conv10 and the global average pool."""
        spec = self.spec
        size = self.sizes["conv10"][0]
        self.conv(
            "conv10",
            "classifier",
            c_in,
            spec.num_classes,
            size_in,
            size,
            padding=spec.classifier_padding,
            normalized=False,
        )
        self.layers.append(
            PoolLayer(
                name="avgpool",
                block="avgpool",
                after="conv10",
                op="avg",
                kernel=size,
                stride=1,
                ceil=False,
                channels=spec.num_classes,
                in_size=size,
                out_size=1,
            )
        )
