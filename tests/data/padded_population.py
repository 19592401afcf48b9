"""Train the width-padded population of tests/test_padding.py, optionally with a fault.

    python tests/data/padded_population.py WORKDIR [POINT[@STEP]:SIGNAL]

Members: the tiny digits point (2 epochs: 44 steps) at squeeze ratio 0.125, 0.5, 1.0 (pct_3x3
0.5) and pct_3x3 0.25, 0.75 (squeeze ratio 0.25), seeds 0-4, in WORKDIR/m0 ... m4. The fault (as in
fault_train.py) sends SIGNAL to this process when the run reaches POINT (at train step STEP).
"""

import os
import signal
import sys

from sqzexplore.config import load_config_file
from sqzexplore.train import events
from sqzexplore.train.population import train_population

HERE = os.path.dirname(os.path.abspath(__file__))
POINTS = [(0.125, 0.5), (0.5, 0.5), (1.0, 0.5), (0.25, 0.25), (0.25, 0.75)]


def configs(epochs: float = 2.0) -> list:
    out = []
    for seed, (sr, pct) in enumerate(POINTS):
        c = load_config_file(f"{HERE}/tiny_digits.py:epochs={epochs}")
        c.seed, c.model.squeeze_ratio, c.model.pct_3x3 = seed, sr, pct
        out.append(c)
    return out


if __name__ == "__main__":
    workdir = sys.argv[1]
    if len(sys.argv) > 2:
        where, sig_name = sys.argv[2].rsplit(":", 1)
        point, _, at_step = where.partition("@")
        assert point in events.POINTS, point
        sig = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}[sig_name]
        fired = []

        def reached(name: str, step: int) -> None:
            if fired or name != point or (at_step and step != int(at_step)):
                return
            fired.append(1)
            print(f"fault: {sig_name} at {name} step {step}", flush=True)
            os.kill(os.getpid(), sig)

        events.reached = reached
    results = train_population(configs(), [f"{workdir}/m{i}" for i in range(len(POINTS))])
    for r in results:
        print(f"member: {r['status']} {r.get('steps', r.get('step'))}", flush=True)
