"""Grouped 3x3 expand convs: how much accuracy do the 3x3 filters' cross-channel weights buy?

Not in the paper (its 3x3 expand filters see every squeeze channel). Sweeps `expand3x3_groups`,
the groups of every Fire module's 3x3 expand conv, over 1 (the paper's), 2, 4 and 8 on the digits
net (SR 0.125, whose squeeze widths 8 ... 32 all divide by 8; at 8 groups fire2 and fire3's 3x3
filters see one squeeze channel each, a depthwise-style 3x3), grid sampler, 2 seeds per point;
objectives: maximise final top-1, minimise parameters. Each group count divides the 3x3 expand
weights and MACs by itself.

Smoke run only so far (`sqz sweep run sweeps/expand3x3_groups.py --workers 1 --arg runlocal`,
2 epochs, 1 seed, 2-core AMD EPYC CPU VM loaded by concurrent work, jax 0.10.2, 2026-12-04):
params 185,258 / 116,138 / 81,578 / 64,298 at 1 / 2 / 4 / 8 groups (analytic = built model for
every point), top-1 40.8 / 54.2 / 42.8 / 46.4% after 2 epochs, which says nothing about accuracy
yet (one seed, far from converged); wall 12 min 37 s, most of it compiling the grouped convs
(about 2 min each on XLA:CPU). The full grid has not been run.

Commands:
    sqz sweep run sweeps/expand3x3_groups.py                       # digits (default)
    sqz sweep run sweeps/expand3x3_groups.py --arg runlocal        # smoke: 4 points, 1 seed
    sqz sweep run sweeps/expand3x3_groups.py --arg dataset=cifar10,data_dir=$TFDS_DATA_DIR
    sqz sweep report runs/sweeps/expand3x3_groups

Args: runlocal, dataset (an experiments/<dataset>/ directory), experiment (any experiment file
instead), data_dir (TFDS data_dir), seeds (per point). Another dataset's net must have widths
that 2, 4 and 8 divide (the paper's v1.0 widths do).
"""

from sqzexplore.argpresets import preset
from sqzexplore.config import parse_arg
from sqzexplore.sweep.space import SweepDefinition, categorical
from sqzexplore.sweep.sweepfile import dataset_base

GROUPS = (1, 2, 4, 8)


def get_sweep(arg=None):
    a = parse_arg(arg, runlocal=False, dataset="digits", experiment="", data_dir="", seeds=2)
    preset(a, arg, a.runlocal, seeds=1)  # a typed seeds=N wins over the smoke preset
    fixed = {}
    if a.data_dir:
        fixed["data.data_dir"] = a.data_dir
    return SweepDefinition(
        name="expand3x3_groups",
        base=dataset_base(a.dataset, a.runlocal, a.experiment, near=__file__),
        fixed=fixed,
        space={"model.expand3x3_groups": categorical(*GROUPS)},
        objectives=[("final.top1", "maximize"), ("complexity.params", "minimize")],
        sampler="grid",
        seeds=a.seeds,
    )
