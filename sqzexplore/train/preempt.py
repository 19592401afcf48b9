"""Preemption: SIGTERM (SLURM, TPU maintenance, `kill`) asks the trainer to save and exit."""

from __future__ import annotations

import signal
from typing import Any


class PreemptionFlag:
    """SIGTERM sets a flag; the loop checkpoints at the next step and exits cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker thread)
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
