"""SqueezeNet design points (`spec`) and the Flax NNX model built from them (`squeezenet`)."""

from sqzexplore.models.spec import (
    PRESETS,
    FireWidths,
    SpecError,
    SqueezeNetSpec,
    preset,
)
from sqzexplore.models.squeezenet import (
    Fire,
    SqueezeNet,
    count_params,
    init_model,
    max_pool_ceil,
)

__all__ = [
    "PRESETS",
    "Fire",
    "FireWidths",
    "SpecError",
    "SqueezeNet",
    "SqueezeNetSpec",
    "count_params",
    "init_model",
    "max_pool_ceil",
    "preset",
]
