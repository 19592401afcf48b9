"""Preemption: SIGTERM (SLURM, TPU maintenance, `kill`) asks the trainer to save and exit.

The handler only sets a process-wide flag; the trainer reads it at its own safe points (after
each host sync), so a signal that arrives while the process is blocked in XLA (compiling,
waiting for a step, evaluating, saving) is acted on as soon as that call returns: never lost,
never acted on half-way. Installed by `sqz train` before anything heavy is imported, and by
`train_and_evaluate` for its whole run (sweep workers call it in-process); the previous handler
is restored when a run ends.
"""

from __future__ import annotations

import signal
from typing import Any

_requested = False
_depth = 0


def _handle(signum: int, frame: Any) -> None:
    global _requested
    _requested = True


class PreemptionFlag:
    """While installed, SIGTERM sets `requested` instead of killing the process.

    Nested installs (the CLI, then the run it starts) share the flag: a SIGTERM that arrives
    while the CLI is still loading the config is seen by the run. The outermost install clears
    it, so a worker running several trials in one process starts each one unflagged.
    """

    def __init__(self) -> None:
        global _requested, _depth
        self._previous: Any = None
        self._installed = False
        try:
            previous = signal.signal(signal.SIGTERM, _handle)
        except ValueError:  # not the main thread (e.g. a notebook worker thread)
            return
        if _depth == 0:
            _requested = False
        self._previous, self._installed = previous, True
        _depth += 1

    @property
    def requested(self) -> bool:
        return _requested

    def restore(self) -> None:
        global _depth
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
            self._installed = False
            _depth -= 1
