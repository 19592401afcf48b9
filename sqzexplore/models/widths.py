"""Width padding: design points that differ only in channel widths, embedded in one network.

`WIDTH_FIELDS` are the spec fields that only set channel widths (and the label); points that
differ in nothing else compute the same graph at other widths. `padded_fire_widths` gives the
network wide enough for all of them and `channel_masks` where each narrow point's channels sit in
it: what a width-padded population (train/padding.py) trains, and what the sweep's grouping
(sweep/grouping.py) sizes. Plain data over layer plans, no jax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqzexplore.models.plan import LayerPlan

# The spec fields that only set channel widths (and the label): design points that differ in
# nothing else compute the same graph at other widths and can be padded to one network.
WIDTH_FIELDS = ("name", "squeeze_ratio", "pct_3x3", "base_e", "incr_e", "freq", "fire_widths")


def padded_fire_widths(specs: Sequence[Any]) -> tuple[tuple[int, int, int], ...]:
    """The elementwise largest (squeeze, expand1x1, expand3x3) of every Fire module of `specs`
    (`SqueezeNetSpec`s with the same number of Fire modules)."""
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
