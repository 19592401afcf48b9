"""Many workers on a real PostgreSQL server: three `sqz sweep run` processes share one sweep
through `--storage postgresql://...`, one is SIGKILLed mid-run, a rerun finishes the sweep, and
nothing is lost or trained twice; the results equal the journal-file engine's for the same sweep.

Starts a throwaway local server (tests/postgres_server.py; Debian's `postgresql` package). Where
its binaries are absent it skips, saying why, except under CI=true, where it fails
(tests/required_service.py). The fake runner keeps it to seconds.
"""

from __future__ import annotations

import signal
import time

import optuna
import pytest
from postgres_server import create_database, missing_reason, postgres_server
from required_service import import_or_require, require
from test_sweep_support import FAKE_RUNNER, run_inprocess, sr_space, sweep_cli, write_sweep

from sqzexplore.rundir import read_jsonl
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs

pytestmark = require(missing_reason())
psycopg = import_or_require("psycopg", "psycopg (requirements.txt) is not installed")


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def attempts(sweep_dir: sd.SweepDir) -> dict[str, list[dict]]:
    """trial id -> the fake runner's start records (pid, step it resumed from)."""
    return {
        tid: read_jsonl(sweep_dir.trial_dir(tid) / "fake_attempts.jsonl")
        for tid in sweep_dir.trial_ids()
    }


@pytest.mark.slow
def test_three_workers_on_postgres_survive_a_sigkill_and_match_the_journal(tmp_path, postgres):
    storage = create_database(postgres, "sweep_kill")
    path = write_sweep(
        tmp_path / "pg.py",
        name="pg",
        space=sr_space(0.125, 0.25, 0.375, 0.5, 0.75, 1.0),
        seeds=2,
        fixed={"num_steps": 20},
    )
    workdir = tmp_path / "w"
    sweep_dir = sd.SweepDir(workdir)
    gate = tmp_path / "gate"
    args = ["run", str(path), "--workdir", str(workdir), "--runner", FAKE_RUNNER]
    args += ["--progress", "off", "--heartbeat-s", "0.5", "--poll-s", "0.2", "--storage", storage]
    env = {"SQZ_FAKE_STEP_S": "0.03", "SQZ_FAKE_GATE": str(gate)}  # ~0.6 s per run
    first = sweep_cli(*args, env=env)
    procs = [first]
    try:
        # The first creates the directory and the study's tables; then two more join it.
        wait_for(sweep_dir.sweep_json.exists, 90, "the sweep directory")
        procs += [sweep_cli(*args, env=env) for _ in range(2)]
        wait_for(lambda: len(list(sweep_dir.claims.glob("*.claim"))) == 3, 90, "three workers")
        gate.touch()
        victim = procs[1]

        def victim_mid_run():  # the victim has checkpointed a run it has not finished
            for tid, starts in attempts(sweep_dir).items():
                checkpoint = sweep_dir.trial_dir(tid) / "checkpoints" / "fake_state.json"
                mine = starts and starts[-1]["pid"] == victim.pid
                if mine and checkpoint.exists() and sd.run_state(sweep_dir.trial_dir(tid)) is None:
                    return tid
            return None

        killed_trial = wait_for(victim_mid_run, 90, "the victim in the middle of a run")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert victim.returncode == -signal.SIGKILL
        for p in (procs[0], procs[2]):
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
    finally:
        gate.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    rerun = sweep_cli(*args, env={"SQZ_FAKE_STEP_S": "0"})
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, err
    assert "12 done" in out

    runs = collect_runs(sweep_dir)
    assert len(runs) == 12 and all(r.state == sd.COMPLETE for r in runs)
    starts = attempts(sweep_dir)
    assert len({s[0]["pid"] for s in starts.values()}) == 3  # all three workers trained
    for tid, s in starts.items():
        if tid == killed_trial:  # started twice: killed, then resumed from its checkpoint
            assert len(s) == 2 and s[1]["start_step"] > 0 and s[1]["pid"] != victim.pid
        else:
            assert len(s) == 1, f"{tid} was trained {len(s)} times"
    for r in runs:  # every log point once, the resumed run's too
        records = read_jsonl(sweep_dir.trial_dir(r.trial_id) / "metrics.jsonl")
        for split in ("train", "eval"):
            steps = [m["step"] for m in records if m["split"] == split]
            assert steps == sorted(set(steps)) and steps[-1] == 20
    # The study lives in PostgreSQL: one trial per design point, every one complete.
    state = sweep_dir.state()
    study = optuna.load_study(study_name=state["study_name"], storage=storage)
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["point"] for t in trials}) == 6
    assert not (workdir / "study.journal").exists()

    # The journal-file engine trains the same runs to the same results.
    journal_dir, _ = run_inprocess(path, tmp_path / "journal")
    journal = {r.trial_id: r.result["final"] for r in collect_runs(journal_dir)}
    assert {r.trial_id: r.result["final"] for r in runs} == journal
    assert {(r.point, r.seed) for r in runs} == {
        (r.point, r.seed) for r in collect_runs(journal_dir)
    }
