"""SqueezeNet design points (`spec`), their analytic complexity (`complexity`) and the Flax NNX
model built from them (`squeezenet`).

The model names are imported lazily so that reading a spec or its size (sweep status, describe,
constraint checks) does not pay for importing jax and flax.
"""

from sqzexplore.models.spec import (
    PRESETS,
    FireWidths,
    SpecError,
    SqueezeNetSpec,
    preset,
)

_MODEL_NAMES = ("Fire", "SqueezeNet", "count_params", "init_model", "max_pool_ceil")


def __getattr__(name):
    if name in _MODEL_NAMES:
        from sqzexplore.models import squeezenet

        return getattr(squeezenet, name)
    raise AttributeError(f"module 'sqzexplore.models' has no attribute {name!r}")


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
