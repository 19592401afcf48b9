"""Optimisers and learning-rate schedules (optax), from `config.optim`.

Two recipes ship as experiment values: the paper's (SGD momentum 0.9, weight decay 2e-4 added to
the gradient as in Caffe, lr 0.04 with polynomial decay power 1.0 to zero) and a modern one
(AdamW or SGD with warmup + cosine, label smoothing). Weight decay applies to conv kernels only
by default (biases and BatchNorm parameters are left alone).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import optax

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


def make_optimizer(c, total_steps: int, warmup_steps: int):
    """(optax transformation, schedule) for `config.optim`."""
    schedule = make_schedule(c, total_steps, warmup_steps)
    mask = decay_mask if c.decay_kernels_only else None
    parts = []
    if c.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
    if c.name == "sgd":
        if c.weight_decay > 0:
            # Caffe adds weight_decay * w to the gradient before momentum.
            parts.append(optax.add_decayed_weights(c.weight_decay, mask))
        parts.append(optax.sgd(schedule, momentum=c.momentum or None, nesterov=c.nesterov))
    else:
        parts.append(
            optax.adamw(schedule, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay, mask=mask)
        )
    return optax.chain(*parts), schedule
