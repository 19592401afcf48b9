"""The one training driver: every run's phases, for 1..N members (`run`).

`train_and_evaluate` (loop.py) runs one member on the lone program (engines.Lone: a non-finite
step raises); `train_population` (population.py) runs N members as one program
(engines.Population: a non-finite member is frozen and the others go on). Both go through the
same phases, here and only here:

1. start-up: jax.distributed, the mesh, the XLA options (before any compile), preflight;
2. run files: config.json, spec.json, complexity.json in each member's workdir;
3. state: restore the members' newest common checkpoint (engines.restore), or initialise;
4. compile: the one block of `steps_per_dispatch` steps (every block, a shorter tail or a
   resumed run's first block included, runs through it: dispatch.masked_block), a barrier that
   every process reaches, and the evaluation compiled in the background while training starts;
5. metrics: one MetricsWriter per member, one progress bar;
6. the block loop: cadence (dispatch.cadence), log, eval (`on_eval` may prune a member),
   checkpoint, SIGTERM (checkpoint and stop at the end of the block);
7. finish: each member's result.json, written after its last checkpoint is on disk.

A member's files are exactly those of its lone trial (see loop.py and population.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from sqzexplore import rundir, sharding
from sqzexplore.checkpoint import Best, Checkpointer
from sqzexplore.config import flat_defaults
from sqzexplore.models.complexity import complexity as analytic_complexity
from sqzexplore.progress import Progress
from sqzexplore.runlog import MetricsWriter
from sqzexplore.train import engines, events, programs, xla_options

NONFINITE_FILE = "nonfinite.json"  # a member frozen for a NaN/Inf loss: its error, kept
OnEval = Callable[[int, int, dict], bool]  # (member index, step, eval metrics) -> stop it


class NonFiniteError(FloatingPointError):
    """The loss or gradient became NaN/Inf; names the first bad step."""


class Member:
    """One trial: its workdir, checkpointer, metrics file and what it has logged so far."""

    def __init__(self, index: int, config: ml_collections.ConfigDict, workdir: str):
        self.index, self.config, self.workdir = index, config, os.path.abspath(workdir)
        self.seed = int(config.seed)
        self.config_dict = json.loads(config.to_json_best_effort())
        self.result: dict | None = None  # set when the member is finished (or failed)
        self.ckpt: Checkpointer | None = None
        self.writer: MetricsWriter | None = None
        self.best = Best()
        self.host_metrics: list[dict] = []  # train metrics of the steps since the last record
        self.last_eval: dict = {}
        self.images_per_s = 0.0
        self.state: Any = None  # its restored state until the members' state is on the devices
        self.spec: Any = None
        self.cplx: dict = {}
        self.cplx_summary: dict = {}

    @property
    def active(self) -> bool:
        return self.result is None


def start(config: ml_collections.ConfigDict):
    """Phase 1 up to the engine: join jax.distributed; the mesh of all devices."""
    sharding.maybe_initialize_distributed(config.distributed)
    return sharding.make_mesh()


def run(members: list[Member], engine, on_eval: OnEval | None, stop, t_start: float) -> list:
    """Train the active `members` with `engine` (engines.Lone or engines.Population); one result
    per member (a preempted one: {"status": "preempted", "step": N})."""
    is_main = jax.process_index() == 0
    compile_start = programs.compile_seconds()
    engine.preflight(members)  # devices, platform, batch split, memory, workdir
    xla_options.configure(engine.config)  # persistent cache, compile options; before any compile
    engine.load(members)  # the dataset and the programs (cached, or built on first use)
    progs, steps = engine.progs, engine.progs.steps
    total, active = steps.total_steps, [m for m in members if m.active]
    _write_run_files(members, engine, is_main)
    keep, replicated = members[0].config.keep_checkpoints, sharding.replicated(engine.mesh)
    open_ckpt = lambda m: Checkpointer(
        m.workdir,
        keep=keep,
        sharding=replicated,
        on_commit=lambda s: events.reached("checkpoint_committed", s),
    )
    loop = _Loop(members, engine, on_eval, stop, is_main, (t_start, compile_start))
    eval_compile = None  # a thread compiling the evaluation while training starts
    try:
        start_step = engines.restore(active, engine, open_ckpt)
        if stop.requested:
            return _preempted_before_training(members, engine, start_step, "start-up")
        state = engine.device_state(members)
        for m in members:
            m.state = None
        if start_step:
            where = active[0].workdir if engine.lone else f"population of {engine.slots}"
            print(f"resuming {where} from step {start_step}", flush=True)
        k = 1
        if start_step < total:
            k = _compile(engine, start_step, is_main)
            sharding.barrier("compiled")  # a multi-process run's first collective must not time out
            if stop.requested:
                return _preempted_before_training(members, engine, start_step, "compilation")
            eval_compile = engine.compile_eval_in_background()
        state = loop.train(state, start_step, k)
    finally:
        if eval_compile is not None:
            eval_compile.join()  # never leave XLA compiling in a thread at exit
        for m in members:
            if m.ckpt is not None:
                m.ckpt.close()  # waits until the last save is on disk, with its checksums

    if loop.preempted:
        return _preempted(members, engine, loop.step)
    unevaluated = [m for m in members if m.active and not m.last_eval]
    if unevaluated:
        # Resumed at the last step (killed between the checkpoints and result.json): evaluate
        # the restored final states, exactly what the first attempt evaluated.
        evals = engine.evaluate(state)
        for m in unevaluated:
            m.last_eval = evals[m.index]
    for m in members:
        if m.active:
            finish(m, "complete", loop.step, progs, *loop.timing)
    return [m.result for m in members]


def _write_run_files(members: list[Member], engine, is_main: bool) -> None:
    """Phase 2: each member's own (narrow) network, its complexity and its run files."""
    for m in members:
        m.spec = engine.spec_of(m.index)
        m.cplx = analytic_complexity(m.spec).to_dict()
        m.cplx_summary = {
            k: m.cplx[k] for k in ("params", "macs", "fp32_bytes", "fp32_mib", "activations")
        }
    for m in members:
        if not m.active:
            continue
        os.makedirs(m.workdir, exist_ok=True)
        rundir.check_config(m.workdir, m.config_dict, flat_defaults())
        if is_main:
            rundir.write_json(os.path.join(m.workdir, rundir.CONFIG_FILE), m.config_dict)
            rundir.write_json(os.path.join(m.workdir, rundir.SPEC_FILE), m.spec.to_dict())
            rundir.write_json(os.path.join(m.workdir, rundir.COMPLEXITY_FILE), m.cplx)


