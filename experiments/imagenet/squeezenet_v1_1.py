"""SqueezeNet v1.1 on ImageNet-1k with the paper's Caffe recipe.

Reproduces: the authors' v1.1 release (forresti/SqueezeNet, SqueezeNet_v1.1): conv1 is 64 filters
3x3/2 and the max-pools move earlier (after conv1, fire3, fire5), for 1,235,496 params and 387.75M
MACs per 227x227 image (349.15M at 224) against v1.0's 832.67M: "2.4x less computation than v1.0,
without sacrificing accuracy" (the release notes; the paper itself reports only v1.0, 57.5% top-1 /
80.3% top-5; torchvision's port of v1.1 reports 58.18 / 80.62).

Commands (ImageNet prepared as the TFDS `imagenet2012` dataset under DATA_DIR): prepare once a
copy stored at the recipe's 256x256 (the same copy as squeezenet_v1_0.py's: both use the paper
recipe at 227), then train from it with one config value:

    sqz data prepare --config=experiments/imagenet/squeezenet_v1_1.py \\
        --config.data.data_dir=DATA_DIR --out=DATA_DIR/imagenet2012-paper256
    sqz train --config=experiments/imagenet/squeezenet_v1_1.py --workdir=runs/v1_1 \\
        --config.data.name=DATA_DIR/imagenet2012-paper256
    sqz describe --config=experiments/imagenet/squeezenet_v1_1.py   # the model, before training

Recipe (docs/paper.md#training, the same as squeezenet_v1_0.py): SGD momentum 0.9, weight decay
2e-4 on every parameter (the prototxt sets no decay_mult, so Caffe decays biases too), batch 512,
lr 0.04 with "poly" decay of power 1.0 to zero over 170,000 steps (~68 epochs), Caffe "xavier"
init, dropout 0.5; inputs stretched to 256x256, random 227x227 crops, BGR-mean subtraction, no
flips (augment 'paper').

Arguments (`--config=...py:runlocal`):
  runlocal   the same experiment shrunk to a smoke run: synthetic data, batch 8, 4 steps

Expected (not yet measured here): v1.0's accuracy, about 57.5 / 80.3 top-1 / top-5 on the
validation split. Hours on one GPU, recomputed from measured rates: 87M training images at the
bf16 v1.1 step's 28,055 img/s on one H200 (benchmarks/RESULTS.md) are 0.9 h of step time. The
loader (`sqz bench data`, 2-core CPU VM) does about 1,900 images per CPU-second from the
prepared copy, so it takes 15 host cores to feed that step: about 1 h on one H200 with a 16-core
host. From the original files (about 450 per CPU-second) a 16-core host feeds about 7,200
img/s: about 3.5 h, bound by the host.
"""

from __future__ import annotations

import ml_collections

from sqzexplore.config import base_config, model_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, runlocal=False)

    c = base_config()
    c.model = model_config("v1.1", image_size=227, init="caffe")

    c.data.name = "imagenet2012"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.augment = "paper"

    c.batch_size = 512
    c.num_steps = 170_000
    c.optim.name = "sgd"
    c.optim.lr = 0.04
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.weight_decay = 2e-4
    c.optim.decay_kernels_only = False
    c.optim.schedule = "poly"
    c.optim.power = 1.0
    c.optim.warmup_epochs = 0.0
    c.optim.end_lr_fraction = 0.0
    c.optim.label_smoothing = 0.0

    c.eval_every_epochs = 1.0
    c.checkpoint_every_epochs = 1.0
    c.log_every_steps = 100
    c.wandb.tags = ("imagenet", "squeezenet_v1_1")

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
