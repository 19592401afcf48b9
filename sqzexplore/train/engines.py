"""What the driver (driver.py) trains: the lone program of one run, or a population's program.

Both give the driver the same few operations, so it has one loop for 1..N members:
`Lone` (one member: the run's own train step or block, its state as it is, streamed data too,
`reparam` / `init_params` baked in) and `Population` (N members stacked on a leading member axis,
each with an `active` flag, padded to common widths where they differ in them: padding.py).
Member i's state to checkpoint, its metrics and its non-finite step come from `member_state`,
`member_metrics` and `nonfinite`; `dispatch(state, active, images, labels, n)` runs n steps.

Restoring (`restore`) is also here: every member's checkpoints live in its own workdir; members
resume together from the newest step that all have committed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from sqzexplore import rundir, sharding
from sqzexplore.checkpoint import MANIFEST_FILE, Best, Checkpointer
from sqzexplore.config import ConfigError, validate_config
from sqzexplore.train import padding, preflight, programs


class PopulationError(ConfigError):
    """Configs that cannot train as one population (they differ other than in the seed)."""


class Lone:
    """One run's own program: a non-finite step raises (`NonFiniteError`)."""

    lone = True

    def __init__(self, config, spec, mesh, *, reparam=None, init_params=None):
        self.config, self.spec, self.mesh, self.slots = config, spec, mesh, 1
        self._bake = dict(reparam=reparam, init_params=init_params)
        self.progs: programs.Programs | None = None
        self.what = "the train step"

    def preflight(self, members: list) -> None:
        preflight.check(self.config, self.spec, self.mesh, members[0].workdir)

    def load(self, members: list) -> None:
        """The dataset and the (cached or new) programs."""
        self.progs = programs.for_run(self.config, self.spec, self.mesh, **self._bake)

    def spec_of(self, index: int):
        return self.spec

    def abstract(self, index: int):
        return self.progs.abstract_state()

    def adopt(self, index: int, restored: Any) -> Any:
        return restored  # replicated already, as the run trains it

    def device_state(self, members: list) -> Any:
        m = members[0]
        if m.state is not None:
            return m.state
        local = self.progs.init(m.seed)  # on one local device (see programs.py)
        return jax.tree.map(lambda a: sharding.put_replicated(a, self.mesh), local)

    def data(self, start_step: int) -> Callable[[int], tuple]:
        """`batch(step)`: the train arrays on the devices, or the batch streamed for `step`."""
        ds, mesh = self.progs.ds, self.mesh
        if ds.on_device:
            arrays = self.progs.train_arrays()
            return lambda step: arrays
        size = int(self.config.batch_size) // jax.process_count()
        batches = ds.train_iter(start_step, size, self.config.seed)
        fetch = lambda: tuple(sharding.put_batch(b, mesh) for b in _image_label(next(batches)))
        first = fetch()
        return lambda step: first if step == start_step else fetch()

    def block_name(self, k: int) -> str:
        return "train_step" if k == 1 else f"train_block/{k}"

    def block(self, k: int) -> Callable:
        """`dispatch(state, active, images, labels, n)` (n <= k steps, one compiled program)."""
        if k == 1:
            step = self.progs.train_step()
            return lambda state, active, x, y, n: step(state, x, y)
        block = self.progs.train_block(k)
        return lambda state, active, x, y, n: block(state, x, y, n=n)

    def compile_eval_in_background(self):
        return self.progs.compile_eval_in_background()

    def evaluate(self, state: Any) -> list[dict]:
        return [self.progs.evaluate(state)]

    def nonfinite(self, state: Any) -> np.ndarray:
        return np.array([int(jax.device_get(state.nonfinite_step))])

    def member_metrics(self, step_metrics: dict, index: int) -> dict:
        return {k: np.float32(v) for k, v in step_metrics.items()}

    def member_state(self, state: Any, index: int) -> Any:
        return state