def _compile(engine, start_step: int, is_main: bool) -> int:
    """Phase 4: compile the run's one block program (or take it from the cache); its length."""
    progs = engine.progs
    events.reached("compile", start_step)
    k, why = programs.steps_per_dispatch(engine.config, progs.steps, progs.ds.on_device)
    if is_main and k > 1:
        print(f"{k} steps per dispatch ({why})", flush=True)
    reused = progs.built(engine.block_name(k))  # by an earlier seed of this point, in memory
    if is_main and not reused:
        print(f"compiling {engine.what} ...", flush=True)
    t0 = time.perf_counter()
    engine.block(k)
    if is_main:
        if not reused:
            print(f"compiled in {time.perf_counter() - t0:.1f} s", flush=True)
        elif progs.runs:
            print("train step reused from an earlier run of this point", flush=True)
        else:
            print("train step compiled ahead while the previous run trained", flush=True)
    progs.runs += 1
    return k


class _Loop:
    """Phases 5 and 6: the members' metrics files and progress, and the block loop."""

    def __init__(self, members: list[Member], engine, on_eval, stop, is_main, timing: tuple):
        self.members, self.engine, self.on_eval, self.stop = members, engine, on_eval, stop
        self.is_main = is_main
        self.t_start, self.compile_start = timing
        self.step, self.preempted, self.train_time = 0, False, 0.0

    def _active(self) -> list[Member]:
        return [m for m in self.members if m.active]

    def _mask(self) -> jax.Array:
        flags = np.array([m.active for m in self.members])
        return sharding.put_replicated(flags, self.engine.mesh)

    def train(self, state: Any, start_step: int, k: int) -> Any:
        engine, members, is_main = self.engine, self.members, self.is_main
        config, steps = engine.config, engine.progs.steps
        total, log_every = steps.total_steps, config.log_every_steps
        for m in self._active():
            m.writer = MetricsWriter(
                m.workdir,
                is_main=is_main,
                resume_step=start_step,
                wandb_config=m.config.wandb,
                run_config=m.config_dict,
                summary={"design": m.spec.to_dict(), "complexity": m.cplx_summary},
            )
        progress = Progress(config.progress, total, start_step, is_main)
        self.step = step = start_step
        if step >= total:
            progress.close()
            return state
        batch, dispatch = engine.data(start_step), engine.block(k)
        active_dev = self._mask()
        interval_t0, pending = time.perf_counter(), []
        try:
            while step < total and self._active():
                # A block of steps per host call, ending exactly at the next log, eval or
                # checkpoint step, or at the end (k is 1 with streamed data or where blocks do
                # not pay); a shorter block runs through the same program.
                length = min(k, programs.next_boundary(step, steps, log_every) - step)
                state, metrics = dispatch(state, active_dev, *batch(step), length)
                pending.append((metrics, length))
                for s in range(step + 1, step + length + 1):
                    events.reached("step", s)
                self.step = step = step + length
                # One reading of the flag per step, used for all of it: a SIGTERM handled during
                # this step's syncs (log, eval, save) is acted on at the next step.
                preempt = self.stop.requested and step < total
                is_eval, is_ckpt, is_log = programs.cadence(step, steps, log_every)
                changed = False
                if is_log or preempt:
                    # The sync waits for the device: the interval ends after it (dispatch is
                    # asynchronous, so before it only the host's share would be counted).
                    changed = self._sync(state, pending, k)
                    pending = []
                    interval = time.perf_counter() - interval_t0
                    self.train_time += interval
                if is_log:
                    self._log(step, interval, progress)
                pruned = self._evaluate(state, step, total, progress) if is_eval else []
                to_save = self._active() if (is_ckpt or preempt) else pruned
                for m in to_save:
                    m.ckpt.save(step, engine.member_state(state, m.index), m.best, host=_json(m))
                if to_save:
                    events.reached("checkpoint_save", step)
                for m in pruned:
                    finish(m, "pruned", step, engine.progs, *self.timing)
                    changed = True
                if preempt:
                    self.preempted = True
                    break
                if changed:
                    active_dev = self._mask()
                if is_log or preempt:
                    interval_t0 = time.perf_counter()
        except BaseException:
            for m in members:
                if m.writer is not None:
                    m.writer.close()
            raise
        finally:
            progress.close()
        return state

    def _sync(self, state: Any, pending: list, k: int) -> bool:
        """The pending blocks' metrics to the host, per member; a non-finite member raises
        (lone) or is frozen (population). Whether a member was frozen."""
        synced = []
        for metrics, length in jax.device_get(pending):
            if k == 1:
                synced.append(metrics)
            else:  # a block's arrays (a leading step axis): its first `length` steps ran
                synced += [{key: v[i] for key, v in metrics.items()} for i in range(length)]
        bad = self.engine.nonfinite(state)
        changed = False
        for m in self._active():
            m.host_metrics += [self.engine.member_metrics(s, m.index) for s in synced]
            if bad[m.index] >= 0:
                error = NonFiniteError(
                    f"non-finite loss or gradient at step {int(bad[m.index])} (counting from 0); "
                    f"the update was not applied and the run stopped. The last good checkpoint "
                    f"in {m.ckpt.directory} is kept. Lower config.optim.lr or set "
                    "config.optim.grad_clip_norm."
                )
                if self.engine.lone:
                    raise error
                _freeze_nonfinite(m, error, int(bad[m.index]), self.is_main)
                changed = True
        return changed

    def _log(self, step: int, interval: float, progress: Progress) -> None:
        batch_size = int(self.engine.config.batch_size)
        record = {}
        for m in self._active():
            m.images_per_s = len(m.host_metrics) * batch_size / max(interval, 1e-9)
            record = {k: float(np.mean([h[k] for h in m.host_metrics])) for k in m.host_metrics[0]}
            record.update(step=step, split="train", images_per_s=m.images_per_s)
            m.writer.write(record)
            m.host_metrics = []
        img_s = round(sum(m.images_per_s for m in self.members))
        if self.engine.lone:
            progress.update(step, loss=record["loss"], img_s=img_s)
        else:
            progress.update(step, img_s=img_s)

    def _evaluate(self, state: Any, step: int, total: int, progress: Progress) -> list[Member]:
        """Evaluate the active members; the ones `on_eval` stops (to checkpoint and finish)."""
        evaluated = self._active()
        if not evaluated:
            return []
        events.reached("eval", step)
        evals = self.engine.evaluate(state)
        pruned = []
        for m in evaluated:
            m.last_eval = evals[m.index]
            m.best = m.best.update(step, m.last_eval)
            m.writer.write(dict(step=step, split="eval", **m.last_eval))
            stop = self.on_eval is not None and self.on_eval(m.index, step, dict(m.last_eval))
            if stop and step < total:
                pruned.append(m)
        progress.update(step, top1=max(evals[m.index]["top1"] for m in evaluated))
        return pruned

    @property
    def timing(self) -> tuple:
        return self.t_start, self.compile_start, self.train_time


