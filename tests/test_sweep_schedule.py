"""Scheduling that shares compiles (engine.next_run, the worker's compile-ahead), with the fake
runner: a point another worker is running is not taken while other work exists, a worker keeps to
the points it holds programs for, and compile-ahead claims and prepares the next point. Each
runs on both run stores (the journal file and a real PostgreSQL server, as tests/
test_sweep_engine.py)."""

from __future__ import annotations

import json
import threading

import pytest
from fake_runner import run_fake_trial
from postgres_server import new_database, required_server
from test_sweep_support import make_sweep_dir, run_inprocess, sr_space, write_sweep

from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.engine import DONE, RunOutcome, RunTicket, SweepEngine
from sqzexplore.sweep.workers import (
    DEFAULT_RUNNER,
    RECENT_POINTS,
    load_runner,
    prepare_hook,
    run_worker,
)


@pytest.fixture(scope="module")
def postgres():
    with required_server() as url:
        yield url


@pytest.fixture(params=["journal", "postgres"])
def storage(request):
    """The storage of the test's sweep: None (the journal file) or a new PostgreSQL database."""
    if request.param == "journal":
        return None
    return new_database(request.getfixturevalue("postgres"))


def run(engine: SweepEngine, ticket: RunTicket) -> None:
    """Train a claimed run with the fake runner and record it, as a worker does."""
    import ml_collections

    config = ml_collections.ConfigDict(ticket.record()["config"])
    run_fake_trial(config, str(ticket.workdir))
    engine.finish_run(ticket, RunOutcome("complete"))


def test_workers_take_other_points_while_one_compiles_then_keep_their_own(tmp_path, storage):
    path = write_sweep(tmp_path / "g.py", space=sr_space(0.125, 0.25, 0.5), seeds=3)
    sweep_dir = make_sweep_dir(path, tmp_path / "w", storage=storage)
    a, b = SweepEngine(sweep_dir, worker="a"), SweepEngine(sweep_dir, worker="b")
    a1 = a.next_run()
    b1 = b.next_run()  # a is compiling a1's point: b starts another point, not its seed 1
    assert (a1.seed, b1.seed) == (0, 0) and b1.point != a1.point
    run(a, a1)
    a2 = a.next_run(prefer=[a1.point])
    assert (a2.point, a2.seed) == (a1.point, 1)  # a reuses its programs
    run(b, b1)
    b2 = b.next_run(prefer=[b1.point])
    assert (b2.point, b2.seed) == (b1.point, 1)
    run(a, a2)
    a3 = a.next_run(prefer=[a1.point])
    assert (a3.point, a3.seed) == (a1.point, 2)
    run(a, a3)
    # a's point is done and b is running its own: a starts the third point rather than b's.
    a4 = a.next_run(prefer=[a1.point])
    assert a4.point not in (a1.point, b1.point) and a4.seed == 0
    # b, still holding its point's seed 1, finds its seed 2 untouched, and the third point's
    # other seeds stay with a.
    assert b.has_free_runs(b1.point) and a.has_free_runs(a4.point)
    run(b, b2)
    b3 = b.next_run(prefer=[b1.point])
    assert (b3.point, b3.seed) == (b1.point, 2)
    run(b, b3)
    # Nothing else left: b helps with a's point (a last resort, not a duplicate compile race).
    b4 = b.next_run(prefer=[b1.point])
    assert (b4.point, b4.seed) == (a4.point, 1)
    run(b, b4)
    run(a, a4)
    a5 = a.next_run(prefer=[a4.point])
    assert (a5.point, a5.seed) == (a4.point, 2)
    run(a, a5)
    assert a.next_run() == DONE and b.next_run() == DONE


def test_preferred_points_come_first_among_free_ones(tmp_path, storage):
    path = write_sweep(tmp_path / "g.py", space=sr_space(0.125, 0.25), seeds=2)
    sweep_dir = make_sweep_dir(path, tmp_path / "w", storage=storage)
    a, b = SweepEngine(sweep_dir, worker="a"), SweepEngine(sweep_dir, worker="b")
    first, second = a.next_run(), b.next_run()
    run(a, first)
    run(b, second)
    # Both points have a free seed 1: each worker takes the one it asks for first.
    assert b.next_run(prefer=[second.point]).point == second.point
    assert a.next_run(prefer=["unknown", first.point]).point == first.point


def test_one_worker_trains_each_point_s_seeds_back_to_back(tmp_path, storage):
    path = write_sweep(tmp_path / "g.py", space=sr_space(0.125, 0.25, 0.5, 0.75), seeds=3)
    _, summary = run_inprocess(path, tmp_path / "w", storage=storage)
    points = [t.rsplit("-s", 1)[0] for t in summary.trial_ids]
    assert summary.runs == {"complete": 12}
    assert points == [p for k in range(0, 12, 3) for p in [points[k]] * 3]
    assert RECENT_POINTS >= 2


def test_the_runner_carries_its_compile_ahead_hook():
    """The hook is the runner's own `prepare` attribute (no runner recognised by its name): the
    default trainer carries the program cache's prepare (after xla_options.configure), a runner
    without one has none."""
    from sqzexplore.train import runner

    assert prepare_hook(load_runner(DEFAULT_RUNNER)) is runner.prepare
    assert prepare_hook(run_fake_trial) is None


