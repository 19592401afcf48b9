"""Train and evaluate one SqueezeNet design point: `train_and_evaluate(config, workdir)`.

Every sweep trial, paper ablation and compression retraining runs through this function.

- One jitted, AOT-compiled train step (step.py) over a ('data',) mesh of all devices (batch
  sharded, state replicated), its state buffers donated.
- Small datasets live on the devices and batches are drawn and augmented inside the step, so the
  host only dispatches; the host syncs only at log / eval / checkpoint points.
- A non-finite loss or gradient is never applied: the run stops at the next log point with an
  error naming the first bad step; the last good checkpoint stays.
- Checkpoints (checkpoint.py) hold the whole state; rerunning the same command resumes, and the
  result equals an uninterrupted run's. SIGTERM saves and exits (preemption).
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

from sqzexplore import optim, rundir, sharding
from sqzexplore.checkpoint import Best, Checkpointer
from sqzexplore.config import validate_config
from sqzexplore.durations import Durations
from sqzexplore.progress import Progress
from sqzexplore.runlog import MetricsWriter
from sqzexplore.train import preflight
from sqzexplore.train.evaluate import EvalRunner
from sqzexplore.train.preempt import PreemptionFlag
from sqzexplore.train.state import init_state, model_graphdef
from sqzexplore.train.step import make_train_step


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
    result = rundir.read_result(workdir)
    if result is not None:
        rundir.check_config(workdir, config_dict)
        return result

    sharding.maybe_initialize_distributed(config.distributed)
    _setup_compilation_cache(config.compilation_cache_dir)
    mesh = sharding.make_mesh()
    preflight.check(config, spec, mesh, workdir)  # devices, platform, batch split, memory, workdir
    sharding.check_divisible(config.batch_size, "config.batch_size", mesh)
    sharding.check_divisible(config.eval_batch_size, "config.eval_batch_size", mesh)
    is_main = jax.process_index() == 0

    from sqzexplore.data import load_dataset  # the data layer imports TF lazily itself
    from sqzexplore.models.complexity import complexity as analytic_complexity

    ds = load_dataset(
        config.data, spec, process_index=jax.process_index(), process_count=jax.process_count()
    )
    cplx = analytic_complexity(spec).to_dict()
    complexity_summary = {
        k: cplx[k] for k in ("params", "macs", "fp32_bytes", "fp32_mib", "activations")
    }
    steps = Durations.from_config(config, ds.train_size)

    os.makedirs(workdir, exist_ok=True)
    rundir.check_config(workdir, config_dict)
    if is_main:
        rundir.write_json(os.path.join(workdir, rundir.CONFIG_FILE), config_dict)
        rundir.write_json(os.path.join(workdir, rundir.SPEC_FILE), spec.to_dict())
        rundir.write_json(os.path.join(workdir, rundir.COMPLEXITY_FILE), cplx)

    # ---- state: restore the newest good checkpoint, or initialise and replicate.
    tx, schedule = optim.make_optimizer(config.optim, steps.total_steps, steps.warmup_steps)
    graphdef = model_graphdef(spec)
    replicated = sharding.replicated(mesh)
    new_state = lambda: init_state(spec, tx, config.seed, init_params=init_params, reparam=reparam)
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints, sharding=replicated)
    restored = ckpt.restore_latest(jax.eval_shape(new_state))
    if restored is None:
        # Initialise on one local device and replicate: compiling the initialisers' RNG for a
        # multi-device SPMD program is several times slower, and each process computes the same
        # values from the same seed anyway.
        with jax.default_device(jax.local_devices()[0]):
            local = jax.device_get(jax.jit(new_state)())
        state = jax.tree.map(lambda a: sharding.put_replicated(a, mesh), local)
        start_step, best = 0, Best()
    else:
        start_step, state, best = restored
        print(f"resuming {workdir} from step {start_step}", flush=True)

    # ---- data on the devices, once (or the stream from the restored step).
    batch_size = int(config.batch_size)
    if ds.on_device:
        train_x, train_y = (sharding.put_replicated(a, mesh) for a in ds.train_arrays())
        batch_fn = lambda images, labels, step, key: ds.device_train_batch(
            images, labels, step, key, batch_size
        )
        next_batch = None
    else:
        train_iter = ds.train_iter(start_step, batch_size // jax.process_count(), config.seed)

        def next_batch():
            batch = next(train_iter)
            return tuple(sharding.put_batch(batch[k], mesh) for k in ("image", "label"))

        train_x, train_y = next_batch()
        batch_fn = None
    eval_runner = EvalRunner(
        ds, config.eval_batch_size, graphdef, spec.num_classes, mesh, reparam=reparam
    )

    # ---- compile ahead of time (timed); the compiled step can never retrace.
    step_fn = make_train_step(
        graphdef,
        tx,
        schedule,
        num_classes=spec.num_classes,
        label_smoothing=config.optim.label_smoothing,
        reparam=reparam,
        batch_fn=batch_fn,
        batch_sharding=sharding.batch_sharded(mesh),
    )
    if is_main:
        print("compiling the train step ...", flush=True)
    t0 = time.perf_counter()
    compiled_step = (
        jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated))
        .lower(state, train_x, train_y)
        .compile()
    )
    compile_time = time.perf_counter() - t0
    if is_main:
        print(f"compiled in {compile_time:.1f} s", flush=True)
    sharding.barrier("compiled")

    writer = MetricsWriter(
        workdir,
        is_main=is_main,
        resume_step=start_step,
        wandb_config=config.wandb,
        run_config=config_dict,
        summary={"design": spec.to_dict(), "complexity": complexity_summary},
    )
    progress = Progress(config.progress, steps.total_steps, start_step, is_main)
    stop = PreemptionFlag()
    status, step = "complete", start_step
    train_time, interval_t0, pending = 0.0, time.perf_counter(), []
    last_eval: dict = {}
    images_per_s = 0.0
    log_every = int(config.log_every_steps)
    total = steps.total_steps
    try:
        while step < total:
            if next_batch is not None and step > start_step:
                train_x, train_y = next_batch()
            state, m = compiled_step(state, train_x, train_y)
            pending.append(m)
            step += 1
            is_eval = step % steps.eval_every == 0 or step == total
            is_ckpt = step % steps.checkpoint_every == 0 or step == total or stop.requested
            if step % log_every == 0 or is_eval or is_ckpt:
                host = jax.device_get(pending)
                bad = int(jax.device_get(state.nonfinite_step))
                now = time.perf_counter()
                interval = now - interval_t0
                train_time += interval
                images_per_s = len(pending) * batch_size / max(interval, 1e-9)
                if bad >= 0:
                    raise NonFiniteError(
                        f"non-finite loss or gradient at step {bad} (counting from 0); the update "
                        f"was not applied and the run stopped. The last good checkpoint in "
                        f"{ckpt.directory} is kept. Lower config.optim.lr or set "
                        f"config.optim.grad_clip_norm."
                    )
                record = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
                record.update(step=step, split="train", images_per_s=images_per_s)
                writer.write(record)
                progress.update(step, loss=record["loss"], img_s=round(images_per_s))
                pending = []
            if is_eval:
                last_eval = eval_runner(state)
                best = best.update(step, last_eval)
                progress.update(step, top1=last_eval["top1"])
                writer.write(dict(step=step, split="eval", **last_eval))
                if on_eval is not None and on_eval(step, dict(last_eval)) and step < total:
                    status = "pruned"
            if is_ckpt or status == "pruned":
                ckpt.save(step, state, best)
            if stop.requested and step < total:
                status = "preempted"
            if status != "complete":
                break
            interval_t0 = time.perf_counter()
    finally:
        stop.restore()
        progress.close()
        ckpt.close()

    if status == "preempted":
        writer.close()
        print(
            f"preempted at step {step}: checkpoint saved; rerun the same command to resume",
            flush=True,
        )
        return {"status": "preempted", "step": step}

    devices = jax.devices()
    result = {
        "status": status,
        "final": last_eval,
        "best": {"top1": best.top1, "step": best.step},
        "complexity": complexity_summary,
        "steps": step,
        "epochs": step * batch_size / ds.train_size,
        "wall_time_s": time.perf_counter() - t_start,
        "compile_time_s": compile_time + eval_runner.compile_time,
        "train_time_s": train_time,
        "images_per_s": images_per_s,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }
    writer.summary({"final": last_eval, "best": result["best"], "complexity": complexity_summary})
    writer.close()
    if is_main:
        rundir.write_json(os.path.join(workdir, rundir.RESULT_FILE), result)
    return result


def _setup_compilation_cache(path: str | None) -> None:
    """Persistent XLA cache: a sweep's repeated shapes (and reruns) compile once."""
    if not path:
        return
    path = os.path.expanduser(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
