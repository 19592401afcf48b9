"""Load on the database-coordinated engine: 16 `sqz sweep run` processes started at the same
moment on a fresh PostgreSQL database, file locks that lock nothing, random SIGKILLs.

Every worker runs with a no-op `fcntl.flock` (tests/shims/sitecustomize.py, switched on by
SQZ_TEST_NOOP_FLOCK=1): the filesystem behaves as one whose locks are not shared between workers
(Lustre `localflock` across nodes). The database alone must then keep every run to one trainer:
each run is completed once (a run whose worker was killed resumes from its checkpoint in one
later attempt), the study holds one COMPLETE trial per design point, and every surviving worker
exits 0. The distinct-hosts variant gives each worker its own host name (SQZ_SWEEP_HOST), so a
killed worker's claims can only be recovered through their database heartbeats going stale.
The journal storage on the same no-op flock is refused, naming the alternative.

The fake runner's trials take 0.1-0.5 s (5-25 steps of 20 ms). Each test prints its scheduling
rate (claims + finishes per second of sweep wall time, trials included); benchmarks/
sweep_scheduling.py measures the engine's own rate with zero-length trials.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time

import optuna
import pytest
import sqlalchemy as sa
from postgres_server import create_database, required_server
from test_sweep_support import FAKE_RUNNER, TESTS, make_sweep_dir, sweep_cli, write_sweep

from sqzexplore.rundir import read_jsonl
from sqzexplore.sweep import store_files
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs
from sqzexplore.sweep.claims import LockUnsupportedError, node_local_flock
from sqzexplore.sweep.dbclaims import RUNS
from sqzexplore.sweep.engine import SweepEngine
from sqzexplore.sweep.params import categorical

# Only the load tests need a server (the refusals need none): where it cannot start they skip,
# saying why, and under CI=true they fail (tests/required_service.py), from the fixture.

WORKERS = 16
KILLS = 4
SR = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
PCT = (0.125, 0.25, 0.5, 0.75, 0.875)
STEPS = 20  # x 5-25 ms (a random step time per worker): 0.1-0.5 s per run


@pytest.fixture(scope="module")
def postgres():
    with required_server() as url:
        yield url


def load_sweep(tmp_path):
    space = {"model.squeeze_ratio": categorical(*SR), "model.pct_3x3": categorical(*PCT)}
    fixed = {"num_steps": STEPS}
    return write_sweep(tmp_path / "load.py", name="load", space=space, seeds=2, fixed=fixed)


def shim_env(extra: dict[str, str]) -> dict[str, str]:
    path = os.pathsep.join([str(TESTS / "shims"), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {"SQZ_TEST_NOOP_FLOCK": "1", "PYTHONPATH": path, **extra}


def run_load(tmp_path, storage: str, *, distinct_hosts: bool, stale_after_s: float, seed: int):
    path = load_sweep(tmp_path)
    workdir = tmp_path / "w"
    sweep_dir = sd.SweepDir(workdir)
    args = ["run", str(path), "--workdir", str(workdir), "--runner", FAKE_RUNNER]
    args += ["--progress", "off", "--heartbeat-s", "0.25", "--poll-s", "0.2"]
    args += ["--stale-after-s", str(stale_after_s), "--storage", storage]
    rng = random.Random(seed)
    envs = [
        shim_env(
            {"SQZ_FAKE_STEP_S": f"{rng.uniform(0.04, 0.12):.4f}"}
            | ({"SQZ_SWEEP_HOST": f"node{k:02d}"} if distinct_hosts else {})
        )
        for k in range(WORKERS)
    ]
    t0 = time.time()
    procs = [sweep_cli(*args, env=env) for env in envs]  # all at once, on a fresh database
    killed: set[int] = set()
    mid_run = 0
    try:
        # Kill KILLS workers, each at a random moment while it is in the middle of a run (chosen
        # among those mid-run then: on a quiet machine a worker picked in advance may have
        # finished its share before its turn).
        deadline = time.time() + 120
        while len(killed) < KILLS and time.time() < deadline:
            busy = [
                k
                for k, p in enumerate(procs)
                if p.pid not in killed and p.poll() is None and running(sweep_dir, p.pid)
            ]
            if not busy:
                if all(p.poll() is not None for p in procs):
                    break
                time.sleep(0.02)
                continue
            k = rng.choice(busy)
            time.sleep(rng.uniform(0.0, 0.1))
            if procs[k].poll() is None:
                procs[k].send_signal(signal.SIGKILL)
                procs[k].wait()
                killed.add(procs[k].pid)
                mid_run += running(sweep_dir, procs[k].pid)  # its run must be handed out again
        results = {}
        for k, p in enumerate(procs):
            out, err = p.communicate(timeout=240)
            results[k] = (p.returncode, err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.time() - t0
    for k, (rc, err) in results.items():
        if procs[k].pid in killed:
            assert rc == -signal.SIGKILL
        else:
            assert rc == 0, f"worker {k} exited {rc}: {err[-3000:]}"
    assert len(killed) >= 2, "too few workers were still running to be killed"
    assert mid_run >= 1, "no worker was killed in the middle of a run"
    return sweep_dir, killed, mid_run, wall


def running(sweep_dir: sd.SweepDir, pid: int) -> bool:
    """Whether `pid` has started a run that has not finished."""
    for tid in sweep_dir.trial_ids():
        starts = read_jsonl(sweep_dir.trial_dir(tid) / "fake_attempts.jsonl")
        if starts and starts[-1]["pid"] == pid and sd.run_state(sweep_dir.trial_dir(tid)) is None:
            return True
    return False


def check_exactly_once(sweep_dir: sd.SweepDir, storage: str, killed: set[int]) -> int:
    """Every run completed once by one trainer; one COMPLETE study trial per point. Returns the
    number of claims the database handed out."""
    points = len(SR) * len(PCT)
    runs = collect_runs(sweep_dir)
    assert len(runs) == 2 * points, f"{len(runs)} runs for {points} points x 2 seeds"
    assert all(r.state == sd.COMPLETE for r in runs), [r.trial_id for r in runs if r.state]
    for r in runs:
        starts = read_jsonl(sweep_dir.trial_dir(r.trial_id) / "fake_attempts.jsonl")
        survivors = [s for s in starts if s["pid"] not in killed]
        # Only a killed worker's attempt is ever followed by another one.
        assert all(s["pid"] in killed for s in starts[:-1]), (r.trial_id, starts)
        assert len(survivors) <= 1, (r.trial_id, starts)
        records = read_jsonl(sweep_dir.trial_dir(r.trial_id) / "metrics.jsonl")
        steps = [m["step"] for m in records if m["split"] == "train"]
        assert steps == list(range(1, steps[-1] + 1)), (r.trial_id, steps)  # one writer
    state = sweep_dir.state()
    trials = optuna.load_study(study_name=state["study_name"], storage=storage).get_trials()
    assert len(trials) == points
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["point"] for t in trials}) == points
    engine = sa.create_engine(storage)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(RUNS)).all()
    engine.dispose()
    assert len(rows) == 2 * points and {(r.state, r.outcome) for r in rows} == {
        ("done", "complete")
    }
    assert not (sweep_dir.root / "study.journal").exists()
    assert not (sweep_dir.root / "sweep.lock").exists()  # no file lock was ever taken
    return sum(r.handed_out for r in rows)


def report_rate(label: str, sweep_dir: sd.SweepDir, claims: int, wall: float) -> None:
    runs = len(sweep_dir.trial_ids())
    print(
        f"\n{label}: {WORKERS} workers, {runs} runs, {claims} claims, wall {wall:.1f} s: "
        f"{(claims + runs) / wall:.1f} scheduling decisions/s (trials included)"
    )


@pytest.mark.slow
def test_sixteen_workers_on_postgres_with_no_file_locks_and_sigkills(tmp_path, postgres):
    storage = create_database(postgres, "load_one_host")
    sweep_dir, killed, mid_run, wall = run_load(
        tmp_path, storage, distinct_hosts=False, stale_after_s=300, seed=1
    )
    # One host: a killed worker's claims are taken over at once (its pid is gone), not
    # after the 300 s heartbeat limit, which this test would not survive.
    claims = check_exactly_once(sweep_dir, storage, killed)
    assert claims - len(sweep_dir.trial_ids()) >= mid_run  # the killed runs were handed out again
    report_rate("postgres, one host", sweep_dir, claims, wall)


@pytest.mark.slow
def test_stale_claims_are_recovered_across_hosts(tmp_path, postgres):
    storage = create_database(postgres, "load_hosts")
    sweep_dir, killed, mid_run, wall = run_load(
        tmp_path, storage, distinct_hosts=True, stale_after_s=6, seed=2
    )
    claims = check_exactly_once(sweep_dir, storage, killed)
    engine = sa.create_engine(storage)
    with engine.connect() as conn:
        hosts = set(conn.execute(sa.select(RUNS.c.host)).scalars())
    engine.dispose()
    assert len(hosts) > KILLS  # the runs were trained on many "hosts"
    # Each run a killed "host" was in the middle of went stale and was handed out again.
    assert claims - len(sweep_dir.trial_ids()) >= mid_run
    report_rate("postgres, distinct hosts", sweep_dir, claims, wall)


def test_journal_storage_refuses_a_filesystem_whose_flock_does_not_lock(tmp_path):
    path = load_sweep(tmp_path)
    workdir = tmp_path / "w"
    args = ["run", str(path), "--workdir", str(workdir), "--runner", FAKE_RUNNER]
    proc = sweep_cli(*args, "--progress", "off", env=shim_env({}))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "does not exclude" in err and "--storage postgresql://" in err
    assert "Traceback" not in err
    assert not (workdir / "sweep.json").exists() and not (workdir / "trials").exists()


@pytest.mark.parametrize(
    "line, reason",
    [
        ("10.0.0.1@tcp:/fs {root} lustre rw,localflock 0 0", "Lustre mounted with localflock"),
        ("srv:/export {root} nfs4 rw,vers=4.2,local_lock=flock 0 0", "NFS mounted with local_lock"),
        ("srv:/export {root} nfs rw,nolock 0 0", "NFS mounted with nolock"),
        ("10.0.0.1@tcp:/fs {root} lustre rw,flock 0 0", None),
        ("/dev/sda1 {root} ext4 rw 0 0", None),
    ],
)
def test_node_local_flock_is_read_from_the_mount_options(tmp_path, line, reason):
    mounts = tmp_path / "mounts"
    root = tmp_path / "shared"
    (root / "sweep").mkdir(parents=True)
    mounts.write_text(f"/dev/vda1 / ext4 rw 0 0\n{line.format(root=root)}\n")
    found = node_local_flock(root / "sweep", mounts=str(mounts))
    assert (found is None) if reason is None else (reason in found and str(root) in found)


def test_a_journal_sweep_used_from_two_hosts_on_node_local_flock_is_refused(tmp_path, monkeypatch):
    sweep_dir = make_sweep_dir(load_sweep(tmp_path), tmp_path / "w")
    monkeypatch.setattr(store_files, "node_local_flock", lambda p: "/w is Lustre (localflock)")
    SweepEngine(sweep_dir, worker="a")  # one host so far: node-local flock serves it
    state = json.loads(sweep_dir.sweep_json.read_text())
    sweep_dir.sweep_json.write_text(json.dumps({**state, "created_on": "login01"}))
    with pytest.raises(LockUnsupportedError) as e:
        SweepEngine(sweep_dir, worker="b")
    assert "localflock" in str(e.value) and "login01" in str(e.value)
    assert "--storage postgresql://" in str(e.value)


def test_workers_started_at_once_on_a_fresh_sqlite_database_all_succeed(tmp_path):
    """SQLite is coordinated by flock like the journal; its tables are created under a flock
    beside the database file, so processes started together do not race to create them."""
    path = write_sweep(
        tmp_path / "s.py", space={"model.squeeze_ratio": categorical(*SR[:4])}, fixed={}
    )
    args = ["run", str(path), "--workdir", str(tmp_path / "w"), "--runner", FAKE_RUNNER]
    args += ["--progress", "off", "--poll-s", "0.1", "--storage", f"sqlite:///{tmp_path}/s.db"]
    procs = [sweep_cli(*args) for _ in range(6)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
    runs = collect_runs(sd.SweepDir(tmp_path / "w"))
    assert len(runs) == 4 and all(r.state == sd.COMPLETE for r in runs)
