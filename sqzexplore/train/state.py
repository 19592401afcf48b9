"""The train state: one pytree holding everything a step reads and writes, and its initialiser.

`TrainState` is what the jitted step maps to a new `TrainState`, what checkpoints hold (with the
best-so-far eval, see checkpoint.py) and what benchmarks and tests build to call the step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from sqzexplore.models.spec import SqueezeNetSpec


@struct.dataclass
class TrainState:
    """Everything one train step reads and writes.

    Attributes:
      step: int32 scalar, steps taken (the data position: batches are a function of it).
      params: what the optimiser updates (the model's parameters, or `reparam`'s trainables).
      batch_stats: BatchNorm running statistics (empty without BatchNorm).
      opt_state: the optax state of `params`.
      rng: raw key data (uint32) from which data order, augmentation and dropout are folded.
      aux: `reparam`'s fixed side data (masks, codebook assignments); empty without one.
      nonfinite_step: int32 scalar, the first step whose loss or gradient was NaN/Inf (-1: none).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    aux: Any
    nonfinite_step: jax.Array

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (the checkpoint's layout: restorable without this class)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    @classmethod
    def for_eval(cls, params: Any, batch_stats: Any, aux: Any = None) -> TrainState:
        """A state holding only weights (no optimiser), for evaluating given parameters."""
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats or {},
            opt_state=(),
            rng=jnp.zeros((2,), jnp.uint32),
            aux=aux or {},
            nonfinite_step=jnp.full((), -1, jnp.int32),
        )


def model_graphdef(spec: SqueezeNetSpec) -> nnx.GraphDef:
    """The model's structure without allocating it (merged with params/batch_stats in the step)."""
    from sqzexplore.models.squeezenet import SqueezeNet

    abstract_model = nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0)))
    graphdef, _, _ = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)
    return graphdef


def init_state(
    spec: SqueezeNetSpec,
    tx: optax.GradientTransformation,
    seed: int | jax.Array,
    *,
    init_params: dict | None = None,
    reparam: Any = None,
) -> TrainState:
    """A fresh state: the model initialised from `seed` (or `init_params`), step 0.

    `seed`: an int, or a typed PRNG key (`jax.random.key(seed)`, possibly traced: programs.py
    compiles one initialiser for every seed); both give the same values.

    `init_params` ({"params", optional "batch_stats"}) replaces the initial weights (fine-tuning);
    `reparam` (an object with `init(params) -> (trainable, aux)`) turns them into what is trained.
    Traceable: the trainer jits it on one device and replicates the result.
    """
    from sqzexplore.models.squeezenet import SqueezeNet

    key = seed if _is_key(seed) else jax.random.key(seed)
    model = SqueezeNet(spec, rngs=nnx.Rngs(key))
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, stats = params.to_pure_dict(), stats.to_pure_dict()
    if init_params is not None:
        params = jax.tree.map(jnp.asarray, init_params["params"])
        stats = jax.tree.map(jnp.asarray, init_params.get("batch_stats") or stats)
    aux = {}
    if reparam is not None:
        params, aux = reparam.init(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        opt_state=tx.init(params),
        rng=jax.random.key_data(key),
        aux=aux,
        nonfinite_step=jnp.full((), -1, jnp.int32),
    )


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