class Population:
    """N members as one program (population.py): a non-finite member is frozen, the others go
    on; finished members keep their (frozen) slots, so a resume runs the first attempt's
    program."""

    lone = False

    def __init__(self, members: list, mesh):
        self.mesh, self.slots = mesh, len(members)
        self.config = members[0].config
        self.lowering = programs.population_lowering(self.config)
        how = "vmapped" if self.lowering == "vmap" else "members unrolled in turn"
        self.what = f"the train step of a population of {self.slots} ({how})"
        self.progs: programs.Programs | None = None

    def preflight(self, members: list) -> None:
        """The checks, for each unfinished member, of the program's network (the padded one
        where the members differ in widths) with memory for all its slots."""
        specs = [validate_config(m.config) for m in members]
        spec = specs[0]
        if any(s.fires() != spec.fires() for s in specs):
            try:
                spec = padding.padded_spec(specs)
            except padding.PaddingError as e:  # a sweep worker then trains them one by one
                raise PopulationError(str(e)) from None
        for m in members:
            if m.active:  # devices, platform, batch split, memory (all slots), workdir
                preflight.check(self.config, spec, self.mesh, m.workdir, members=self.slots)

    def load(self, members: list) -> None:
        """The members' layout (padded to common widths or not) and its programs."""
        try:
            self.layout = padding.layout([m.config for m in members], self.mesh)
        except padding.PaddingError as e:  # a sweep worker then trains them one by one
            raise PopulationError(str(e)) from None
        self.progs = self.layout.programs
        if not self.progs.ds.on_device:
            raise PopulationError(
                "populations need a device-resident dataset (config.data.on_device true, or "
                f"auto within the memory budget); {self.progs.ds.name} is streamed: train its "
                "seeds one by one"
            )
        if jax.process_index() == 0 and self.layout.describe():
            print(f"population of {self.slots}: {self.layout.describe()}", flush=True)

    def spec_of(self, index: int):
        return self.layout.specs[index]  # the member's own (narrow) network

    def abstract(self, index: int):
        return self.layout.abstract(index)

    def adopt(self, index: int, restored: Any) -> Any:
        return self.layout.embed(index, jax.device_get(restored))

    def device_state(self, members: list) -> Any:
        # Every slot holds a state: restored or fresh for the unfinished members, a fresh init
        # for the finished ones (frozen: their values never matter).
        host = [self.layout.init(m.index, m.seed) if m.state is None else m.state for m in members]
        stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *host)
        return jax.tree.map(lambda a: sharding.put_replicated(a, self.mesh), stacked)

    def data(self, start_step: int) -> Callable[[int], tuple]:
        arrays = self.progs.train_arrays()
        return lambda step: arrays

    def block_name(self, k: int) -> str:
        return f"population_step/{self.slots}/{k}/{self.lowering}"

    def block(self, k: int) -> Callable:
        step = self.progs.population_step(self.slots, k, self.lowering)
        if k == 1:
            return lambda state, active, x, y, n: step(state, active, x, y)
        return lambda state, active, x, y, n: step(state, active, x, y, n=n)

    def compile_eval_in_background(self):
        build = lambda: self.progs.population_eval(self.slots, self.lowering)
        name = f"population_eval/{self.slots}/{self.lowering}"
        return self.progs.compile_in_background(name, build)

    def evaluate(self, state: Any) -> list[dict]:
        return self.progs.population_eval(self.slots, self.lowering)(state)

    def nonfinite(self, state: Any) -> np.ndarray:
        return np.asarray(jax.device_get(state.nonfinite_step))

    def member_metrics(self, step_metrics: dict, index: int) -> dict:
        return {k: np.float32(v[index]) for k, v in step_metrics.items()}

    def member_state(self, state: Any, index: int) -> Any:
        """Member `index`'s state, replicated (what its lone trial would checkpoint: its narrow
        state where the population is padded)."""
        one = jax.device_get(jax.tree.map(lambda a: a[index], state))
        host = self.layout.extract(index, one)
        return jax.tree.map(lambda a: sharding.put_replicated(np.asarray(a), self.mesh), host)


def _image_label(batch: dict) -> tuple:
    return batch["image"], batch["label"]


def _sealed_steps(workdir: str) -> list[int]:
    d = os.path.join(workdir, rundir.CHECKPOINT_DIR)
    names = os.listdir(d) if os.path.isdir(d) else []
    return sorted(
        int(n) for n in names if n.isdigit() and os.path.exists(os.path.join(d, n, MANIFEST_FILE))
    )


def _drop_newer(workdir: str, step: int) -> None:
    """Delete checkpoints after `step` (the population resumes from `step`; they are recomputed
    identically)."""
    d = os.path.join(workdir, rundir.CHECKPOINT_DIR)
    for name in os.listdir(d) if os.path.isdir(d) else []:
        if name.isdigit() and int(name) > step:
            shutil.rmtree(os.path.join(d, name), ignore_errors=True)


def restore(active: list, engine, open_ckpt: Callable[[Any], Checkpointer]) -> int:
    """Open every unfinished member's checkpointer (`open_ckpt(member)`) and restore them all at
    one step: one member resumes from its newest checkpoint that restores (as a lone run);
    several from the newest step that all have committed (newer ones that only some have, left
    by a kill between two members' saves, are deleted: they are recomputed identically). Sets
    each member's `state` (None: fresh), `best` and `host_metrics`; returns the step."""
    if len(active) == 1:
        m = active[0]
        m.ckpt = open_ckpt(m)
        found = m.ckpt.restore_latest(engine.abstract(m.index))
        if found is None:
            m.state, m.best, m.host_metrics = None, Best(), []
            return 0
        _adopt(engine, m, found)
        return found[0]
    common = None
    for m in active:
        sealed = set(_sealed_steps(m.workdir))
        common = sealed if common is None else common & sealed
    target = max(common) if common else 0
    while True:
        for m in active:
            _drop_newer(m.workdir, target)
            if m.ckpt is not None:  # a retry after a checkpoint that did not restore
                m.ckpt.close()
            m.ckpt = open_ckpt(m)
        if target == 0:
            for m in active:
                m.state, m.best, m.host_metrics = None, Best(), []
            return 0
        restored = [m.ckpt.restore_latest(engine.abstract(m.index)) for m in active]
        steps = [r[0] if r is not None else 0 for r in restored]
        if min(steps) == target:
            for m, found in zip(active, restored, strict=True):
                _adopt(engine, m, found)
            return target
        # A member's checkpoint at `target` was unreadable (moved aside): go back further.
        target = min(steps)


def _adopt(engine, m, found: tuple) -> None:
    _, state, m.best, carried = found
    m.state = engine.adopt(m.index, state)
    # Train metrics since the last log point, carried in a checkpoint taken between two log
    # points, so the next record averages the same steps.
    m.host_metrics = [{k: np.float32(v) for k, v in h.items()} for h in carried]
