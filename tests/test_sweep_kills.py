"""Kills aimed at the sweep engine's narrow windows, and bad `sqz sweep` input.

Each kill test runs `sqz sweep run` in a subprocess with a hook that SIGKILLs the process at one
exact moment of registering a design point or claiming a run, reruns the sweep, and checks that
every grid point was trained exactly once: on the journal store, and on a real PostgreSQL server
(tests/postgres_server.py; skipped where it cannot start, failing under CI=true). The bad-input
tests check that a mistake is a clear error that names the argument and leaves nothing on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from fake_runner import run_fake_trial
from postgres_server import new_database, required_server
from test_sweep_support import (
    DIGITS,
    FAKE_RUNNER,
    REPO,
    TESTS,
    sr_space,
    study_of,
    sweep_cli,
    write_sweep,
)

from sqzexplore.rundir import read_jsonl
from sqzexplore.sweep import cli
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs
from sqzexplore.sweep.space import Experiment

# Runs `sqz sweep` with a SIGKILL at the NTH time the chosen moment comes (KILL_AT=moment:nth).
HOOK = r"""
import functools, os, signal, sys
sys.path.insert(0, sys.argv.pop(1))  # tests/ (the fake runner)
moment, nth = os.environ["KILL_AT"].split(":")
count = [0]

def kill(*_):
    count[0] += 1
    if count[0] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)

def hook(owner, name, *, before=False, when=lambda *a, **k: True):
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapped(*a, **k):
        hit = when(*a, **k)
        if before and hit:
            kill()
        out = original(*a, **k)
        if not before and hit:
            kill()
        return out

    setattr(owner, name, wrapped)

import optuna
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalStorage
from sqzexplore.sweep.dbclaims import DbRuns

Storage = RDBStorage if os.environ.get("KILL_STORAGE") == "postgres" else JournalStorage
if moment == "enqueued":  # the grid point's intent is stored; nothing asked yet
    hook(optuna.study.Study, "enqueue_trial")
elif moment == "trial-created":  # the Optuna trial exists, its parameters are not stored
    hook(Storage, "set_trial_param", before=True)
elif moment == "dirs-written":  # trial directories written, the trial not marked registered
    hook(Storage, "set_trial_user_attr", before=True, when=lambda s, t, k, v: k == "point")
elif moment == "rows-added":  # database: the run rows are there, the trial not marked registered
    hook(DbRuns, "add_runs")
elif moment == "row-claimed":  # database: a run's row is claimed, its run not started
    hook(DbRuns, "try_claim", when=lambda *a, **k: True)
elif moment == "claim-appears":  # the instant a claim file exists, before its run starts
    hook(os, "open", when=lambda *a, **k: str(a[0]).endswith(".claim"))  # created, then written
    hook(os, "link", when=lambda *a, **k: str(a[1]).endswith(".claim"))  # appears whole
else:
    raise SystemExit(f"unknown KILL_AT moment {moment}")

from sqzexplore.sweep.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_with_kill(tmp_path, moment: str, nth: int, args: list[str], storage: str = "journal"):
    script = tmp_path / "kill_hook.py"
    script.write_text(HOOK)
    env = {"KILL_AT": f"{moment}:{nth}", "KILL_STORAGE": storage, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(script), str(TESTS), *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def postgres():
    with required_server() as url:
        yield url


@pytest.mark.parametrize(
    "storage, moment, nth",
    [
        ("journal", "enqueued", 1),
        ("journal", "enqueued", 3),
        ("journal", "trial-created", 1),  # issue 10 item 4: this lost a grid point for good
        ("journal", "trial-created", 2),
        ("journal", "dirs-written", 2),
        ("journal", "claim-appears", 1),
        ("journal", "claim-appears", 2),
        ("postgres", "enqueued", 3),
        ("postgres", "rows-added", 2),
        ("postgres", "dirs-written", 2),
        ("postgres", "row-claimed", 2),
    ],
)
def test_a_kill_while_registering_or_claiming_loses_and_repeats_nothing(
    tmp_path, request, storage, moment, nth
):
    values = (0.125, 0.25, 0.5, 0.75)
    path = write_sweep(tmp_path / "k.py", space=sr_space(*values), fixed={"num_steps": 4})
    workdir = tmp_path / "w"
    args = ["run", str(path), "--workdir", str(workdir), "--runner", FAKE_RUNNER]
    args += ["--progress", "off", "--heartbeat-s", "0.2", "--poll-s", "0.1"]
    if storage == "postgres":  # the same windows of the database store (store_db.py)
        args += ["--storage", new_database(request.getfixturevalue("postgres"))]
    killed = run_with_kill(tmp_path, moment, nth, args, storage)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    rerun = sweep_cli(*args)
    out, err = rerun.communicate(timeout=120)  # a torn claim would hold its run for 300 s
    assert rerun.returncode == 0, err[-2000:]
    assert "4 done, 0 running, 0 failed" in out and " 0 pending" in out

    sweep_dir = sd.SweepDir(workdir)
    runs = collect_runs(sweep_dir)
    assert sorted(r.params["model.squeeze_ratio"] for r in runs) == list(values)
    for tid in sweep_dir.trial_ids():  # each grid point trained exactly once
        assert len(read_jsonl(sweep_dir.trial_dir(tid) / "fake_attempts.jsonl")) == 1
    trials = study_of(sweep_dir).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["model.squeeze_ratio"] for t in complete) == list(values)
    assert all(t.state.name == "COMPLETE" for t in trials)  # no half-made trial left behind
    assert not list(sweep_dir.claims.glob("*.claim"))


