"""Named points in a run's life, between two of its writes to disk.

`reached(point, step)` is called at each; it does nothing. The tests replace it to kill the
process (SIGKILL) or send it SIGTERM at exactly that point, so that every window a cluster could
hit (preemption, OOM killer, node failure) is exercised, not only random moments:

    startup               the run has started (preemption handler installed), nothing loaded
    compile               about to compile the train step
    step                  train step `step` dispatched (not yet synced)
    eval                  about to evaluate after step `step`
    checkpoint_save       the save of step `step` started (written in the background)
    checkpoint_committed  the checkpoint of step `step` is on disk with its checksums
    before_result         the last checkpoint is committed; result.json not yet written
"""

from __future__ import annotations

POINTS = (
    "startup",
    "compile",
    "step",
    "eval",
    "checkpoint_save",
    "checkpoint_committed",
    "before_result",
)


def reached(point: str, step: int) -> None:
    """The run is at `point` (one of POINTS) at train step `step`. A no-op (tests replace it)."""
