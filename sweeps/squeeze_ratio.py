"""Squeeze ratio: how much accuracy does each squeeze-layer width buy, and where does it plateau?

The paper's Fig. 3a (Strategy 2: feed fewer input channels to the 3x3 filters). Sweeps the
squeeze ratio SR (squeeze filters / expand filters of every Fire module) over the authors' own
values {0.125, 0.25, 0.5, 0.75, 1.0} at pct_3x3 = 0.5, grid sampler, 3 seeds per point;
objectives: maximise final top-1, minimise parameters.

The paper's result (ImageNet, top-5, SqueezeNet v1.0 macroarchitecture; docs/paper.md):
80.3% at 4.8MB (SR = 0.125) rising to 86.0% at 19MB; accuracy plateaus at SR = 0.75, and
SR = 1.0 is larger with no gain. The paper's model sizes (fp32 MiB, from the formula): SR 0.125
4.8, 0.25 7.5, 0.5 13.0, 0.75 18.5, 1.0 24.0 (1,248,424 to 6,279,016 params).

Measured on digits (the README's main job, `sqz sweep run sweeps/squeeze_ratio.py --workers 2`,
3 seeds per point, quiet 2-core CPU VM, jax 0.10.2, 2026-12-02): mean top-1 rises from 97.87% at
SR 0.125 (0.71 MiB) to 99.72% at SR 1.0 (5.51 MiB). Every point with its spread, the noise floor
of 360 test images and the sweep's time: experiments/README.md (Fig. 3a); the sweep's
efficiency: benchmarks/RESULTS.md.

Commands:
    sqz sweep run sweeps/squeeze_ratio.py                      # digits (default)
    sqz sweep run sweeps/squeeze_ratio.py --arg runlocal       # smoke: 2 points, 1 seed, 2 epochs
    sqz sweep run sweeps/squeeze_ratio.py --arg dataset=cifar10,data_dir=$TFDS_DATA_DIR
    sqz sweep report runs/sweeps/squeeze_ratio

Args: runlocal, dataset (an experiments/<dataset>/ directory), experiment (any experiment file
instead, e.g. for another TFDS dataset), data_dir (TFDS data_dir), seeds (per point).
"""

from sqzexplore.argpresets import preset
from sqzexplore.config import parse_arg
from sqzexplore.sweep.space import SweepDefinition, categorical
from sqzexplore.sweep.sweepfile import dataset_base


def get_sweep(arg=None):
    a = parse_arg(arg, runlocal=False, dataset="digits", experiment="", data_dir="", seeds=3)
    preset(a, arg, a.runlocal, seeds=1)  # a typed seeds=N wins over the smoke preset
    fixed = {"model.pct_3x3": 0.5}
    if a.data_dir:
        fixed["data.data_dir"] = a.data_dir
    ratios = (0.125, 0.5) if a.runlocal else (0.125, 0.25, 0.5, 0.75, 1.0)
    return SweepDefinition(
        name="squeeze_ratio",
        base=dataset_base(a.dataset, a.runlocal, a.experiment, near=__file__),
        fixed=fixed,
        space={"model.squeeze_ratio": categorical(*ratios)},
        objectives=[("final.top1", "maximize"), ("complexity.params", "minimize")],
        sampler="grid",
        seeds=a.seeds,
    )
