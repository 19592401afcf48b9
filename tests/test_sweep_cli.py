"""`sqz sweep` from the command line, in real subprocesses: SIGKILL and rerun, concurrent runners
sharing a sweep, the SLURM script, status. (The wandb sweep YAML: test_sweep_dashboards.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
from test_sweep_support import (
    FAKE_RUNNER,
    sr_space,
    study_of,
    sweep_cli,
    write_sweep,
)

from sqzexplore.rundir import read_jsonl
from sqzexplore.sweep import cli
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs

S = optuna.trial.TrialState


def attempts(sweep_dir: sd.SweepDir) -> dict[str, list[dict]]:
    """trial id -> the fake runner's start records (one per time the run was started)."""
    return {
        tid: read_jsonl(sweep_dir.trial_dir(tid) / "fake_attempts.jsonl")
        for tid in sweep_dir.trial_ids()
    }


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_sweep_then_rerun_loses_and_repeats_nothing(tmp_path):
    path = write_sweep(
        tmp_path / "k.py",
        space=sr_space(0.125, 0.25, 0.5, 0.75),
        seeds=2,
        fixed={"num_steps": 20},
    )
    workdir = tmp_path / "w"
    sweep_dir = sd.SweepDir(workdir)
    args = [
        "run",
        str(path),
        "--workdir",
        str(workdir),
        "--runner",
        FAKE_RUNNER,
        "--progress",
        "off",
        "--heartbeat-s",
        "0.5",
        "--poll-s",
        "0.2",
    ]
    proc = sweep_cli(*args, env={"SQZ_FAKE_STEP_S": "0.04"})  # ~0.8 s per run

    def mid_run():  # two runs finished and a third has checkpointed but not finished
        done = [t for t in sweep_dir.trial_ids() if sd.run_state(sweep_dir.trial_dir(t))]
        started = [
            t
            for t in sweep_dir.trial_ids()
            if (sweep_dir.trial_dir(t) / "checkpoints" / "fake_state.json").exists()
            and sd.run_state(sweep_dir.trial_dir(t)) is None
        ]
        return len(done) >= 2 and started

    try:
        wait_for(mid_run, 60, "a run in progress after two finished")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = {t: sd.run_state(sweep_dir.trial_dir(t)) for t in sweep_dir.trial_ids()}
    finished_before = {t for t, s in before.items() if s == sd.COMPLETE}
    interrupted = [
        t
        for t, s in before.items()
        if s is None and (sweep_dir.trial_dir(t) / "checkpoints" / "fake_state.json").exists()
    ]
    assert len(finished_before) >= 2 and len(interrupted) == 1
    assert len(list(sweep_dir.claims.glob("*.claim"))) == 1  # the dead process's claim

    rerun = sweep_cli(*args, env={"SQZ_FAKE_STEP_S": "0.005"})
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert "8 done" in out

    runs = collect_runs(sweep_dir)
    assert len(runs) == 8 and all(r.state == sd.COMPLETE for r in runs)
    starts = attempts(sweep_dir)
    for tid in finished_before:
        assert len(starts[tid]) == 1  # never rerun
    (resumed,) = interrupted
    assert len(starts[resumed]) == 2 and starts[resumed][1]["start_step"] > 0  # resumed
    for tid in set(starts) - finished_before - {resumed}:
        assert len(starts[tid]) == 1
    eval_steps = [
        r["step"]
        for r in read_jsonl(sweep_dir.trial_dir(resumed) / "metrics.jsonl")
        if r["split"] == "eval"
    ]
    assert eval_steps == sorted(set(eval_steps)) and eval_steps[-1] == 20  # nothing twice
    trials = study_of(sweep_dir).get_trials()
    assert len(trials) == 4 and all(t.state == S.COMPLETE for t in trials)
    assert len({t.user_attrs["point"] for t in trials}) == 4
    assert not list(sweep_dir.claims.glob("*.claim"))


