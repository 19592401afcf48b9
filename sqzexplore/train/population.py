"""Train several trials of one program as ONE program: `train_population(configs, workdirs)`.

A population is a list of configs that are identical up to `seed` (the seeds of a design point):
their programs have the same shapes, so their train states are stacked on a leading member axis
and trained by one program over it (programs.py `population_step`): one compile and one dispatch
per step for all members. How the program runs the members (`config.population_lowering`): the
train step vmapped over them on a GPU/TPU, where a small trial leaves the device mostly idle, so
N members cost little more than one (see `auto_population_size`); each member's own step
unrolled one after another on a CPU, where vmapped (grouped) convolutions run 2.5x slower.

Each member is the trial it would be alone:
- the same init bit for bit (each member is initialised from its own seed by the point's compiled
  initialiser, then the members are stacked), the same batches, augmentation and dropout keys at
  every step (the step draws them from the member's own `rng` and `step`);
- its own workdir with the files `train_and_evaluate` writes (config.json, spec.json,
  complexity.json, metrics.jsonl with the same records, checkpoints/, result.json last);
- vmapped, its numbers are not bit-identical to the lone trial's: vmap changes how XLA orders
  floating point sums (tests/test_population.py measures the drift); unrolled, each member runs
  the lone trial's step.

A member that goes non-finite is frozen (its state no longer changes: the step keeps the old
state where the member's `active` flag is False) and reported as the lone trial would be (a
`NonFiniteError` message, status "failed" in its entry of the returned list; the marker file
`nonfinite.json` in its workdir keeps it frozen when the population is resumed). A member that
`on_eval` stops is checkpointed, gets its result.json with status "pruned" and is frozen; the
others go on.

Resume: every member's checkpoints live in its own workdir (checkpoint.py). A rerun resumes the
unfinished members together from the newest step that all of them have committed (newer ones
that only some have, left by a kill between two members' saves, are deleted: they are recomputed
identically), so a SIGKILL or SIGTERM at any phase (events.py) ends in the uninterrupted result.
The program always has one slot per config, finished members included (their slots are frozen),
so a resumed population runs exactly the program of the first attempt.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from sqzexplore import rundir, sharding
from sqzexplore.checkpoint import MANIFEST_FILE, Best, Checkpointer
from sqzexplore.config import ConfigError, flat_defaults, validate_config
from sqzexplore.models.complexity import complexity as analytic_complexity
from sqzexplore.progress import Progress
from sqzexplore.runlog import MetricsWriter
from sqzexplore.train import events, loop, padding, preflight, programs, xla_options
from sqzexplore.train.preempt import PreemptionFlag

NONFINITE_FILE = "nonfinite.json"  # a member frozen for a NaN/Inf loss: its error, kept
# Largest population that still gains over training the members one after another, per
# platform. CPU: 1 (off): nothing to gain: vmapped members measured 0.50x the img/s of one
# member, unrolled members 1.20x but 1.00x the trials/h of one after another once the larger
# compile is paid (`sqz bench population --members 1,3 --lowering unroll,vmap --steps 20`, digits,
# 1 device, 2-core EPYC VM). GPU: 8: one H200, digits step vmapped over 8 seeds ran 51.2k img/s
# against 22.3k img/s for one member (2.3x), compiled in 17.4 s against 14.3 s (issue 16's
# measurement, jax 0.11.2, CUDA 13); `sqz bench population` re-measures it.
AUTO_POPULATION = {"cpu": 1, "gpu": 8, "cuda": 8, "rocm": 8, "tpu": 8}

OnEval = Callable[[int, int, dict], bool]  # (member index, step, eval metrics) -> stop it


class PopulationError(ConfigError):
    """Configs that cannot train as one population (they differ other than in the seed)."""


def auto_population_size(platform: str | None = None) -> tuple[int, str]:
    """(members, why) for `--population auto` on `platform` (default: JAX's backend)."""
    platform = platform or jax.default_backend()
    n = AUTO_POPULATION.get(platform, 1)
    if n <= 1:
        why = (
            f"off on {platform}: populations measured no faster there than training the "
            "members one after another (unrolled 1.00x the trials/h, vmapped 0.5x)"
        )
    else:
        why = (
            f"{n} on {platform}: the measured largest population that still gains (digits on "
            "one H200: 8 members 2.3x the img/s of one)"
        )
    return n, why


def check_population(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]):
    """Raise PopulationError unless `configs` are identical up to the seed and the channel widths
    (padding.WIDTH_FIELDS: such members are padded to one network), with one distinct workdir
    each."""
    if not configs:
        raise PopulationError("a population needs at least one config")
    if len(configs) != len(workdirs):
        raise PopulationError(
            f"a population needs one workdir per config: {len(configs)} configs, "
            f"{len(workdirs)} workdirs"
        )
    paths = [os.path.abspath(w) for w in workdirs]
    if len(set(paths)) != len(paths):
        raise PopulationError(f"the workdirs of a population must be distinct, got {paths}")

    def strip(config):
        return padding.width_free(rundir.semantic(json.loads(config.to_json_best_effort())))

    first = strip(configs[0])
    for i, config in enumerate(configs[1:], 1):
        diff = rundir.flat_diff(first, strip(config))
        if diff:
            raise PopulationError(
                "configs of a population must be identical up to the seed and the channel "
                f"widths; config {i} differs "
                f"from config 0 in {', '.join(diff[:3])}"
            )


