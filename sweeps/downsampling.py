"""Where to downsample: at equal widths, how much accuracy does pooling later buy, and at what
compute?

The paper's Strategy 3 ("downsample late in the network so that convolution layers have large
activation maps"). Moves the base experiment's max-pools from early (SqueezeNet v1.1-like: after
conv1, fire3, fire5) through v1.0-like (conv1, fire4, fire8) to later than either, keeping the
number of pools and every width fixed: parameters are identical, only activation sizes and MACs
change. Grid sampler, 2 seeds per option; objectives: maximise final top-1, minimise MACs.

The paper's numbers (docs/paper.md): Strategy 3 is argued from He & Sun (2015)
(delayed downsampling gives higher accuracy); the paper reports no pooling ablation of its own.
SqueezeNet v1.1 moved the pools earlier for "2.4x less computation than v1.0, same accuracy"
(release notes): at 224x224, v1.0 818.92M MACs vs v1.1 349.15M MACs (derived).

Measured on digits (`sqz sweep run sweeps/downsampling.py --arg seeds=1 --workers 2`, 2-core AMD
EPYC CPU VM under load, 2026-11-27, before the durations fix): at equal parameters, top-1 88.89%
with the earliest pools (1.01M MACs) to 98.61% with the latest (12.60M MACs); every option:
experiments/README.md.

Commands:
    sqz sweep run sweeps/downsampling.py                       # digits (default)
    sqz sweep run sweeps/downsampling.py --arg runlocal        # smoke: 2 options, 1 seed
    sqz sweep run sweeps/downsampling.py --arg dataset=cifar10,data_dir=$TFDS_DATA_DIR
    sqz sweep report runs/sweeps/downsampling

Args: runlocal, dataset, experiment (any experiment file instead), data_dir, seeds.
"""

from sqzexplore.argpresets import preset
from sqzexplore.config import parse_arg
from sqzexplore.sweep.design import base_pool_count, pool_position_ladder
from sqzexplore.sweep.space import SweepDefinition, categorical
from sqzexplore.sweep.sweepfile import dataset_base


def get_sweep(arg=None):
    a = parse_arg(arg, runlocal=False, dataset="digits", experiment="", data_dir="", seeds=2)
    preset(a, arg, a.runlocal, seeds=1)  # a typed seeds=N wins over the smoke preset
    base = dataset_base(a.dataset, a.runlocal, a.experiment, near=__file__)
    ladder = pool_position_ladder(base_pool_count(base))
    options = (ladder[0], ladder[-1]) if a.runlocal else ladder
    fixed = {"data.data_dir": a.data_dir} if a.data_dir else {}
    return SweepDefinition(
        name="downsampling",
        base=base,
        fixed=fixed,
        space={"model.pool_after": categorical(*options)},
        objectives=[("final.top1", "maximize"), ("complexity.macs", "minimize")],
        sampler="grid",
        seeds=a.seeds,
    )
