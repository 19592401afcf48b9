"""Train and evaluate one SqueezeNet design point: `train_and_evaluate(config, workdir)`.

Every sweep trial, paper ablation and compression retraining runs through this function.

- One jitted, AOT-compiled train step (step.py) over a ('data',) mesh of all devices (batch
  sharded, state replicated), its state buffers donated.
- Small datasets live on the devices and batches are drawn and augmented inside the step, so the
  host only dispatches; the host syncs only at log / eval / checkpoint points.
- A non-finite loss or gradient is never applied: the run stops at the next log point with an
  error naming the first bad step; the last good checkpoint stays.
- Checkpoints (checkpoint.py) hold the whole state; rerunning the same command resumes from the
  newest intact one, and the result (result.json and metrics.jsonl) equals an uninterrupted
  run's, whatever point the previous attempt was killed at (events.py names the points the tests
  kill it at). A run resumed at its last step evaluates that step if it has no result yet.
- SIGTERM (preemption): during training, evaluation or a save, the run checkpoints its current
  step, waits until the checkpoint is on disk and says so; during start-up or compilation, it
  exits at once (nothing trained since the last checkpoint). Either way it returns
  {"status": "preempted", "step": N} and a rerun resumes.
- Outputs (rundir.py): config.json, spec.json, complexity.json, metrics.jsonl, and result.json,
  written last: its presence means the run is finished.

Resume order: a checkpoint in the workdir, else `init_params` (fine-tuning), else from scratch.

`reparam` (used by compression) changes what is trained: an object with
`init(params) -> (trainable, aux)` and a pure `apply(trainable, aux) -> params`; the optimiser
updates `trainable`, the model sees `apply(...)` (e.g. masked kernels, or kernels rebuilt from
shared-weight codebooks so their gradient is summed per centroid).
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
from sqzexplore.config import flat_defaults, validate_config
from sqzexplore.progress import Progress
from sqzexplore.runlog import MetricsWriter
from sqzexplore.train import events, preflight, programs, xla_options
from sqzexplore.train.preempt import PreemptionFlag


class NonFiniteError(FloatingPointError):
    """The loss or gradient became NaN/Inf; names the first bad step."""


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    reparam: Any = None,
    init_params: dict | None = None,
    on_eval: Callable[[int, dict], bool] | None = None,
) -> dict:
    """Train `config` in `workdir` (resuming if it holds a checkpoint) and return the result dict.

    `on_eval(step, metrics) -> stop` is called after each evaluation (sweeps use it to prune
    hopeless trials); returning True ends the run early with status 'pruned'.
    """
    t_start = time.perf_counter()
    spec = validate_config(config)
    workdir = os.path.abspath(workdir)
    config_dict = json.loads(config.to_json_best_effort())
    result = rundir.read_result(workdir)  # None unless finished (a result with a final eval)
    if result is not None:
        rundir.check_config(workdir, config_dict, flat_defaults())
        return result
    stop = PreemptionFlag()
    try:
        events.reached("startup", 0)
        return _run(
            config, spec, workdir, config_dict, reparam, init_params, on_eval, stop, t_start
        )
    finally:
        stop.restore()


def _run(config, spec, workdir, config_dict, reparam, init_params, on_eval, stop, t_start) -> dict:
    sharding.maybe_initialize_distributed(config.distributed)
    mesh = sharding.make_mesh()
    preflight.check(config, spec, mesh, workdir)  # devices, platform, batch split, memory, workdir
    xla_options.configure(config)  # persistent cache, GPU compile options; before any compile
    sharding.check_divisible(config.batch_size, "config.batch_size", mesh)
    sharding.check_divisible(config.eval_batch_size, "config.eval_batch_size", mesh)
    is_main = jax.process_index() == 0

    from sqzexplore.models.complexity import complexity as analytic_complexity

    # The dataset and compiled programs: reused from an earlier run of this point in this
    # process (another seed), else made here (programs.py). compile_time_s counts all building.
    compile_start = programs.compile_seconds()
    progs = programs.for_run(config, spec, mesh, reparam=reparam, init_params=init_params)
    ds = progs.ds
    cplx = analytic_complexity(spec).to_dict()
    complexity_summary = {
        k: cplx[k] for k in ("params", "macs", "fp32_bytes", "fp32_mib", "activations")
    }
    steps = progs.steps
    total, batch_size = steps.total_steps, int(config.batch_size)

    os.makedirs(workdir, exist_ok=True)
    rundir.check_config(workdir, config_dict, flat_defaults())
    if is_main:
        rundir.write_json(os.path.join(workdir, rundir.CONFIG_FILE), config_dict)
        rundir.write_json(os.path.join(workdir, rundir.SPEC_FILE), spec.to_dict())
        rundir.write_json(os.path.join(workdir, rundir.COMPLEXITY_FILE), cplx)

    # ---- state: restore the newest intact checkpoint, or initialise and replicate.
    replicated = sharding.replicated(mesh)
    ckpt = Checkpointer(
        workdir,
        keep=config.keep_checkpoints,
        sharding=replicated,
        on_commit=lambda s: events.reached("checkpoint_committed", s),
    )
    eval_compile = None  # a thread compiling the evaluation while training starts
    try:
        restored = ckpt.restore_latest(progs.abstract_state())
        if restored is None:
            if stop.requested:
                return _preempted_before_training(ckpt, 0, "start-up")
            local = progs.init(config.seed)  # on one local device (see programs.py)
            state = jax.tree.map(lambda a: sharding.put_replicated(a, mesh), local)
            start_step, best, carried = 0, Best(), []
        else:
            start_step, state, best, carried = restored
            print(f"resuming {workdir} from step {start_step}", flush=True)
        if stop.requested:
            return _preempted_before_training(ckpt, start_step, "start-up")

        # ---- data on the devices, once (or the stream from the restored step); compile AOT.
        compile_time = 0.0
        if start_step < total:
            if ds.on_device:
                train_x, train_y = progs.train_arrays()
                next_batch = None
            else:
                batches = ds.train_iter(start_step, batch_size // jax.process_count(), config.seed)
                next_batch = lambda: tuple(
                    sharding.put_batch(b, mesh) for b in _image_label(next(batches))
                )
                train_x, train_y = next_batch()
            events.reached("compile", start_step)
            k, why = programs.steps_per_dispatch(config, steps, ds.on_device)
            if is_main and k > 1:
                print(f"{k} steps per dispatch ({why})", flush=True)
            block = lambda length: progs.train_block(length)
            log_every = config.log_every_steps
            first = min(k, programs.next_boundary(start_step, steps, log_every) - start_step)
            name = "train_step" if first == 1 else f"train_block/{first}"
            reused = progs.built(name)  # by an earlier seed of this point, in memory
            if is_main and not reused:
                print("compiling the train step ...", flush=True)
            t0 = time.perf_counter()
            block(first)  # compiled now (a later block length, e.g. the tail, when first used)
            compile_time = time.perf_counter() - t0
            if is_main:
                if not reused:
                    print(f"compiled in {compile_time:.1f} s", flush=True)
                elif progs.runs:
                    print("train step reused from an earlier run of this point", flush=True)
                else:
                    print("train step compiled ahead while the previous run trained", flush=True)
            progs.runs += 1
            sharding.barrier("compiled")
            if stop.requested:
                return _preempted_before_training(ckpt, start_step, "compilation")
            eval_compile = progs.compile_eval_in_background()

        writer = MetricsWriter(
            workdir,
            is_main=is_main,
            resume_step=start_step,
            wandb_config=config.wandb,
            run_config=config_dict,
            summary={"design": spec.to_dict(), "complexity": complexity_summary},
        )
        progress = Progress(config.progress, total, start_step, is_main)
        status, step = "complete", start_step
        # Train metrics of the steps since the last log point, synced to the host: carried in
        # a checkpoint taken between two log points, so the next record averages the same steps.
        host_metrics = [{k: np.float32(v) for k, v in m.items()} for m in carried]
        train_time, interval_t0, pending = 0.0, time.perf_counter(), []
        last_eval: dict = {}
        images_per_s = 0.0
        try:
            while step < total:
                if next_batch is not None and step > start_step:
                    train_x, train_y = next_batch()
                # A block of steps per host call, ending exactly at the next log, eval or
                # checkpoint step (k is 1 with streamed data or where blocks do not pay).
                length = min(k, programs.next_boundary(step, steps, log_every) - step)
                state, m = block(length)(state, train_x, train_y)
                pending.append(m)
                for s in range(step + 1, step + length + 1):
                    events.reached("step", s)
                step += length
                # One reading of the flag per step, used for all of it: a SIGTERM handled during
                # this step's syncs (log, eval, save) is acted on at the next step.
                preempt = stop.requested and step < total
                is_eval, is_ckpt, is_log = programs.cadence(step, steps, config.log_every_steps)
                if is_log or preempt:
                    host_metrics += per_step(jax.device_get(pending))
                    pending = []
                    bad = int(jax.device_get(state.nonfinite_step))
                    interval = time.perf_counter() - interval_t0
                    train_time += interval
                    if bad >= 0:
                        raise NonFiniteError(
                            f"non-finite loss or gradient at step {bad} (counting from 0); the "
                            f"update was not applied and the run stopped. The last good "
                            f"checkpoint in {ckpt.directory} is kept. Lower config.optim.lr or "
                            f"set config.optim.grad_clip_norm."
                        )
                if is_log:
                    images_per_s = len(host_metrics) * batch_size / max(interval, 1e-9)
                    record = {
                        k: float(np.mean([h[k] for h in host_metrics])) for k in host_metrics[0]
                    }
                    record.update(step=step, split="train", images_per_s=images_per_s)
                    writer.write(record)
                    progress.update(step, loss=record["loss"], img_s=round(images_per_s))
                    host_metrics = []
                if is_eval:
                    events.reached("eval", step)
                    last_eval = progs.evaluate(state)
                    best = best.update(step, last_eval)
                    progress.update(step, top1=last_eval["top1"])
                    writer.write(dict(step=step, split="eval", **last_eval))
                    if on_eval is not None and on_eval(step, dict(last_eval)) and step < total:
                        status = "pruned"
                if is_ckpt or preempt or status == "pruned":
                    ckpt.save(step, state, best, host=_host_json(host_metrics))
                    events.reached("checkpoint_save", step)
                if preempt:
                    status = "preempted"
                if status != "complete":
                    break
                if is_log or preempt:
                    interval_t0 = time.perf_counter()
        except BaseException:
            writer.close()
            raise
        finally:
            progress.close()
    finally:
        if eval_compile is not None:
            eval_compile.join()  # never leave XLA compiling in a thread at exit
        ckpt.close()  # waits until the last save is on disk, with its checksums

    if status == "preempted":
        writer.close()
        return _preempted(ckpt, step)
    if not last_eval:
        # Resumed at the last step (killed between its checkpoint and result.json): evaluate
        # the restored final state, exactly what the first attempt evaluated.
        last_eval = progs.evaluate(state)
    devices = jax.devices()
    wall = time.perf_counter() - t_start
    compile_time = programs.compile_seconds() - compile_start
    result = {
        "status": status,
        "final": last_eval,
        "best": {"top1": best.top1, "step": best.step},
        "complexity": complexity_summary,
        "steps": step,
        "epochs": step * batch_size / ds.train_size,
        "wall_time_s": wall,
        "compile_time_s": compile_time,
        "train_time_s": train_time,
        "overhead_s": wall - train_time - compile_time,
        "images_per_s": images_per_s,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }
    writer.summary({"final": last_eval, "best": result["best"], "complexity": complexity_summary})
    writer.close()
    events.reached("before_result", step)
    if is_main:
        rundir.write_json(os.path.join(workdir, rundir.RESULT_FILE), result)
    return result


def per_step(synced: list[dict], step_ndim: int = 0) -> list[dict]:
    """Host metrics, one dict per step: a block's arrays (a leading step axis) split by step.
    `step_ndim`: the rank of one step's metric (0; 1 with a population's member axis)."""
    out = []
    for m in synced:
        if np.ndim(next(iter(m.values()))) == step_ndim:
            out.append(m)
        else:
            out += [{k: v[i] for k, v in m.items()} for i in range(len(next(iter(m.values()))))]
    return out


def _image_label(batch: dict) -> tuple:
    return batch["image"], batch["label"]


def _host_json(host_metrics: list[dict]) -> list[dict]:
    # float32 values as Python floats: exact, so a resumed run averages the very same numbers.
    return [{k: float(v) for k, v in m.items()} for m in host_metrics]


def _preempted_before_training(ckpt: Checkpointer, step: int, phase: str) -> dict:
    print(
        f"preempted (SIGTERM) during {phase}, before training from step {step}: nothing new to "
        "save; rerun the same command to "
        + ("resume" if step else "start")
        + (f" (checkpoints in {ckpt.directory})" if step else ""),
        flush=True,
    )
    return {"status": "preempted", "step": step}


def _preempted(ckpt: Checkpointer, step: int) -> dict:
    if step in ckpt.committed_steps():
        print(
            f"preempted (SIGTERM) at step {step}: checkpoint saved in {ckpt.directory}/{step}; "
            "rerun the same command to resume",
            flush=True,
        )
    else:  # pragma: no cover - the save raised, or another process owns the directory
        print(
            f"preempted (SIGTERM) at step {step}: the checkpoint of step {step} is NOT on disk; "
            f"a rerun resumes from the newest one in {ckpt.directory}",
            flush=True,
        )
    return {"status": "preempted", "step": step}
