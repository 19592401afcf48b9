"""Helpers shared by the sweep tests (no tests here): tiny sweep files and in-process runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqzexplore.sweep.engine import SweepEngine
from sqzexplore.sweep.fake_runner import run_fake_trial
from sqzexplore.sweep.space import check_against_config, load_base_config, load_sweep
from sqzexplore.sweep.sweepdir import SweepDir, init_sweep_dir
from sqzexplore.sweep.workers import run_worker

REPO = Path(__file__).resolve().parents[1]
FAKE_RUNNER = "sqzexplore.sweep.fake_runner:run_fake_trial"


def write_sweep(path: Path, doc: str = "Test sweep: what does SR buy?", **fields) -> Path:
    """A sweep file whose get_sweep returns `fields` (a plain dict with dotted keys)."""
    fields.setdefault("name", "t")
    fields.setdefault("objectives", [("final.top1", "maximize"), ("complexity.params", "minimize")])
    fields.setdefault("fixed", {"num_steps": 8})
    path.write_text(f'"""{doc}"""\n\n\ndef get_sweep(arg=None):\n    return {fields!r}\n')
    return path


def sr_space(*values: float) -> dict:
    return {"model.squeeze_ratio": {"type": "categorical", "values": list(values)}}


def run_inprocess(sweep_file: Path, workdir: Path, arg=None, runner=run_fake_trial, **kw):
    """Create (or reuse) the sweep directory and run one worker in this process."""
    defn = load_sweep(str(sweep_file), arg)
    base = load_base_config(defn)
    check_against_config(defn, base)
    sweep_dir, _ = init_sweep_dir(
        workdir, defn, base, sweep_file=str(sweep_file), arg=arg, storage=None
    )
    kw.setdefault("heartbeat_s", 0.5)
    kw.setdefault("log", lambda s: None)
    summary = run_worker(sweep_dir, defn, base, runner=runner, worker="test", **kw)
    return sweep_dir, summary


def study_of(sweep_dir: SweepDir):
    """The sweep's Optuna study (read through the engine, as the workers open it)."""
    defn = sweep_dir.definition()
    from sqzexplore.config import base_config

    return SweepEngine(sweep_dir, defn, base_config(), worker="inspect").study


def sweep_cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """`python -m sqzexplore.sweep.cli ...` in a subprocess, from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-m", "sqzexplore.sweep.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )
