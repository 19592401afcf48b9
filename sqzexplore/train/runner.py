"""The trainer as the sweeps' default runner, with the hooks a sweep worker looks for.

A runner is any `fn(config, workdir, *, on_eval=None) -> dict` (sweep/workers.py). A worker offers
more when its runner carries them as attributes, so nothing in the sweep matches runners by name:
- `prepare(config, population=1)`: build a later run's programs ahead (compile-ahead);
- `train_population(configs, workdirs, *, on_eval=None)`: several seeds of one design point as
  one program (population.py);
- `auto_population_size() -> (size, why)`: what `--population auto` picks on this platform.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from sqzexplore.train import loop, population, programs, xla_options


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, **kwargs: Any) -> dict:
    """`sqzexplore.train.loop.train_and_evaluate` (the same arguments), as a sweep runner."""
    return loop.train_and_evaluate(config, workdir, **kwargs)


def prepare(config: ml_collections.ConfigDict, *, population: int = 1) -> Any:
    """`programs.prepare` after `xla_options.configure(config)`: a worker's compile-ahead thread
    can compile before its run has configured the process (the persistent cache, the GPU
    compile options in the program key)."""
    xla_options.configure(config)
    return programs.prepare(config, population=population)


train_and_evaluate.prepare = prepare  # type: ignore[attr-defined]
train_and_evaluate.train_population = population.train_population  # type: ignore[attr-defined]
train_and_evaluate.auto_population_size = population.auto_population_size  # type: ignore[attr-defined]