class _Member:
    """One trial of the population: its workdir, checkpointer, metrics file and progress."""

    def __init__(self, index: int, config: ml_collections.ConfigDict, workdir: str):
        self.index, self.config, self.workdir = index, config, os.path.abspath(workdir)
        self.seed = int(config.seed)
        self.config_dict = json.loads(config.to_json_best_effort())
        self.result: dict | None = None  # set when the member is finished (or failed)
        self.ckpt: Checkpointer | None = None
        self.writer: MetricsWriter | None = None
        self.best = Best()
        self.host_metrics: list[dict] = []
        self.last_eval: dict = {}
        self.images_per_s = 0.0
        self.state: Any = None  # its restored state (host values) until the members are stacked
        self.spec: Any = None  # its own (narrow) network's spec and complexity, set by _run
        self.cplx: dict = {}
        self.cplx_summary: dict = {}

    @property
    def active(self) -> bool:
        return self.result is None


def train_population(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str],
    *,
    on_eval: OnEval | None = None,
) -> list[dict]:
    """Train `configs` (identical up to the seed) as one program, member i in `workdirs[i]`.

    Returns one result per member, in order: what `train_and_evaluate` would return for it
    alone (status complete or pruned), {"status": "failed", "error": ...} for a member stopped
    by a non-finite loss, or {"status": "preempted", "step": N} for every unfinished member when
    a SIGTERM stopped the population (rerun to resume). `on_eval(member, step, metrics) -> stop`
    is called for each active member after each evaluation; True stops that member ('pruned').
    """
    t_start = time.perf_counter()
    check_population(configs, workdirs)
    for c in configs:
        validate_config(c)
    members = [_Member(i, c, w) for i, (c, w) in enumerate(zip(configs, workdirs, strict=True))]
    for m in members:
        stored = rundir.read_result(m.workdir)
        if stored is not None:
            rundir.check_config(m.workdir, m.config_dict, flat_defaults())
            m.result = stored
        else:
            marker = rundir.read_json(os.path.join(m.workdir, NONFINITE_FILE))
            if isinstance(marker, dict) and "error" in marker:
                m.result = {"status": "failed", "error": marker["error"]}
    if all(not m.active for m in members):
        return [m.result for m in members]
    stop = PreemptionFlag()
    try:
        events.reached("startup", 0)
        return _run(members, on_eval, stop, t_start)
    finally:
        stop.restore()


def initial_states(progs: programs.Programs, seeds: Sequence[int]) -> Any:
    """Fresh states of `seeds`, stacked on a leading member axis (host values): each member
    initialised alone from its seed by the point's compiled initialiser, bit for bit the init of
    its lone trial."""
    if not seeds:
        return None
    states = [progs.init(s) for s in seeds]
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)


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


