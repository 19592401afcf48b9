"""Share of 3x3 filters: how much accuracy do 3x3 expand filters buy over 1x1 ones?

The paper's Fig. 3b (Strategy 1: replace 3x3 filters with 1x1 filters). Sweeps pct_3x3 (the
fraction of each Fire module's expand filters that are 3x3) from 1% to 99% at squeeze ratio
SR = 0.5, grid sampler, 2 seeds per point; objectives: maximise final top-1, minimise parameters.

The paper's result (ImageNet, top-5; docs/paper.md): top-5 accuracy plateaus at 85.6%
with 50% 3x3 filters (13MB); more 3x3 filters make the model larger without improving it. The
paper's model sizes at SR = 0.5 (fp32 MiB): 1% 5.6, 12.5% 7.4, 25% 9.2, 37.5% 11.1, 50% 13.0,
62.5% 14.9, 75% 16.7, 87.5% 18.6, 99% 20.3.

Measured on digits (`sqz sweep run sweeps/pct_3x3.py --arg seeds=1 --workers 2`, 2-core AMD EPYC
CPU VM under load, 2026-11-27, before the durations fix): top-1 96.67% at 1% 3x3, then flat at
98-99.7% from 12.5% on; every point: experiments/README.md.

Commands:
    sqz sweep run sweeps/pct_3x3.py                            # digits (default)
    sqz sweep run sweeps/pct_3x3.py --arg runlocal             # smoke: 2 points, 1 seed
    sqz sweep run sweeps/pct_3x3.py --arg dataset=cifar10,data_dir=$TFDS_DATA_DIR
    sqz sweep report runs/sweeps/pct_3x3

Args: runlocal, dataset, experiment (any experiment file instead), data_dir, seeds.
"""

from sqzexplore.argpresets import preset
from sqzexplore.config import parse_arg
from sqzexplore.sweep.space import SweepDefinition, categorical
from sqzexplore.sweep.sweepfile import dataset_base

PCT_3X3 = (0.01, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 0.99)


def get_sweep(arg=None):
    a = parse_arg(arg, runlocal=False, dataset="digits", experiment="", data_dir="", seeds=2)
    preset(a, arg, a.runlocal, seeds=1)  # a typed seeds=N wins over the smoke preset
    fixed = {"model.squeeze_ratio": 0.5}
    if a.data_dir:
        fixed["data.data_dir"] = a.data_dir
    values = (0.125, 0.875) if a.runlocal else PCT_3X3
    return SweepDefinition(
        name="pct_3x3",
        base=dataset_base(a.dataset, a.runlocal, a.experiment, near=__file__),
        fixed=fixed,
        space={"model.pct_3x3": categorical(*values)},
        objectives=[("final.top1", "maximize"), ("complexity.params", "minimize")],
        sampler="grid",
        seeds=a.seeds,
    )
