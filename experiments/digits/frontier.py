"""The digits experiment at a sweep-sized budget: the base of every shipped sweep on digits.

Same model, data and recipe as `experiments/digits/squeezenet.py` (read its docstring), but 8
epochs instead of 20 and a single evaluation at the end, so that a five-point sweep fits in a few
minutes on a 2-core CPU. Accepts the same arguments (sr, pct_3x3, bypass, batch_norm, epochs, lr,
seed, runlocal).

Command (one design point; sweeps override `model.*` fields the same way):
    sqz train --config=experiments/digits/frontier.py:sr=0.25 --workdir=runs/frontier_sr025

Expected: above 95% test top-1 at SR 0.125 in under a minute of training on a 2-core CPU
(measured numbers, with the command and machine, are in experiments/README.md).
"""

import os

from sqzexplore.config import load_config_file

SWEEP_EPOCHS = 8.0


def get_config(arg=None):
    arg = arg or ""
    if "epochs=" not in arg:
        arg = ",".join(a for a in (arg, f"epochs={SWEEP_EPOCHS}") if a)
    c = load_config_file(os.path.join(os.path.dirname(__file__), "squeezenet.py"), arg)
    if "runlocal" not in arg:
        c.eval_every_epochs = c.num_epochs
        c.checkpoint_every_epochs = c.num_epochs / 2
    return c
