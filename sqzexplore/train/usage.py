"""`sqz train --help`: the usage and every config key with its default and meaning.

The keys and defaults come from `config.base_config()` (or from the experiment given with
`--config`), the meanings from `KEY_HELP` (the `model.*` lines from the spec fields' metadata,
`spec.field_infos`); a test checks that every key of `base_config()` has a
line here, so the listing cannot fall behind the config.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from sqzexplore.models.spec import field_infos

USAGE = """\
usage: sqz train --config=EXPERIMENT.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]
                 [--seeds=S1,S2,... [--population=auto|N|off]]

Train and evaluate one design point in DIR; rerunning the same command resumes it (and returns
the stored result once it is finished). EXPERIMENT.py defines get_config(arg); ARG is its
comma-separated key=value arguments (e.g. experiments/digits/squeezenet.py:epochs=4).
Any config key below can be overridden: --config.model.squeeze_ratio=0.25,
--config.model.pool_after=conv1,fire4 (or "('conv1','fire4')"), --config.optim.lr=0.01.

Several seeds: --seeds=0,1,2 trains one trial per seed in DIR/seed_0, DIR/seed_1, ... (each
its own complete run directory), as one program of stacked members with
--population=auto|N|off (default auto: off on CPU, where it is slower than one after another;
up to 8 members on a GPU, see sqzexplore/train/population.py); N forces populations of up to N.

Exit status: 0 finished (or preempted: checkpoint saved, rerun to resume), 2 bad input
(named with the allowed values, nothing written), 3 non-finite loss (last good checkpoint kept)."""

# One line per key: what it means and what it accepts.
KEY_HELP: dict[str, str] = {
    "seed": "initialisation, dropout and data-order seed",
    "batch_size": "global train batch (all devices and processes); a multiple of the devices",
    "eval_batch_size": "global eval batch; a multiple of the devices",
    "num_epochs": "training length in epochs (> 0; used when num_steps is 0)",
    "num_steps": "training length in steps (> 0 overrides num_epochs)",
    "eval_every_epochs": "evaluate on the eval split every this many epochs (> 0)",
    "log_every_steps": "log train metrics (and check for NaN) every this many steps",
    "checkpoint_every_epochs": "save a checkpoint every this many epochs (> 0)",
    "keep_checkpoints": "how many checkpoints to keep (>= 1)",
    "steps_per_dispatch": "train steps per host call, one lax.scan (0: auto, 1 on CPU, 8 GPU)",
    "population_lowering": "a population's members: vmap | unroll (in turn) | auto (unroll on CPU)",
    "progress": "progress bar: auto (on a terminal) | true | false",
    "platform": "devices to train on: auto | cpu | gpu | tpu (an error if JAX has none)",
    "compilation_cache_dir": "persistent XLA compilation cache, per user ('' leaves JAX's)",
    "xla_gpu_autotune_level": "GPU conv/GEMM autotuning, 0 (off) - 5; None: XLA's (4)",
    # The model section is every spec field, with the meaning and range its metadata gives.
    **{f"model.{key}": info.line for key, info in field_infos().items()},
    "data.name": "digits | synthetic | a TFDS name (cifar10, imagenette/160px, imagenet2012, ...)",
    "data.data_dir": "TFDS data directory (None: TFDS's default)",
    "data.train_split": "TFDS split to train on",
    "data.eval_split": "TFDS split to evaluate on",
    "data.augment": "none | crop_flip | inception | paper (train augmentation)",
    "data.on_device": "keep the dataset in device memory: auto | true | false",
    "data.shuffle_buffer": "tf.data shuffle buffer of streamed datasets",
    "data.synthetic_train_size": "images in the synthetic train split",
    "data.synthetic_eval_size": "images in the synthetic eval split",
    "data.digits_test_fraction": "share of digits held out for evaluation, in (0, 1)",
    "data.digits_split_seed": "seed of the digits train/test split",
    "optim.name": "sgd | adamw",
    "optim.lr": "peak learning rate, in (0, 100]",
    "optim.momentum": "SGD momentum, in [0, 1)",
    "optim.nesterov": "Nesterov momentum (SGD)",
    "optim.b1": "Adam beta1, in [0, 1)",
    "optim.b2": "Adam beta2, in [0, 1)",
    "optim.weight_decay": "weight decay (SGD: added to the gradient as in Caffe), >= 0",
    "optim.decay_kernels_only": "decay conv kernels only (not biases or BatchNorm)",
    "optim.schedule": "learning-rate schedule: poly | cosine | constant",
    "optim.power": "exponent of the poly schedule, > 0",
    "optim.warmup_epochs": "linear warmup from 0, in epochs (>= 0)",
    "optim.end_lr_fraction": "final learning rate / peak, in [0, 1]",
    "optim.grad_clip_norm": "clip the gradient's global norm to this (0: off)",
    "optim.label_smoothing": "label smoothing, in [0, 1)",
    "wandb.mode": "disabled | offline | online",
    "wandb.project": "wandb project",
    "wandb.entity": "wandb entity (team or user)",
    "wandb.group": "wandb group (sweeps set it to the sweep)",
    "wandb.name": "wandb run name",
    "wandb.tags": "wandb tags, a tuple of strings",
    "distributed.initialize": "join a multi-host run: auto (SLURM/TPU detected) | true | false",
    "distributed.coordinator_address": "host:port of process 0 (multi-host)",
    "distributed.num_processes": "number of processes (multi-host)",
    "distributed.process_id": "this process's index (multi-host)",
}


def flat_keys(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`{"model.squeeze_ratio": 0.125, ...}`: every leaf of a config by dotted key."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key in sorted(node.keys()):
            value = node[key]
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(config, "")
    return out


def help_text(config: ml_collections.ConfigDict | None = None, source: str | None = None) -> str:
    """The usage and a table of config keys: key, default (of `config`, else the base config)
    and meaning."""
    from sqzexplore.config import base_config

    config = base_config() if config is None else config
    keys = flat_keys(config)
    width = max(len(k) for k in keys) + 2
    origin = f"values of {source}" if source else "defaults of config.base_config()"
    lines = [USAGE, "", f"config keys ({origin}):"]
    section = None
    for key, value in keys.items():
        head = key.split(".")[0] if "." in key else ""
        if head != section:
            section = head
            lines.append("")
        default = repr(tuple(value) if isinstance(value, list) else value)
        if len(default) > 40:
            default = default[:37] + "..."
        lines.append(f"  {key:<{width}}{default:<20} {KEY_HELP.get(key, '')}".rstrip())
    return "\n".join(lines)
