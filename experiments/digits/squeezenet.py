"""SqueezeNet on the bundled handwritten digits: the offline default experiment.

What it is for: a real (if small) dataset that needs no download, so every feature of sqzexplore
(training, sweeps, compression) runs end to end on any machine. scikit-learn's 1,797 8x8 digits
are upscaled to 16x16 and split 80/20 (seeded, stratified): 1,437 train / 360 test images.
The model is the 'digits' preset: a half-width SqueezeNet (base_e = incr_e = 64, SR 0.125,
pct_3x3 0.5, 3x3/1 stem with 32 filters, pools after fire3, fire5, fire7) with BatchNorm on:
without it this small net trained with AdamW stays at chance for many epochs (the ReLU after conv10
starts nearly dead), which would make every sweep trial a coin toss. For the same reason the ReLU
after conv10 is off here (`classifier_relu=False`): with only 10 classes, a class whose conv10
outputs all turn negative keeps a 0 logit forever (seen here: top-5 stuck at 90%).

Command:
    sqz train --config=experiments/digits/squeezenet.py --workdir=runs/digits
    sqz train --config=experiments/digits/squeezenet.py:sr=0.5,bypass=simple --workdir=runs/d2

Measured (the first command, quiet 2-core CPU VM, jax 0.10.2, 2026-12-02): 98.33% test top-1
(354/360) in 59.8 s in the trainer with a cold XLA cache; the breakdown and earlier runs:
experiments/README.md (digits baseline).
"""

from sqzexplore.argpresets import preset
from sqzexplore.config import base_config, model_config, parse_arg


def get_config(arg=None):
    a = parse_arg(
        arg,
        sr=0.125,
        pct_3x3=0.5,
        bypass="none",
        batch_norm=True,
        epochs=20.0,
        lr=0.003,
        seed=0,
        runlocal=False,
    )
    preset(a, arg, a.runlocal, epochs=2.0)  # a typed epochs=N wins over the smoke preset
    c = base_config()
    c.model = model_config(
        "digits",
        squeeze_ratio=a.sr,
        pct_3x3=a.pct_3x3,
        bypass=a.bypass,
        batch_norm=a.batch_norm,
        classifier_relu=False,
    )
    c.data.name = "digits"
    c.data.augment = "crop_flip"  # the digits source translates only; it never flips digits
    c.seed = a.seed
    c.batch_size = 64
    c.eval_batch_size = 360
    c.num_epochs = a.epochs
    c.optim.name = "adamw"
    c.optim.lr = a.lr
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 1.0
    c.optim.label_smoothing = 0.0
    c.eval_every_epochs = 5.0
    c.checkpoint_every_epochs = 5.0
    c.log_every_steps = 20
    if a.runlocal:  # the same experiment, shrunk for smoke tests (epochs: the preset above)
        c.eval_every_epochs = 1.0
        c.checkpoint_every_epochs = 1.0
        c.log_every_steps = 5
    return c
