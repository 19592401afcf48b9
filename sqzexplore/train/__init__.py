"""Training one design point, and the pieces it is built from.

- state.py: `TrainState` (the pytree a step maps to a new one) and `init_state`.
- step.py: the pure `make_train_step` / `make_eval_step` (the trainer, benchmarks and tests run
  these same functions).
- evaluate.py: exact evaluation over a whole eval split (`EvalRunner`, `evaluate_params`).
- loop.py: `train_and_evaluate(config, workdir)`: the resumable run (sweeps call it per trial).
- programs.py: a run's compiled init, step and eval, kept in memory for the point's other seeds.
- population.py: `train_population(configs, workdirs)`: seeds of a point as one program.
- preflight.py: the checks once the devices are known (platform, memory, workdir).
- preempt.py: SIGTERM handling; events.py: the named points between writes (tests kill there).
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
    "NonFiniteError": "sqzexplore.train.loop",
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
