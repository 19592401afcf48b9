"""XLA compile options of the trainer's programs (init, train step, eval).

On XLA:CPU, LLVM code generation is most of a small model's compile time (the digits train step:
~1 s of HLO passes, 7-10 s of code generation on the 2-core CPU VM), and backend optimisation
level 1 cuts it by about a fifth without slowing the step there (benchmarks/RESULTS.md, "Compile
time of the digits train step"). The initialiser runs once per run, so it is compiled at level 1
on every platform: its values are bit-identical to the default build (tests/test_programs.py).
The train step and eval are compiled at level 1 on CPU only: there the step computes different
low-order bits than at the default level (LLVM contracts and orders floating-point operations
differently), so CPU results differ from runs of sqzexplore before this change in the last bits,
and from there in the usual run-to-run way; GPU and TPU keep XLA's defaults.
"""

from __future__ import annotations

import jax

LEVEL_1 = {"xla_backend_optimization_level": 1}
INIT = LEVEL_1


def step_options() -> dict | None:
    """Compile options of the train step and eval on the default backend (None: XLA's)."""
    return dict(LEVEL_1) if jax.default_backend() == "cpu" else None