# ------------------------------------------------------------------------------ bad input
def run_args(tmp_path, *extra: str) -> list[str]:
    path = write_sweep(tmp_path / "s.py", space=sr_space(0.125, 0.25))
    return ["run", str(path), "--workdir", str(tmp_path / "w"), "--progress", "off", *extra]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--workers", "0"], ["--workers must be an integer >= 1", "'0'"]),
        (["--workers", "-1"], ["--workers must be an integer >= 1", "'-1'"]),
        (["--workers", "two"], ["--workers must be an integer >= 1", "'two'"]),
        (["--slurm", "--array", "0"], ["--array must be an integer >= 1"]),
        (["--heartbeat-s", "nan"], ["--heartbeat-s must be a number"]),
        (["--max-runs", "-2"], ["--max-runs must be an integer >= 0"]),
    ],
)
def test_bad_numbers_are_usage_errors_that_create_nothing(tmp_path, capsys, extra, words):
    with pytest.raises(SystemExit) as e:
        cli.main(run_args(tmp_path, "--runner", FAKE_RUNNER, *extra))
    assert e.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--runner", "nope"], ["--runner", "module:function"]),
        (["--runner", "no_such_module:f"], ["--runner", "cannot import"]),
        (["--runner", f"{FAKE_RUNNER}x"], ["--runner", "no function"]),
        (["--runner", FAKE_RUNNER, "--storage", "bogus://"], ["--storage bogus://", "sqlite"]),
    ],
)
def test_bad_runner_or_storage_is_refused_before_anything_is_written(
    tmp_path, capsys, extra, words
):
    assert cli.main(run_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for w in words:
        assert w in err
    assert not (tmp_path / "w").exists()  # no stub sweep directory, no sweep.json


def test_a_sweep_whose_every_trial_fails_exits_nonzero_with_a_summary(tmp_path, capsys):
    rc = cli.main(run_args(tmp_path, "--runner", "test_sweep_kills:always_fails"))
    captured = capsys.readouterr()
    assert rc == 1
    assert "0 done, 0 running, 2 failed" in captured.out
    assert "all 2 trials failed" in captured.err and "DataError: no dataset 'nope'" in captured.err


def always_fails(config, workdir, *, on_eval=None):
    class DataError(ValueError):
        pass

    raise DataError("no dataset 'nope'")


def test_constraints_that_exclude_every_point_exit_nonzero(tmp_path, capsys):
    path = write_sweep(
        tmp_path / "c.py", space=sr_space(0.125, 0.25), constraints={"max_params": 1000}
    )
    args = ["run", str(path), "--workdir", str(tmp_path / "w"), "--runner", FAKE_RUNNER]
    assert cli.main([*args, "--progress", "off"]) == 1
    err = capsys.readouterr().err
    assert "every design point was rejected before training (2 over the sweep's constraints" in err
    assert "relax the constraints" in err


def fails_at_sr_025(config, workdir, *, on_eval=None):
    if config.model.squeeze_ratio == 0.25:
        raise FloatingPointError("non-finite loss")
    return run_fake_trial(config, workdir, on_eval=on_eval)


def test_partial_failures_still_exit_zero(tmp_path):
    assert cli.main(run_args(tmp_path, "--runner", "test_sweep_kills:fails_at_sr_025")) == 0


def test_export_wandb_into_an_existing_directory(tmp_path, capsys):
    path = write_sweep(
        tmp_path / "wb.py", name="wbdir", base=Experiment(DIGITS), space=sr_space(0.125)
    )
    (tmp_path / "out").mkdir()
    assert cli.main(["export-wandb", str(path), "--output", str(tmp_path / "out")]) == 0
    written = tmp_path / "out" / "wbdir.wandb.yaml"
    assert written.is_file() and str(written) in capsys.readouterr().out
    assert "wbdir" in written.read_text()


def test_worker_command_needs_only_the_sweep_directory(tmp_path, capsys):
    args = run_args(tmp_path, "--runner", FAKE_RUNNER, "--max-runs", "1")
    assert cli.main(args) == 0
    capsys.readouterr()
    workdir = str(tmp_path / "w")
    assert cli.main(["worker", workdir, "--runner", FAKE_RUNNER]) == 0
    capsys.readouterr()
    assert cli.main(["status", workdir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["complete"] == 2
    assert cli.main(["worker", str(tmp_path / "nothing")]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
