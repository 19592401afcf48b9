"""SqueezeNet-specific pieces of search spaces that several sweep files share.

`pool_position_ladder(n_pools)`: where the max-pools go, from early downsampling (SqueezeNet v1.1
pools after conv1, fire3, fire5) to late (v1.0: conv1, fire4, fire8, and later still), with the
same number of pools, so every option has the same widths and parameters and differs only in its
activation sizes and MACs (the paper's Strategy 3, "downsample late").

`point_label(design)` / `trial_label(design, seed)`: a design point as people read it
('sr=0.125 pct=0.5 s0'), the one label of tables, figures, dashboards and run names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqzexplore.sweep.space import Experiment, SweepError

# Ordered early -> late. Names follow the paper's Table 1 (fire2 .. fire9).
LADDERS: dict[int, tuple[tuple[str, ...], ...]] = {
    3: (
        ("conv1", "fire2", "fire3"),
        ("conv1", "fire3", "fire5"),  # SqueezeNet v1.1
        ("conv1", "fire4", "fire8"),  # SqueezeNet v1.0
        ("fire2", "fire4", "fire6"),
        ("fire3", "fire5", "fire7"),  # the digits preset
        ("fire4", "fire6", "fire8"),
        ("fire5", "fire7", "fire9"),
    ),
    2: (
        ("conv1", "fire2"),
        ("conv1", "fire4"),
        ("fire2", "fire6"),
        ("fire3", "fire7"),
        ("fire4", "fire8"),  # the cifar preset
        ("fire5", "fire9"),
    ),
}


def pool_position_ladder(n_pools: int) -> tuple[tuple[str, ...], ...]:
    if n_pools not in LADDERS:
        raise SweepError(
            f"no pooling-position ladder for {n_pools} pools; known: {sorted(LADDERS)} "
            "(add one to sqzexplore/sweep/design.py)"
        )
    return LADDERS[n_pools]


def base_pool_count(base: Experiment) -> int:
    """Number of max-pools in a sweep base's model (`base` as from `sweepfile.dataset_base`)."""
    return len(base.load().model.pool_after)


# Short names of the spec fields a sweep varies, for labels people read in tables, dashboards
# and run names ("sr=0.125 pct=0.5 s0"); other keys show their last dotted component.
SHORT_NAMES = {
    "squeeze_ratio": "sr",
    "pct_3x3": "pct",
    "pool_after": "pool",
    "bypass": "bypass",
    "base_e": "base_e",
    "incr_e": "incr_e",
    "freq": "freq",
}


def point_label(design: Mapping[str, Any]) -> str:
    """A design point as people read it: 'sr=0.125 pct=0.5' (`design`: dotted key -> display
    value, as in trial.json; tuples already 'a,b,c')."""
    order = list(SHORT_NAMES)
    # The spec's own order for its fields (sr before pct), whatever order the sweep keys have.
    keys = sorted(
        design,
        key=lambda k: order.index(k.split(".")[-1]) if k.split(".")[-1] in order else len(order),
    )
    parts = []
    for key in keys:
        value = design[key]
        field = key.split(".")[-1]
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        parts.append(f"{SHORT_NAMES.get(field, field)}={value}")
    return " ".join(parts)


def trial_label(design: Mapping[str, Any], seed: int) -> str:
    """One run of a design point: 'sr=0.125 pct=0.5 s0'."""
    return f"{point_label(design)} s{seed}".strip()
