"""The sbatch script of `sqz sweep run --slurm`: signal + requeue, --gres, no default memory or
time limit, and the node-side checks of the checkout and the Python, run for real with bash and
stand-ins for `srun` (runs its command) and `scontrol` (logs its arguments)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from test_sweep_support import FAKE_RUNNER, TESTS, make_sweep_dir, sr_space, write_sweep

from sqzexplore.rundir import read_jsonl
from sqzexplore.sweep import cli
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs


def dry_run(tmp_path, capsys, *extra: str) -> list[str]:
    path = write_sweep(tmp_path / "s.py", space=sr_space(0.125, 0.25))
    args = ["run", str(path), "--workdir", str(tmp_path / "w"), "--slurm", "--dry-run", *extra]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "w").exists()
    return out[: out.index("# not submitted")].splitlines()


def test_dry_run_shows_signal_and_requeue_and_accepts_gres(tmp_path, capsys):
    lines = dry_run(tmp_path, capsys, "--gres", "gpu:a100:2", "--signal-s", "120")
    for line in ("#SBATCH --gres=gpu:a100:2", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120"):
        assert line in lines
    assert "#SBATCH --open-mode=append" in lines  # the requeued task appends to its log
    assert not any(line.startswith("#SBATCH --gpus-per-task") for line in lines)
    assert "trap requeue_task USR1" in lines
    assert any(
        'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in x for x in lines
    )
    # Limits only when given, also as raw sbatch lines.
    lines = dry_run(tmp_path, capsys, "--sbatch-arg=--time=02:00:00", "--no-requeue")
    assert "#SBATCH --time=02:00:00" in lines
    assert not any(
        x.startswith(("#SBATCH --mem", "#SBATCH --requeue", "#SBATCH --signal")) for x in lines
    )
    assert "trap requeue_task USR1" not in lines and "#SBATCH --gpus-per-task=1" in lines


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--gres", "gpu"], ["--gres must be NAME[:TYPE]:COUNT", "'gpu'"]),
        (["--signal-s", "0"], ["--signal-s must be an integer >= 1"]),
    ],
)
def test_bad_slurm_values_are_usage_errors(tmp_path, capsys, extra, words):
    path = write_sweep(tmp_path / "s.py", space=sr_space(0.125, 0.25))
    with pytest.raises(SystemExit) as e:
        cli.main(
            ["run", str(path), "--workdir", str(tmp_path / "w"), "--slurm", "--dry-run", *extra]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not (tmp_path / "w").exists()


def test_gres_and_gpus_per_task_together_are_refused(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.py", space=sr_space(0.125, 0.25))
    args = ["run", str(path), "--workdir", str(tmp_path / "w"), "--slurm", "--dry-run"]
    assert cli.main([*args, "--gres", "gpu:1", "--gpus-per-task", "1"]) == 2
    assert "give one of them" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the script, run
def fake_slurm_bin(tmp_path):
    """`srun CMD...` runs CMD; `scontrol ...` appends its arguments to scontrol.log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    (bindir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.log\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    return bindir


def script_for(tmp_path, capsys, *extra: str) -> tuple:
    path = write_sweep(tmp_path / "s.py", space=sr_space(0.125, 0.25, 0.5), fixed={"num_steps": 6})
    workdir = tmp_path / "w"
    args = ["run", str(path), "--workdir", str(workdir), "--slurm", "--dry-run", "--array", "1"]
    args += ["--runner", FAKE_RUNNER, "--poll-s", "0.1", "--heartbeat-s", "0.2", *extra]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    script = tmp_path / "sweep.sbatch"
    script.write_text(out[: out.index("# not submitted")])
    make_sweep_dir(path, workdir)  # what `--slurm` without --dry-run creates before sbatch
    return script, sd.SweepDir(workdir)


def run_script(tmp_path, script, **env):
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    full = {**os.environ, "PATH": f"{fake_slurm_bin(tmp_path)}:{os.environ['PATH']}"}
    full.update(SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="0", PYTHONPATH=path, **env)
    return subprocess.Popen(
        ["bash", str(script)], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_the_script_checks_the_checkout_and_python_on_the_node(tmp_path, capsys):
    script, _ = script_for(tmp_path, capsys, "--checkout", str(tmp_path / "nowhere"))
    proc = run_script(tmp_path, script)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"checkout {tmp_path}/nowhere is not on" in err
    assert "--checkout" in err
    other = tmp_path / "b"
    other.mkdir()
    script, _ = script_for(other, capsys, "--venv", str(tmp_path / "novenv"))
    proc = run_script(other, script)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"Python {tmp_path}/novenv/bin/python is not on" in err
    assert "--venv" in err


def test_near_the_time_limit_the_task_requeues_itself_and_the_rerun_finishes(tmp_path, capsys):
    script, sweep_dir = script_for(tmp_path, capsys)
    gate = tmp_path / "gate"
    proc = run_script(tmp_path, script, SQZ_FAKE_GATE=str(gate), SQZ_FAKE_STEP_S="0.05")
    try:
        deadline = time.time() + 90
        while not any(
            (sweep_dir.trial_dir(t) / "fake_attempts.jsonl").exists() for t in sweep_dir.trial_ids()
        ):
            assert time.time() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@S sends the batch shell
        time.sleep(0.5)
        gate.touch()
        out, err = proc.communicate(timeout=90)
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "time limit near" in out
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "77_0"]
    # The worker stopped after its run: the sweep is not finished yet.
    assert len([r for r in collect_runs(sweep_dir) if r.state == sd.COMPLETE]) < 3
    # The requeued task (the same script again) finishes it; nothing is trained twice.
    (tmp_path / "bin").rename(tmp_path / "bin-first")
    proc = run_script(tmp_path, script)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    runs = collect_runs(sweep_dir)
    assert len(runs) == 3 and all(r.state == sd.COMPLETE for r in runs)
    for tid in sweep_dir.trial_ids():
        assert len(read_jsonl(sweep_dir.trial_dir(tid) / "fake_attempts.jsonl")) == 1
    assert f"PYTHON={sys.executable}" in script.read_text().splitlines()
