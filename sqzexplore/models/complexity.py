"""Analytic complexity of a SqueezeNet design point: params, MACs, activations, bytes per layer.

It sums the spec's layer plan (`SqueezeNetSpec.layer_plan`), the same list of convs the model's
constructor builds from, but builds nothing, so a sweep can size, filter or rank thousands of
design points in milliseconds, and `sqz describe` can print the paper's Table 1 for any spec. It
imports no jax or TensorFlow.

What is counted, per conv of the plan (bypass convs included; `ConvLayer`):

- params: kernel `k*k*(C_in/groups)*C_out`, plus the bias `C_out`; with `spec.batch_norm` every conv
  except conv10 and the complex-bypass convs drops its bias and gains a BatchNorm scale and bias
  (`2*C_out`; running mean/var are statistics, not parameters): exactly the model's `count_params`.
- MACs: `H_out*W_out*C_out*k*k*C_in/groups` (padding positions included, as in torchvision's
  figures); pools, ReLUs, BatchNorm, the bypass additions and the global average pool count none.
- activations: elements of every conv output (`H_out*W_out*C_out`; the definition of pycls and
  "Fast and Accurate Model Scaling"), so a Fire module counts its squeeze, both expand halves and
  its bypass conv; pools add none.

Rows follow the paper's Table 1: conv1, maxpool1 (a pool is named after the layer it follows:
maxpool4 after fire4), fire2 ..., conv10, avgpool. Sizes come from the plan
(`spec.feature_sizes`), so ceil or floor pooling, the stem and `classifier_padding` are honoured.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tabulate

from sqzexplore.models.plan import ConvLayer, PoolLayer
from sqzexplore.models.spec import SqueezeNetSpec

MIB = 2**20
FP32_BYTES = 4


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One row of Table 1: a conv, a Fire module or a pool, with its output size and costs."""

    name: str  # 'conv1', 'maxpool1', 'fire2', ..., 'conv10', 'avgpool'
    kind: str  # 'conv' | 'fire' | 'maxpool' | 'avgpool'
    height: int  # output size
    width: int
    channels: int
    convs: tuple[ConvLayer, ...] = ()
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
        return sum(c.params for c in self.convs if c.role == "bypass")

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
    def convs(self) -> tuple[ConvLayer, ...]:
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
        """A text table in the layout of the paper's Table 1, with totals (rendered by tabulate)."""
        spec = self.spec
        show_bypass = spec.bypass != "none"
        header = ["layer", "output size", "s", "e1", "e3"]
        if show_bypass:
            header.append("bypass")
        header += ["params", "MACs"]
        rows: list[Any] = []
        for layer in self.layers:
            fire = layer.kind == "fire"
            row = [
                layer.name,
                f"{layer.height}x{layer.width}x{layer.channels}",
                *(
                    str(w) if fire else ""
                    for w in (layer.squeeze, layer.expand1x1, layer.expand3x3)
                ),
            ]
            if show_bypass:
                row.append(layer.bypass if fire and layer.bypass != "none" else "")
            row += [f"{layer.params:,}", _format_macs(layer.macs)]
            rows.append(row)
        total = ["total", "", "", "", ""] + ([""] if show_bypass else [])
        total += [f"{self.params:,}", _format_macs(self.macs)]
        # Names and sizes read left to right; numbers line up on their last digit.
        align = ["left", "left", "right", "right", "right"] + (["left"] if show_bypass else [])
        align += ["right", "right"]
        body = tabulate.tabulate(
            [*rows, tabulate.SEPARATING_LINE, total],
            headers=header,
            tablefmt="simple",
            colalign=align,
            disable_numparse=True,
        )
        title = (
            f"SqueezeNet {spec.name!r} at {self.image_size}x{self.image_size}x{spec.in_channels}, "
            f"{spec.num_classes} classes, bypass={spec.bypass}, batch_norm={spec.batch_norm}, "
            f"{'ceil' if spec.pool_ceil else 'floor'} pools"
        )
        summary = (
            f"params {self.params:,} ({self.fp32_mib:.2f} MiB fp32), "
            f"MACs {self.macs / 1e6:,.2f}M, activations {self.activations / 1e6:,.2f}M"
        )
        lines = [line.rstrip() for line in body.splitlines()]
        return "\n".join([title, *lines, summary])


def _format_macs(macs: int) -> str:
    return f"{macs / 1e6:,.2f}M" if macs else "0"


def complexity(spec: SqueezeNetSpec, image_size: int | None = None) -> Complexity:
    """Params, MACs and activations of `spec` at `image_size` (default `spec.image_size`).

    Sums the spec's layer plan, one row per Table 1 block. Raises SpecError when the feature map
    collapses at that size.
    """
    plan = spec.layer_plan(image_size)
    layers: list[LayerCost] = []
    for block in plan.blocks:
        entries = plan.block(block)
        first = entries[0]
        if isinstance(first, PoolLayer):
            kind = "maxpool" if first.op == "max" else "avgpool"
            layers.append(
                LayerCost(first.name, kind, first.out_size, first.out_size, first.channels)
            )
            continue
        convs = tuple(x for x in entries if isinstance(x, ConvLayer))
        if block not in plan.fire_blocks:  # conv1, conv10
            size = first.out_size
            layers.append(LayerCost(block, "conv", size, size, first.out_channels, convs=convs))
            continue
        by_role = {c.role: c for c in convs}
        shortcut = [x.shortcut for x in entries if x.kind == "bypass"]
        e1, e3 = (
            by_role[r].out_channels if r in by_role else 0 for r in ("expand1x1", "expand3x3")
        )
        size = by_role["squeeze"].out_size  # a Fire module keeps its input's spatial size
        layers.append(
            LayerCost(
                block,
                "fire",
                size,
                size,
                e1 + e3,
                convs=convs,
                squeeze=by_role["squeeze"].out_channels,
                expand1x1=e1,
                expand3x3=e3,
                bypass=shortcut[0] if shortcut else "none",
            )
        )
    return Complexity(spec=spec, image_size=plan.image_size, layers=tuple(layers))
