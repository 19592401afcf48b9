"""SqueezeNet design points, their layer plan and size, and the Flax NNX model built from them.

Modules:

- `spec.py`: `SqueezeNetSpec`, one validated design point, and the named presets;
- `fields.py`: each spec field's metadata (`FieldInfo`: help, type, allowed range) and `SpecError`;
- `plan.py`: the layer plan, every conv, pool and bypass of a spec as plain data (`build_plan`);
- `widths.py`: width padding, the widest network of points that differ only in channel widths and
  where each point's channels sit in it (`WIDTH_FIELDS`, `channel_masks`);
- `complexity.py`: params, MACs and activations summed over a plan (the paper's Table 1);
- `squeezenet.py`: the Flax NNX model built from a plan.

All but `squeezenet.py` are jax-free. The model names are imported lazily so that reading a spec
or its size (sweep status, describe, constraint checks) does not pay for importing jax and flax.
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