def test_compile_ahead_claims_the_next_point_and_prepares_it_during_the_last_seed(
    tmp_path, storage
):
    path = write_sweep(tmp_path / "g.py", space=sr_space(0.125, 0.25, 0.5), seeds=2)
    sweep_dir = make_sweep_dir(path, tmp_path / "w", storage=storage)
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def runner(config, workdir):
        with lock:
            events.append(("train", workdir.rsplit("/", 1)[-1]))
        return run_fake_trial(config, workdir)

    def prepare(config):
        with lock:
            events.append(("prepare", config.wandb.name.split("/")[-1]))

    runner.prepare = prepare
    assert prepare_hook(runner) is prepare
    summary = run_worker(
        sweep_dir,
        runner=runner,
        worker="t",
        heartbeat_s=0.5,
        log=lambda s: None,
        compile_ahead=True,
    )
    assert summary.runs == {"complete": 6}
    trained = [t for kind, t in events if kind == "train"]
    prepared = [t for kind, t in events if kind == "prepare"]
    # Seed 1 of each point starts with the next point's seed 0 claimed and being prepared.
    assert prepared == [trained[2], trained[4]]
    assert [t.endswith("-s0") for t in prepared] == [True, True]
    for t in prepared:
        assert events.index(("prepare", t)) < events.index(("train", t))
    assert not list(sweep_dir.claims.glob("*.claim"))  # every claim released


def test_compile_ahead_hands_back_its_claim_when_the_worker_stops(tmp_path, storage):
    path = write_sweep(tmp_path / "g.py", space=sr_space(0.125, 0.25), seeds=1)
    sweep_dir = make_sweep_dir(path, tmp_path / "w", storage=storage)

    def runner(config, workdir):
        return run_fake_trial(config, workdir)

    runner.prepare = lambda config: None
    summary = run_worker(
        sweep_dir,
        runner=runner,
        worker="t",
        heartbeat_s=0.5,
        log=lambda s: None,
        compile_ahead=True,
        max_runs=1,
    )
    assert summary.runs == {"complete": 1}
    assert not list(sweep_dir.claims.glob("*.claim"))
    states = [sd.run_state(p) for p in sorted(sweep_dir.trials.iterdir())]
    assert sorted(states, key=str) == sorted([sd.COMPLETE, None], key=str)


def test_compile_ahead_is_off_by_default_on_a_cpu_host_with_a_worker_per_core(
    tmp_path, monkeypatch
):
    from sqzexplore.rundir import write_json
    from sqzexplore.sweep.claims import owner_record
    from sqzexplore.sweep.workers import auto_compile_ahead

    path = write_sweep(tmp_path / "g.py", space=sr_space(0.125), seeds=1)
    sweep_dir = make_sweep_dir(path, tmp_path / "w")
    sweep_dir.workers.mkdir(exist_ok=True)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    write_json(sweep_dir.workers / "a.json", owner_record("a"))  # this (live) process
    assert auto_compile_ahead(sweep_dir, 300.0)  # 1 worker, 2 cores: a core to spare
    write_json(sweep_dir.workers / "b.json", owner_record("b"))
    assert not auto_compile_ahead(sweep_dir, 300.0)  # 2 workers on 2 cores: off
    write_json(sweep_dir.workers / "b.json", {**owner_record("b"), "finished": 1.0})
    assert auto_compile_ahead(sweep_dir, 300.0)  # a finished worker does not count
    # At the first run the other worker `sqz sweep run --workers 2` started may not have
    # registered yet; the launcher's count says it exists (a frontier sweep compiled ahead
    # on 2 cores at start-up before this).
    monkeypatch.setenv("SQZ_LOCAL_WORKERS", "2")
    assert not auto_compile_ahead(sweep_dir, 300.0)
    monkeypatch.setenv("SQZ_LOCAL_WORKERS", "not a number")
    assert auto_compile_ahead(sweep_dir, 300.0)


def test_sweep_run_tells_its_local_workers_how_many_there_are(tmp_path, monkeypatch):
    from sqzexplore.sweep import cli, launch

    seen = {}

    def fake_run_local_workers(commands, envs, logs, progress):
        seen["envs"] = envs
        return 0

    monkeypatch.setattr(launch, "run_local_workers", fake_run_local_workers)
    path = write_sweep(tmp_path / "g.py", space=sr_space(0.125), seeds=1)
    cli.main(["run", str(path), "--workers", "3", "--workdir", str(tmp_path / "w")])
    assert [env["SQZ_LOCAL_WORKERS"] for env in seen["envs"]] == ["3", "3", "3"]


def test_compile_ahead_option_reaches_the_workers_and_refuses_other_values(capsys):
    from sqzexplore.sweep import cli

    args = cli._parser().parse_args(["run", "s.py", "--compile-ahead", "on"])
    assert cli._worker_command(args, "d", no_wait=False)[-2:] == ["--compile-ahead", "on"]
    args = cli._parser().parse_args(["worker", "d"])
    assert args.compile_ahead == "auto"
    assert "--compile-ahead" not in cli._worker_command(args, "d", no_wait=False)
    with pytest.raises(SystemExit) as e:
        cli._parser().parse_args(["worker", "d", "--compile-ahead", "maybe"])
    assert e.value.code == 2 and "--compile-ahead" in capsys.readouterr().err


