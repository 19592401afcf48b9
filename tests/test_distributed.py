"""Two local processes joined with jax.distributed (2 fake CPU devices each) match one process
with 4 devices: same global batch, same result."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import os, sys, json
workdir, pid, nproc, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
from sqzexplore.config import load_config_file
from sqzexplore import train
c = load_config_file(sys.argv[5], "epochs=2")
if nproc > 1:
    c.distributed.initialize = "true"
    c.distributed.coordinator_address = f"127.0.0.1:{port}"
    c.distributed.num_processes = nproc
    c.distributed.process_id = pid
r = train.train_and_evaluate(c, workdir)
import jax
print("RESULT", pid, jax.process_count(), jax.device_count(), json.dumps(r["final"]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, pid, nproc, devices, port):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    cfg = os.path.join(REPO, "tests", "data", "tiny_digits.py")
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(workdir), str(pid), str(nproc), str(port), cfg],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices(tmp_path):
    single = _launch(tmp_path / "single", 0, 1, 4, 0)
    out = single.communicate(timeout=400)[0]
    assert single.returncode == 0, out
    port = _free_port()
    procs = [_launch(tmp_path / "multi", pid, 2, 2, port) for pid in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o
    line = [x for x in outs[0].splitlines() if x.startswith("RESULT")][0]
    _, pid, pcount, dcount, _ = line.split(" ", 4)
    assert (pcount, dcount) == ("2", "4")
    a = json.loads((tmp_path / "single" / "result.json").read_text())
    b = json.loads((tmp_path / "multi" / "result.json").read_text())
    assert b["process_count"] == 2 and b["device_count"] == 4
    # The first log point (5 steps) agrees to float32 round-off: that is the check that the two
    # processes split the data and average the gradients exactly as one process does. After 44
    # Adam steps the different all-reduce order (gloo across processes vs in-process) leaves
    # drift: measured 2.0235 vs 2.0271 final loss (0.18%) and 5 of 360 images (1.4%) flipped at
    # ~30% accuracy, so the final metrics only have to agree to 1% and 3% (a process training on
    # the wrong data or without the all-reduce misses both by far more, at the first log point).
    first = lambda d: next(
        json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
    )
    assert first("single")["step"] == first("multi")["step"]
    assert abs(first("single")["loss"] - first("multi")["loss"]) < 1e-5
    assert abs(a["final"]["loss"] - b["final"]["loss"]) < 0.01 * a["final"]["loss"]
    assert abs(a["final"]["top1"] - b["final"]["top1"]) <= 0.03
