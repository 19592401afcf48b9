"""SqueezeNetSpec: one point of the SqueezeNet design space, validated before anything is built.

The spec is the single description that the model (`squeezenet.py`), the analytic complexity
(`complexity.py`), the trainer, the sweeps and the compressor all read. `layer_plan()` turns it
into plain data, jax-free (`plan.py`): every conv (name, role, kernel, stride, padding, channels,
groups, BatchNorm, bias, input and output size), every pool and every bypass, in order of
computation.
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

Each field carries its metadata (`fields.py`: help, type, allowed range). The layer plan's types
(`plan.py`) and the width-padding helpers (`widths.py`) are re-exported here, where their callers
have always imported them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from sqzexplore.models.fields import SPEC_FIELD, FieldInfo, spec_field
from sqzexplore.models.fields import SpecError as SpecError
from sqzexplore.models.plan import CONV_ROLES as CONV_ROLES
from sqzexplore.models.plan import FIRE_ROLES as FIRE_ROLES
from sqzexplore.models.plan import BypassLayer as BypassLayer
from sqzexplore.models.plan import ConvLayer as ConvLayer
from sqzexplore.models.plan import LayerPlan, build_plan
from sqzexplore.models.plan import PlanLayer as PlanLayer
from sqzexplore.models.plan import PoolLayer as PoolLayer
from sqzexplore.models.plan import conv_block_role as conv_block_role
from sqzexplore.models.plan import conv_order_key as conv_order_key
from sqzexplore.models.widths import WIDTH_FIELDS as WIDTH_FIELDS
from sqzexplore.models.widths import ChannelMask as ChannelMask
from sqzexplore.models.widths import channel_masks as channel_masks
from sqzexplore.models.widths import padded_fire_widths as padded_fire_widths

BYPASS_MODES = ("none", "simple", "complex")
INIT_SCHEMES = ("caffe", "torchvision")
DTYPES = ("float32", "bfloat16")


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

    name: str = spec_field("custom", "label of the design point")
    num_classes: int = spec_field(1000, "classifier outputs; must match the dataset", low=1)
    image_size: int = spec_field(224, "input height and width in pixels", low=1)
    in_channels: int = spec_field(3, "input channels (1 grey, 3 RGB)", low=1)
    # Stem (conv1).
    stem_filters: int = spec_field(96, "conv1 filters", low=1)
    stem_kernel: int = spec_field(7, "conv1 kernel size", low=1)
    stem_stride: int = spec_field(2, "conv1 stride", low=1)
    stem_padding: int = spec_field(0, "conv1 padding", low=0)
    # Microarchitecture metaparameters (paper section 5).
    num_fire: int = spec_field(8, "number of Fire modules (fire2 ... fire{num_fire+1})", low=0)
    base_e: int = spec_field(
        128, "expand filters of the first Fire module", low=1, design=True, formula_only=True
    )
    incr_e: int = spec_field(
        128,
        "expand filters added every `freq` Fire modules",
        low=0,
        design=True,
        formula_only=True,
    )
    freq: int = spec_field(2, "Fire modules between expand-width increases", low=1, design=True)
    pct_3x3: float = spec_field(0.5, "share of 3x3 expand filters", low=0.0, high=1.0, design=True)
    squeeze_ratio: float = spec_field(
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
    expand3x3_groups: int = spec_field(
        1,
        "groups of the 3x3 expand convs (must divide every squeeze and 3x3 expand width)",
        low=1,
        design=True,
        omit_default=True,
    )
    # Explicit (squeeze, expand1x1, expand3x3) per Fire module; overrides the formula when set.
    fire_widths: tuple[tuple[int, int, int], ...] | None = spec_field(
        None,
        "explicit ((squeeze, e1x1, e3x3), ...) per Fire module; None: formulas",
        kind=tuple,
        optional=True,
        example='"((16,64,64),(16,64,64))" (squeeze, expand1x1, expand3x3 per Fire)',
    )
    # Downsampling (Strategy 3).
    pool_after: tuple[str, ...] = spec_field(
        ("conv1", "fire4", "fire8"),
        "layers followed by a max-pool, e.g. ('conv1', 'fire4', 'fire8')",
        kind=tuple,
        example="\"('conv1','fire4','fire8')\"",
        design=True,
    )
    pool_size: int = spec_field(3, "max-pool window", low=1)
    pool_stride: int = spec_field(2, "max-pool stride", low=1)
    pool_ceil: bool = spec_field(True, "ceil-mode pooling (Caffe) instead of floor")
    # Macroarchitecture (paper section 6).
    bypass: str = spec_field(
        "none", "residual bypass: none | simple | complex", choices=BYPASS_MODES, design=True
    )
    # Classifier and regularisation. The Caffe v1.0 prototxt pads conv10 by 1
    # (docs/paper.md#classifier-padding).
    classifier_padding: int = spec_field(0, "conv10 padding (1 in the Caffe v1.0 prototxt)", low=0)
    # The paper's classifier has a ReLU after conv10. With few classes a class whose conv10
    # outputs all go negative gets a constant 0 logit and no gradient ever again (a dead class);
    # small-data experiments may turn it off. On in every paper preset.
    classifier_relu: bool = spec_field(True, "ReLU after conv10 (as in the paper)")
    dropout: float = spec_field(0.5, "dropout before conv10", low=0.0, high=1.0, high_open=True)
    batch_norm: bool = spec_field(False, "BatchNorm after every conv (not in the paper)")
    init: str = spec_field(
        "caffe", "weight initialisation: caffe | torchvision", choices=INIT_SCHEMES
    )
    # Compute dtype; parameters always stay float32.
    dtype: str = spec_field(
        "float32", "compute dtype: float32 | bfloat16 (parameters stay float32)", choices=DTYPES
    )

    def __post_init__(self):
        # Normalise list-valued fields (from JSON or ConfigDict) to tuples so the spec is hashable.
        if not isinstance(self.pool_after, (list, tuple)):
            raise SpecError(f"pool_after must be a tuple of layer names, got {self.pool_after!r}")
        object.__setattr__(self, "pool_after", tuple(str(p) for p in self.pool_after))
        if self.fire_widths is not None:
            try:
                widths = tuple(tuple(int(v) for v in w) for w in self.fire_widths)
            except (TypeError, ValueError):
                raise SpecError(
                    "fire_widths must be ((squeeze, expand1x1, expand3x3), ...) with one entry of "
                    f"three integers per Fire module, got {self.fire_widths!r}"
                ) from None
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
        return cls(**d)  # __post_init__ turns the lists of JSON into tuples

    @classmethod
    def from_json(cls, s: str) -> SqueezeNetSpec:
        return cls.from_dict(json.loads(s))

    def replace(self, **changes) -> SqueezeNetSpec:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ the layer plan
    def layer_plan(self, image_size: int | None = None) -> LayerPlan:
        """Every conv, pool and bypass of this design point at `image_size` (default the spec's),
        in order of computation; SpecError when the feature map collapses at that size."""
        return build_plan(self, self.image_size if image_size is None else image_size)


def field_infos() -> dict[str, FieldInfo]:
    """`{field: FieldInfo}` of every SqueezeNetSpec field, in declaration order."""
    return {f.name: f.metadata[SPEC_FIELD] for f in dataclasses.fields(SqueezeNetSpec)}


# Spec fields a dashboard compares runs by (wandb's flat config, the report's design columns).
DESIGN_FIELDS: tuple[str, ...] = tuple(k for k, v in field_infos().items() if v.design)


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
