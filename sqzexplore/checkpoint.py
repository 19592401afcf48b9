"""Checkpoints: orbax `CheckpointManager` in `workdir/checkpoints`, async, keep-N, auto-resume.

A checkpoint is the whole `train.state.TrainState` (step, trainable parameters, batch
statistics, optimiser state, rng) plus the best evaluation so far, so a resumed run continues
exactly where it stopped; the data position is the step itself.
Layout (read by `rundir.load_run`):

    {"train": TrainState.to_dict(), "best_correct": int32, "best_count": int32, "best_step": int32}

The best top-1 is kept as integer counts (examples right / examples evaluated), so a resumed run
reports exactly the uninterrupted run's float. Restores use explicit shardings, so a checkpoint
written on one device count restores on another. A latest checkpoint that fails to restore
(corrupted, half-deleted) is reported, moved aside and the previous one is used.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Sharding

from sqzexplore import rundir

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Best:
    """The best evaluation so far: `correct` of `count` eval examples right at step `step`."""

    correct: int = -1  # -1: no evaluation yet
    count: int = 0
    step: int = -1

    @property
    def top1(self) -> float:
        return self.correct / self.count if self.count else -1.0

    def update(self, step: int, metrics: dict) -> Best:
        """This or the evaluation `metrics` at `step`, whichever is better (ties keep this one)."""
        count = int(metrics["count"])
        # metrics["top1"] is correct / count: the count is recovered exactly by rounding.
        correct = int(round(metrics["top1"] * count))
        if self.count and correct * self.count <= self.correct * count:
            return self
        return Best(correct=correct, count=count, step=step)


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int, sharding: Sharding, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"config.keep_checkpoints must be >= 1, got {keep}")
        self.directory = os.path.join(os.path.abspath(workdir), rundir.CHECKPOINT_DIR)
        self._sharding = sharding
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.manager = self._make_manager()

    def _make_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self._options)

    def _scalar(self, value: int) -> jax.Array:
        host = np.asarray(value, np.int32)
        return jax.make_array_from_callback((), self._sharding, lambda index: host[index])

    def save(self, step: int, state: Any, best: Best) -> None:
        """Start saving (asynchronously) `state` and `best` as step `step`."""
        tree = {
            "train": state.to_dict(),
            "best_correct": self._scalar(best.correct),
            "best_count": self._scalar(best.count),
            "best_step": self._scalar(best.step),
        }
        self.manager.save(step, args=ocp.args.StandardSave(tree), force=True)

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, Best] | None:
        """(step, state, best) of the newest checkpoint that restores, or None if none exist.

        `abstract_state`: a `TrainState` of ShapeDtypeStructs (e.g. `jax.eval_shape` of its
        initialiser); the restored state has its type. Unreadable checkpoints are moved aside
        to `checkpoints.unreadable/` (kept for inspection, never deleted) so that the resumed
        run can write those steps again.
        """
        scalar = jax.ShapeDtypeStruct((), np.int32, sharding=self._sharding)
        target = {
            "train": abstract_like(abstract_state.to_dict(), self._sharding),
            "best_correct": scalar,
            "best_count": scalar,
            "best_step": scalar,
        }
        found, bad = None, []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                tree = self.manager.restore(step, args=ocp.args.StandardRestore(target))
            except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
                bad.append(step)
                self._report_unreadable(step, e)
                continue
            best = Best(
                correct=int(tree["best_correct"]),
                count=int(tree["best_count"]),
                step=int(tree["best_step"]),
            )
            found = (int(step), type(abstract_state).from_dict(tree["train"]), best)
            break
        if bad and jax.process_index() == 0:
            self._move_aside(bad)
        return found

    def _report_unreadable(self, step: int, error: Exception) -> None:
        log.warning(
            "checkpoint at step %d in %s could not be restored (%s: %s); trying the previous one",
            step,
            self.directory,
            type(error).__name__,
            str(error)[:300],
        )
        print(
            f"warning: checkpoint at step {step} is unreadable ({type(error).__name__}); "
            "moving it to checkpoints.unreadable/ and using the previous one",
            flush=True,
        )

    def _move_aside(self, steps: list[int]) -> None:
        self.manager.close()
        aside = self.directory + ".unreadable"
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            target = os.path.join(aside, f"{step}-{int(time.time())}")
            os.replace(os.path.join(self.directory, str(step)), target)
        self.manager = self._make_manager()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any, sharding: Sharding) -> Any:
    """ShapeDtypeStructs with `sharding` for every leaf (restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
