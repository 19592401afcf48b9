"""The sweep engine with the fake runner, in process: sampling, constraints, failures, early
stopping, claims and refusing an edited sweep.

Every test of an engine operation runs on both run stores (sweep/store.py): the journal file
(claim files under the sweep flock) and a real PostgreSQL server (rows; tests/postgres_server.py).
Where PostgreSQL cannot start, its cases skip saying why, and under CI=true they fail
(tests/required_service.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import ml_collections
import optuna
import pytest
from fake_runner import run_fake_trial
from postgres_server import new_database, required_server
from test_sweep_support import make_sweep_dir, run_inprocess, sr_space, study_of, write_sweep

from sqzexplore.config import base_config
from sqzexplore.models.complexity import complexity
from sqzexplore.models.spec import preset
from sqzexplore.rundir import read_jsonl
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs, status
from sqzexplore.sweep.claims import HOST, RunClaims
from sqzexplore.sweep.engine import DONE, WAIT, RunOutcome, SweepEngine
from sqzexplore.sweep.params import categorical, uniform
from sqzexplore.sweep.runconfig import trial_config
from sqzexplore.sweep.space import (
    EarlyStop,
    SweepDefinition,
    config_json,
    constraint_violations,
    point_key,
)
from sqzexplore.sweep.sweepdir import SweepChangedError, init_sweep_dir
from sqzexplore.sweep.sweepfile import load_base_config, load_sweep

S = optuna.trial.TrialState


@pytest.fixture(scope="module")
def postgres():
    with required_server() as url:
        yield url


@pytest.fixture(params=["journal", "postgres"])
def new_storage(request):
    """Makes the storage of a new sweep: None (the journal file) or a new PostgreSQL database."""
    if request.param == "journal":
        return lambda: None
    base = request.getfixturevalue("postgres")
    return lambda: new_database(base)


def points_in_order(sweep_dir):
    """(trial number, point overrides) of every trial, in the order they were asked."""
    return [
        (t.number, t.user_attrs.get("point"), t.params)
        for t in sorted(study_of(sweep_dir).get_trials(deepcopy=False), key=lambda t: t.number)
    ]


def test_grid_runs_every_point_once_in_a_seeded_order(tmp_path, new_storage):
    store_a = new_storage()
    store_b = new_storage()
    store_c = new_storage()
    path = write_sweep(tmp_path / "g.py", space=sr_space(0.125, 0.25, 0.5, 0.75), seeds=2)
    a, summary = run_inprocess(path, tmp_path / "a", storage=store_a)
    b, _ = run_inprocess(path, tmp_path / "b", storage=store_b)
    assert summary.runs == {"complete": 8}
    order_a, order_b = points_in_order(a), points_in_order(b)
    assert order_a == order_b  # the same seed gives the same order
    assert sorted(p["model.squeeze_ratio"] for _, _, p in order_a) == [0.125, 0.25, 0.5, 0.75]
    trials = study_of(a).get_trials()
    assert [t.state for t in trials] == [S.COMPLETE] * 4
    for t in trials:
        # Objectives are the seed means of the runs' result.json.
        runs = [
            json.loads((a.trial_dir(f"{t.user_attrs['point']}-s{s}") / "result.json").read_text())
            for s in (0, 1)
        ]
        assert t.values[0] == pytest.approx(100 * sum(r["final"]["top1"] for r in runs) / 2)  # %
        assert t.values[1] == runs[0]["complexity"]["params"]
    other_seed = write_sweep(tmp_path / "g2.py", space=sr_space(0.125, 0.25, 0.5, 0.75), seed=7)
    c, _ = run_inprocess(other_seed, tmp_path / "c", storage=store_c)
    assert [p for _, _, p in points_in_order(c)] != [p for _, _, p in order_a]


@pytest.mark.parametrize("sampler", ["random", "nsga2"])
def test_random_and_nsga2_are_deterministic(tmp_path, sampler, new_storage):
    store_a = new_storage()
    store_b = new_storage()
    space = {
        "model.squeeze_ratio": uniform(0.125, 1.0, step=0.0625),
        "model.pct_3x3": uniform(0.1, 0.9),
        "model.bypass": categorical("none", "simple", "complex"),
    }
    path = write_sweep(
        tmp_path / "r.py",
        space=space,
        sampler=sampler,
        n_trials=10,
        population_size=4,
        fixed={"num_steps": 4},
    )
    a, summary = run_inprocess(path, tmp_path / "a", storage=store_a)
    b, _ = run_inprocess(path, tmp_path / "b", storage=store_b)
    assert summary.runs == {"complete": 10}
    order = points_in_order(a)
    assert order == points_in_order(b)
    trained = {r.point for r in collect_runs(a)}
    assert len(trained) == 10  # distinct design points; repeats (NSGA-II copies) were skipped
    repeats = [s for s in read_jsonl(a.skipped) if s["kind"] == "duplicate"]
    assert len(order) == 10 + len(repeats)
    for _, _, params in order:
        assert 0.1 <= params["model.pct_3x3"] <= 0.9
        assert (params["model.squeeze_ratio"] / 0.0625) == pytest.approx(
            round(params["model.squeeze_ratio"] / 0.0625)
        )


def test_constraints_and_invalid_points_are_skipped_before_training(tmp_path, new_storage):
    store_w = new_storage()
    limit = complexity(preset("digits", squeeze_ratio=0.5)).params
    path = write_sweep(
        tmp_path / "c.py",
        space=sr_space(0.01, 0.125, 0.5, 0.75, 1.0),  # 0.01 leaves fire2 no squeeze filter
        constraints={"max_params": limit},
    )
    sweep_dir, summary = run_inprocess(path, tmp_path / "w", storage=store_w)
    assert summary.runs == {"complete": 2}
    skipped = {s["params"]["model.squeeze_ratio"]: s for s in read_jsonl(sweep_dir.skipped)}
    assert set(skipped) == {0.01, 0.75, 1.0}
    assert skipped[0.01]["kind"] == "invalid" and "squeeze" in skipped[0.01]["reason"]
    for sr in (0.75, 1.0):
        assert skipped[sr]["kind"] == "constraint"
        assert f"> max_params {limit:,}" in skipped[sr]["reason"]
    trained = {r.params["model.squeeze_ratio"] for r in collect_runs(sweep_dir)}
    assert trained == {0.125, 0.5}  # nothing over the limit ever got a trial directory
    states = sorted(t.state.name for t in study_of(sweep_dir).get_trials())
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL", "FAIL"]
    st = status(sweep_dir)
    assert st["planned_points"] == 2 and st["counts"]["pending"] == 0
    assert st["skipped_points"] == {"constraint": 2, "invalid": 1, "duplicate": 0, "interrupted": 0}


def test_constraint_violations_name_the_limit():
    totals = {"params": 2_000_000, "macs": 5e8, "fp32_mib": 7.6}
    limits = {"max_params": 1e6, "max_macs": 1e9, "max_mib": 4.8}
    reasons = constraint_violations(totals, limits)
    assert reasons == ["params 2,000,000 > max_params 1,000,000", "fp32_mib 7.6 > max_mib 4.8"]


def test_repeated_proposals_are_not_trained_twice(tmp_path, new_storage):
    store_w = new_storage()
    # Three distinct points but ten draws: random sampling repeats itself and then gives up.
    path = write_sweep(
        tmp_path / "d.py",
        space={"model.bypass": categorical("none", "simple", "complex")},
        sampler="random",
        n_trials=10,
    )
    sweep_dir, summary = run_inprocess(path, tmp_path / "w", storage=store_w)
    assert summary.runs == {"complete": 3}
    skipped = read_jsonl(sweep_dir.skipped)
    assert skipped and all(s["kind"] == "duplicate" for s in skipped)
    assert not sweep_dir.exhausted.exists()  # known to be finite
    complete = [t for t in study_of(sweep_dir).get_trials() if t.state == S.COMPLETE]
    # A repeat of a finished point is told its values (so NSGA-II sees it) but never trains.
    assert len({t.user_attrs["point"] for t in complete}) == 3
    assert len(collect_runs(sweep_dir)) == 3
    assert status(sweep_dir)["counts"]["pending"] == 0


def test_sampling_stops_when_every_proposal_is_rejected(tmp_path, new_storage):
    store_w = new_storage()
    path = write_sweep(
        tmp_path / "x.py",
        space={"model.squeeze_ratio": uniform(0.5, 1.0)},
        sampler="random",
        n_trials=5,
        constraints={"max_params": 1000},
    )
    sweep_dir, summary = run_inprocess(
        path, tmp_path / "w", max_consecutive_skips=10, storage=store_w
    )
    assert summary.runs == {}
    assert len(read_jsonl(sweep_dir.skipped)) == 10
    assert sweep_dir.exhausted.exists()
    st = status(sweep_dir)
    assert st["sampling_exhausted"] and st["counts"]["pending"] == 0


def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path, new_storage):
    store_w = new_storage()

    def flaky(config, workdir, *, on_eval=None):
        if config.model.squeeze_ratio == 0.5:
            raise FloatingPointError("non-finite loss at step 3")
        return run_fake_trial(config, workdir, on_eval=on_eval)

    path = write_sweep(tmp_path / "f.py", space=sr_space(0.125, 0.5, 1.0), seeds=2)
    sweep_dir, summary = run_inprocess(path, tmp_path / "w", runner=flaky, storage=store_w)
    assert summary.runs == {"complete": 4, "failed": 2}
    failed = [r for r in collect_runs(sweep_dir) if r.state == sd.FAILED]
    assert {r.params["model.squeeze_ratio"] for r in failed} == {0.5}
    assert "non-finite loss" in failed[0].failure["error"]
    assert "Traceback" in failed[0].failure["traceback"]
    trial = next(t for t in study_of(sweep_dir).get_trials() if t.state == S.FAIL)
    assert "failed" in trial.user_attrs["fail_reason"]
    # Rerunning does not retry them (a failure is a result) and does nothing else either.
    _, again = run_inprocess(path, tmp_path / "w", runner=flaky, storage=store_w)
    assert again.runs == {}
    assert status(sweep_dir)["counts"]["failed"] == 2


def test_median_early_stop_ends_hopeless_runs_and_skips_their_other_seeds(tmp_path, new_storage):
    store_w = new_storage()
    # Seed 38 orders the grid 0.75, 1.0, 0.5, 0.125, 0.25: two points finish first, then the
    # smaller (less accurate, in the fake runner) models fall below their median and stop.
    path = write_sweep(
        tmp_path / "p.py",
        space=sr_space(1.0, 0.75, 0.5, 0.25, 0.125),
        seeds=2,
        fixed={"num_steps": 12},
        early_stop=EarlyStop("median", n_startup_points=2, n_warmup_evals=1),
        seed=38,
    )
    sweep_dir, summary = run_inprocess(path, tmp_path / "w", storage=store_w)
    runs = collect_runs(sweep_dir)
    by_sr = {}
    for r in runs:
        by_sr.setdefault(r.params["model.squeeze_ratio"], []).append(r)
    for sr in (0.75, 1.0):  # the first two points: nothing to compare with yet
        assert [r.state for r in by_sr[sr]] == [sd.COMPLETE, sd.COMPLETE]
    for sr in (0.5, 0.25, 0.125):
        first, second = sorted(by_sr[sr], key=lambda r: r.seed)
        assert first.state == sd.STOPPED and first.result["steps"] == 6
        assert second.state == sd.SKIPPED  # not worth training once its point was stopped
    assert summary.runs == {"complete": 4, "stopped": 3}
    trials = {t.params["model.squeeze_ratio"]: t for t in study_of(sweep_dir).get_trials()}
    assert {sr for sr, t in trials.items() if t.state == S.PRUNED} == {0.5, 0.25, 0.125}
    assert trials[0.75].state == S.COMPLETE and trials[1.0].state == S.COMPLETE
    c = status(sweep_dir)["counts"]
    assert c["pending"] == 0 and c["running"] == 0 and c["stopped"] == 3 and c["skipped"] == 3


def test_on_eval_is_only_passed_to_runners_that_take_it(tmp_path, new_storage):
    store_w = new_storage()
    seen = []

    def plain(config, workdir):  # a runner without on_eval
        seen.append(workdir)
        return run_fake_trial(config, workdir)

    path = write_sweep(
        tmp_path / "o.py",
        space=sr_space(0.25, 0.5),
        early_stop=EarlyStop("median", n_startup_points=1, n_warmup_evals=0),
    )
    _, summary = run_inprocess(path, tmp_path / "w", runner=plain, storage=store_w)
    assert len(seen) == 2 and summary.runs == {"complete": 2}


def test_a_runner_that_only_returns_its_result_gets_result_json(tmp_path, new_storage):
    store_w = new_storage()

    def returns_only(config, workdir, on_eval=None):
        return {"status": "complete", "final": {"top1": 0.5}, "complexity": {"params": 10}}

    path = write_sweep(tmp_path / "r.py", space=sr_space(0.25))
    sweep_dir, summary = run_inprocess(path, tmp_path / "w", runner=returns_only, storage=store_w)
    assert summary.runs == {"complete": 1}
    (run,) = collect_runs(sweep_dir)
    assert run.state == sd.COMPLETE and run.result["final"]["top1"] == 0.5


def test_an_edited_sweep_is_refused_and_new_archives(tmp_path):
    path = write_sweep(tmp_path / "e.py", space=sr_space(0.125, 0.25))
    run_inprocess(path, tmp_path / "w")
    write_sweep(tmp_path / "e.py", space=sr_space(0.125, 0.5))
    defn = load_sweep(str(path))
    base = load_base_config(defn)
    with pytest.raises(SweepChangedError) as e:
        init_sweep_dir(tmp_path / "w", defn, base, sweep_file=str(path), arg=None, storage=None)
    msg = str(e.value)
    assert "sweep.space.model.squeeze_ratio.values" in msg
    assert "--new" in msg and "--workdir" in msg
    init_sweep_dir(
        tmp_path / "w", defn, base, sweep_file=str(path), arg=None, storage=None, new=True
    )
    archived = [p for p in tmp_path.iterdir() if p.name.startswith("w.archived-")]
    assert len(archived) == 1 and (archived[0] / "trials").exists()
    assert sd.SweepDir(tmp_path / "w").trial_ids() == []
    # The docstring is not part of the sweep's identity.
    write_sweep(tmp_path / "e.py", doc="Reworded question.", space=sr_space(0.125, 0.5))
    defn = load_sweep(str(path))
    init_sweep_dir(tmp_path / "w", defn, base, sweep_file=str(path), arg=None, storage=None)


def test_claims_belong_to_live_processes_only(tmp_path):
    claims = RunClaims(tmp_path / "claims", stale_after_s=60)
    mine = claims.try_claim("p1-s0", "w")
    assert mine is not None and claims.try_claim("p1-s0", "other") is None  # live: mine
    claims.release(mine)
    assert claims.try_claim("p1-s0", "w2") is not None

    dead = claims.path("p2-s0")  # same host, a process that is gone
    dead.write_text(json.dumps({"host": HOST, "pid": 2**22 + 12345, "token": "x"}))
    assert claims.live_owner("p2-s0") is None
    taken = claims.try_claim("p2-s0", "w")
    assert taken is not None and taken.still_mine()

    remote = claims.path("p3-s0")  # another host: judged by its heartbeat
    remote.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y"}))
    assert claims.try_claim("p3-s0", "w") is None
    old = time.time() - 120
    os.utime(remote, (old, old))
    stolen = claims.try_claim("p3-s0", "w")
    assert stolen is not None
    assert set(claims.live_claims()) == {"p1-s0", "p2-s0", "p3-s0"}


def test_trial_config_carries_design_seed_and_wandb_grouping():
    defn = SweepDefinition(
        name="grp",
        space={"model.pool_after": categorical(("fire2", "fire4"))},
        objectives=[("final.top1", "maximize")],
        tags=["ablation"],
    )
    base = config_json(base_config())
    c = trial_config(base, defn, {"model.pool_after": ("fire2", "fire4")}, 3, "p1-s3")
    assert c["model"]["pool_after"] == ["fire2", "fire4"] and c["seed"] == 3
    assert c["wandb"]["group"] == "grp" and c["wandb"]["name"] == "grp/p1-s3"
    assert {"sweep", "grp", "ablation"} <= set(c["wandb"]["tags"])
    assert c["distributed"]["initialize"] == "false" and c["progress"] == "false"
    assert base["seed"] == 0 and base["model"]["pool_after"] != ["fire2", "fire4"]  # a copy
    assert point_key({"model.pool_after": ("fire2", "fire4")}) == point_key(
        {"model.pool_after": ["fire2", "fire4"]}
    )


def test_each_run_gets_its_whole_config_at_registration(tmp_path, new_storage):
    """trial.json holds the run's full config, and the runner is given exactly that config."""
    store_w = new_storage()
    seen = {}

    def recording(config, workdir, *, on_eval=None):
        seen[os.path.basename(workdir)] = config.to_dict()
        return run_fake_trial(config, workdir, on_eval=on_eval)

    path = write_sweep(
        tmp_path / "t.py",
        space={
            **sr_space(0.125, 0.25),
            "model.pool_after": categorical(
                ("fire3", "fire5", "fire7"), ("fire2", "fire4", "fire6")
            ),
        },
        seeds=[3, 5],
    )
    sweep_dir, summary = run_inprocess(path, tmp_path / "w", runner=recording, storage=store_w)
    assert summary.runs == {"complete": 8}
    for tid in sweep_dir.trial_ids():
        record = json.loads((sweep_dir.trial_dir(tid) / sd.TRIAL_FILE).read_text())
        config = record["config"]
        given = json.loads(json.dumps(seen[tid]))
        # The worker names and groups the wandb run for this sweep (sweep/dashboards.py); the
        # wandb keys are bookkeeping, everything a run computes is trial.json's.
        wandb = given.pop("wandb")
        assert {k: v for k, v in config.items() if k != "wandb"} == given
        assert wandb["name"].endswith(f" s{record['seed']}") and wandb["name"].startswith("sr=")
        assert config["seed"] == record["seed"] and tid.endswith(f"-s{record['seed']}")
        for key, value in record["params"].items():
            section, field = key.split(".")
            assert config[section][field] == value
        assert config["num_steps"] == 8  # the sweep's fixed overrides


