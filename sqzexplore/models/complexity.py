"""Analytic complexity of a SqueezeNet design point: params, MACs, activations, bytes per layer.

The twin of `squeezenet.py` (pycls habit): it walks the same spec the same way the model's
constructor does, but builds nothing, so a sweep can size, filter or rank thousands of design
points in milliseconds, and `sqz describe` can print the paper's Table 1 for any spec. It imports
no jax or TensorFlow.

What is counted, per conv (bypass convs included):

- params: kernel `k*k*C_in*C_out`, plus the bias `C_out`; with `spec.batch_norm` every conv
  except conv10 and the complex-bypass convs drops its bias and gains a BatchNorm scale and bias
  (`2*C_out`; running mean/var are statistics, not parameters): exactly the model's `count_params`.
- MACs: `H_out*W_out*C_out*k*k*C_in` (padding positions included, as in torchvision's figures);
  pools, ReLUs, BatchNorm, the bypass additions and the global average pool count none.
- activations: elements of every conv output (`H_out*W_out*C_out`; the definition of pycls and
  "Fast and Accurate Model Scaling"), so a Fire module counts its squeeze, both expand halves and
  its bypass conv; pools add none.

Rows follow the paper's Table 1: conv1, maxpool1 (a pool is named after the layer it follows:
maxpool4 after fire4), fire2 ..., conv10, avgpool. Sizes come from `spec.feature_sizes`, so ceil
or floor pooling, the stem and `classifier_padding` are all honoured.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqzexplore.models.spec import SqueezeNetSpec

MIB = 2**20
FP32_BYTES = 4


@dataclasses.dataclass(frozen=True)
class ConvCost:
    """One convolution (with its BatchNorm, if any): the unit the model and a compressor see."""

    name: str  # parameter path prefix in the model: 'conv1', 'fire2/squeeze', 'fire2/bypass', ...
    kernel: int
    in_channels: int
    out_channels: int
    height: int  # output size
    width: int
    bias: bool
    batch_norm: bool

    @property
    def weights(self) -> int:
        return self.kernel * self.kernel * self.in_channels * self.out_channels

    @property
    def params(self) -> int:
        extra = self.out_channels if self.bias else 0
        if self.batch_norm:
            extra += 2 * self.out_channels  # BatchNorm scale and bias
        return self.weights + extra

    @property
    def macs(self) -> int:
        return self.height * self.width * self.weights

    @property
    def activations(self) -> int:
        return self.height * self.width * self.out_channels

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kernel": self.kernel,
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
class LayerCost:
    """One row of Table 1: a conv, a Fire module or a pool, with its output size and costs."""

    name: str  # 'conv1', 'maxpool1', 'fire2', ..., 'conv10', 'avgpool'
    kind: str  # 'conv' | 'fire' | 'maxpool' | 'avgpool'
    height: int  # output size
    width: int
    channels: int
    convs: tuple[ConvCost, ...] = ()
    # Fire modules only: widths and the shortcut ('none' | 'identity' | 'conv').
    squeeze: int | None = None
    expand1x1: int | None = None
    expand3x3: int | None = None
    bypass: str | None = None

    @property
    def params(self) -> int:
        return sum(c.params for c in self.convs)

    @property
    def macs(self) -> int:
        return sum(c.macs for c in self.convs)

    @property
    def activations(self) -> int:
        return sum(c.activations for c in self.convs)

    @property
    def bypass_params(self) -> int:
        return sum(c.params for c in self.convs if c.name.endswith("/bypass"))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "params": self.params,
            "macs": self.macs,
            "activations": self.activations,
        }
        if self.kind == "fire":
            d.update(
                squeeze=self.squeeze,
                expand1x1=self.expand1x1,
                expand3x3=self.expand3x3,
                bypass=self.bypass,
                bypass_params=self.bypass_params,
            )
        if self.convs:
            d["convs"] = [c.to_dict() for c in self.convs]
        return d


@dataclasses.dataclass(frozen=True)
class Complexity:
    """Per-layer rows and totals of one spec at one input size."""

    spec: SqueezeNetSpec
    image_size: int
    layers: tuple[LayerCost, ...]

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def activations(self) -> int:
        return sum(layer.activations for layer in self.layers)

    @property
    def fp32_bytes(self) -> int:
        return self.params * FP32_BYTES

    @property
    def fp32_mib(self) -> float:
        return self.fp32_bytes / MIB

    @property
    def convs(self) -> tuple[ConvCost, ...]:
        """Every conv in order of computation (the model's parameterised layers)."""
        return tuple(c for layer in self.layers for c in layer.convs)

    def layer(self, name: str) -> LayerCost:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no layer {name!r}; layers: {', '.join(r.name for r in self.layers)}")

    def totals(self) -> dict[str, Any]:
        """The summary that run directories record (result.json's "complexity")."""
        return {
            "params": self.params,
            "macs": self.macs,
            "fp32_bytes": self.fp32_bytes,
            "fp32_mib": self.fp32_mib,
            "activations": self.activations,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.totals(),
            "image_size": self.image_size,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def table(self) -> str:
        """A text table in the layout of the paper's Table 1, with totals."""
        spec = self.spec
        show_bypass = spec.bypass != "none"
        header = ["layer", "output size", "s", "e1", "e3"]
        if show_bypass:
            header.append("bypass")
        header += ["params", "MACs"]
        rows = []
        for layer in self.layers:
            fire = layer.kind == "fire"
            row = [
                layer.name,
                f"{layer.height}x{layer.width}x{layer.channels}",
                str(layer.squeeze) if fire else "",
                str(layer.expand1x1) if fire else "",
                str(layer.expand3x3) if fire else "",
            ]
            if show_bypass:
                row.append(layer.bypass if fire and layer.bypass != "none" else "")
            row += [f"{layer.params:,}", _format_macs(layer.macs)]
            rows.append(row)
        total = ["total", "", "", "", ""] + ([""] if show_bypass else [])
        total += [f"{self.params:,}", _format_macs(self.macs)]
        widths = [max(len(r[i]) for r in [header, *rows, total]) for i in range(len(header))]
        # Names and sizes read left to right; numbers line up on their last digit.
        left = {0, 1} | ({5} if show_bypass else set())

        def render(cells: list[str]) -> str:
            parts = [
                c.ljust(w) if i in left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(parts).rstrip()

        rule = "-" * len(render(header))
        title = (
            f"SqueezeNet {spec.name!r} at {self.image_size}x{self.image_size}x{spec.in_channels}, "
            f"{spec.num_classes} classes, bypass={spec.bypass}, batch_norm={spec.batch_norm}, "
            f"{'ceil' if spec.pool_ceil else 'floor'} pools"
        )
        summary = (
            f"params {self.params:,} ({self.fp32_mib:.2f} MiB fp32), "
            f"MACs {self.macs / 1e6:,.2f}M, activations {self.activations / 1e6:,.2f}M"
        )
        lines = [title, render(header), rule, *(render(r) for r in rows), rule, render(total)]
        return "\n".join([*lines, summary])


def _format_macs(macs: int) -> str:
    return f"{macs / 1e6:,.2f}M" if macs else "0"


def _pool_name(after: str) -> str:
    return "maxpool" + after.removeprefix("conv").removeprefix("fire")


def complexity(spec: SqueezeNetSpec, image_size: int | None = None) -> Complexity:
    """Params, MACs and activations of `spec` at `image_size` (default `spec.image_size`).

    Raises SpecError when the feature map collapses at that size.
    """
    image_size = spec.image_size if image_size is None else image_size
    sizes = spec.feature_sizes(image_size)
    bn = spec.batch_norm

    def conv(name: str, kernel: int, c_in: int, c_out: int, size: int, normalized: bool = True):
        # Mirrors the model's conv factory: a BatchNorm replaces the bias of normalised convs.
        return ConvCost(
            name=name,
            kernel=kernel,
            in_channels=c_in,
            out_channels=c_out,
            height=size,
            width=size,
            bias=not (normalized and bn),
            batch_norm=normalized and bn,
        )

    layers: list[LayerCost] = []

    def pool_row(after: str, channels: int) -> None:
        size = sizes[after][1]
        layers.append(LayerCost(_pool_name(after), "maxpool", size, size, channels))

    size = sizes["conv1"][0]
    layers.append(
        LayerCost(
            "conv1",
            "conv",
            size,
            size,
            spec.stem_filters,
            convs=(conv("conv1", spec.stem_kernel, spec.in_channels, spec.stem_filters, size),),
        )
    )
    if "conv1" in spec.pool_after:
        pool_row("conv1", spec.stem_filters)

    for i, (fire, c_in) in enumerate(zip(spec.fires(), spec.fire_in_channels(), strict=True)):
        size = sizes[fire.name][0]  # a Fire module keeps its input's spatial size
        s, e1, e3, name = fire.squeeze, fire.expand1x1, fire.expand3x3, fire.name
        convs = [conv(f"{name}/squeeze", 1, c_in, s, size)]
        # pct_3x3 of 0 or 1 empties one expand branch; the model then does not build it.
        if e1:
            convs.append(conv(f"{name}/expand1x1", 1, s, e1, size))
        if e3:
            convs.append(conv(f"{name}/expand3x3", 3, s, e3, size))
        bypass = spec.bypass_kind(i)
        if bypass == "conv":
            # Complex bypass: a plain 1x1 conv with bias, never batch-normalised.
            convs.append(conv(f"{name}/bypass", 1, c_in, fire.expand, size, normalized=False))
        layers.append(
            LayerCost(
                name,
                "fire",
                size,
                size,
                fire.expand,
                convs=tuple(convs),
                squeeze=s,
                expand1x1=e1,
                expand3x3=e3,
                bypass=bypass,
            )
        )
        if name in spec.pool_after:
            pool_row(name, fire.expand)

    size = sizes["conv10"][0]
    classifier = conv(
        "conv10", 1, spec.classifier_in_channels, spec.num_classes, size, normalized=False
    )
    layers.append(LayerCost("conv10", "conv", size, size, spec.num_classes, convs=(classifier,)))
    layers.append(LayerCost("avgpool", "avgpool", 1, 1, spec.num_classes))
    return Complexity(spec=spec, image_size=image_size, layers=tuple(layers))