def _run(members: list[_Member], on_eval, stop: PreemptionFlag, t_start: float) -> list:
    config = members[0].config
    sharding.maybe_initialize_distributed(config.distributed)
    mesh = sharding.make_mesh()
    xla_options.configure(config)  # persistent cache, GPU compile options; before any compile
    is_main = jax.process_index() == 0
    n = len(members)
    compile_start = programs.compile_seconds()
    # The members' shapes in the program: as they are, or padded to common widths.
    try:
        layout = padding.layout([m.config for m in members], mesh)
    except padding.PaddingError as e:  # a sweep worker then trains them one by one
        raise PopulationError(str(e)) from None
    for m in members:
        if m.active:  # devices, platform, batch split, memory (all n padded members), workdir
            preflight.check(layout.config, layout.spec, mesh, m.workdir, members=n)
    if is_main and layout.describe():
        print(f"population of {n}: {layout.describe()}", flush=True)
    progs = layout.programs
    if not progs.ds.on_device:
        raise PopulationError(
            "populations need a device-resident dataset (config.data.on_device true, or auto "
            f"within the memory budget); {progs.ds.name} is streamed: train its seeds one by one"
        )
    steps = progs.steps
    total, batch_size = steps.total_steps, int(config.batch_size)
    active = [m for m in members if m.active]
    for m in members:  # each member's own (narrow) network
        m.spec = layout.specs[m.index]
        m.cplx = analytic_complexity(m.spec).to_dict()
        m.cplx_summary = {
            k: m.cplx[k] for k in ("params", "macs", "fp32_bytes", "fp32_mib", "activations")
        }
    for m in active:
        os.makedirs(m.workdir, exist_ok=True)
        rundir.check_config(m.workdir, m.config_dict, flat_defaults())
        if is_main:
            rundir.write_json(os.path.join(m.workdir, rundir.CONFIG_FILE), m.config_dict)
            rundir.write_json(os.path.join(m.workdir, rundir.SPEC_FILE), m.spec.to_dict())
            rundir.write_json(os.path.join(m.workdir, rundir.COMPLEXITY_FILE), m.cplx)

    replicated = sharding.replicated(mesh)
    try:
        start_step = _restore(active, layout, config, replicated)
        if stop.requested:
            return _preempted_before_training(members, start_step, "start-up")
        # Every slot holds a state: restored or fresh for the unfinished members, a fresh init
        # for the finished ones (frozen: their values never matter).
        host_states = []
        for m in members:
            host_states.append(layout.init(m.index, m.seed) if m.state is None else m.state)
            m.state = None
        stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *host_states)
        state = jax.tree.map(lambda a: sharding.put_replicated(a, mesh), stacked)
        del host_states, stacked
        if start_step:
            print(f"resuming population of {n} from step {start_step}", flush=True)

        train_x, train_y = progs.train_arrays()
        compile_time = 0.0
        k, why = programs.steps_per_dispatch(config, steps, on_device=True)
        lowering = programs.population_lowering(config)
        block = lambda length: progs.population_step(n, length, lowering)
        if start_step < total:
            events.reached("compile", start_step)
            if is_main:
                how = "vmapped" if lowering == "vmap" else "members unrolled in turn"
                print(f"compiling the train step of a population of {n} ({how}) ...", flush=True)
                if k > 1:
                    print(f"{k} steps per dispatch ({why})", flush=True)
            t0 = time.perf_counter()
            log_every = config.log_every_steps
            block(min(k, programs.next_boundary(start_step, steps, log_every) - start_step))
            compile_time = time.perf_counter() - t0
            if is_main:
                print(f"compiled in {compile_time:.1f} s", flush=True)
            if stop.requested:
                return _preempted_before_training(members, start_step, "compilation")
        evaluate = progs.population_eval(n, lowering)

        for m in active:
            m.writer = MetricsWriter(
                m.workdir,
                is_main=is_main,
                resume_step=start_step,
                wandb_config=m.config.wandb,
                run_config=m.config_dict,
                summary={"design": m.spec.to_dict(), "complexity": m.cplx_summary},
            )
        progress = Progress(config.progress, total, start_step, is_main)
        mask = lambda: sharding.put_replicated(np.array([m.active for m in members]), mesh)
        active_dev = mask()
        step, preempted = start_step, False

        def finish(m: _Member, status: str) -> None:  # this attempt's step, state and timings
            _finish(m, status, step, progs, state, mesh, t_start, compile_start, train_time,
                    m.cplx_summary, is_main)  # fmt: skip

        train_time, interval_t0, pending = 0.0, time.perf_counter(), []
        try:
            while step < total and any(m.active for m in members):
                length = min(k, programs.next_boundary(step, steps, config.log_every_steps) - step)
                state, metrics = block(length)(state, active_dev, train_x, train_y)
                pending.append(metrics)
                for s in range(step + 1, step + length + 1):
                    events.reached("step", s)
                step += length
                preempt = stop.requested and step < total
                is_eval, is_ckpt, is_log = programs.cadence(step, steps, config.log_every_steps)
                changed = False
                if is_log or preempt:
                    synced = loop.per_step(jax.device_get(pending), step_ndim=1)
                    pending = []
                    bad = np.asarray(jax.device_get(state.nonfinite_step))
                    interval = time.perf_counter() - interval_t0
                    train_time += interval
                    for m in members:
                        if not m.active:
                            continue
                        m.host_metrics += [
                            {k: np.float32(v[m.index]) for k, v in s.items()} for s in synced
                        ]
                        if bad[m.index] >= 0:
                            _freeze_nonfinite(m, int(bad[m.index]), is_main)
                            changed = True
                if is_log:
                    for m in members:
                        if not m.active:
                            continue
                        m.images_per_s = len(m.host_metrics) * batch_size / max(interval, 1e-9)
                        record = {
                            k: float(np.mean([h[k] for h in m.host_metrics]))
                            for k in m.host_metrics[0]
                        }
                        record.update(step=step, split="train", images_per_s=m.images_per_s)
                        m.writer.write(record)
                        m.host_metrics = []
                    progress.update(step, img_s=round(sum(x.images_per_s for x in members)))
                pruned: list[_Member] = []
                if is_eval and any(m.active for m in members):
                    events.reached("eval", step)
                    evals = evaluate(state)
                    evaluated = [m for m in members if m.active]
                    for m in evaluated:
                        m.last_eval = evals[m.index]
                        m.best = m.best.update(step, m.last_eval)
                        m.writer.write(dict(step=step, split="eval", **m.last_eval))
                        if (
                            on_eval is not None
                            and on_eval(m.index, step, dict(m.last_eval))
                            and step < total
                        ):
                            pruned.append(m)
                    progress.update(step, top1=max(evals[m.index]["top1"] for m in evaluated))
                to_save = [m for m in members if m.active] if (is_ckpt or preempt) else pruned
                if to_save:
                    for m in to_save:
                        narrow = _member(state, m.index, mesh, layout)
                        m.ckpt.save(step, narrow, m.best, host=_json(m))
                    events.reached("checkpoint_save", step)
                for m in pruned:
                    finish(m, "pruned")
                    changed = True
                if preempt:
                    preempted = True
                    break
                if changed:
                    active_dev = mask()
                if is_log or preempt:
                    interval_t0 = time.perf_counter()
        except BaseException:
            for m in members:
                if m.writer is not None:
                    m.writer.close()
            raise
        finally:
            progress.close()
    finally:
        for m in members:
            if m.ckpt is not None:
                m.ckpt.close()

    if preempted:
        for m in members:
            if m.active:
                m.writer.close()
        print(
            f"preempted (SIGTERM) at step {step}: checkpoints of the population's unfinished "
            "members saved in their workdirs; rerun the same command to resume",
            flush=True,
        )
        return _preempted_results(members, step)
    unevaluated = [m for m in members if m.active and not m.last_eval]
    if unevaluated:
        # Resumed at the last step (killed between the checkpoints and result.json): evaluate
        # the restored final states, exactly what the first attempt evaluated.
        evals = evaluate(state)
        for m in unevaluated:
            m.last_eval = evals[m.index]
    for m in members:
        if m.active:
            finish(m, "complete")
    return [m.result for m in members]