def test_concurrent_runners_share_the_work_without_repeats(tmp_path):
    path = write_sweep(
        tmp_path / "c.py",
        space=sr_space(0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0),
        fixed={"num_steps": 10},
    )
    workdir = tmp_path / "w"
    sweep_dir = sd.SweepDir(workdir)
    gate = tmp_path / "gate"
    common = [
        "run",
        str(path),
        "--workdir",
        str(workdir),
        "--runner",
        FAKE_RUNNER,
        "--progress",
        "off",
        "--heartbeat-s",
        "0.5",
        "--poll-s",
        "0.2",
    ]
    env = {"SQZ_FAKE_STEP_S": "0.02", "SQZ_FAKE_GATE": str(gate)}
    first = sweep_cli(*common, "--workers", "2", env=env)  # two local worker processes
    second = sweep_cli(*common, env=env)  # and another `sqz sweep run` on the same sweep
    try:
        # Hold every run at its start until all three workers are inside one at the same time.
        wait_for(lambda: len(list(sweep_dir.claims.glob("*.claim"))) == 3, 90, "three workers")
    finally:
        gate.touch()
    for p in (first, second):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    starts = attempts(sweep_dir)
    assert len(starts) == 8 and all(len(s) == 1 for s in starts.values())  # once each
    assert all(r.state == sd.COMPLETE for r in collect_runs(sweep_dir))
    pids = Counter(s[0]["pid"] for s in starts.values())
    assert len(pids) == 3, f"the work was not shared by the three workers: {pids}"
    trials = study_of(sweep_dir).get_trials()
    assert len(trials) == 8 and all(t.state == S.COMPLETE for t in trials)
    logs = sorted(p.name for p in sweep_dir.logs.iterdir())
    assert logs == ["worker-0.log", "worker-1.log"]


def test_slurm_dry_run_prints_an_array_of_workers_and_writes_nothing(tmp_path, capsys):
    from sqzexplore.sweep import slurm

    path = write_sweep(tmp_path / "s.py", space=sr_space(0.125, 0.25))
    workdir = tmp_path / "w"
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = cli.main(
        [
            "run",
            str(path),
            "--workdir",
            str(workdir),
            "--slurm",
            "--dry-run",
            "--array",
            "6",
            "--partition",
            "gpu",
            "--gpus-per-task",
            "2",
            "--time",
            "04:00:00",
            "--storage",
            f"sqlite:///{tmp_path}/study.db",
            "--sbatch-arg=--qos=high",
            "--env-activate",
            "source /opt/env/bin/activate",
            "--runner",
            FAKE_RUNNER,
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    # Nothing written into (or as) the sweep directory; the script is printed only.
    assert not workdir.exists()
    made = ("study.db", "study.db.lock")  # opening the storage checks the URL (and its lock)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in made) == before
    script = out[: out.index("# not submitted")]
    lines = script.splitlines()
    for line in (
        "#SBATCH --array=0-5",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-task=2",
        "#SBATCH --time=04:00:00",
        "#SBATCH --cpus-per-task=8",  # defaults
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --qos=high",
        "#SBATCH --ntasks=1",
        f"#SBATCH --output={workdir}/slurm/%x-%A_%a.out",
        "source /opt/env/bin/activate",
    ):
        assert line in lines
    srun = next(line for line in lines if line.startswith("srun "))
    assert lines.index("source /opt/env/bin/activate") < lines.index(srun)
    assert f"PYTHON={sys.executable}" in lines
    for piece in (
        '"$PYTHON" -m sqzexplore.sweep.cli worker',
        f"-m sqzexplore.sweep.cli worker {workdir}",  # a worker needs only the sweep directory
        "--no-wait",
        f"--runner {FAKE_RUNNER}",
        '--worker-name "slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
    ):
        assert piece in srun
    assert f"CHECKOUT={slurm.default_checkout()}" in lines and 'cd "$CHECKOUT"' in lines
    (tmp_path / "check.sbatch").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "check.sbatch")], check=True)


