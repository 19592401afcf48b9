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
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

BYPASS_MODES = ("none", "simple", "complex")
INIT_SCHEMES = ("caffe", "torchvision")
DTYPES = ("float32", "bfloat16")


class SpecError(ValueError):
    """A design point that cannot be built; the message names the field and what is allowed."""


# The key under which a spec field's `FieldInfo` sits in its dataclass field metadata.
SPEC_FIELD = "sqzexplore.spec"


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """What a spec field means and accepts: its help text, its type (`kind`) and its allowed
    range or choices. Config defaults, `sqz train --help`, `sqz describe --set`, the wandb design
    fields and the spec's own validation all read it, so adding a field is one line here.

    `design`: a dimension of the design space that dashboards compare runs by. `formula_only`:
    checked only when `fire_widths` is unset (the field feeds the width formulas).
    """

    help: str
    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    design: bool = False
    formula_only: bool = False
    example: str | None = None  # a command-line spelling, for tuple-valued fields
    optional: bool = False  # None is allowed (and means "use the formulas")
    # Left out of `to_dict` (spec.json, a .sqz header) at its default, so a field added later
    # leaves the files of every design point that does not use it byte-identical.
    omit_default: bool = False

    @property
    def allowed(self) -> str:
        """The allowed values in words: 'an integer >= 1', 'in (0, 1]', 'one of (...)'."""
        if self.choices is not None:
            return f"one of {self.choices}"
        if self.kind is int:
            return f"an integer >= {int(self.low)}" if self.low is not None else "an integer"
        if self.kind is float and self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.kind is bool:
            return "true or false"
        if self.kind is tuple:
            return f"a tuple such as {self.example}" if self.example else "a tuple"
        return "a string"

    @property
    def line(self) -> str:
        """One help line: the meaning, then the range where the meaning does not say it."""
        if self.kind in (int, float) and (self.low is not None or self.high is not None):
            return f"{self.help}; {self.allowed}"
        return self.help

    def check(self, name: str, value: Any) -> None:
        """SpecError naming the field and the allowed range when `value` is outside it."""
        if self.choices is not None:
            if value not in self.choices:
                raise SpecError(f"{name} must be {self.allowed}, got {value!r}")
            return
        if self.kind is int:
            if not isinstance(value, int) or isinstance(value, bool) or value < self.low:
                raise SpecError(f"{name} must be {self.allowed}, got {value!r}")
        elif self.kind is float:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise SpecError(f"{name} must be a number {self.allowed}, got {value!r}")
            below = value <= self.low if self.low_open else value < self.low
            above = value >= self.high if self.high_open else value > self.high
            if below or above or value != value:  # NaN is in no range
                raise SpecError(f"{name} must be {self.allowed}, got {value!r}")


