"""Checkpoints: orbax `CheckpointManager` in `workdir/checkpoints`, async, keep-N, auto-resume.

The saved state is the whole train state pytree (step, trainable parameters, batch statistics,
optimiser state, rng, best-so-far), so a resumed run continues exactly where it stopped; the data
position is the step itself. Restores use explicit shardings, so a checkpoint written on one device
count restores on another. A latest checkpoint that fails to restore (corrupted, half-deleted) is
reported and the previous one is used.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"config.keep_checkpoints must be >= 1, got {keep}")
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.manager = self._make_manager()

    def _make_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self._options)

    def save(self, step: int, state, *, force: bool = False) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore_latest(self, abstract_state):
        """(step, state) of the newest checkpoint that restores, or (None, None) if none exist.

        Unreadable checkpoints are moved aside to `checkpoints.unreadable/` (kept for inspection,
        never deleted) so that the resumed run can write those steps again.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        found, bad = (None, None), []
        for step in steps:
            try:
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
                found = (step, state)
                break
            except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
                bad.append(step)
                log.warning(
                    "checkpoint at step %d in %s could not be restored (%s: %s); trying the "
                    "previous one",
                    step,
                    self.directory,
                    type(e).__name__,
                    str(e)[:300],
                )
                print(
                    f"warning: checkpoint at step {step} is unreadable ({type(e).__name__}); "
                    "moving it to checkpoints.unreadable/ and using the previous one",
                    flush=True,
                )
        if bad and jax.process_index() == 0:
            self.manager.close()
            aside = self.directory + ".unreadable"
            os.makedirs(aside, exist_ok=True)
            for step in bad:
                target = os.path.join(aside, f"{step}-{int(time.time())}")
                os.replace(os.path.join(self.directory, str(step)), target)
            self.manager = self._make_manager()
        return found

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state, sharding):
    """ShapeDtypeStructs with `sharding` for every leaf (restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
