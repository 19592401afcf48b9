"""Bypass connections: do ResNet-style shortcuts around Fire modules improve accuracy, and at
what size?

The paper's Table 3 (section 6, macroarchitecture). Compares no bypass, simple bypass (identity
shortcuts around fire3, fire5, fire7, fire9) and complex bypass (also 1x1-conv shortcuts around
fire2, fire4, fire6, fire8) at the base experiment's widths, grid sampler, 3 seeds each;
objectives: maximise final top-1, minimise parameters.

The paper's result (ImageNet top-1 / top-5; docs/paper.md): vanilla SqueezeNet
57.5% / 80.3% (4.8MB); simple bypass 60.4% / 82.5% (4.8MB: identity shortcuts add no
parameters); complex bypass 58.8% / 82.0% (the paper reports 7.7MB; counting the added 1x1 convs
gives about 6.1 MiB, +341,248 params, which is what this sweep measures). Simple bypass is the
best of the three.

Measured on digits (`sqz sweep run sweeps/bypass.py --arg seeds=1 --workers 2`, 2-core AMD EPYC
CPU VM under load, 2026-11-27, before the durations fix): top-1 none 97.78%, simple 98.89%,
complex 98.89% (complex +84,608 params); the table and its caveats: experiments/README.md.

Commands:
    sqz sweep run sweeps/bypass.py                             # digits (default)
    sqz sweep run sweeps/bypass.py --arg runlocal              # smoke: 1 seed, 2 epochs
    sqz sweep run sweeps/bypass.py --arg dataset=cifar10,data_dir=$TFDS_DATA_DIR
    sqz sweep report runs/sweeps/bypass

Args: runlocal, dataset, experiment (any experiment file instead), data_dir, seeds.
"""

from sqzexplore.argpresets import preset
from sqzexplore.config import parse_arg
from sqzexplore.sweep.space import SweepDefinition, categorical
from sqzexplore.sweep.sweepfile import dataset_base


def get_sweep(arg=None):
    a = parse_arg(arg, runlocal=False, dataset="digits", experiment="", data_dir="", seeds=3)
    preset(a, arg, a.runlocal, seeds=1)  # a typed seeds=N wins over the smoke preset
    fixed = {"data.data_dir": a.data_dir} if a.data_dir else {}
    return SweepDefinition(
        name="bypass",
        base=dataset_base(a.dataset, a.runlocal, a.experiment, near=__file__),
        fixed=fixed,
        space={"model.bypass": categorical("none", "simple", "complex")},
        objectives=[("final.top1", "maximize"), ("complexity.params", "minimize")],
        sampler="grid",
        seeds=a.seeds,
    )