def _field(default: Any, help: str, *, kind: type | None = None, **info: Any) -> Any:
    kind = kind or (str if "choices" in info else type(default))
    return dataclasses.field(default=default, metadata={SPEC_FIELD: FieldInfo(help, kind, **info)})


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

    name: str = _field("custom", "label of the design point")
    num_classes: int = _field(1000, "classifier outputs; must match the dataset", low=1)
    image_size: int = _field(224, "input height and width in pixels", low=1)
    in_channels: int = _field(3, "input channels (1 grey, 3 RGB)", low=1)
    # Stem (conv1).
    stem_filters: int = _field(96, "conv1 filters", low=1)
    stem_kernel: int = _field(7, "conv1 kernel size", low=1)
    stem_stride: int = _field(2, "conv1 stride", low=1)
    stem_padding: int = _field(0, "conv1 padding", low=0)
    # Microarchitecture metaparameters (paper section 5).
    num_fire: int = _field(8, "number of Fire modules (fire2 ... fire{num_fire+1})", low=0)
    base_e: int = _field(
        128, "expand filters of the first Fire module", low=1, design=True, formula_only=True
    )
    incr_e: int = _field(
        128,
        "expand filters added every `freq` Fire modules",
        low=0,
        design=True,
        formula_only=True,
    )
    freq: int = _field(2, "Fire modules between expand-width increases", low=1, design=True)
    pct_3x3: float = _field(0.5, "share of 3x3 expand filters", low=0.0, high=1.0, design=True)
    squeeze_ratio: float = _field(
        0.125,
        "squeeze filters / expand filters (SR)",
        low=0.0,
        high=1.0,
        low_open=True,
        design=True,
    )
    # Grouped 3x3 expand convs (ResNeXt / MobileNet style): each group of expand3x3 filters sees
    # squeeze / groups channels, dividing its weights and MACs by `groups`; equal to the squeeze
    # width it is a depthwise-style 3x3 (one input channel per filter). 1 is the paper's.
    expand3x3_groups: int = _field(
        1,
        "groups of the 3x3 expand convs (must divide every squeeze and 3x3 expand width)",
        low=1,
        design=True,
        omit_default=True,
    )
    # Explicit (squeeze, expand1x1, expand3x3) per Fire module; overrides the formula when set.
    fire_widths: tuple[tuple[int, int, int], ...] | None = _field(
        None,
        "explicit ((squeeze, e1x1, e3x3), ...) per Fire module; None: formulas",
        kind=tuple,
        optional=True,
        example='"((16,64,64),(16,64,64))" (squeeze, expand1x1, expand3x3 per Fire)',
    )
    # Downsampling (Strategy 3).
    pool_after: tuple[str, ...] = _field(
        ("conv1", "fire4", "fire8"),
        "layers followed by a max-pool, e.g. ('conv1', 'fire4', 'fire8')",
        kind=tuple,
        example="\"('conv1','fire4','fire8')\"",
        design=True,
    )
    pool_size: int = _field(3, "max-pool window", low=1)
    pool_stride: int = _field(2, "max-pool stride", low=1)
    pool_ceil: bool = _field(True, "ceil-mode pooling (Caffe) instead of floor")
    # Macroarchitecture (paper section 6).
    bypass: str = _field(
        "none", "residual bypass: none | simple | complex", choices=BYPASS_MODES, design=True
    )
    # Classifier and regularisation. The Caffe v1.0 prototxt pads conv10 by 1
    # (docs/paper.md#classifier-padding).
    classifier_padding: int = _field(0, "conv10 padding (1 in the Caffe v1.0 prototxt)", low=0)
    # The paper's classifier has a ReLU after conv10. With few classes a class whose conv10
    # outputs all go negative gets a constant 0 logit and no gradient ever again (a dead class);
    # small-data experiments may turn it off. On in every paper preset.
    classifier_relu: bool = _field(True, "ReLU after conv10 (as in the paper)")
    dropout: float = _field(0.5, "dropout before conv10", low=0.0, high=1.0, high_open=True)
    batch_norm: bool = _field(False, "BatchNorm after every conv (not in the paper)")
    init: str = _field("caffe", "weight initialisation: caffe | torchvision", choices=INIT_SCHEMES)
    # Compute dtype; parameters always stay float32.
    dtype: str = _field(
        "float32", "compute dtype: float32 | bfloat16 (parameters stay float32)", choices=DTYPES
    )

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

        for f in dataclasses.fields(self):
            meta = f.metadata.get(SPEC_FIELD)
            if meta is None or (meta.formula_only and self.fire_widths is not None):
                continue
            meta.check(f.name, getattr(self, f.name))
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
        groups = self.expand3x3_groups
        widths = [w for f in self.fires() if f.expand3x3 for w in (f.squeeze, f.expand3x3)]
        if groups > 1 and any(w % groups for w in widths):
            common = math.gcd(*widths)
            allowed_groups = [g for g in range(1, common + 1) if common % g == 0]
            raise SpecError(
                f"expand3x3_groups must divide every squeeze and 3x3 expand width "
                f"({', '.join(map(str, widths))}); allowed here: "
                f"{', '.join(map(str, allowed_groups))}, got {groups}"
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
    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """JSON-ready fields; without `full`, those marked `omit_default` are left out at their
        default (from_dict restores them)."""
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if not full and f.metadata[SPEC_FIELD].omit_default and d[f.name] == f.default:
                del d[f.name]
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
    layers: list[PlanLayer] = []

    def conv(
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
        bn = normalized and spec.batch_norm
        layers.append(
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

    def pool(after: str, channels: int) -> None:
        before, out = sizes[after]
        name = "maxpool" + after.removeprefix("conv").removeprefix("fire")
        layers.append(
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

    size = sizes["conv1"][0]
    conv(
        "conv1",
        "conv1",
        spec.in_channels,
        spec.stem_filters,
        image_size,
        size,
        kernel=spec.stem_kernel,
        stride=spec.stem_stride,
        padding=spec.stem_padding,
    )
    if "conv1" in spec.pool_after:
        pool("conv1", spec.stem_filters)
    c_in, size_in = spec.stem_filters, sizes["conv1"][1]
    for i, fire in enumerate(spec.fires()):
        name, size = fire.name, sizes[fire.name][0]  # a Fire module keeps its input's size
        s, e1, e3 = fire.squeeze, fire.expand1x1, fire.expand3x3
        conv(f"{name}/squeeze", "squeeze", c_in, s, size_in, size)
        # pct_3x3 of 0 or 1 empties one expand branch; it is then simply not built.
        if e1:
            conv(f"{name}/expand1x1", "expand1x1", s, e1, size, size)
        if e3:
            conv(
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
            conv(f"{name}/bypass", "bypass", c_in, fire.expand, size_in, size, normalized=False)
        if shortcut != "none":
            layers.append(
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
            pool(name, fire.expand)
        c_in, size_in = fire.expand, sizes[name][1]
    size = sizes["conv10"][0]
    conv(
        "conv10",
        "classifier",
        c_in,
        spec.num_classes,
        size_in,
        size,
        padding=spec.classifier_padding,
        normalized=False,
    )
    layers.append(
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


def field_infos() -> dict[str, FieldInfo]:
    """`{field: FieldInfo}` of every SqueezeNetSpec field, in declaration order."""
    return {f.name: f.metadata[SPEC_FIELD] for f in dataclasses.fields(SqueezeNetSpec)}


# Spec fields a dashboard compares runs by (wandb's flat config, the report's design columns).
DESIGN_FIELDS: tuple[str, ...] = tuple(k for k, v in field_infos().items() if v.design)


# ---------------------------------------------------------------------- width padding
# The spec fields that only set channel widths (and the label): design points that differ in
# nothing else compute the same graph at other widths and can be padded to one network.
WIDTH_FIELDS = ("name", "squeeze_ratio", "pct_3x3", "base_e", "incr_e", "freq", "fire_widths")


def padded_fire_widths(specs: Sequence[SqueezeNetSpec]) -> tuple[tuple[int, int, int], ...]:
    """The elementwise largest (squeeze, expand1x1, expand3x3) of every Fire module of `specs`."""
    fires = [s.fires() for s in specs]
    return tuple(
        tuple(max(getattr(f[i], k) for f in fires) for k in ("squeeze", "expand1x1", "expand3x3"))
        for i in range(specs[0].num_fire)
    )


@dataclasses.dataclass(frozen=True)
class ChannelMask:
    """Which input and output channels of one padded conv belong to the narrower design point
    (`inputs` over the conv's input channels, `outputs` over its filters)."""

    inputs: tuple[bool, ...]
    outputs: tuple[bool, ...]


def channel_masks(plan: LayerPlan, padded: LayerPlan) -> dict[str, ChannelMask]:
    """Per-conv channel masks that embed `plan` in `padded`, a plan of the same structure with
    channels at least as wide (a population padded to a common width).

    Every conv keeps its first `out_channels` outputs; a Fire module's output is its expand1x1
    then its expand3x3 channels, so the next layer's kept inputs follow that concatenation.
    ValueError names the first conv where the two plans differ in anything but width, where
    `padded` is narrower, or where a grouped conv would be widened.
    """
    narrow, wide = plan.convs, padded.convs
    shape = [(c.name, c.role, c.kernel, c.stride, c.padding, c.groups) for c in narrow]
    if shape != [(c.name, c.role, c.kernel, c.stride, c.padding, c.groups) for c in wide]:
        raise ValueError(
            "the padded plan's convs differ from the plan's in more than their widths: "
            f"{[c.name for c in narrow]} vs {[c.name for c in wide]}"
        )
    masks: dict[str, ChannelMask] = {}
    current: tuple[bool, ...] = ()  # the tensor entering the next block
    block_in: tuple[bool, ...] = ()
    for n, w in zip(narrow, wide, strict=True):
        if n.out_channels > w.out_channels or n.in_channels > w.in_channels:
            raise ValueError(
                f"{n.name} is wider in the plan ({n.in_channels} -> {n.out_channels}) than in the "
                f"padded plan ({w.in_channels} -> {w.out_channels})"
            )
        if n.role == "conv1":
            inputs = (True,) * n.in_channels + (False,) * (w.in_channels - n.in_channels)
        elif n.role == "squeeze":
            block_in = inputs = current
        elif n.role in ("expand1x1", "expand3x3"):
            inputs = masks[f"{n.block}/squeeze"].outputs
        elif n.role == "bypass":
            inputs = block_in
        else:  # the classifier
            inputs = current
        if n.groups > 1 and (n.in_channels, n.out_channels) != (w.in_channels, w.out_channels):
            # Widening a grouped conv moves channels between its groups; not an embedding.
            raise ValueError(f"{n.name} is a grouped conv ({n.groups} groups): it cannot be padded")
        outputs = (True,) * n.out_channels + (False,) * (w.out_channels - n.out_channels)
        masks[n.name] = ChannelMask(inputs, outputs)
        if n.role in ("conv1", "expand1x1"):
            current = outputs
        elif n.role == "expand3x3":
            # A Fire module's output is concat(expand1x1, expand3x3), when it has both.
            first = masks.get(f"{n.block}/expand1x1")
            current = (first.outputs if first else ()) + outputs
    return masks


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