# ------------------------------------------------------------------------------ operations
def engine_on(tmp_path, new_storage, space, seeds) -> tuple[sd.SweepDir, SweepEngine]:
    path = write_sweep(tmp_path / "ops.py", space=space, seeds=seeds)
    sweep_dir = make_sweep_dir(path, tmp_path / "w", storage=new_storage())
    return sweep_dir, SweepEngine(sweep_dir, worker="a")


def test_claim_batch_takes_the_free_runs_of_one_point(tmp_path, new_storage):
    """claim_batch / claim_more_runs: up to n unclaimed runs of one design point, seed order;
    has_free_runs; a run handed back is pending again."""
    sweep_dir, engine = engine_on(tmp_path, new_storage, sr_space(0.125, 0.25), 3)
    first = engine.next_run()
    assert first.seed == 0 and engine.has_free_runs(first.point)
    batch = engine.claim_more_runs(first, 5)
    assert [t.seed for t in batch] == [1, 2] and {t.point for t in batch} == {first.point}
    assert engine.claim_batch(first.point, 5) == [] and engine.claim_more_runs(first, 0) == []
    assert not engine.has_free_runs(first.point)
    other = SweepEngine(sweep_dir, worker="b").next_run()
    assert other.point != first.point  # the next worker gets the other point
    for t in [first, *batch]:
        engine.finish_run(t, RunOutcome("interrupted"))
    assert [t.seed for t in engine.claim_batch(first.point, 2)] == [0, 1]


