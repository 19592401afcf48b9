"""SqueezeNetSpec: one point of the SqueezeNet design space, validated before anything is built.

The spec is the single description that the model (`squeezenet.py`), the analytic complexity
(`complexity.py`), the trainer, the sweeps and the compressor all read. `layer_plan()` turns it
into plain data, jax-free: every conv (name, role, kernel, stride, padding, channels, groups,
BatchNorm, bias, input and output size), every pool and every bypass, in order of computation.
The model builds its convs from that plan, the complexity sums it, compression takes its layer
order, roles and released densities from it, and the tests check the built model against it.
The spec is a frozen, hashable dataclass that round-trips through JSON, so a run's `spec.json`
rebuilds exactly its model.

Microarchitecture follows the paper's section 5 (docs/paper.md#microarchitecture): for Fire module i
(fire2 is i = 0)

    e_i  = base_e + incr_e * floor(i / freq)
    e3_i = floor(e_i * pct_3x3),  e1_i = e_i - e3_i
    s_i  = floor(squeeze_ratio * e_i)

or, instead, an explicit per-Fire list of (squeeze, expand1x1, expand3x3) widths.

Layers are named as in the paper's Table 1: `conv1`, `fire2` ... `fire{num_fire + 1}`, `conv10`
(the classifier keeps that name whatever the number of Fire modules). `pool_after` names the
layers followed by a max-pool (Strategy 3: late downsampling).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from typing import Any, ClassVar

BYPASS_MODES = ("none", "simple", "complex")
INIT_SCHEMES = ("caffe", "torchvision")
DTYPES = ("float32", "bfloat16")


class SpecError(ValueError):
    """A design point that cannot be built; the message names the field and what is allowed."""


@dataclasses.dataclass(frozen=True)
class FireWidths:
    """Widths of one Fire module: squeeze filters and the two halves of the expand layer."""

    name: str
    squeeze: int
    expand1x1: int
    expand3x3: int

    @property
    def expand(self) -> int:
        return self.expand1x1 + self.expand3x3


@dataclasses.dataclass(frozen=True)
class SqueezeNetSpec:
    """A SqueezeNet design point. Defaults are SqueezeNet v1.0 (paper Table 1)."""

    name: str = "custom"
    num_classes: int = 1000
    image_size: int = 224
    in_channels: int = 3
    # Stem (conv1).
    stem_filters: int = 96
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_padding: int = 0
    # Microarchitecture metaparameters (paper section 5).
    num_fire: int = 8
    base_e: int = 128
    incr_e: int = 128
    freq: int = 2
    pct_3x3: float = 0.5
    squeeze_ratio: float = 0.125
    # Explicit (squeeze, expand1x1, expand3x3) per Fire module; overrides the formula when set.
    fire_widths: tuple[tuple[int, int, int], ...] | None = None
    # Downsampling (Strategy 3).
    pool_after: tuple[str, ...] = ("conv1", "fire4", "fire8")
    pool_size: int = 3
    pool_stride: int = 2
    pool_ceil: bool = True
    # Macroarchitecture (paper section 6).
    bypass: str = "none"
    # Classifier and regularisation.
    classifier_padding: int = (
        0  # the Caffe v1.0 prototxt pads conv10 by 1 (docs/paper.md#classifier-padding)
    )
    # The paper's classifier has a ReLU after conv10. With few classes a class whose conv10
    # outputs all go negative gets a constant 0 logit and no gradient ever again (a dead class);
    # small-data experiments may turn it off. On in every paper preset.
    classifier_relu: bool = True
    dropout: float = 0.5
    batch_norm: bool = False
    init: str = "caffe"
    dtype: str = "float32"  # compute dtype; parameters always stay float32

    def __post_init__(self):
        # Normalise list-valued fields (from JSON or ConfigDict) to tuples so the spec is hashable.
        object.__setattr__(self, "pool_after", tuple(str(p) for p in self.pool_after))
        if self.fire_widths is not None:
            widths = tuple(tuple(int(v) for v in w) for w in self.fire_widths)
            object.__setattr__(self, "fire_widths", widths)
        self.validate()

    # ------------------------------------------------------------------ derived structure
    @property
    def fire_names(self) -> tuple[str, ...]:
        return tuple(f"fire{i + 2}" for i in range(self.num_fire))

    @property
    def layer_names(self) -> tuple[str, ...]:
        return ("conv1", *self.fire_names, "conv10")

    def fires(self) -> tuple[FireWidths, ...]:
        """Widths of every Fire module, from the explicit list or the paper's formulas."""
        if self.fire_widths is not None:
            return tuple(
                FireWidths(name, s, e1, e3)
                for name, (s, e1, e3) in zip(self.fire_names, self.fire_widths, strict=True)
            )
        out = []
        for i, name in enumerate(self.fire_names):
            e = self.base_e + self.incr_e * (i // self.freq)
            e3 = math.floor(e * self.pct_3x3)
            s = math.floor(self.squeeze_ratio * e)
            out.append(FireWidths(name, s, e - e3, e3))
        return tuple(out)

    def bypass_kind(self, fire_index: int) -> str:
        """'identity', 'conv' or 'none' for Fire module `fire_index` (0 is fire2).

        As in the paper's Table 3: simple bypass wraps fire3, fire5, fire7, fire9 (odd indices);
        complex bypass also puts a 1x1 conv around fire2, fire4, fire6, fire8.
        """
        if self.bypass == "none":
            return "none"
        if fire_index % 2 == 1:
            return "identity"
        return "conv" if self.bypass == "complex" else "none"

    def fire_in_channels(self) -> tuple[int, ...]:
        """Channels entering each Fire module."""
        chans, c = [], self.stem_filters
        for f in self.fires():
            chans.append(c)
            c = f.expand
        return tuple(chans)

    @property
    def classifier_in_channels(self) -> int:
        fires = self.fires()
        return fires[-1].expand if fires else self.stem_filters

    # ------------------------------------------------------------------ spatial arithmetic
    def conv_out(self, size: int, kernel: int, stride: int, padding: int) -> int:
        return (size + 2 * padding - kernel) // stride + 1

    def pool_out(self, size: int) -> int:
        """Max-pool output size; ceil mode as in Caffe/torchvision (last window starts inside)."""
        k, s = self.pool_size, self.pool_stride
        if not self.pool_ceil:
            return (size - k) // s + 1
        out = -(-(size - k) // s) + 1
        if (out - 1) * s >= size:
            out -= 1
        return out

    def feature_sizes(self, image_size: int | None = None) -> dict[str, tuple[int, int]]:
        """Spatial size after each layer as `(before_pool, after_pool)`; SpecError on collapse."""
        size = size0 = self.image_size if image_size is None else image_size
        if size < 1:
            raise SpecError(f"image_size must be a positive integer, got {size}")
        sizes = {}
        size_in = size
        size = self.conv_out(size, self.stem_kernel, self.stem_stride, self.stem_padding)
        if size < 1:
            raise SpecError(
                f"feature map collapses at conv1: a {size_in}x{size_in} input with kernel "
                f"{self.stem_kernel}, stride {self.stem_stride}, padding {self.stem_padding} gives "
                f"{size}x{size}; use a larger image_size or a smaller stem"
            )
        for name in self.layer_names:
            if name == "conv10":
                size = self.conv_out(size, 1, 1, self.classifier_padding)
                sizes[name] = (size, size)
                continue
            before = size
            if name in self.pool_after:
                if size < self.pool_size:
                    raise SpecError(
                        f"feature map collapses at the max-pool after {name}: {size}x{size} is "
                        f"smaller than pool_size {self.pool_size} for image_size {size0}; "
                        "pool later (pool_after), use fewer pools or a larger image_size"
                    )
                size = self.pool_out(size)
            sizes[name] = (before, size)
        return sizes

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise SpecError naming the first offending field and its allowed values."""

        def positive(field: str, allow_zero: bool = False):
            value = getattr(self, field)
            low = 0 if allow_zero else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                rng = ">= 0" if allow_zero else ">= 1"
                raise SpecError(f"{field} must be an integer {rng}, got {value!r}")

        for field in (
            "num_classes",
            "image_size",
            "in_channels",
            "stem_filters",
            "stem_kernel",
            "stem_stride",
            "freq",
            "pool_size",
            "pool_stride",
        ):
            positive(field)
        positive("stem_padding", allow_zero=True)
        positive("classifier_padding", allow_zero=True)
        positive("num_fire", allow_zero=True)
        if self.fire_widths is None:
            positive("base_e")
            positive("incr_e", allow_zero=True)
        for field in ("pct_3x3", "squeeze_ratio"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise SpecError(f"{field} must be a number, got {value!r}")
        if not 0.0 <= self.pct_3x3 <= 1.0:
            raise SpecError(f"pct_3x3 must be in [0, 1], got {self.pct_3x3}")
        if not 0.0 < self.squeeze_ratio <= 1.0:
            raise SpecError(f"squeeze_ratio must be in (0, 1], got {self.squeeze_ratio}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise SpecError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.bypass not in BYPASS_MODES:
            raise SpecError(f"bypass must be one of {BYPASS_MODES}, got {self.bypass!r}")
        if self.init not in INIT_SCHEMES:
            raise SpecError(f"init must be one of {INIT_SCHEMES}, got {self.init!r}")
        if self.dtype not in DTYPES:
            raise SpecError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.fire_widths is not None:
            if len(self.fire_widths) != self.num_fire:
                raise SpecError(
                    f"fire_widths has {len(self.fire_widths)} entries but num_fire is "
                    f"{self.num_fire}; they must agree"
                )
            for name, w in zip(self.fire_names, self.fire_widths, strict=True):
                if len(w) != 3:
                    raise SpecError(
                        f"fire_widths entry for {name} must be (squeeze, expand1x1, expand3x3), "
                        f"got {w!r}"
                    )
        for f in self.fires():
            if f.squeeze < 1:
                raise SpecError(
                    f"squeeze width of {f.name} is {f.squeeze} (< 1): squeeze_ratio "
                    f"{self.squeeze_ratio} x expand {f.expand} rounds to zero; raise squeeze_ratio "
                    f"or base_e so every Fire module keeps at least 1 squeeze filter"
                )
            if f.expand1x1 < 0 or f.expand3x3 < 0 or f.expand < 1:
                raise SpecError(
                    f"{f.name} has no expand filters (expand1x1={f.expand1x1}, "
                    f"expand3x3={f.expand3x3}); pct_3x3 must leave at least one expand filter"
                )
        allowed = ("conv1", *self.fire_names)
        seen = set()
        for p in self.pool_after:
            if p not in allowed:
                raise SpecError(
                    f"pool_after has unknown position {p!r}; allowed: {', '.join(allowed)}"
                )
            if p in seen:
                raise SpecError(f"pool_after lists {p!r} twice; each position may pool once")
            seen.add(p)
        in_chans = self.fire_in_channels()
        for i, f in enumerate(self.fires()):
            if self.bypass_kind(i) == "identity" and in_chans[i] != f.expand:
                raise SpecError(
                    f"bypass={self.bypass!r} puts an identity shortcut around {f.name}, whose "
                    f"input "
                    f"({in_chans[i]} channels) and output ({f.expand} channels) widths differ; "
                    "use bypass='complex'-compatible widths (e.g. freq=2) or bypass='none'"
                )
        self.feature_sizes()

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pool_after"] = list(self.pool_after)
        if self.fire_widths is not None:
            d["fire_widths"] = [list(w) for w in self.fire_widths]
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SqueezeNetSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SpecError(f"unknown spec field(s) {unknown}; known fields: {sorted(names)}")
        d = dict(d)
        if d.get("fire_widths") is not None:
            d["fire_widths"] = tuple(tuple(w) for w in d["fire_widths"])
        if "pool_after" in d:
            d["pool_after"] = tuple(d["pool_after"])
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> SqueezeNetSpec:
        return cls.from_dict(json.loads(s))

    def replace(self, **changes) -> SqueezeNetSpec:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ the layer plan
    def layer_plan(self, image_size: int | None = None) -> LayerPlan:
        """Every conv, pool and bypass of this design point at `image_size` (default the spec's),
        in order of computation; SpecError when the feature map collapses at that size."""
        return _layer_plan(self, self.image_size if image_size is None else image_size)


@functools.lru_cache(maxsize=256)
def _layer_plan(spec: SqueezeNetSpec, image_size: int) -> LayerPlan:
    sizes = spec.feature_sizes(image_size)
    bn = spec.batch_norm
    layers: list[PlanLayer] = []

    def conv(
        name,
        block,
        role,
        kernel,
        c_in,
        c_out,
        size_in,
        size_out,
        *,
        stride=1,
        padding=0,
        groups=1,
        normalized=True,
    ):
        # A BatchNorm right after a conv makes its bias redundant (BN's own bias replaces it);
        # conv10 and the complex-bypass convs are never normalised.
        layers.append(
            ConvLayer(
                name=name,
                block=block,
                role=role,
                kernel=kernel,
                stride=stride,
                padding=padding,
                in_channels=c_in,
                out_channels=c_out,
                groups=groups,
                batch_norm=normalized and bn,
                bias=not (normalized and bn),
                in_size=size_in,
                out_size=size_out,
            )
        )

    def pool(after: str, channels: int) -> None:
        before, out = sizes[after]
        name = "maxpool" + after.removeprefix("conv").removeprefix("fire")
        layers.append(
            PoolLayer(
                name,
                name,
                after,
                "max",
                spec.pool_size,
                spec.pool_stride,
                spec.pool_ceil,
                channels,
                before,
                out,
            )
        )

    size = sizes["conv1"][0]
    conv(
        "conv1",
        "conv1",
        "conv1",
        spec.stem_kernel,
        spec.in_channels,
        spec.stem_filters,
        image_size,
        size,
        stride=spec.stem_stride,
        padding=spec.stem_padding,
    )
    if "conv1" in spec.pool_after:
        pool("conv1", spec.stem_filters)
    c_in, size_in = spec.stem_filters, sizes["conv1"][1]
    for i, fire in enumerate(spec.fires()):
        name, size = fire.name, sizes[fire.name][0]  # a Fire module keeps its input's size
        conv(f"{name}/squeeze", name, "squeeze", 1, c_in, fire.squeeze, size_in, size)
        # pct_3x3 of 0 or 1 empties one expand branch; it is then simply not built.
        if fire.expand1x1:
            conv(
                f"{name}/expand1x1", name, "expand1x1", 1, fire.squeeze, fire.expand1x1, size, size
            )
        if fire.expand3x3:
            conv(
                f"{name}/expand3x3",
                name,
                "expand3x3",
                3,
                fire.squeeze,
                fire.expand3x3,
                size,
                size,
                padding=1,
            )
        shortcut = spec.bypass_kind(i)
        if shortcut == "conv":
            conv(
                f"{name}/bypass",
                name,
                "bypass",
                1,
                c_in,
                fire.expand,
                size_in,
                size,
                normalized=False,
            )
        if shortcut != "none":
            bypass_conv = f"{name}/bypass" if shortcut == "conv" else None
            layers.append(
                BypassLayer(f"{name}/shortcut", name, shortcut, bypass_conv, fire.expand, size)
            )
        if name in spec.pool_after:
            pool(name, fire.expand)
        c_in, size_in = fire.expand, sizes[name][1]
    size = sizes["conv10"][0]
    conv(
        "conv10",
        "conv10",
        "classifier",
        1,
        c_in,
        spec.num_classes,
        size_in,
        size,
        padding=spec.classifier_padding,
        normalized=False,
    )
    layers.append(
        PoolLayer("avgpool", "avgpool", "conv10", "avg", size, 1, False, spec.num_classes, size, 1)
    )
    return LayerPlan(image_size, tuple(layers))


# ---------------------------------------------------------------------- the layer plan
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


# ---------------------------------------------------------------------- named presets
PRESETS: dict[str, SqueezeNetSpec] = {
    # Paper Table 1: conv1 96x7x7/2, pools after conv1, fire4, fire8; 1,248,424 params.
    "v1.0": SqueezeNetSpec(name="v1.0"),
    # Release v1.1: conv1 64x3x3/2, pools after conv1, fire3, fire5; 1,235,496 params.
    "v1.1": SqueezeNetSpec(
        name="v1.1", stem_filters=64, stem_kernel=3, pool_after=("conv1", "fire3", "fire5")
    ),
    # 32x32 inputs (CIFAR): a 3x3/1 stem keeps 32x32 maps until fire4; 32 -> 16 -> 8.
    "cifar": SqueezeNetSpec(
        name="cifar",
        num_classes=10,
        image_size=32,
        stem_filters=96,
        stem_kernel=3,
        stem_stride=1,
        stem_padding=1,
        pool_after=("fire4", "fire8"),
        init="torchvision",
    ),
    # The bundled 8x8 digits upscaled to 16x16, grayscale, half-width: 16 -> 8 -> 4 -> 2.
    "digits": SqueezeNetSpec(
        name="digits",
        num_classes=10,
        image_size=16,
        in_channels=1,
        stem_filters=32,
        stem_kernel=3,
        stem_stride=1,
        stem_padding=1,
        base_e=64,
        incr_e=64,
        pool_after=("fire3", "fire5", "fire7"),
        dropout=0.2,
        init="torchvision",
    ),
}


def preset(name: str, **overrides) -> SqueezeNetSpec:
    """A named preset, optionally with fields replaced (validated again)."""
    if name not in PRESETS:
        raise SpecError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