def finish(m: Member, status: str, step: int, progs, t_start, compile_start, train_time) -> None:
    """Phase 7: write member `m`'s result.json (after its last checkpoint is on disk); it is
    finished (frozen, in a population)."""
    m.ckpt.close()
    m.ckpt = None
    devices = jax.devices()
    wall = time.perf_counter() - t_start
    compile_time = programs.compile_seconds() - compile_start
    result = {
        "status": status,
        "final": m.last_eval,
        "best": {"top1": m.best.top1, "step": m.best.step},
        "complexity": m.cplx_summary,
        "steps": step,
        "epochs": step * int(m.config.batch_size) / progs.ds.train_size,
        "wall_time_s": wall,
        "compile_time_s": compile_time,
        "train_time_s": train_time,
        "overhead_s": wall - train_time - compile_time,
        "images_per_s": m.images_per_s,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        # What the matmuls and convolutions ran at (TF32 by default on NVIDIA GPUs).
        "precision": xla_options.precision_line(
            devices[0].platform, str(m.config.model.get("dtype", "float32"))
        ),
    }
    m.writer.summary({"final": m.last_eval, "best": result["best"], "complexity": m.cplx_summary})
    m.writer.close()
    events.reached("before_result", step)
    if jax.process_index() == 0:
        rundir.write_json(os.path.join(m.workdir, rundir.RESULT_FILE), result)
    m.result = result


