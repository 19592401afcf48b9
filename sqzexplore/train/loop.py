"""Train and evaluate one SqueezeNet design point: `train_and_evaluate(config, workdir)`.

Every sweep trial, paper ablation and compression retraining runs through this function: the
driver (driver.py, the one loop for 1..N members) with one member on the lone program
(engines.Lone).

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

import ml_collections

from sqzexplore import rundir
from sqzexplore.config import flat_defaults, validate_config
from sqzexplore.train import driver, engines, events
from sqzexplore.train.driver import NonFiniteError
from sqzexplore.train.preempt import PreemptionFlag

__all__ = ["NonFiniteError", "train_and_evaluate"]


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
        mesh = driver.start(config)
        engine = engines.Lone(config, spec, mesh, reparam=reparam, init_params=init_params)
        member_eval = None if on_eval is None else (lambda i, step, m: on_eval(step, m))
        (result,) = driver.run(
            [driver.Member(0, config, workdir)], engine, member_eval, stop, t_start
        )
        return result
    finally:
        stop.restore()
