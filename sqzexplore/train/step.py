"""The pure train and eval steps: `(state, images, labels) -> (state, metrics)` and eval sums.

Built once per run by `make_train_step` / `make_eval_step` and jitted (AOT-compiled) by the caller;
the trainer, the benchmarks and the tests all run these same functions.

A non-finite loss, gradient or update is never applied: the step keeps the old parameters,
optimiser state and statistics, and records the first such step in `state.nonfinite_step` (the
trainer stops at the next host sync with an error naming it).

The update runs on all parameters as one flat vector (`optim.FlatOptimizer`), guarded there and
unflattened once: a few fused kernels instead of several per parameter array, which is most of
what the optimiser and the guard used to add to the step's compile time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree
from jax.sharding import Sharding

from sqzexplore.optim import FlatOptimizer
from sqzexplore.train.state import TrainState

# (images, labels, step, data_key) -> (x, y): draws this step's batch from device-resident arrays.
BatchFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
TrainStep = Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
EvalStep = Callable[[TrainState, jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int, smoothing: float):
    """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels."""
    onehot = jax.nn.one_hot(labels, num_classes)
    if smoothing > 0:
        onehot = optax.smooth_labels(onehot, smoothing)
    return optax.softmax_cross_entropy(logits, onehot)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the top-k logits, else 0.0 (per example)."""
    if k == 1:
        return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    topk = jax.lax.top_k(logits, k)[1]
    return jnp.any(topk == labels[:, None], axis=-1).astype(jnp.float32)


def _model_params(state: TrainState, reparam: Any) -> Any:
    return reparam.apply(state.params, state.aux) if reparam is not None else state.params


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: FlatOptimizer,
    schedule: optax.Schedule,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    reparam: Any = None,
    batch_fn: BatchFn | None = None,
    batch_sharding: Sharding | None = None,
) -> TrainStep:
    """The train step `(state, images, labels) -> (state, metrics)`, pure and jittable.

    `images, labels`: the batch itself, or with `batch_fn` the whole device-resident split from
    which `batch_fn(images, labels, step, data_key)` draws (and augments) this step's batch.
    `batch_sharding` constrains the batch (e.g. sharded over the 'data' mesh axis).
    `reparam` (an object with a pure `apply(trainable, aux) -> params`) changes what is trained:
    the optimiser updates `state.params`, the model sees `apply(state.params, state.aux)` (and,
    where the reparam has `call_kwargs(aux) -> dict`, those keyword arguments in training).
    `tx`: an `optim.FlatOptimizer`; `init_state` must have made the state with the same one.
    Metrics: loss, top1 (of the batch), grad_norm, param_norm and lr, as scalars.
    """
    if not isinstance(tx, FlatOptimizer):
        raise TypeError(
            "make_train_step needs an optim.FlatOptimizer (what optim.make_optimizer returns); "
            f"wrap an optax transformation as FlatOptimizer(tx), got {type(tx).__name__}"
        )
    smoothing = float(label_smoothing)

    def loss_fn(trainable, aux, batch_stats, x, y, dropout_key):
        params = reparam.apply(trainable, aux) if reparam is not None else trainable
        model = nnx.merge(graphdef, params, batch_stats)
        # A reparam may also pass the model per-run arguments held in aux (train/padding.py).
        extra = reparam.call_kwargs(aux) if hasattr(reparam, "call_kwargs") else {}
        logits = model(x, train=True, dropout_key=dropout_key, **extra)
        new_stats = nnx.state(model, nnx.BatchStat).to_pure_dict() if batch_stats else batch_stats
        loss = cross_entropy(logits, y, num_classes, smoothing).mean()
        return loss, (logits, new_stats)

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
        step = state.step
        data_key = jax.random.fold_in(state.rng, 1)
        dropout_key = jax.random.fold_in(jax.random.fold_in(state.rng, 2), step)
        x, y = batch_fn(images, labels, step, data_key) if batch_fn else (images, labels)
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
            y = jax.lax.with_sharding_constraint(y, batch_sharding)
        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.aux, state.batch_stats, x, y, dropout_key
        )
        flat_grads = ravel_pytree(grads)[0]
        grad_norm = jnp.sqrt(jnp.sum(jnp.square(flat_grads)))
        flat_params, updates, new_opt, unravel = tx.flat_update(
            flat_grads, state.opt_state, state.params
        )
        # The update too: a finite gradient can still give a NaN step (e.g. a NaN weight decay
        # or learning rate), which must not reach the parameters either.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.all(jnp.isfinite(updates))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        first_bad = jnp.where((state.nonfinite_step < 0) & ~finite, step, state.nonfinite_step)
        new_state = state.replace(
            step=step + 1,
            params=unravel(jnp.where(finite, flat_params + updates, flat_params)),
            opt_state=keep(new_opt, state.opt_state),
            batch_stats=keep(new_stats, state.batch_stats),
            nonfinite_step=first_bad,
        )
        metrics = dict(
            loss=loss,
            top1=topk_correct(logits, y, 1).mean(),
            grad_norm=grad_norm,
            param_norm=jnp.sqrt(jnp.sum(jnp.square(flat_params))),
            lr=schedule(step),
        )
        return new_state, metrics

    return train_step


def make_eval_step(
    graphdef: nnx.GraphDef,
    *,
    num_classes: int,
    reparam: Any = None,
    batch_sharding: Sharding | None = None,
) -> EvalStep:
    """The eval step `(state, x, y, mask) -> sums`, pure and jittable.

    `x` is a normalised batch; `mask` marks real examples (padding is 0). Returns the masked sums
    loss, top1, count (and top5 with at least 5 classes), so that metrics over a whole split are
    exact: divide the summed sums by the summed count.
    """

    def eval_step(state: TrainState, x: jax.Array, y: jax.Array, mask: jax.Array):
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
        model = nnx.merge(graphdef, _model_params(state, reparam), state.batch_stats)
        logits = model(x, train=False)
        mask = mask.astype(jnp.float32)
        sums = dict(
            loss=(cross_entropy(logits, y, num_classes, 0.0) * mask).sum(),
            top1=(topk_correct(logits, y, 1) * mask).sum(),
            count=mask.sum(),
        )
        if num_classes >= 5:
            sums["top5"] = (topk_correct(logits, y, 5) * mask).sum()
        return sums

    return eval_step
