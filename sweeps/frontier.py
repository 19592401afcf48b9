"""The accuracy-vs-size frontier: which SqueezeNet design points are Pareto-optimal when the
paper's three strategies and bypasses are searched jointly?

Multi-objective NSGA-II over squeeze ratio (0.125..1.0), pct_3x3 (12.5%..87.5%), pooling
positions (early to late, see downsampling.py) and bypass (none / simple / complex); objectives:
maximise final top-1, minimise parameters. 48 design points, 1 seed each, population 12; runs
whose eval top-1 falls below the median of finished runs at the same step are stopped early
(after 8 finished points and one evaluation; the digits base evaluates once, at the end, so this
only acts on bases that evaluate during training, such as cifar10). `max_mib=X` adds an analytic
size limit: points over it are rejected before they train.

The paper's anchors (docs/paper.md, ImageNet): SqueezeNet v1.0 (SR 0.125,
pct_3x3 0.5, pools after conv1/fire4/fire8, no bypass) 57.5% top-1 / 80.3% top-5 at 4.8MB;
simple bypass 60.4% / 82.5% at the same size; the SR sweep reaches 86.0% top-5 at 19MB and
plateaus from SR 0.75; the pct_3x3 sweep plateaus at 50% (85.6% top-5, 13MB).

Commands:
    sqz sweep run sweeps/frontier.py                           # digits (default)
    sqz sweep run sweeps/frontier.py --arg runlocal            # smoke: 6 points, 2 epochs each
    sqz sweep run sweeps/frontier.py --arg dataset=cifar10,data_dir=$TFDS_DATA_DIR,max_mib=2
    sqz sweep report runs/sweeps/frontier

Args: runlocal, dataset, experiment (any experiment file instead), data_dir, n_trials,
max_mib (0: no limit), seed (sampler seed).
"""

from sqzexplore.argpresets import preset
from sqzexplore.config import parse_arg
from sqzexplore.sweep.design import base_pool_count, pool_position_ladder
from sqzexplore.sweep.space import EarlyStop, SweepDefinition, categorical, uniform
from sqzexplore.sweep.sweepfile import dataset_base


def get_sweep(arg=None):
    a = parse_arg(
        arg,
        runlocal=False,
        dataset="digits",
        experiment="",
        data_dir="",
        n_trials=48,
        max_mib=0.0,
        seed=0,
    )
    preset(a, arg, a.runlocal, n_trials=6)  # a typed n_trials=N wins over the preset
    base = dataset_base(a.dataset, a.runlocal, a.experiment, near=__file__)
    fixed = {"data.data_dir": a.data_dir} if a.data_dir else {}
    return SweepDefinition(
        name="frontier",
        base=base,
        fixed=fixed,
        space={
            "model.squeeze_ratio": uniform(0.125, 1.0, step=0.0625),
            "model.pct_3x3": uniform(0.125, 0.875, step=0.125),
            "model.pool_after": categorical(*pool_position_ladder(base_pool_count(base))),
            "model.bypass": categorical("none", "simple", "complex"),
        },
        objectives=[("final.top1", "maximize"), ("complexity.params", "minimize")],
        sampler="nsga2",
        n_trials=a.n_trials,
        population_size=4 if a.runlocal else 12,
        seeds=1,
        constraints={"max_mib": a.max_mib} if a.max_mib > 0 else {},
        early_stop=EarlyStop("median", n_startup_points=8, n_warmup_evals=1),
        seed=a.seed,
    )
