"""SqueezeNet for 32x32 CIFAR-10 inputs, modern recipe.

What it is for: the CIFAR-scale design-space studies (sweeps switch to it with `dataset=cifar10`).
The 'cifar' preset keeps the paper's Fire widths (SR 0.125, pct_3x3 0.5) but uses a 3x3/1 stem and
pools after fire4 and fire8 (32 -> 16 -> 8), because a 7x7/2 stem plus three stride-2 pools would
leave 1x1 maps (docs/paper.md#pitfalls). BatchNorm is on by default here (off in the paper), so the
modern recipe can use a large learning rate: SGD nesterov 0.9, lr 0.1 with 2 warmup epochs and
cosine decay, weight decay 5e-4 on kernels, label smoothing 0.1, batch 256, 100 epochs, random
crop (pad 4) + flip.

Needs CIFAR-10 in TFDS format: `tfds build cifar10 --data_dir=$TFDS_DATA_DIR` on a machine with
network, then:
    sqz train --config=experiments/cifar10/squeezenet.py --workdir=runs/cifar10 \
        --config.data.data_dir=$TFDS_DATA_DIR

Expected (not measured here; no CIFAR-10 on this machine): about 90-92% test top-1 with 0.74M
parameters, a few minutes on one H100/H200 (the whole split lives in device memory). Measured
results, once there are any, go to experiments/README.md. With
`batch_norm=False` (the paper's plain SqueezeNet) use lr=0.02; expect a few points lower.
"""

from sqzexplore.argpresets import preset, typed_keys
from sqzexplore.config import ConfigError, base_config, model_config, parse_arg


def get_config(arg=None):
    a = parse_arg(
        arg,
        sr=0.125,
        pct_3x3=0.5,
        bypass="none",
        batch_norm=True,
        epochs=100.0,
        lr=0.1,
        data_dir="",
        runlocal=False,
    )
    preset(a, arg, a.runlocal, epochs=1.0)  # a typed epochs=N wins over the smoke preset
    if a.runlocal and "data_dir" in typed_keys(arg):
        raise ConfigError(
            "experiment argument 'data_dir' has no effect with 'runlocal' (synthetic data); "
            "drop one of them"
        )
    c = base_config()
    c.model = model_config(
        "cifar",
        squeeze_ratio=a.sr,
        pct_3x3=a.pct_3x3,
        bypass=a.bypass,
        batch_norm=a.batch_norm,
        dropout=0.5,
    )
    c.data.name = "cifar10"
    c.data.data_dir = a.data_dir or None
    c.data.augment = "crop_flip"
    c.batch_size = 256
    c.eval_batch_size = 1000
    c.num_epochs = a.epochs
    c.optim.name = "sgd"
    c.optim.lr = a.lr
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 5e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 2.0
    c.optim.label_smoothing = 0.1
    c.eval_every_epochs = 5.0
    c.checkpoint_every_epochs = 5.0
    c.log_every_steps = 100
    if a.runlocal:  # same experiment, shrunk: synthetic 32x32 data, a few steps
        c.data.name = "synthetic"
        c.data.synthetic_train_size = 512
        c.data.synthetic_eval_size = 256
        c.batch_size = 64
        c.eval_batch_size = 128
        c.eval_every_epochs = 1.0
        c.log_every_steps = 4
    return c
