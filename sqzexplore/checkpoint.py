"""Checkpoints: orbax `CheckpointManager` in `workdir/checkpoints`, async, keep-N, auto-resume.

A checkpoint is the whole `train.state.TrainState` (step, trainable parameters, batch
statistics, optimiser state, rng) plus the best evaluation so far, so a resumed run continues
exactly where it stopped; the data position is the step itself.
Layout (read back by `Checkpointer.restore_latest` and by `load_run`):

    {"train": TrainState.to_dict(), "best_correct": int32, "best_count": int32, "best_step": int32}

The best top-1 is kept as integer counts (examples right / examples evaluated), so a resumed run
reports exactly the uninterrupted run's float. Restores use explicit shardings, so a checkpoint
written on one device count restores on another.

Integrity: when orbax has committed a step, `sha256.json` is written into its directory with the
SHA-256 of every file in it; a restore first checks them. A checkpoint that fails the check or
fails to restore (bit rot, a same-size overwrite, truncation, a save killed before its checksums)
is reported, moved aside to `checkpoints.unreadable/` and the previous one is used. Next to the
state, `host.json` holds host-side values a resumed run needs (the train metrics of the steps
since the last log point, when a run was preempted between two), covered by the checksums.

There is one restore path, `_restore_newest`: the trainer's resume (`Checkpointer.restore_latest`,
which moves unreadable steps aside) and `load_run` (a finished run's weights for compression and
evaluation, which only reads and leaves the run directory as it is) both walk the steps newest
first and use the newest one that verifies and restores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Sharding

from sqzexplore import rundir
from sqzexplore.models.spec import SqueezeNetSpec

log = logging.getLogger(__name__)

MANIFEST_FILE = "sha256.json"
HOST_FILE = "host.json"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint's files do not match the checksums written when it was saved."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(step_dir: str) -> list[str]:
    out = []
    for root, _, files in os.walk(step_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel != MANIFEST_FILE:
                out.append(rel)
    return sorted(out)


def write_manifest(step_dir: str) -> None:
    """Record the SHA-256 of every file of a committed checkpoint step (atomically, last)."""
    digests = {rel: _sha256(os.path.join(step_dir, rel)) for rel in _files(step_dir)}
    rundir.write_json(os.path.join(step_dir, MANIFEST_FILE), {"sha256": digests})


def verify_manifest(step_dir: str) -> None:
    """Raise CorruptCheckpointError unless every file matches the step's recorded checksums."""
    manifest = rundir.read_json(os.path.join(step_dir, MANIFEST_FILE))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), dict):
        raise CorruptCheckpointError(
            f"{step_dir} has no readable {MANIFEST_FILE}: its save did not finish"
        )
    expected = manifest["sha256"]
    found = _files(step_dir)
    if sorted(expected) != found:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise CorruptCheckpointError(f"{step_dir}: files missing {missing}, unexpected {extra}")
    for rel in found:
        if _sha256(os.path.join(step_dir, rel)) != expected[rel]:
            raise CorruptCheckpointError(f"{step_dir}/{rel} does not match its checksum")


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


def barrier_prefix(directory: str) -> str:
    """The prefix of this directory's orbax barriers across processes. Orbax names a save's
    barriers after the step (`async_write_complete.44`), so two checkpointers saving the same
    step at once (a population's members, one per workdir) would meet at one barrier and fail
    ("Barrier ... is already ongoing"); a prefix per directory keeps them apart. The same on
    every process: the workdir's path is the same there."""
    return "sqz" + hashlib.sha256(os.path.abspath(directory).encode()).hexdigest()[:16]


