"""SqueezeNet v1.0 on ImageNet-1k with the authors' Caffe recipe (paper Table 1 and section 7).

Reproduces: the paper's SqueezeNet (Table 1: 1,248,424 params, 4.8MB fp32; 832.67M MACs per
227x227 image) and its ImageNet accuracy, 57.5% top-1 / 80.3% top-5 (the paper's numbers, from
Caffe; torchvision's port reports 58.09 / 80.42).

Command (ImageNet prepared as the TFDS `imagenet2012` dataset under DATA_DIR):

    sqz train --config=experiments/imagenet/squeezenet_v1_0.py --workdir=runs/v1_0 \\
        --config.data.data_dir=DATA_DIR
    sqz describe --config=experiments/imagenet/squeezenet_v1_0.py   # the model, before training

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
Hardware, an estimate: the run sees 87M training images; at the ~13,900 img/s that
docs/design.md#performance quotes (a reference figure, not measured here) for a bf16 v1.0
step on one H200 that is under 2 h of step time, so the run is bound by
JPEG decoding on the host: expect roughly half a day on one H200 with a 16-core host, or a few
hours on 8 GPUs with enough host CPUs to feed them.
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
