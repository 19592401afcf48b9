"""SqueezeNet-specific pieces of search spaces that several sweep files share.

`pool_position_ladder(n_pools)`: where the max-pools go, from early downsampling (SqueezeNet v1.1
pools after conv1, fire3, fire5) to late (v1.0: conv1, fire4, fire8, and later still), with the
same number of pools, so every option has the same widths and parameters and differs only in its
activation sizes and MACs (the paper's Strategy 3, "downsample late").
"""

from __future__ import annotations

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
