"""Helpers shared by the sweep tests (no tests here): tiny sweep files and in-process runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fake_runner import run_fake_trial

from sqzexplore.sweep.engine import SweepEngine
from sqzexplore.sweep.params import categorical
from sqzexplore.sweep.sweepdir import SweepDir, init_sweep_dir
from sqzexplore.sweep.sweepfile import check_against_config, load_base_config, load_sweep
from sqzexplore.sweep.workers import run_worker

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FAKE_RUNNER = "fake_runner:run_fake_trial"  # tests/fake_runner.py (tests/ is on the path)
DIGITS = str(REPO / "experiments" / "digits" / "squeezenet.py")


def write_sweep(path: Path, doc: str = "Test sweep: what does SR buy?", **fields) -> Path:
    """A sweep file whose get_sweep returns SweepDefinition(**fields) (fields as Python reprs:
    parameters, Experiment and EarlyStop objects print as the code that builds them)."""
    fields.setdefault("name", "t")
    fields.setdefault("objectives", [("final.top1", "maximize"), ("complexity.params", "minimize")])
    fields.setdefault("fixed", {"num_steps": 8})
    path.write_text(
        f'"""{doc}"""\n\n'
        "from sqzexplore.sweep.params import Categorical, Range\n"
        "from sqzexplore.sweep.space import EarlyStop, Experiment, SweepDefinition\n\n\n"
        f"def get_sweep(arg=None):\n    return SweepDefinition(**{fields!r})\n"
    )
    return path


def sr_space(*values: float) -> dict:
    return {"model.squeeze_ratio": categorical(*values)}


def make_sweep_dir(sweep_file: Path, workdir: Path, arg=None, storage=None) -> SweepDir:
    """Create (or reuse) a sweep directory; `storage` None is the journal file."""
    defn = load_sweep(str(sweep_file), arg)
    base = load_base_config(defn)
    check_against_config(defn, base)
    sweep_dir, _ = init_sweep_dir(
        workdir, defn, base, sweep_file=str(sweep_file), arg=arg, storage=storage
    )
    return sweep_dir


def run_inprocess(
    sweep_file: Path, workdir: Path, arg=None, runner=run_fake_trial, storage=None, **kw
):
    """Create (or reuse) the sweep directory and run one worker in this process."""
    sweep_dir = make_sweep_dir(sweep_file, workdir, arg, storage)
    kw.setdefault("heartbeat_s", 0.5)
    kw.setdefault("log", lambda s: None)
    summary = run_worker(sweep_dir, runner=runner, worker="test", **kw)
    return sweep_dir, summary


def study_of(sweep_dir: SweepDir):
    """The sweep's Optuna study (read through the engine, as the workers open it)."""
    return SweepEngine(sweep_dir, worker="inspect").study


def sweep_cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """`python -m sqzexplore.sweep.cli ...` in a subprocess, from the repository root, with
    tests/ on the path (for the fake runner)."""
    path = os.pathsep.join(p for p in (str(REPO), str(TESTS), os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "sqzexplore.sweep.cli", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def wait_for(predicate, timeout: float, what: str):
    """`predicate()`'s first truthy value, polled until `timeout` seconds; fails naming `what`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
