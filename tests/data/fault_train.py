"""`sqz train` with a fault at a named point of the run (sqzexplore/train/events.py).

    python tests/data/fault_train.py POINT[@STEP]:SIGNAL --config=... --workdir=...

sends SIGNAL (TERM or KILL) to this process when the run reaches POINT (at train step STEP, if
given; the first time otherwise): the tests aim kills and preemptions at exact windows.
"""

import os
import signal
import sys

from sqzexplore.train import events
from sqzexplore.train.cli import main

fault, argv = sys.argv[1], sys.argv[2:]
where, sig_name = fault.rsplit(":", 1)
point, _, at_step = where.partition("@")
assert point in events.POINTS, point
sig = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}[sig_name]
fired = False


def reached(name: str, step: int) -> None:
    global fired
    if fired or name != point or (at_step and step != int(at_step)):
        return
    fired = True
    print(f"fault: {sig_name} at {name} step {step}", flush=True)
    os.kill(os.getpid(), sig)


events.reached = reached
sys.exit(main(argv))
