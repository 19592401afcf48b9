"""The StableHLO artifact: JAX's own serialised export (`jax.export`) of the folded model's
forward pass, weights embedded as constants, for a fixed batch and layout.

`jax.export.deserialize(open(path, 'rb').read()).call(images)` runs it in any JAX (no
sqzexplore, no Flax) on CPU; the serialisation is versioned by JAX and stays loadable by later
JAX releases for the compatibility window JAX documents (six months at least).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sqzexplore.models.spec import SqueezeNetSpec


def build_stablehlo(
    spec: SqueezeNetSpec,
    params: dict[str, Any],
    batch: int,
    layout: str,
    platforms: tuple[str, ...] = ("cpu",),
) -> bytes:
    """Serialized `jax.export` of the folded `spec`/`params` model for `batch` images in
    `layout`, lowered for `platforms`."""
    import jax
    import jax.numpy as jnp
    from jax import export

    from sqzexplore.export.source import layout_forward

    forward, shape = layout_forward(spec, params, layout, batch)
    exported = export.export(jax.jit(forward), platforms=platforms)(
        jax.ShapeDtypeStruct(shape, jnp.float32)
    )
    return bytes(exported.serialize())


def load_stablehlo(data: bytes):
    """A callable `images -> logits` (jitted) of a serialized export."""
    import jax
    from jax import export

    exported = export.deserialize(bytearray(data))
    return jax.jit(exported.call)


def run_stablehlo(call, images: np.ndarray) -> np.ndarray:
    return np.asarray(call(np.asarray(images, np.float32)))
