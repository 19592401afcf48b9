"""Many workers on a real PostgreSQL server: three `sqz sweep run` processes share one sweep
through `--storage postgresql://...`, one is SIGKILLed mid-run, a rerun finishes the sweep, and
nothing is lost or trained twice; the results equal the journal-file engine's for the same sweep.
The row protocol itself, and a populations sweep with the real trainer (`--population 3`, 1 and 2
workers) that trains every run. The engine's other operations run on both stores in
tests/test_sweep_engine.py, test_sweep_schedule.py and test_sweep_kills.py.

Starts a throwaway local server (tests/postgres_server.py; Debian's `postgresql` package). Where
its binaries are absent it skips, saying why, except under CI=true, where it fails
(tests/required_service.py). The fake runner keeps most tests to seconds.
"""

from __future__ import annotations

import json
import signal

import optuna
import pytest
import sqlalchemy as sa
from postgres_server import create_database, missing_reason, postgres_server
from required_service import import_or_require, require
from test_sweep_support import (
    FAKE_RUNNER,
    TESTS,
    run_inprocess,
    sr_space,
    sweep_cli,
    wait_for,
    write_sweep,
)

from sqzexplore.rundir import read_jsonl
from sqzexplore.sweep import dbclaims
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs
from sqzexplore.sweep.sweepdir import open_storage

pytestmark = require(missing_reason())
psycopg = import_or_require("psycopg", "psycopg (requirements.txt) is not installed")


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


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


def test_database_claims_one_winner_stale_takeover_and_a_lost_owner(tmp_path, postgres):
    """The row protocol itself: one claim per run; a silent owner's claim is taken over by the
    exact (token, beat) it had; the old owner's heartbeat and finish then fail and change
    nothing."""
    url = create_database(postgres, "claims_unit")
    open_storage(url, None)  # creates Optuna's tables and ours
    runs = dbclaims.DbRuns(url, "study", tmp_path, stale_after_s=1.0)
    runs.create()
    runs.add_runs(0, "p0", [0, 1], ["p0-s0", "p0-s1"])
    runs.add_runs(0, "p0", [0, 1], ["p0-s0", "p0-s1"])  # idempotent
    rows, now = runs.snapshot()
    assert [(r.run_id, r.state) for r in rows] == [("p0-s0", "pending"), ("p0-s1", "pending")]
    first = runs.try_claim(rows[0], "a", now)
    assert first is not None and first.path.exists()  # the display copy for `status`
    assert runs.try_claim(rows[0], "b", now) is None  # the row we saw is no longer pending
    fresh, now = runs.snapshot()
    assert not runs.claimable(fresh[0], now)  # live: its owner (this process) beats
    # The owner goes silent on "another host": its claim is stale after 1 s by the DB's clock.
    with runs.engine.begin() as conn:
        silent = sa.func.now() - sa.text("interval '5 seconds'")
        conn.execute(
            dbclaims.RUNS.update()
            .where(dbclaims.RUNS.c.run_id == "p0-s0")
            .values(host="elsewhere", heartbeat=silent)
        )
    stale, now = runs.snapshot()
    assert runs.claimable(stale[0], now)
    second = runs.try_claim(stale[0], "c", now)
    assert second is not None
    assert runs.try_claim(stale[0], "d", now) is None  # the same stale view loses now
    assert not first.beat() and not first.still_mine()  # the old owner learns it lost
    assert not runs.finish(first, "complete", [0.9])  # and cannot record an outcome
    assert second.beat() and runs.finish(second, "complete", [0.5, 1.0])
    done, _ = runs.snapshot()
    assert (done[0].state, done[0].outcome, done[0].handed_out) == ("done", "complete", 2)
    assert json.loads(done[0].run_values) == [0.5, 1.0]
    runs.close()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_populations_on_postgres_train_every_run(tmp_path, postgres, workers, capsys):
    """`--population 3` on PostgreSQL: 3 squeeze-ratio points x 2 seeds of the tiny digits
    experiment with the real trainer. A worker claims a point's seeds and fills its third slot
    through `claim_width_runs` (which registers new points under the database's proposal
    lock); every run trains once and completes, with 1 worker and with 2. (On main before the
    run store, the database engine had no `lock` for claim_width_runs: 0 of 6 runs.)"""
    from sqzexplore.sweep import cli as sweep_cli_main
    from sqzexplore.sweep.space import Experiment

    storage = create_database(postgres, f"populations_{workers}")
    path = write_sweep(
        tmp_path / "pop.py",
        doc="Three squeeze ratios of the tiny digits point, two seeds each, as populations.",
        name="pgpop",
        base=Experiment(str(TESTS / "data" / "tiny_digits.py"), {}),
        fixed={"num_steps": 4, "eval_every_epochs": 0.1, "log_every_steps": 2},
        space=sr_space(0.125, 0.25, 0.5),
        seeds=2,
    )
    workdir = tmp_path / "w"
    argv = ["run", str(path), "--workdir", str(workdir), "--progress", "off"]
    argv += ["--population", "3", "--storage", storage, "--workers", str(workers)]
    argv += ["--compile-ahead", "off"]  # CI's 2 cores: no compile beside the training one
    assert sweep_cli_main.main(argv) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "6 done, 0 running, 0 failed" in out, out
    sweep_dir = sd.SweepDir(workdir)
    runs = collect_runs(sweep_dir)
    assert len(runs) == 6 and all(r.state == sd.COMPLETE for r in runs), runs
    assert all(r.result["steps"] == 4 for r in runs)
    trials = optuna.load_study(
        study_name=sweep_dir.state()["study_name"], storage=storage
    ).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    engine = sa.create_engine(storage)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(dbclaims.RUNS)).all()
    engine.dispose()
    # Every run handed out once (nothing trained twice), every row done and complete.
    assert sorted((r.state, r.outcome, r.handed_out) for r in rows) == [("done", "complete", 1)] * 6
    assert not (workdir / "sweep.lock").exists()  # the database decided: no file lock
    logs = out + "".join(p.read_text() for p in sweep_dir.logs.glob("*")) if workers > 1 else out
    assert "as one population" in logs or "one width-padded population" in logs, logs
    # claim_width_runs ran: other points were weighed for the group's free slot.
    assert "not padded:" in logs or "padded into its program" in logs, logs