def test_a_live_worker_stays_live_when_the_wall_clock_is_stepped(tmp_path):
    """A claim's owner is judged by its start time in ticks since boot: the wall-clock creation
    time moves with the clock (seen after a VM snapshot), which once made a live worker's run be
    taken over by another worker mid-training."""
    import os
    import subprocess

    from sqzexplore.sweep.claims import RunClaims, owner_record, process_start_ticks

    if process_start_ticks(os.getpid()) is None:
        pytest.skip("no /proc: liveness falls back to the wall-clock creation time")
    claims = RunClaims(tmp_path / "claims", stale_after_s=300.0)
    mine = claims.try_claim("p-s0", "a")
    assert mine is not None
    record = owner_record("a")
    stepped = {**record, "pid_created": record["pid_created"] - 5.0}  # clock stepped by 5 s
    claims.path("p-s0").write_text(json.dumps(stepped))
    assert claims.live_owner("p-s0") is not None
    assert claims.try_claim("p-s0", "b") is None  # not taken over
    # A recycled pid (another process start) is still told apart.
    child = subprocess.Popen(["sleep", "30"])
    try:
        other = {**record, "pid": child.pid, "pid_start_ticks": record["pid_start_ticks"] - 1}
        claims.path("p-s0").write_text(json.dumps(other))
        assert claims.live_owner("p-s0") is None
    finally:
        child.kill()
        child.wait()


def _population_runner(trained: list, prepared: list):
    """The fake runner, training populations member by member, recording what it trains and
    what compile-ahead prepares (trial ids; the prepared population's size)."""
    lock = threading.Lock()

    def runner(config, workdir):
        with lock:
            trained.append([workdir.rsplit("/", 1)[-1]])
        return run_fake_trial(config, workdir)

    def train_population(configs, workdirs, on_eval=None):
        with lock:
            trained.append([w.rsplit("/", 1)[-1] for w in workdirs])
        return [run_fake_trial(c, w) for c, w in zip(configs, workdirs, strict=True)]

    def prepare(config, population=1):
        with lock:
            prepared.append((config.wandb.name.split("/")[-1], population))

    runner.train_population, runner.prepare = train_population, prepare
    return runner


def test_compile_ahead_prepares_the_group_the_next_run_trains(tmp_path, storage, monkeypatch):
    """With `--population 3` and 2 seeds a point (none padded), compile-ahead claims the next
    point's 2 seeds as the group it trains and prepares a population of 2 (before, it prepared
    a population of 3, the worker's size, that no run trained)."""
    from sqzexplore.sweep import grouping

    monkeypatch.setattr(grouping, "pays", lambda group, candidate, measured: (False, "test"))
    path = write_sweep(tmp_path / "g.py", space=sr_space(0.125, 0.25), seeds=2)
    sweep_dir = make_sweep_dir(path, tmp_path / "w", storage=storage)
    trained, prepared = [], []
    runner = _population_runner(trained, prepared)
    kw = dict(heartbeat_s=0.5, log=lambda s: None, compile_ahead=True, population=3)
    summary = run_worker(sweep_dir, runner=runner, worker="t", **kw)
    assert summary.runs == {"complete": 4}
    assert [len(g) for g in trained] == [2, 2]
    # Exactly the group that trained next: its first run, its member count.
    assert prepared == [(trained[1][0], 2)]
    assert not list(sweep_dir.claims.glob("*.claim"))


def test_compile_ahead_compiles_nothing_for_a_width_padded_group(tmp_path, storage, monkeypatch):
    """A width-padded group's programs are built for its run alone (uncached): compile-ahead
    claims the group and compiles none of them; a worker stopped meanwhile hands every claimed
    run back."""
    from sqzexplore.sweep import grouping

    monkeypatch.setattr(grouping, "pays", lambda group, candidate, measured: (True, "test"))
    path = write_sweep(tmp_path / "g.py", space=sr_space(0.125, 0.25, 0.5, 0.75), seeds=1)
    sweep_dir = make_sweep_dir(path, tmp_path / "w", storage=storage)
    trained, prepared, said = [], [], []
    runner = _population_runner(trained, prepared)
    kw = dict(heartbeat_s=0.5, log=said.append, compile_ahead=True, population=2)
    summary = run_worker(sweep_dir, runner=runner, worker="t", max_runs=2, **kw)
    assert summary.runs == {"complete": 2} and [len(g) for g in trained] == [2]
    assert prepared == []
    assert any("no compile-ahead for a width-padded group" in s for s in said), said
    assert not list(sweep_dir.claims.glob("*.claim"))  # the ahead group handed back
    summary = run_worker(sweep_dir, runner=runner, worker="u", **kw)
    assert summary.runs == {"complete": 2} and [len(g) for g in trained] == [2, 2]
    assert prepared == []
