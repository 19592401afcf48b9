"""Exact evaluation over a whole eval split: `EvalRunner` (used by the trainer) and
`evaluate_params` (weights from elsewhere, e.g. a decoded .sqz model).

Exact: the last batch is padded and masked, so every eval example counts exactly once. A
device-resident split is evaluated by one compiled `lax.scan` over its batches (one dispatch per
evaluation); a streamed one batch by batch from `eval_iter`.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from sqzexplore import sharding
from sqzexplore.train import xla_options
from sqzexplore.train.state import TrainState, model_graphdef
from sqzexplore.train.step import make_eval_step


class EvalRunner:
    """Exact evaluation over the whole eval split (padded, masked), compiled once."""

    def __init__(
        self,
        ds: Any,
        eval_batch_size: int,
        graphdef: nnx.GraphDef,
        num_classes: int,
        mesh: Mesh,
        *,
        reparam: Any = None,
    ):
        self.ds, self.mesh, self.compile_time = ds, mesh, 0.0
        self.batch = int(eval_batch_size)
        self._sums = make_eval_step(
            graphdef,
            num_classes=num_classes,
            reparam=reparam,
            batch_sharding=sharding.batch_sharded(mesh),
        )
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

    def compile(self, state: TrainState) -> None:
        """Compile the evaluation for `state`'s shapes (timed into `compile_time`)."""
        if self._compiled is not None:
            return
        t0 = time.perf_counter()
        if self.ds.on_device:
            lowered = jax.jit(self._scan).lower(state, *self.arrays)
            self._compiled = lowered.compile(xla_options.step_options())
        else:
            norm = self.ds.device_eval_batch  # streamed uint8: normalised in the step
            self._compiled = jax.jit(lambda s, x, y, m: self._sums(s, norm(x), y, m))
        self.compile_time += time.perf_counter() - t0
        sharding.barrier("eval_compiled")

    def __call__(self, state: TrainState) -> dict:
        """{"loss", "top1", "top5" (None under 5 classes), "count"} over the whole eval split."""
        self.compile(state)
        if self.ds.on_device:
            totals = jax.device_get(self._compiled(state, *self.arrays))
        else:
            totals = None
            per_process = self.batch // jax.process_count()
            for b in self.ds.eval_iter(per_process):
                x, y, m = (sharding.put_batch(b[k], self.mesh) for k in ("image", "label", "mask"))
                sums = self._compiled(state, x, y, m)
                totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
            totals = jax.device_get(totals)
        return eval_metrics(totals)


def eval_metrics(totals: dict) -> dict:
    """{"loss", "top1", "top5" (None under 5 classes), "count"} from an eval's summed sums."""
    count = float(totals["count"])
    out = {"loss": float(totals["loss"]) / count, "top1": float(totals["top1"]) / count}
    out["top5"] = float(totals["top5"]) / count if "top5" in totals else None
    out["count"] = int(count)
    return out


def evaluate_params(config: ml_collections.ConfigDict, params: dict, batch_stats: dict) -> dict:
    """Exact eval-split metrics (loss, top1, top5) of given weights, e.g. a decoded .sqz model."""
    from sqzexplore.config import validate_config
    from sqzexplore.data import load_dataset

    spec = validate_config(config)
    mesh = sharding.make_mesh()
    sharding.check_divisible(config.eval_batch_size, "config.eval_batch_size", mesh)
    ds = load_dataset(
        config.data, spec, process_index=jax.process_index(), process_count=jax.process_count()
    )
    state = TrainState.for_eval(jax.tree.map(jnp.asarray, params), batch_stats)
    state = jax.device_put(state, sharding.replicated(mesh))
    runner = EvalRunner(ds, config.eval_batch_size, model_graphdef(spec), spec.num_classes, mesh)
    return runner(state)
