"""Training one design point, and the pieces it is built from.

- state.py: `TrainState` (the pytree a step maps to a new one) and `init_state`.
- step.py: the pure `make_train_step` / `make_eval_step` (the trainer, benchmarks and tests run
  these same functions).
- evaluate.py: exact evaluation over a whole eval split (`EvalRunner`, `evaluate_params`).
- loop.py: `train_and_evaluate(config, workdir)`: the resumable run (sweeps call it per trial).
- preempt.py: SIGTERM handling; events.py: the named points between writes (tests kill there).
- cli.py: `sqz train` (also `python -m sqzexplore.train`).
"""

import importlib
from typing import Any

# Imported on first use, so that `sqz train` can install its SIGTERM handler before JAX loads.
_EXPORTS = {
    "NonFiniteError": "sqzexplore.train.loop",
    "TrainState": "sqzexplore.train.state",
    "WorkdirConflictError": "sqzexplore.rundir",
    "evaluate_params": "sqzexplore.train.evaluate",
    "init_state": "sqzexplore.train.state",
    "load_run": "sqzexplore.rundir",
    "make_eval_step": "sqzexplore.train.step",
    "make_train_step": "sqzexplore.train.step",
    "train_and_evaluate": "sqzexplore.train.loop",
    "validate_config": "sqzexplore.config",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