def _json(m: Member) -> list[dict]:
    # float32 values as Python floats: exact, so a resumed run averages the very same numbers.
    return [{k: float(v) for k, v in h.items()} for h in m.host_metrics]


def _freeze_nonfinite(m: Member, error: NonFiniteError, bad: int, is_main: bool) -> None:
    message = f"{type(error).__name__}: {error}"
    print(f"population member {m.index} (seed {m.seed}) frozen: {message}", flush=True)
    if is_main:
        rundir.write_json(os.path.join(m.workdir, NONFINITE_FILE), {"error": message, "step": bad})
    m.writer.close()
    m.result = {"status": "failed", "error": message, "nonfinite_step": bad}


def _preempted_before_training(members: list[Member], engine, step: int, phase: str) -> list:
    if engine.lone:
        where = f" (checkpoints in {members[0].ckpt.directory})" if step else ""
        print(
            f"preempted (SIGTERM) during {phase}, before training from step {step}: nothing new "
            "to save; rerun the same command to " + ("resume" if step else "start") + where,
            flush=True,
        )
    else:
        print(
            f"preempted (SIGTERM) during {phase}, before training the population from step "
            f"{step}: nothing new to save; rerun the same command to "
            + ("resume" if step else "start"),
            flush=True,
        )
    return _preempted_results(members, step)


def _preempted(members: list[Member], engine, step: int) -> list:
    for m in members:
        if m.active:
            m.writer.close()
    if not engine.lone:
        print(
            f"preempted (SIGTERM) at step {step}: checkpoints of the population's unfinished "
            "members saved in their workdirs; rerun the same command to resume",
            flush=True,
        )
    elif step in members[0].ckpt.committed_steps():
        print(
            f"preempted (SIGTERM) at step {step}: checkpoint saved in "
            f"{members[0].ckpt.directory}/{step}; rerun the same command to resume",
            flush=True,
        )
    else:  # pragma: no cover - the save raised, or another process owns the directory
        print(
            f"preempted (SIGTERM) at step {step}: the checkpoint of step {step} is NOT on disk; "
            f"a rerun resumes from the newest one in {members[0].ckpt.directory}",
            flush=True,
        )
    return _preempted_results(members, step)


def _preempted_results(members: list[Member], step: int) -> list[dict]:
    return [m.result if not m.active else {"status": "preempted", "step": step} for m in members]