def _restore(active: list[_Member], layout, config, replicated) -> int:
    """Open every unfinished member's checkpointer and restore them all at one step (the newest
    that all have committed); that step (0: fresh start, `m.state` None)."""
    common = None
    for m in active:
        sealed = set(_sealed_steps(m.workdir))
        common = sealed if common is None else common & sealed
    target = max(common) if common else 0
    while True:
        for m in active:
            _drop_newer(m.workdir, target)
            if m.ckpt is None:
                m.ckpt = Checkpointer(
                    m.workdir,
                    keep=config.keep_checkpoints,
                    sharding=replicated,
                    on_commit=lambda s: events.reached("checkpoint_committed", s),
                )
            else:  # a retry after a checkpoint that did not restore: see the newer-steps drop
                m.ckpt.close()
                m.ckpt = Checkpointer(
                    m.workdir,
                    keep=config.keep_checkpoints,
                    sharding=replicated,
                    on_commit=lambda s: events.reached("checkpoint_committed", s),
                )
        if target == 0:
            for m in active:
                m.state, m.best, m.host_metrics = None, Best(), []
            return 0
        restored = [m.ckpt.restore_latest(layout.abstract(m.index)) for m in active]
        steps = [r[0] if r is not None else 0 for r in restored]
        if min(steps) == target:
            for m, (_, state, best, carried) in zip(active, restored, strict=True):
                m.state = layout.embed(m.index, jax.device_get(state))
                m.best = best
                m.host_metrics = [{k: np.float32(v) for k, v in h.items()} for h in carried]
            return target
        # A member's checkpoint at `target` was unreadable (moved aside): go back further.
        target = min(steps)