def test_claim_width_runs_registers_and_claims_other_points(tmp_path, new_storage):
    """claim_width_runs: runs of other points that `accept` takes, registering new points while
    too few are pending; a refused run stays pending for anyone; points another worker runs
    are left to it; the budget stays exact."""
    space = sr_space(0.125, 0.25, 0.5, 0.75)
    sweep_dir, engine = engine_on(tmp_path, new_storage, space, 2)
    first = engine.next_run()
    seen = []

    def accept(record):
        seen.append(record["point"])
        return record["seed"] == 0  # one seed of each other point

    claimed = engine.claim_width_runs(first, 2, accept)
    assert len(claimed) == 2 and all(t.seed == 0 for t in claimed)
    assert len({first.point, *(t.point for t in claimed)}) == 3
    assert first.point not in seen
    # The refused seeds 1 stay pending: another worker gets one of them.
    b = SweepEngine(sweep_dir, worker="b")
    other = b.next_run()
    assert other.point != first.point and other.seed in (0, 1)
    # Nothing more to register than the grid: at most the 4th point, then the budget is spent.
    more = engine.claim_width_runs(first, 8, lambda r: True)
    assert {t.point for t in more} <= {t.point for t in claimed} | {
        p for p in {r.point for r in collect_runs(sweep_dir)}
    }
    assert other.point not in {t.point for t in more}  # b is running it
    assert len(study_of(sweep_dir).get_trials()) == 4
    for t in [first, *claimed, *more]:
        run_fake_trial(ml_collections.ConfigDict(t.record()["config"]), str(t.workdir))
        engine.finish_run(t, RunOutcome("complete"))
    run_fake_trial(ml_collections.ConfigDict(other.record()["config"]), str(other.workdir))
    b.finish_run(other, RunOutcome("complete"))
    while (t := engine.next_run()) not in (DONE, WAIT):
        run_fake_trial(ml_collections.ConfigDict(t.record()["config"]), str(t.workdir))
        engine.finish_run(t, RunOutcome("complete"))
    assert engine.next_run() == DONE
    runs = collect_runs(sweep_dir)
    assert len(runs) == 8 and all(r.state == sd.COMPLETE for r in runs)
    assert [t.state for t in study_of(sweep_dir).get_trials()] == [S.COMPLETE] * 4


