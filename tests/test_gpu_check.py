"""benchmarks/gpu_check.sh as the GPU image runs it, on this CPU.

The GPU image has no virtualenv: the interpreter's own python, the project's dependencies only on
PYTHONPATH (the carried wheels installed into a target directory). Here that is the base
interpreter of this virtualenv (`sys._base_executable`) with the venv's site-packages on
PYTHONPATH and the venv's bin off PATH: no .pth file runs, so the checkout is found only because
gpu_check.sh puts it first, and every child process (compile_time's, the sweep's workers) must
keep the inherited path. The plan test checks the stage limits against the 8-minute budget; the
compile test runs one stage that starts child processes; the slow test runs every stage at smoke
sizes and fails if any but torch (not installed here) exits non-zero.
"""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
DEVICE_CALL_S = 480  # the most one device run of the check may take (8 minutes)


def image_env(out: Path, **extra: str) -> dict[str, str]:
    """The environment of the GPU image's kind: no virtualenv, dependencies on PYTHONPATH."""
    venv_bin = os.path.dirname(sys.executable)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        PATH=os.pathsep.join(path) or "/usr/bin:/bin",
        PYTHON=getattr(sys, "_base_executable", sys.executable),
        PYTHONPATH=os.pathsep.join(site.getsitepackages()),
        OUT=str(out),
        **extra,
    )
    env.pop("JAX_PLATFORMS", None)  # as on the GPU machine: jax picks its backend
    return env


def run_check(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    return subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env=image_env(out, GPU_CHECK_SMOKE="1", **extra),
        capture_output=True,
        text=True,
        timeout=3600,
    )


def stage_rows(out: Path) -> dict[str, str]:
    """stage -> exit column of summary.md's stage table."""
    rows = {}
    for line in (out / "summary.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("stage", "---"):
            rows[cells[0]] = cells[3]
    return rows


def test_plan_core_stages_fit_the_budget():
    """The core stages' limits plus the environment's share fit the budget, which fits a device
    call; every stage has a limit; an unknown stage name is refused before anything runs."""
    env = dict(os.environ, GPU_CHECK_PLAN="1")
    plan = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    budget, core_total, _ = (int(x) for x in re.findall(r"(\d+)s", lines[0]))
    stages = [line.split() for line in lines[1:]]
    core = [int(limit) for kind, _, limit in stages if kind == "core"]
    assert core_total >= sum(core) and core_total <= budget <= DEVICE_CALL_S
    names = [name for _, name, _ in stages]
    assert names[:5] == ["compile_cold", "sweep", "population", "e2e", "sweep_warm"]
    assert "widths" in names and "torch" in names
    env["STAGES"] = "compile_cold nonsense"
    bad = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown stage 'nonsense'" in bad.stderr


def test_compile_stages_run_in_the_image_environment(tmp_path):
    """compile_time starts a fresh process per run: it must keep the inherited PYTHONPATH (the
    dependencies) and not shadow the standard library with benchmarks/*.py."""
    proc = run_check(tmp_path, STAGES="compile_cold")
    out = tmp_path / "out"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no venv" in (out / "env.txt").read_text()
    assert stage_rows(out) == {"compile_cold": "0"}, (out / "log.txt").read_text()[-3000:]
    stages = json.loads((out / "stages.json").read_text())
    run = stages["compile_cold"]["runs"]["this"][0]
    assert run["init"] > 0 and run["step"] > 0 and run["writes"] >= 1  # cached for the next
    summary = (out / "summary.md").read_text()
    assert "cold digits programs" in summary and "not selected (STAGES): sweep" in summary


@pytest.mark.slow
def test_every_stage_runs_in_the_image_environment(tmp_path):
    """GPU_CHECK_SMOKE=1: every stage at tiny sizes; each exits 0 except torch (not installed
    here, so its bench exits with a note; on the GPU image it runs)."""
    proc = run_check(tmp_path)
    out = tmp_path / "out"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = stage_rows(out)
    expected = {
        "compile_cold", "sweep", "population", "e2e", "sweep_warm", "compile_cached",
        "compile_next_point", "compile_autotune0", "torch", "compile_parallel", "widths",
    }  # fmt: skip
    assert set(rows) == expected
    failed = {k: v for k, v in rows.items() if v != "0" and k != "torch"}
    assert not failed, (out / "log.txt").read_text()[-5000:]
    stages = json.loads((out / "stages.json").read_text())
    assert {"compile_cold", "sweep", "sweep_warm", "population", "e2e", "widths"} <= set(stages)
