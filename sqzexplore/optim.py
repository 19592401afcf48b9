"""Optimisers and learning-rate schedules (optax), from `config.optim`.

Two recipes ship as experiment values: the paper's (SGD momentum 0.9, weight decay 2e-4 added to
the gradient as in Caffe, lr 0.04 with polynomial decay power 1.0 to zero) and a modern one
(AdamW or SGD with warmup + cosine, label smoothing). Weight decay applies to conv kernels only
by default (biases and BatchNorm parameters are left alone).
"""

from __future__ import annotations

import jax
import optax

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "cosine", "constant")


def validate(optim_config) -> None:
    """Raise ValueError naming the field for an unusable optimiser config."""
    c = optim_config
    if c.name not in OPTIMIZERS:
        raise ValueError(f"config.optim.name must be one of {OPTIMIZERS}, got {c.name!r}")
    if c.schedule not in SCHEDULES:
        raise ValueError(f"config.optim.schedule must be one of {SCHEDULES}, got {c.schedule!r}")
    if not c.lr > 0 or c.lr > 100:
        raise ValueError(f"config.optim.lr must be in (0, 100], got {c.lr}")
    if not 0 <= c.momentum < 1:
        raise ValueError(f"config.optim.momentum must be in [0, 1), got {c.momentum}")
    if c.weight_decay < 0:
        raise ValueError(f"config.optim.weight_decay must be >= 0, got {c.weight_decay}")
    if not 0 <= c.label_smoothing < 1:
        raise ValueError(f"config.optim.label_smoothing must be in [0, 1), got {c.label_smoothing}")
    if c.power <= 0:
        raise ValueError(f"config.optim.power must be > 0, got {c.power}")
    if c.warmup_epochs < 0:
        raise ValueError(f"config.optim.warmup_epochs must be >= 0, got {c.warmup_epochs}")
    if not 0 <= c.end_lr_fraction <= 1:
        raise ValueError(f"config.optim.end_lr_fraction must be in [0, 1], got {c.end_lr_fraction}")
    if c.grad_clip_norm < 0:
        raise ValueError(f"config.optim.grad_clip_norm must be >= 0, got {c.grad_clip_norm}")


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
