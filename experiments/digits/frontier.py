"""The digits experiment at a sweep-sized budget: the base of every shipped sweep on digits.

Same model, data and recipe as `experiments/digits/squeezenet.py` (read its docstring), but 8
epochs instead of 20 and a single evaluation at the end, so that a five-point sweep fits in a few
minutes on a 2-core CPU. Accepts the same arguments (sr, pct_3x3, bypass, batch_norm, epochs, lr,
seed, runlocal).

Command (one design point; sweeps override `model.*` fields the same way):
    sqz train --config=experiments/digits/frontier.py:sr=0.25 --workdir=runs/frontier_sr025

Measured as the base of the README's main job (`sqz sweep run sweeps/squeeze_ratio.py --workers
2`, quiet 2-core CPU VM, jax 0.10.2, 2026-12-02): 97.87% mean test top-1 over 3 seeds at SR 0.125,
99.72% at SR 1.0; every point: experiments/README.md (Fig. 3a).
"""

import os

from sqzexplore.argpresets import typed_keys
from sqzexplore.config import load_config_file

SWEEP_EPOCHS = 8.0


def get_config(arg=None):
    arg = arg or ""
    typed = typed_keys(arg)
    if "epochs" not in typed and "runlocal" not in typed:  # runlocal's own epochs otherwise
        arg = ",".join(a for a in (arg, f"epochs={SWEEP_EPOCHS}") if a)
    c = load_config_file(os.path.join(os.path.dirname(__file__), "squeezenet.py"), arg)
    if "runlocal" not in typed:
        c.eval_every_epochs = c.num_epochs
        c.checkpoint_every_epochs = c.num_epochs / 2
    return c