CLAIM_AND_EXIT = """
import sys
from sqzexplore.sweep.engine import SweepEngine
from sqzexplore.sweep.sweepdir import SweepDir
ticket = SweepEngine(SweepDir(sys.argv[1]), worker="gone").next_run()
print(ticket.trial_id)
"""


def test_a_dead_worker_s_run_is_taken_over_and_nothing_else_is(tmp_path, new_storage):
    """Stale takeover: a process that claimed a run and exited (same host: its pid is gone)
    leaves the run to the next worker, which WAITs while a live worker holds the last run and
    is DONE once every point is told."""
    sweep_dir, engine = engine_on(tmp_path, new_storage, sr_space(0.125, 0.25), 1)
    gone = subprocess.run(
        [sys.executable, "-c", CLAIM_AND_EXIT, str(sweep_dir.root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    taken = engine.next_run()
    assert taken.trial_id == gone  # the dead process's claim is stale: taken over (in order)
    mine = engine.next_run()
    assert mine.trial_id != gone and mine.point != taken.point
    assert SweepEngine(sweep_dir, worker="b").next_run() == WAIT  # both runs held, live
    for t in (mine, taken):
        run_fake_trial(ml_collections.ConfigDict(t.record()["config"]), str(t.workdir))
        engine.finish_run(t, RunOutcome("complete"))
    assert SweepEngine(sweep_dir, worker="b").next_run() == DONE
    assert [t.state for t in study_of(sweep_dir).get_trials()] == [S.COMPLETE] * 2
