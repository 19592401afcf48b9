"""SqueezeNet v1.0 on ImageNet-1k with the authors' Caffe recipe (paper Table 1 and section 7).

Reproduces: the paper's SqueezeNet (Table 1: 1,248,424 params, 4.8MB fp32; 832.67M MACs per
227x227 image) and its ImageNet accuracy, 57.5% top-1 / 80.3% top-5 (the paper's numbers, from
Caffe; torchvision's port reports 58.09 / 80.42).

Commands (ImageNet prepared as the TFDS `imagenet2012` dataset under DATA_DIR): prepare once a
copy stored at the recipe's 256x256 (JPEG quality 90: about 45 GB, 35 KB an image; safe to
kill and rerun), then train from it with one config value:

    sqz data prepare --config=experiments/imagenet/squeezenet_v1_0.py \\
        --config.data.data_dir=DATA_DIR --out=DATA_DIR/imagenet2012-paper256
    sqz train --config=experiments/imagenet/squeezenet_v1_0.py --workdir=runs/v1_0 \\
        --config.data.name=DATA_DIR/imagenet2012-paper256
    sqz describe --config=experiments/imagenet/squeezenet_v1_0.py   # the model, before training

(`--config.data.data_dir=DATA_DIR` instead of the data.name line trains from the original files.)

Recipe (docs/paper.md#training): SGD momentum 0.9, weight decay 2e-4 on every parameter (the
prototxt sets no decay_mult, so Caffe decays biases too), batch 512, lr 0.04 with "poly" decay of
power 1.0 to zero over 170,000 steps (~68 epochs), Caffe "xavier" init, dropout 0.5; inputs
stretched to 256x256, random 227x227 crops, BGR-mean subtraction, no flips (augment 'paper').

Arguments (`--config=...py:solver=release,runlocal`):
  solver=paper    the recipe above (the paper's; the default)
  solver=release  the earlier solver that produced the released v1.0 weights: lr 0.08, poly power
                  0.5, 85,000 steps, batch 1024
  runlocal        the same experiment shrunk to a smoke run: synthetic data, batch 8, 4 steps

The Caffe v1.0 prototxt also pads conv10 by 1 (docs/paper.md#classifier-padding); add
`--config.model.classifier_padding=1` to reproduce that too (same params, 861.34M MACs).

Expected (not yet measured here): about 57.5 / 80.3 top-1 / top-5 on the validation split.
Hours on one GPU, recomputed from measured rates: the run sees 87M training images; the bf16 v1.0
step on one H200 trains 14,938 img/s (benchmarks/RESULTS.md), 1.6 h of step time. The loader
(`sqz bench data`, ImageNet-like JPEGs, 2-core CPU VM) does about 1,900 images per CPU-second
from the prepared copy, so 8 host cores feed that step: about 2 h on one H200 with a 16-core
host. From the original files it does about 450 per CPU-second: a 16-core host feeds about
7,200 img/s, about 3.5 h (265 per CPU-second, about 6 h, before the loader shipped uint8 and
resized more cheaply).
"""

from __future__ import annotations

import ml_collections

from sqzexplore.config import ConfigError, base_config, model_config, parse_arg

# Each solver: (lr, poly power, steps, global batch), from the authors' Caffe release.
SOLVERS = {
    "paper": (0.04, 1.0, 170_000, 512),
    "release": (0.08, 0.5, 85_000, 1024),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, runlocal=False, solver="paper")
    if arg.solver not in SOLVERS:
        raise ConfigError(
            f"experiment argument 'solver' must be one of {', '.join(SOLVERS)}, got {arg.solver!r}"
        )
    lr, power, num_steps, batch_size = SOLVERS[arg.solver]

    c = base_config()
    c.model = model_config("v1.0", image_size=227, init="caffe")

    c.data.name = "imagenet2012"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.augment = "paper"

    c.batch_size = batch_size
    c.num_steps = num_steps
    c.optim.name = "sgd"
    c.optim.lr = lr
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.weight_decay = 2e-4
    c.optim.decay_kernels_only = False
    c.optim.schedule = "poly"
    c.optim.power = power
    c.optim.warmup_epochs = 0.0
    c.optim.end_lr_fraction = 0.0
    c.optim.label_smoothing = 0.0

    c.eval_every_epochs = 1.0
    c.checkpoint_every_epochs = 1.0
    c.log_every_steps = 100
    c.wandb.tags = ("imagenet", "squeezenet_v1_0", f"solver_{arg.solver}")

    if arg.runlocal:
        # Same model and recipe, but synthetic 227x227 images and a few tiny steps.
        c.data.name = "synthetic"
        c.data.synthetic_train_size = 64
        c.data.synthetic_eval_size = 16
        c.batch_size = 8
        c.eval_batch_size = 8
        c.num_steps = 4
        c.log_every_steps = 1
    return c