def _member(state, index: int, mesh, layout) -> Any:
    """Member `index`'s state, replicated (what its lone trial would checkpoint: its narrow
    state where the population is padded)."""
    host = layout.extract(index, jax.device_get(jax.tree.map(lambda a: a[index], state)))
    return jax.tree.map(lambda a: sharding.put_replicated(np.asarray(a), mesh), host)


def _json(m: _Member) -> list[dict]:
    return [{k: float(v) for k, v in h.items()} for h in m.host_metrics]


def _freeze_nonfinite(m: _Member, bad: int, is_main: bool) -> None:
    error = loop.NonFiniteError(
        f"non-finite loss or gradient at step {bad} (counting from 0); the update was not "
        f"applied and the run stopped. The last good checkpoint in {m.ckpt.directory} is kept. "
        "Lower config.optim.lr or set config.optim.grad_clip_norm."
    )
    message = f"{type(error).__name__}: {error}"
    print(f"population member {m.index} (seed {m.seed}) frozen: {message}", flush=True)
    if is_main:
        rundir.write_json(os.path.join(m.workdir, NONFINITE_FILE), {"error": message, "step": bad})
    m.writer.close()
    m.result = {"status": "failed", "error": message, "nonfinite_step": bad}


def _finish(
    m, status, step, progs, state, mesh, t_start, compile_start, train_time, cplx, is_main
) -> None:
    """Write member `m`'s result.json (after its last checkpoint is on disk) and freeze it."""
    m.ckpt.close()
    m.ckpt = None
    devices = jax.devices()
    wall = time.perf_counter() - t_start
    compile_time = programs.compile_seconds() - compile_start
    result = {
        "status": status,
        "final": m.last_eval,
        "best": {"top1": m.best.top1, "step": m.best.step},
        "complexity": cplx,
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
    }
    m.writer.summary({"final": m.last_eval, "best": result["best"], "complexity": cplx})
    m.writer.close()
    events.reached("before_result", step)
    if is_main:
        rundir.write_json(os.path.join(m.workdir, rundir.RESULT_FILE), result)
    m.result = result


def _preempted_before_training(members: list[_Member], step: int, phase: str) -> list[dict]:
    print(
        f"preempted (SIGTERM) during {phase}, before training the population from step {step}: "
        "nothing new to save; rerun the same command to " + ("resume" if step else "start"),
        flush=True,
    )
    return _preempted_results(members, step)


def _preempted_results(members: list[_Member], step: int) -> list[dict]:
    return [m.result if not m.active else {"status": "preempted", "step": step} for m in members]
