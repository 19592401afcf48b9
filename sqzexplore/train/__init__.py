"""Training one design point, and the pieces it is built from.

- state.py: `TrainState` (the pytree a step maps to a new one) and `init_state`.
- step.py: the pure `make_train_step` / `make_eval_step` (the trainer, benchmarks and tests run
  these same functions).
- evaluate.py: exact evaluation over a whole eval split (`EvalRunner`, `evaluate_params`).
- loop.py: `train_and_evaluate(config, workdir)`: the resumable run (sweeps call it per trial).
- preempt.py: SIGTERM handling. cli.py: `sqz train` (also `python -m sqzexplore.train`).
"""

from sqzexplore.config import validate_config
from sqzexplore.rundir import WorkdirConflictError, load_run
from sqzexplore.train.evaluate import evaluate_params
from sqzexplore.train.loop import NonFiniteError, train_and_evaluate
from sqzexplore.train.state import TrainState, init_state
from sqzexplore.train.step import make_eval_step, make_train_step

__all__ = [
    "NonFiniteError",
    "TrainState",
    "WorkdirConflictError",
    "evaluate_params",
    "init_state",
    "load_run",
    "make_eval_step",
    "make_train_step",
    "train_and_evaluate",
    "validate_config",
]