def test_slurm_script_defaults_and_environment(tmp_path, capsys, monkeypatch):
    """Defaults: 1 GPU, 8 CPUs, no memory or time limit (the partition's) and the running
    venv's activation; 'none' drops a line; bad --time / --mem values are refused with the
    accepted forms named."""
    from sqzexplore.sweep import slurm

    path = write_sweep(tmp_path / "s.py", space=sr_space(0.125, 0.25))
    base = ["run", str(path), "--workdir", str(tmp_path / "w"), "--slurm", "--dry-run"]
    assert cli.main(base) == 0
    lines = capsys.readouterr().out.splitlines()
    for line in ("#SBATCH --gpus-per-task=1", "#SBATCH --cpus-per-task=8"):
        assert line in lines
    assert not any(line.startswith(("#SBATCH --time", "#SBATCH --mem")) for line in lines)
    activate = slurm.default_env_activate()
    if sys.prefix != sys.base_prefix:  # the tests run from a venv: its activate script
        assert activate == f"source {sys.prefix}/bin/activate"
        assert activate in lines
    assert cli.main([*base, "--time", "none", "--mem", "none", "--env-activate", "none"]) == 0
    out = capsys.readouterr().out
    assert "--time=" not in out and "--mem=" not in out and "activate" not in out
    for flag, value, words in (
        ("--time", "4 hours", ["--time", "HH:MM:SS", "4 hours"]),
        ("--mem", "lots", ["--mem", "32G", "lots"]),
        ("--cpus-per-task", "0", ["--cpus-per-task", ">= 1"]),
        ("--gpus-per-task", "-1", ["--gpus-per-task", ">= 0"]),
        ("--array", "0", ["--array", ">= 1"]),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main([*base, flag, value])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err
        assert "Traceback" not in err
    assert not (tmp_path / "w").exists()


def test_slurm_without_sbatch_leaves_no_sweep_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    path = write_sweep(tmp_path / "s.py", space=sr_space(0.125, 0.25))
    rc = cli.main(["run", str(path), "--workdir", str(tmp_path / "w"), "--slurm"])
    assert rc == 2
    assert "sbatch not found" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_slurm_storage_rdb_runs_locally_too(tmp_path, capsys):
    """The RDB storage the SLURM tasks would share also works for a local run."""
    path = write_sweep(tmp_path / "db.py", space=sr_space(0.125, 0.25))
    rc = cli.main(
        [
            "run",
            str(path),
            "--workdir",
            str(tmp_path / "w"),
            "--runner",
            FAKE_RUNNER,
            "--progress",
            "off",
            "--storage",
            f"sqlite:///{tmp_path}/study.db",
        ]
    )
    assert rc == 0 and "2 done" in capsys.readouterr().out
    assert not (tmp_path / "w" / "study.journal").exists()
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/study.db")
    assert [t.state for t in study.trials] == [S.COMPLETE, S.COMPLETE]


def test_status_command(tmp_path, capsys):
    path = write_sweep(tmp_path / "st.py", space=sr_space(0.125, 0.25, 0.5), seeds=2)
    workdir = tmp_path / "w"
    assert (
        cli.main(
            [
                "run",
                str(path),
                "--workdir",
                str(workdir),
                "--runner",
                FAKE_RUNNER,
                "--progress",
                "off",
                "--max-runs",
                "3",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.main(["status", str(workdir)]) == 0
    text = capsys.readouterr().out
    assert "3 points x 2 seed(s) = 6 trials" in text
    assert "3 done, 0 running, 0 failed, 0 stopped early, 0 skipped, 3 pending" in text
    assert "best final.top1" in text and "ETA" in text
    assert cli.main(["status", str(workdir), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["counts"]["complete"] == 3 and st["counts"]["pending"] == 3
    assert st["eta_s"] is not None and st["eta_s"] >= 0
    assert cli.main(["status", str(tmp_path / "nothing")]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


def test_progress_bar_counts_trials_on_stderr(tmp_path, capsys):
    path = write_sweep(tmp_path / "pb.py", space=sr_space(0.125, 0.25), seeds=2)
    rc = cli.main(
        [
            "run",
            str(path),
            "--workdir",
            str(tmp_path / "w"),
            "--runner",
            FAKE_RUNNER,
            "--progress",
            "on",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "4/4" in err and "trial" in err


def test_workers_default_to_one_per_visible_gpu(monkeypatch):
    from sqzexplore.sweep.launch import (
        default_workers,
        mem_fraction_var,
        visible_gpus,
        worker_envs,
    )

    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert visible_gpus() == [] and default_workers([]) == 1
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    gpus = visible_gpus()
    assert gpus == ["0", "1", "2", "3"] and default_workers(gpus) == 4
    assert worker_envs(4, gpus) == [{"CUDA_VISIBLE_DEVICES": g} for g in gpus]
    assert worker_envs(2, gpus) == [
        {"CUDA_VISIBLE_DEVICES": "0,1"},
        {"CUDA_VISIBLE_DEVICES": "2,3"},
    ]
    shared = worker_envs(8, gpus)  # two workers per GPU, each capped to its share of memory
    assert [e["CUDA_VISIBLE_DEVICES"] for e in shared] == gpus * 2
    assert {e[mem_fraction_var()] for e in shared} == {"0.45"}  # the spelling jaxlib reads
    assert worker_envs(3, []) == [{}, {}, {}]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
