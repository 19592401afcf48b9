"""Durations: every epoch-denominated setting resolved to steps, in one place.

An epoch is `train_size // batch_size` steps: batches have a static shape, so the data layer drops
the remainder of each epoch (a different seeded permutation every epoch, so every example is still
seen). Totals, evaluation, checkpoint and warmup intervals are whole multiples of that, rounded to
the nearest step; the trainer and the data layer both use this helper so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class DurationError(ValueError):
    """A duration that resolves to no step at all; the message names the field."""


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    """Whole batches in one pass over `train_size` examples (the remainder is dropped)."""
    if batch_size < 1:
        raise DurationError(f"config.batch_size must be >= 1, got {batch_size}")
    steps = int(train_size) // int(batch_size)
    if steps < 1:
        raise DurationError(
            f"config.batch_size={batch_size} is larger than the training split ({train_size} "
            f"examples): one epoch would hold no full batch; use batch_size <= {train_size}"
        )
    return steps


def epochs_to_steps(epochs: float, per_epoch: int, *, at_least: int = 1) -> int:
    """`epochs` epochs in steps, rounded to the nearest step (at least `at_least`)."""
    return max(at_least, int(round(float(epochs) * per_epoch)))


@dataclasses.dataclass(frozen=True)
class Durations:
    """All of a run's step counts."""

    steps_per_epoch: int
    total_steps: int
    eval_every: int
    checkpoint_every: int
    warmup_steps: int

    @classmethod
    def from_config(cls, config: Any, train_size: int) -> Durations:
        """Resolve `config` (num_steps or num_epochs, *_every_epochs, warmup) for a split size."""
        per_epoch = steps_per_epoch(train_size, int(config.batch_size))
        if config.num_steps and config.num_steps > 0:
            total = int(config.num_steps)
        else:
            total = epochs_to_steps(config.num_epochs, per_epoch)
        return cls(
            steps_per_epoch=per_epoch,
            total_steps=total,
            eval_every=epochs_to_steps(config.eval_every_epochs, per_epoch),
            checkpoint_every=epochs_to_steps(config.checkpoint_every_epochs, per_epoch),
            warmup_steps=epochs_to_steps(config.optim.warmup_epochs, per_epoch, at_least=0),
        )

    def epochs(self, step: int) -> float:
        """Epochs completed after `step` steps."""
        return step / self.steps_per_epoch