class Checkpointer:
    """Saves and restores a run's checkpoints; see the module docstring.

    `on_commit(step)` is called once a step is on disk with its checksums.
    """

    def __init__(
        self,
        workdir: str,
        *,
        keep: int,
        sharding: Sharding,
        async_save: bool = True,
        on_commit: Callable[[int], None] | None = None,
    ):
        if keep < 1:
            raise ValueError(f"config.keep_checkpoints must be >= 1, got {keep}")
        self.directory = os.path.join(os.path.abspath(workdir), rundir.CHECKPOINT_DIR)
        self._sharding = sharding
        self._on_commit = on_commit
        self._in_flight: tuple[int, list] | None = None  # (step, host values) being written
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=barrier_prefix(self.directory)
            ),
        )
        self.manager = self._make_manager()

    def _make_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self._options)

    def _scalar(self, value: int) -> jax.Array:
        host = np.asarray(value, np.int32)
        return jax.make_array_from_callback((), self._sharding, lambda index: host[index])

    def save(self, step: int, state: Any, best: Best, *, host: list | None = None) -> None:
        """Start saving (asynchronously) `state` and `best` as step `step`.

        `host`: JSON-able values kept with the checkpoint (returned by `restore_latest`).
        The previous save is finished (committed, checksummed) first.
        """
        self.finish()
        tree = {
            "train": state.to_dict(),
            "best_correct": self._scalar(best.correct),
            "best_count": self._scalar(best.count),
            "best_step": self._scalar(best.step),
        }
        self.manager.save(step, args=ocp.args.StandardSave(tree), force=True)
        self._in_flight = (step, list(host or []))

    def finish(self) -> int | None:
        """Wait for the save in flight and seal it (host values, checksums); its step, or None."""
        if self._in_flight is None:
            return None
        self.manager.wait_until_finished()
        step, host = self._in_flight
        self._in_flight = None
        step_dir = os.path.join(self.directory, str(step))
        if jax.process_index() == 0 and os.path.isdir(step_dir):
            rundir.write_json(os.path.join(step_dir, HOST_FILE), host)
            write_manifest(step_dir)
        if self._on_commit is not None:
            self._on_commit(step)
        return step

    def committed_steps(self) -> list[int]:
        """Steps on disk with checksums (sealed), oldest first."""
        names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        return sorted(
            int(name)
            for name in names
            if name.isdigit() and os.path.exists(os.path.join(self.directory, name, MANIFEST_FILE))
        )

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, Best, list] | None:
        """(step, state, best, host) of the newest checkpoint that restores, or None if none
        exist.

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
        found = None
        newest = _restore_newest(
            self.manager,
            self.directory,
            ocp.args.StandardRestore(target),
            on_unreadable=lambda step, e: _report_unreadable(self.directory, step, e, moved=True),
        )
        if newest.tree is not None:
            tree = newest.tree
            best = Best(
                correct=int(tree["best_correct"]),
                count=int(tree["best_count"]),
                step=int(tree["best_step"]),
            )
            found = (newest.step, type(abstract_state).from_dict(tree["train"]), best, newest.host)
        if newest.unreadable and jax.process_index() == 0:
            self._move_aside(newest.unreadable)
        return found

    def _move_aside(self, steps: list[int]) -> None:
        self.manager.close()
        aside = self.directory + ".unreadable"
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            target = os.path.join(aside, f"{step}-{int(time.time())}")
            os.replace(os.path.join(self.directory, str(step)), target)
        self.manager = self._make_manager()

    def close(self) -> None:
        """Finish the save in flight (see `finish`) and release the manager."""
        try:
            self.finish()
        finally:
            self.manager.close()


@dataclasses.dataclass
class _Newest:
    """What `_restore_newest` found: the newest usable step (tree None if none) and the newer
    steps that could not be used, newest first."""

    step: int | None = None
    tree: Any = None
    host: list = dataclasses.field(default_factory=list)
    unreadable: list[int] = dataclasses.field(default_factory=list)


def _restore_newest(
    manager: ocp.CheckpointManager,
    directory: str,
    args: ocp.args.StandardRestore,
    *,
    on_unreadable: Callable[[int, Exception], None],
) -> _Newest:
    """The one restore path: walk the steps newest first, verify each step's checksums, restore
    it with `args`, and stop at the first that works; `on_unreadable(step, error)` for each
    step before it that failed."""
    out = _Newest()
    for step in sorted(manager.all_steps(), reverse=True):
        step_dir = os.path.join(directory, str(step))
        try:
            verify_manifest(step_dir)
            tree = manager.restore(step, args=args)
            host = rundir.read_json(os.path.join(step_dir, HOST_FILE), [])
        except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
            out.unreadable.append(int(step))
            on_unreadable(int(step), e)
            continue
        out.step, out.tree, out.host = int(step), tree, host
        break
    return out


def _report_unreadable(directory: str, step: int, error: Exception, *, moved: bool) -> None:
    """Say that a checkpoint step cannot be used (and, for a resume, that it is moved aside)."""
    log.warning(
        "checkpoint at step %d in %s could not be restored (%s: %s); trying the previous one",
        step,
        directory,
        type(error).__name__,
        str(error)[:300],
    )
    aside = "moving it to checkpoints.unreadable/ (kept) and " if moved else ""
    if "tree structures do not match" in str(error):
        # Intact, but laid out differently from this run's state: written by another
        # version of sqzexplore (e.g. before the optimiser state became one flat vector).
        print(
            f"warning: checkpoint at step {step} holds a differently laid out train state "
            f"(written by another sqzexplore version?) and cannot resume this run; {aside}"
            "using the previous one, else starting over. To continue it instead, stop this run "
            "and resume with the version that wrote it.",
            flush=True,
        )
        return
    print(
        f"warning: checkpoint at step {step} in {directory} is unreadable "
        f"({type(error).__name__}); {aside}using the previous one",
        flush=True,
    )


def load_run(workdir: str | os.PathLike) -> dict[str, Any]:
    """A finished run's config, spec, result and trained weights, from its newest checkpoint
    that verifies and restores.

    Returns {"config", "spec", "result", "params", "batch_stats", "aux", "step"} with numpy
    weights (pure dicts, the model's parameter paths). When the final checkpoint is damaged, an
    earlier intact one is used (a warning names both steps; "step" says which) and the run
    directory is left as it is. Raises FileNotFoundError for a workdir without a finished run or
    without any usable checkpoint.
    """
    workdir = os.path.abspath(workdir)
    result = rundir.read_result(workdir)
    if result is None:
        raise FileNotFoundError(
            f"{workdir} holds no finished run (no {rundir.RESULT_FILE}); train it first with "
            f"`sqz train --config=... --workdir={workdir}`"
        )
    config = ml_collections.ConfigDict(rundir.read_json(os.path.join(workdir, rundir.CONFIG_FILE)))
    spec = SqueezeNetSpec.from_dict(rundir.read_json(os.path.join(workdir, rundir.SPEC_FILE)))
    directory = os.path.join(workdir, rundir.CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} holds no checkpoint")
    with ocp.CheckpointManager(directory) as manager:
        newest = _restore_newest(
            manager,
            directory,
            ocp.args.StandardRestore(),
            on_unreadable=lambda step, e: _report_unreadable(directory, step, e, moved=False),
        )
    if newest.tree is None:
        why = f" (unreadable steps: {newest.unreadable})" if newest.unreadable else ""
        raise FileNotFoundError(f"{directory} holds no usable checkpoint{why}")
    if newest.unreadable:
        print(
            f"warning: {workdir}: the final checkpoint (step {newest.unreadable[0]}) is damaged; "
            f"using step {newest.step}, the newest intact one (its weights are not the ones "
            f"{rundir.RESULT_FILE} reports; rerun the run's `sqz train` command after deleting "
            f"{rundir.RESULT_FILE} to redo the final steps)",
            flush=True,
        )
    train_state = newest.tree["train"]
    return {
        "config": config,
        "spec": spec,
        "result": result,
        "params": jax.tree.map(np.asarray, train_state["params"]),
        "batch_stats": jax.tree.map(np.asarray, train_state["batch_stats"]),
        "aux": jax.tree.map(np.asarray, train_state.get("aux", {})),
        "step": newest.step,
    }


def abstract_like(tree: Any, sharding: Sharding) -> Any:
    """ShapeDtypeStructs with `sharding` for every leaf (restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
