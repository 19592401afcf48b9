"""Optimisers and learning-rate schedules (optax), from `config.optim`.

Two recipes ship as experiment values: the paper's (SGD momentum 0.9, weight decay 2e-4 added to
the gradient as in Caffe, lr 0.04 with polynomial decay power 1.0 to zero) and a modern one
(AdamW or SGD with warmup + cosine, label smoothing). Weight decay applies to conv kernels only
by default (biases and BatchNorm parameters are left alone).

The optimiser runs on all trainable parameters at once, as one flat vector (`FlatOptimizer`):
the train step then has one fused update instead of a few kernels per parameter array, which
about halves what XLA has to compile for it (docs/design.md, "One flat optimiser update").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "cosine", "constant")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"config.optim.{name} must be a number, got {value!r}")
    return float(value)


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ValueError naming `config.optim.<name>` unless `value` is finite and in range.

    NaN fails every comparison, so it is refused with the range named like any other value.
    """
    v = _number(name, value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low)
    ok = ok and (high == math.inf or (v < high if high_open else v <= high))
    if not ok:
        lo = f"({low:g}" if low_open else f"[{low:g}"
        hi = "inf)" if high == math.inf else (f"{high:g})" if high_open else f"{high:g}]")
        raise ValueError(
            f"config.optim.{name} must be a finite number in {lo}, {hi}, got {value!r}"
        )


# field: (low, high, low_open, high_open); every one must also be finite.
RANGES = {
    "lr": (0.0, 100.0, True, False),
    "momentum": (0.0, 1.0, False, True),
    "b1": (0.0, 1.0, False, True),
    "b2": (0.0, 1.0, False, True),
    "weight_decay": (0.0, math.inf, False, False),
    "label_smoothing": (0.0, 1.0, False, True),
    "power": (0.0, math.inf, True, False),
    "warmup_epochs": (0.0, math.inf, False, False),
    "end_lr_fraction": (0.0, 1.0, False, False),
    "grad_clip_norm": (0.0, math.inf, False, False),
}


def validate(optim_config) -> None:
    """Raise ValueError naming the field and its allowed range for an unusable optimiser config
    (NaN and infinities included: a NaN weight decay would silently train NaN weights)."""
    c = optim_config
    if c.name not in OPTIMIZERS:
        raise ValueError(f"config.optim.name must be one of {OPTIMIZERS}, got {c.name!r}")
    if c.schedule not in SCHEDULES:
        raise ValueError(f"config.optim.schedule must be one of {SCHEDULES}, got {c.schedule!r}")
    for name, (low, high, low_open, high_open) in RANGES.items():
        check_range(name, c[name], low, high, low_open=low_open, high_open=high_open)
    for name in ("nesterov", "decay_kernels_only"):
        if not isinstance(c[name], bool):
            raise ValueError(f"config.optim.{name} must be true or false, got {c[name]!r}")


def make_schedule(c, total_steps: int, warmup_steps: int) -> optax.Schedule:
    end = c.lr * c.end_lr_fraction
    decay_steps = max(1, total_steps - warmup_steps)
    if c.schedule == "constant":
        main = optax.constant_schedule(c.lr)
    elif c.schedule == "poly":
        main = optax.polynomial_schedule(c.lr, end, c.power, decay_steps)
    else:
        main = optax.cosine_decay_schedule(c.lr, decay_steps, alpha=c.end_lr_fraction)
    if warmup_steps <= 0:
        return main
    warmup = optax.linear_schedule(0.0, c.lr, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def decay_mask(params):
    """True for conv kernels (4-D), False for biases and BatchNorm parameters."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def decayed_weights(weight_decay: float) -> optax.GradientTransformationExtraArgs:
    """`optax.add_decayed_weights` for one flat vector: adds `weight_decay * params` where the
    `decay_mask` passed to `update` (a bool vector like params) is True, everywhere without one."""

    def update(updates, state, params=None, *, decay_mask=None, **extra_args):
        del extra_args
        decayed = updates + weight_decay * params
        return (decayed if decay_mask is None else jnp.where(decay_mask, decayed, updates)), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


@dataclasses.dataclass(frozen=True)
class FlatOptimizer:
    """An optax transformation run on every trainable parameter as one flat vector.

    Elementwise the same update as the transformation on the tree (`optax.flatten` does the
    same, but cannot mask weight decay per array); what changes is that the step has one fused
    update of the flat vector instead of several kernels per parameter array, so XLA compiles
    far fewer kernels. The optimiser state holds flat vectors. `init` and `update` take and give
    trees like any optax transformation; the train step uses `flat_update` to guard and apply the
    update before unflattening once.
    """

    inner: optax.GradientTransformationExtraArgs  # on flat vectors; takes decay_mask=
    mask: Callable[[Any], Any] | None = None  # params tree -> bool tree (None: decay all)

    def init(self, params: Any) -> Any:
        return self.inner.init(ravel_pytree(params)[0])

    def flat_update(self, flat_grads: jax.Array, state: Any, params: Any):
        """(flat params, flat updates, new state, unravel) for the gradient flattened as
        `ravel_pytree(grads)[0]`; `unravel(flat)` gives a params-shaped tree back."""
        flat_params, unravel = ravel_pytree(params)
        mask = None
        if self.mask is not None:
            # Per array a broadcast bool, concatenated: no large constant in the program.
            leaves = jax.tree.map(
                lambda m, p: jnp.full(p.shape, m, jnp.bool_), self.mask(params), params
            )
            mask = ravel_pytree(leaves)[0]
        updates, state = self.inner.update(flat_grads, state, flat_params, decay_mask=mask)
        return flat_params, updates, state, unravel

    def update(self, grads: Any, state: Any, params: Any):
        """optax's `update` on trees: (updates tree, new state)."""
        _, updates, state, unravel = self.flat_update(ravel_pytree(grads)[0], state, params)
        return unravel(updates), state


def make_optimizer(c, total_steps: int, warmup_steps: int) -> tuple[FlatOptimizer, Any]:
    """(optimiser, schedule) for `config.optim`: optax's SGD / AdamW as a `FlatOptimizer`."""
    schedule = make_schedule(c, total_steps, warmup_steps)
    parts = []
    if c.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
    if c.name == "sgd":
        if c.weight_decay > 0:
            # Caffe adds weight_decay * w to the gradient before momentum.
            parts.append(decayed_weights(c.weight_decay))
        parts.append(optax.sgd(schedule, momentum=c.momentum or None, nesterov=c.nesterov))
    else:
        # optax.adamw is exactly this chain, with the decay masked per array.
        parts.append(optax.scale_by_adam(b1=c.b1, b2=c.b2))
        parts.append(decayed_weights(c.weight_decay))
        parts.append(optax.scale_by_learning_rate(schedule))
    mask = decay_mask if c.decay_kernels_only else None
    return FlatOptimizer(optax.chain(*parts), mask), schedule
