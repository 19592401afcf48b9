"""Train and evaluate one SqueezeNet design point: `train_and_evaluate(config, workdir)`.

Every sweep trial, paper ablation and compression retraining runs through this function.

- One jitted, AOT-compiled train step `(state, images, labels) -> (state, metrics)` over a
  ('data',) mesh of all devices (batch sharded, state replicated), its state buffers donated.
- Small datasets live on the devices and batches are drawn and augmented inside the step, so the
  host only dispatches; the host syncs only at log / eval / checkpoint points.
- A non-finite loss or gradient is never applied: the step records where it first happened and
  the run stops at the next log point with an error naming that step; the last good checkpoint
  stays.
- Checkpoints (orbax, async, keep-N) hold the whole state; rerunning the same command resumes, and
  the result equals an uninterrupted run's. SIGTERM saves and exits (preemption).
- Outputs: config.json, spec.json, complexity.json, metrics.jsonl, result.json (atomic, last).

Resume order: a checkpoint in the workdir, else `init_params` (fine-tuning), else from scratch.

`reparam` (used by compression) changes what is trained: an object with
`init(params) -> (trainable, aux)` and a pure `apply(trainable, aux) -> params`; the optimiser
updates `trainable`, the model sees `apply(...)` (e.g. masked kernels, or kernels rebuilt from
shared-weight codebooks so their gradient is summed per centroid).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from sqzexplore import optim, sharding
from sqzexplore.checkpoint import Checkpointer, abstract_like
from sqzexplore.config import ConfigError, base_config, spec_from_config, steps_for
from sqzexplore.metrics import WANDB_MODES, MetricsWriter, Progress, write_json_atomic
from sqzexplore.models.spec import SpecError

# Keys whose change does not change what a run computes (safe to differ on resume).
_NON_SEMANTIC_KEYS = ("progress", "wandb", "compilation_cache_dir", "distributed")


class NonFiniteError(FloatingPointError):
    """The loss or gradient became NaN/Inf; names the first bad step."""


class WorkdirConflictError(RuntimeError):
    """The workdir holds a run with a different config."""


# ---------------------------------------------------------------------------------- validation
def validate_config(config: ml_collections.ConfigDict):
    """Check every field that can be checked before data loading or compilation; return the spec."""
    _check_known_keys(config.to_dict(), base_config().to_dict(), "config")
    spec = spec_from_config(config)
    for field in ("batch_size", "eval_batch_size", "log_every_steps", "keep_checkpoints"):
        value = config[field]
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.{field} must be an integer >= 1, got {value!r}")
    if config.num_steps < 0:
        raise ConfigError(f"config.num_steps must be >= 0, got {config.num_steps}")
    if config.num_steps == 0 and not config.num_epochs > 0:
        raise ConfigError(
            f"config.num_epochs must be > 0 when num_steps is 0, got {config.num_epochs}"
        )
    for field in ("eval_every_epochs", "checkpoint_every_epochs"):
        if not config[field] > 0:
            raise ConfigError(f"config.{field} must be > 0, got {config[field]}")
    try:
        optim.validate(config.optim)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.wandb.mode not in WANDB_MODES:
        raise ConfigError(
            f"config.wandb.mode must be one of {WANDB_MODES}, got {config.wandb.mode!r}"
        )
    if str(config.progress).lower() not in ("auto", "true", "false"):
        raise ConfigError(f"config.progress must be auto, true or false, got {config.progress!r}")
    return spec


def _check_known_keys(d: dict, ref: dict, prefix: str) -> None:
    for key, value in d.items():
        if key not in ref:
            raise ConfigError(
                f"unknown config key {prefix}.{key}; known keys here: {', '.join(sorted(ref))}"
            )
        if isinstance(value, dict) and isinstance(ref[key], dict) and key != "model":
            _check_known_keys(value, ref[key], f"{prefix}.{key}")


def _semantic(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in _NON_SEMANTIC_KEYS}


def _config_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def _check_workdir(workdir: str, config_dict: dict) -> None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    if _semantic(old) != _semantic(config_dict):
        diffs = sorted(_diff_keys(_semantic(old), _semantic(config_dict)))
        raise WorkdirConflictError(
            f"workdir {workdir} already holds a run with a different config (differs in: "
            f"{', '.join(diffs[:10])}); use a new --workdir, or delete it to start over"
        )


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(prefix + k)
    return out


# ---------------------------------------------------------------------------------- the step
def _cross_entropy(logits, labels, num_classes: int, smoothing: float):
    onehot = jax.nn.one_hot(labels, num_classes)
    if smoothing > 0:
        onehot = optax.smooth_labels(onehot, smoothing)
    return optax.softmax_cross_entropy(logits, onehot)


def _topk_correct(logits, labels, k: int):
    if k == 1:
        return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    topk = jax.lax.top_k(logits, k)[1]
    return jnp.any(topk == labels[:, None], axis=-1).astype(jnp.float32)


def _make_train_step(*, graphdef, ds, tx, schedule, spec, config, reparam, mesh, on_device):
    batch_sharding = sharding.batch_sharded(mesh)
    num_classes, smoothing = spec.num_classes, float(config.optim.label_smoothing)
    batch_size = int(config.batch_size)

    def loss_fn(trainable, aux, batch_stats, x, y, dropout_key):
        params = reparam.apply(trainable, aux) if reparam is not None else trainable
        model = nnx.merge(graphdef, params, batch_stats)
        logits = model(x, train=True, dropout_key=dropout_key)
        new_stats = nnx.state(model, nnx.BatchStat).to_pure_dict() if batch_stats else batch_stats
        loss = _cross_entropy(logits, y, num_classes, smoothing).mean()
        return loss, (logits, new_stats)

    def train_step(state, images, labels):
        step = state["step"]
        data_key = jax.random.fold_in(state["rng"], 1)
        dropout_key = jax.random.fold_in(jax.random.fold_in(state["rng"], 2), step)
        if on_device:
            x, y = ds.device_train_batch(images, labels, step, data_key, batch_size)
        else:
            x, y = images, labels
        x = jax.lax.with_sharding_constraint(x, batch_sharding)
        y = jax.lax.with_sharding_constraint(y, batch_sharding)
        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["aux"], state["batch_stats"], x, y, dropout_key
        )
        grad_norm = optax.global_norm(grads)
        updates, new_opt = tx.update(grads, state["opt_state"], state["params"])
        new_params = optax.apply_updates(state["params"], updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        first_bad = jnp.where(
            (state["nonfinite_step"] < 0) & ~finite, step, state["nonfinite_step"]
        )
        new_state = dict(
            state,
            step=step + 1,
            params=keep(new_params, state["params"]),
            opt_state=keep(new_opt, state["opt_state"]),
            batch_stats=keep(new_stats, state["batch_stats"]),
            nonfinite_step=first_bad,
        )
        metrics = dict(
            loss=loss,
            top1=_topk_correct(logits, y, 1).mean(),
            grad_norm=grad_norm,
            param_norm=optax.global_norm(state["params"]),
            lr=schedule(step),
        )
        return new_state, metrics

    return train_step


def _make_eval_fn(*, graphdef, spec, reparam, mesh):
    batch_sharding = sharding.batch_sharded(mesh)
    num_classes = spec.num_classes

    def batch_sums(state, x, y, mask):
        x = jax.lax.with_sharding_constraint(x, batch_sharding)
        params = state["params"]
        if reparam is not None:
            params = reparam.apply(params, state["aux"])
        model = nnx.merge(graphdef, params, state["batch_stats"])
        logits = model(x, train=False)
        mask = mask.astype(jnp.float32)
        sums = dict(
            loss=(_cross_entropy(logits, y, num_classes, 0.0) * mask).sum(),
            top1=(_topk_correct(logits, y, 1) * mask).sum(),
            count=mask.sum(),
        )
        if num_classes >= 5:
            sums["top5"] = (_topk_correct(logits, y, 5) * mask).sum()
        return sums

    return batch_sums


# ---------------------------------------------------------------------------------- main entry
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
    config_dict = _config_json(config)
    result_path = os.path.join(workdir, "result.json")
    if os.path.exists(result_path):
        _check_workdir(workdir, config_dict)
        with open(result_path) as f:
            return json.load(f)

    sharding.maybe_initialize_distributed(config.distributed)
    _setup_compilation_cache(config.compilation_cache_dir)
    mesh = sharding.make_mesh()
    sharding.check_divisible(config.batch_size, "config.batch_size", mesh)
    sharding.check_divisible(config.eval_batch_size, "config.eval_batch_size", mesh)
    is_main = jax.process_index() == 0

    from sqzexplore.data import load_dataset  # the data layer imports TF lazily itself
    from sqzexplore.models.complexity import complexity as analytic_complexity
    from sqzexplore.models.squeezenet import SqueezeNet

    ds = load_dataset(
        config.data, spec, process_index=jax.process_index(), process_count=jax.process_count()
    )
    cplx = analytic_complexity(spec).to_dict()
    complexity_summary = {
        k: cplx[k] for k in ("params", "macs", "fp32_bytes", "fp32_mib", "activations")
    }

    total_steps = steps_for(config, ds.train_size)
    steps_per_epoch = max(1, ds.steps_per_epoch(config.batch_size))
    eval_every = max(1, round(config.eval_every_epochs * steps_per_epoch))
    ckpt_every = max(1, round(config.checkpoint_every_epochs * steps_per_epoch))
    warmup_steps = int(round(config.optim.warmup_epochs * steps_per_epoch))

    os.makedirs(workdir, exist_ok=True)
    _check_workdir(workdir, config_dict)
    if is_main:
        write_json_atomic(os.path.join(workdir, "config.json"), config_dict)
        write_json_atomic(os.path.join(workdir, "spec.json"), spec.to_dict())
        write_json_atomic(os.path.join(workdir, "complexity.json"), cplx)

    # ---- state: shapes first, then allocate replicated (or restore).
    tx, schedule = optim.make_optimizer(config.optim, total_steps, warmup_steps)
    abstract_model = nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0)))
    graphdef, _, _ = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)
    replicated = sharding.replicated(mesh)

    def init_state():
        model = SqueezeNet(spec, rngs=nnx.Rngs(config.seed))
        _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        params, stats = params.to_pure_dict(), stats.to_pure_dict()
        if init_params is not None:
            params = jax.tree.map(jnp.asarray, init_params["params"])
            stats = jax.tree.map(jnp.asarray, init_params.get("batch_stats") or stats)
        aux = {}
        if reparam is not None:
            params, aux = reparam.init(params)
        return dict(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=stats,
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.key(config.seed)),
            aux=aux,
            nonfinite_step=jnp.full((), -1, jnp.int32),
        )

    def with_best(train_state, best_top1=-1.0, best_step=-1):
        return dict(
            train=train_state,
            best_top1=jnp.asarray(best_top1, jnp.float32),
            best_step=jnp.asarray(best_step, jnp.int32),
        )

    abstract_ckpt = abstract_like(jax.eval_shape(lambda: with_best(init_state())), replicated)
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    restored_step, restored = ckpt.restore_latest(abstract_ckpt)
    if restored is None:
        # Initialise on one local device and replicate: compiling the initialisers' RNG for a
        # multi-device SPMD program is several times slower, and each process computes the same
        # values from the same seed anyway.
        with jax.default_device(jax.local_devices()[0]):
            local = jax.device_get(jax.jit(lambda: with_best(init_state()))())
        ckpt_state = jax.tree.map(lambda a: sharding.put_replicated(a, mesh), local)
        start_step = 0
    else:
        ckpt_state, start_step = restored, int(restored_step)
        print(f"resuming {workdir} from step {start_step}", flush=True)
    state = ckpt_state["train"]
    best_top1, best_step = float(ckpt_state["best_top1"]), int(ckpt_state["best_step"])

    # ---- data on the devices, once.
    if ds.on_device:
        train_x, train_y = (sharding.put_replicated(a, mesh) for a in ds.train_arrays())
    else:
        train_iter = ds.train_iter(
            start_step, config.batch_size // jax.process_count(), config.seed
        )
        first = next(train_iter)
        train_x = sharding.put_batch(first["image"], mesh)
        train_y = sharding.put_batch(first["label"], mesh)
    eval_runner = _EvalRunner(ds, config, spec, graphdef, reparam, mesh)

    # ---- compile ahead of time (timed); the compiled step can never retrace.
    step_fn = _make_train_step(
        graphdef=graphdef,
        ds=ds,
        tx=tx,
        schedule=schedule,
        spec=spec,
        config=config,
        reparam=reparam,
        mesh=mesh,
        on_device=ds.on_device,
    )
    t0 = time.perf_counter()
    compiled_step = (
        jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated))
        .lower(state, train_x, train_y)
        .compile()
    )
    compile_time = time.perf_counter() - t0
    sharding.barrier("compiled")

    writer = MetricsWriter(
        workdir,
        is_main=is_main,
        resume_step=start_step,
        wandb_config=config.wandb,
        run_config=config_dict,
        summary={"design": spec.to_dict(), "complexity": complexity_summary},
    )
    progress = Progress(config.progress, total_steps, start_step, is_main)
    stop = _PreemptionFlag()
    status, step = "complete", start_step
    train_time, interval_t0, pending = 0.0, time.perf_counter(), []
    last_eval: dict = {}
    images_per_s = 0.0
    log_every = int(config.log_every_steps)
    try:
        while step < total_steps:
            if not ds.on_device and step > start_step:
                batch = next(train_iter)
                train_x = sharding.put_batch(batch["image"], mesh)
                train_y = sharding.put_batch(batch["label"], mesh)
            state, m = compiled_step(state, train_x, train_y)
            pending.append(m)
            step += 1
            is_eval = step % eval_every == 0 or step == total_steps
            is_ckpt = step % ckpt_every == 0 or step == total_steps or stop.requested
            if step % log_every == 0 or is_eval or is_ckpt:
                host = jax.device_get(pending)
                bad = int(jax.device_get(state["nonfinite_step"]))
                now = time.perf_counter()
                interval = now - interval_t0
                train_time += interval
                images_per_s = len(pending) * config.batch_size / max(interval, 1e-9)
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
                if last_eval["top1"] > best_top1:
                    best_top1, best_step = last_eval["top1"], step
                writer.write(dict(step=step, split="eval", **last_eval))
                if on_eval is not None and on_eval(step, dict(last_eval)) and step < total_steps:
                    status = "pruned"
            if is_ckpt or status == "pruned":
                best = {
                    "best_top1": sharding.put_replicated(np.float32(best_top1), mesh),
                    "best_step": sharding.put_replicated(np.int32(best_step), mesh),
                }
                ckpt.save(step, {"train": state, **best}, force=True)
            if stop.requested and step < total_steps:
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
        "best": {"top1": best_top1, "step": best_step},
        "complexity": complexity_summary,
        "steps": step,
        "epochs": step * config.batch_size / ds.train_size,
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
        write_json_atomic(result_path, result)
    return result


class _EvalRunner:
    """Exact evaluation over the whole eval split (padded, masked), compiled once."""

    def __init__(self, ds, config, spec, graphdef, reparam, mesh):
        self.ds, self.mesh, self.compile_time = ds, mesh, 0.0
        self.batch = int(config.eval_batch_size)
        self._sums = _make_eval_fn(graphdef=graphdef, spec=spec, reparam=reparam, mesh=mesh)
        self._compiled = None
        if ds.on_device:
            images, labels = ds.eval_arrays()
            n = len(labels)
            nb = -(-n // self.batch)
            pad = nb * self.batch - n
            mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
            shape = lambda a: a.reshape(nb, self.batch, *a.shape[1:])
            self.arrays = tuple(
                sharding.put_replicated(shape(a), mesh) for a in (images, labels, mask)
            )

    def _scan(self, state, images, labels, mask):
        def body(acc, batch):
            x, y, m = batch
            sums = self._sums(state, self.ds.device_eval_batch(x), y, m)
            return jax.tree.map(jnp.add, acc, sums), None

        shapes = jax.eval_shape(
            self._sums, state, self.ds.device_eval_batch(images[0]), labels[0], mask[0]
        )
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return jax.lax.scan(body, zeros, (images, labels, mask))[0]

    def __call__(self, state) -> dict:
        if self.ds.on_device:
            args = (state, *self.arrays)
            fn = self._scan
        else:
            fn = self._sums
        if self._compiled is None:
            t0 = time.perf_counter()
            if self.ds.on_device:
                self._compiled = jax.jit(fn).lower(*args).compile()
            else:
                self._compiled = jax.jit(fn)
            self.compile_time += time.perf_counter() - t0
            sharding.barrier("eval_compiled")
        if self.ds.on_device:
            totals = jax.device_get(self._compiled(*args))
        else:
            totals = None
            per_process = self.batch // jax.process_count()
            for b in self.ds.eval_iter(per_process):
                x, y, m = (sharding.put_batch(b[k], self.mesh) for k in ("image", "label", "mask"))
                sums = self._compiled(state, x, y, m)
                totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
            totals = jax.device_get(totals)
        count = float(totals["count"])
        out = {"loss": float(totals["loss"]) / count, "top1": float(totals["top1"]) / count}
        out["top5"] = float(totals["top5"]) / count if "top5" in totals else None
        out["count"] = int(count)
        return out


class _PreemptionFlag:
    """SIGTERM sets a flag; the loop checkpoints at the next step and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker thread)
            self._previous = None

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _setup_compilation_cache(path: str | None) -> None:
    """Persistent XLA cache: a sweep's repeated shapes (and reruns) compile once."""
    if not path:
        return
    path = os.path.expanduser(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# ---------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """`sqz train --config=experiments/x.py[:arg] --workdir=DIR [--config.key=value ...]`."""
    from absl import flags
    from ml_collections import config_flags

    argv = list(sys.argv if argv is None else ["sqz train", *argv])
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment file (path.py[:arg]).",
        flag_values=fv,
        lock_config=True,
        sys_argv=argv,  # overrides are read from here, not from the process's sys.argv
    )
    flags.DEFINE_string(
        "workdir", None, "Run directory (created; resumed if it exists).", flag_values=fv
    )
    try:
        fv(argv)
        if fv.config is None or fv.workdir is None:
            raise flags.Error("--config and --workdir are required")
        config = fv.config
    except (flags.Error, ConfigError, SpecError, KeyError, AttributeError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = train_and_evaluate(config, fv.workdir)
    except (ConfigError, SpecError, WorkdirConflictError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if result.get("status") == "preempted":
        return 0
    final = result["final"]
    print(
        f"done: {result['steps']} steps, top1 {final['top1']:.4f}"
        + (f", top5 {final['top5']:.4f}" if final.get("top5") is not None else "")
        + f", {result['complexity']['params']:,} params; results in {fv.workdir}/result.json",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------------------- finished runs
def load_run(workdir: str) -> dict:
    """A finished run's config, spec, result and trained weights (from its latest checkpoint).

    Returns {"config", "spec", "result", "params", "batch_stats"} with numpy weights (pure dicts,
    the model's parameter paths). Raises FileNotFoundError for a workdir without a finished run.
    """
    import orbax.checkpoint as ocp

    from sqzexplore.models.spec import SqueezeNetSpec

    workdir = os.path.abspath(workdir)
    result_path = os.path.join(workdir, "result.json")
    if not os.path.exists(result_path):
        raise FileNotFoundError(
            f"{workdir} holds no finished run (no result.json); train it first with "
            f"`sqz train --config=... --workdir={workdir}`"
        )
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(workdir, "spec.json")) as f:
        spec = SqueezeNetSpec.from_dict(json.load(f))
    with open(result_path) as f:
        result = json.load(f)
    directory = os.path.join(workdir, "checkpoints")
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory} holds no checkpoint")
        restored = manager.restore(step, args=ocp.args.StandardRestore())
    train_state = restored["train"]
    return {
        "config": config,
        "spec": spec,
        "result": result,
        "params": jax.tree.map(np.asarray, train_state["params"]),
        "batch_stats": jax.tree.map(np.asarray, train_state["batch_stats"]),
        "aux": jax.tree.map(np.asarray, train_state.get("aux", {})),
        "step": int(step),
    }


def evaluate_params(config: ml_collections.ConfigDict, params: dict, batch_stats: dict) -> dict:
    """Exact eval-split metrics (loss, top1, top5) of given weights, e.g. a decoded .sqz model."""
    from sqzexplore.data import load_dataset
    from sqzexplore.models.squeezenet import SqueezeNet

    spec = validate_config(config)
    mesh = sharding.make_mesh()
    sharding.check_divisible(config.eval_batch_size, "config.eval_batch_size", mesh)
    ds = load_dataset(
        config.data, spec, process_index=jax.process_index(), process_count=jax.process_count()
    )
    abstract_model = nnx.eval_shape(lambda: SqueezeNet(spec, rngs=nnx.Rngs(0)))
    graphdef, _, _ = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)
    state = {"params": params, "batch_stats": batch_stats or {}, "aux": {}}
    state = jax.device_put(jax.tree.map(jnp.asarray, state), sharding.replicated(mesh))
    return _EvalRunner(ds, config, spec, graphdef, None, mesh)(state)
