"""Squeeze ratio against measured latency: which squeeze width is worth its milliseconds on this
CPU, rather than its parameters?

The squeeze-ratio sweep (sweeps/squeeze_ratio.py, the paper's Fig. 3a) with measured latency
as the second objective instead of parameters: SR over {0.125, 0.25, 0.5, 0.75, 1.0} at
pct_3x3 = 0.5, grid sampler; objectives: maximise final top-1, minimise `latency.ms`, the
median batch-1 latency of the point's model in ONNX Runtime with one intra-op thread on the
host that runs the sweep (sweep/latency.py). Each point is timed once, by the worker before it
trains anything, and cached in the sweep directory per spec, host and runtime; the report adds
the accuracy-vs-latency front (accuracy_vs_latency.png) and a latency column to results.csv and
frontier.csv. A host without ONNX Runtime refuses the sweep in one line before any trial.

`max_latency_ms=X` skips points slower than X ms before they train (like max_params).

Commands:
    sqz sweep run sweeps/latency.py                            # digits (default)
    sqz sweep run sweeps/latency.py --arg runlocal             # smoke: 2 points, 1 seed, 2 epochs
    sqz sweep run sweeps/latency.py --arg max_latency_ms=0.5
    sqz sweep report runs/sweeps/latency

Args: runlocal, dataset (an experiments/<dataset>/ directory), experiment (any experiment file
instead), data_dir (TFDS data_dir), seeds (per point), max_latency_ms (0: no limit).
"""

from sqzexplore.argpresets import preset
from sqzexplore.config import parse_arg
from sqzexplore.sweep.space import SweepDefinition, categorical
from sqzexplore.sweep.sweepfile import dataset_base


def get_sweep(arg=None):
    a = parse_arg(
        arg,
        runlocal=False,
        dataset="digits",
        experiment="",
        data_dir="",
        seeds=3,
        max_latency_ms=0.0,
    )
    preset(a, arg, a.runlocal, seeds=1)  # a typed seeds=N wins over the smoke preset
    fixed = {"model.pct_3x3": 0.5}
    if a.data_dir:
        fixed["data.data_dir"] = a.data_dir
    ratios = (0.125, 0.5) if a.runlocal else (0.125, 0.25, 0.5, 0.75, 1.0)
    return SweepDefinition(
        name="latency",
        base=dataset_base(a.dataset, a.runlocal, a.experiment, near=__file__),
        fixed=fixed,
        space={"model.squeeze_ratio": categorical(*ratios)},
        objectives=[("final.top1", "maximize"), ("latency.ms", "minimize")],
        constraints={"max_latency_ms": a.max_latency_ms} if a.max_latency_ms else {},
        sampler="grid",
        seeds=a.seeds,
    )
