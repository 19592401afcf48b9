"""Training design points: one driver for a lone run and for a population of seeds.

- driver.py: the one training driver: every phase of a run (start-up, run files, restore or
  init, compile, metrics, the block loop with log / eval / checkpoint / SIGTERM, result) for
  1..N members; `NonFiniteError`.
- engines.py: what the driver trains: `Lone` (one run's program; a non-finite step raises) or
  `Population` (N members as one program; a non-finite member is frozen); the members' restore.
- loop.py: `train_and_evaluate(config, workdir)`: one resumable run (sweeps call it per trial).
- population.py: `train_population(configs, workdirs)`: seeds (or widths) of a point as one
  program; `auto_population_size`, `check_population`.
- padding.py: width-padded populations (members that differ in channel widths, as one network).
- programs.py: a run's compiled init, step, block and eval, kept in memory for the point's other
  seeds (the program cache), and compile-ahead (`prepare`).
- dispatch.py: how steps are dispatched: steps per dispatch, the masked block (one program for
  every block length), the cadence, the population lowering and programs.
- state.py: `TrainState` (the pytree a step maps to a new one) and `init_state`.
- step.py: the pure `make_train_step` / `make_eval_step` (the trainer, benchmarks and tests run
  these same functions).
- evaluate.py: exact evaluation over a whole eval split (`EvalRunner`, `evaluate_params`).
- preflight.py: the checks once the devices are known (platform, memory, workdir).
- xla_options.py: the persistent compile cache and XLA compile options, set before any compile.
- preempt.py: SIGTERM handling; events.py: the named points between writes (tests kill there).
- usage.py: `sqz train --help`'s text; runner.py: the trainer as a sweep runner.
- cli.py: `sqz train` (also `python -m sqzexplore.train`).

The names below are imported on first use, so `sqz train --help` and argument errors answer
before jax is imported, and `sqz train` can install its SIGTERM handler before JAX loads.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "validate_config": "sqzexplore.config",
    "WorkdirConflictError": "sqzexplore.rundir",
    "load_run": "sqzexplore.checkpoint",
    "evaluate_params": "sqzexplore.train.evaluate",
    "NonFiniteError": "sqzexplore.train.driver",
    "train_and_evaluate": "sqzexplore.train.loop",
    "train_population": "sqzexplore.train.population",
    "TrainState": "sqzexplore.train.state",
    "init_state": "sqzexplore.train.state",
    "make_eval_step": "sqzexplore.train.step",
    "make_train_step": "sqzexplore.train.step",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
