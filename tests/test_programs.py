"""The in-memory program cache (train/programs.py): the seed-as-argument initialiser gives the
landed initialiser's values bit for bit, later seeds of a point compile nothing, and the cache
key holds exactly what the programs depend on."""

from __future__ import annotations

import contextlib
import os
import threading

import jax
import numpy as np
import pytest
from jax import monitoring

from sqzexplore import sharding
from sqzexplore.config import base_config, model_config, validate_config
from sqzexplore.train import programs, xla_options
from sqzexplore.train.state import init_state

LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """Counts programs lowered and compiled by XLA (persistent-cache hits lower too)."""
    counts = {LOWERING: 0, BACKEND_COMPILE: 0}

    def listener(event, duration, **kwargs):
        if event in counts:
            counts[event] += 1

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        monitoring.unregister_event_duration_listener(listener)


def small_config(**model):
    c = base_config()
    # A 3-Fire net: these tests compile several programs, and only their structure matters.
    model = dict(stem_filters=8, base_e=8, incr_e=8, num_fire=3, pool_after=("fire3",)) | model
    c.model = model_config("digits", squeeze_ratio=0.25, **model)
    c.data.name = "digits"
    c.batch_size = 64
    c.eval_batch_size = 128
    c.num_steps = 3
    c.optim.name = "adamw"
    c.optim.schedule = "cosine"
    c.progress = False
    c.compilation_cache_dir = os.environ["SQZ_TEST_XLA_CACHE"]
    return c


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y, equal_nan=True)
        for x, y in zip(la, lb, strict=True)
    )


@pytest.fixture(autouse=True)
def fresh_cache():
    programs.clear()
    yield
    programs.clear()


@pytest.mark.parametrize(
    "model, seeds",
    [
        (dict(batch_norm=True, dropout=0.1), (0, 2**31 + 5)),
        pytest.param(
            dict(batch_norm=False, bypass="complex", init="torchvision"),
            (7,),
            marks=pytest.mark.slow,
        ),
        pytest.param(
            dict(batch_norm=False, bypass="simple", init="caffe", pct_3x3=0.75),
            (3,),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_initialiser_matches_the_landed_one_bit_for_bit(model, seeds):
    config = small_config(**model)
    spec = validate_config(config)
    progs = programs.for_run(config, spec, sharding.make_mesh())
    for seed in seeds:
        # The landed trainer: init_state with an int seed, jitted with default options.
        landed = jax.device_get(jax.jit(lambda s=seed: init_state(spec, progs.tx, s))())
        assert leaves_equal(progs.init(seed), landed), seed
    assert not leaves_equal(progs.init(0).params, progs.init(1).params)


def test_cache_key_ignores_seed_and_bookkeeping_but_not_semantics():
    mesh = sharding.make_mesh()
    key = programs.program_key(small_config(), mesh)
    same = small_config()
    same.seed = 5
    same.wandb.mode = "offline"
    same.progress = True
    same.compilation_cache_dir = "/elsewhere"
    assert programs.program_key(same, mesh) == key
    other = small_config()
    other.optim.lr = 0.5
    assert programs.program_key(other, mesh) != key
    assert programs.program_key(small_config(), sharding.make_mesh(jax.devices()[:2])) != key


def test_later_seeds_of_a_point_reuse_the_programs_and_compile_nothing():
    mesh = sharding.make_mesh()
    first = small_config()
    spec = validate_config(first)
    progs = programs.for_run(first, spec, mesh)
    before = programs.compile_seconds()
    progs.prepare()
    assert programs.compile_seconds() > before
    before, stats = programs.compile_seconds(), dict(programs.stats)
    with count_compiles() as counts:
        for seed in (1, 2, 3):
            config = small_config()
            config.seed = seed
            again = programs.for_run(config, validate_config(config), mesh)
            assert again is progs
            state = jax.tree.map(lambda a: sharding.put_replicated(a, mesh), again.init(seed))
            state, metrics = again.train_step()(state, *again.train_arrays())
            again.evaluate(state)
            assert np.isfinite(float(metrics["loss"]))
    assert counts == {LOWERING: 0, BACKEND_COMPILE: 0}, counts
    assert programs.stats["reused"] == stats.get("reused", 0) + 3
    assert programs.stats["built"] == stats.get("built", 0)
    assert programs.compile_seconds() == before  # nothing built: no time counted at all


def test_compiled_ahead_step_equals_the_step_compiled_from_a_concrete_state():
    """prepare() compiles from shapes alone; the landed trainer compiled from the live state."""
    from sqzexplore.train.step import make_train_step

    mesh = sharding.make_mesh()
    config = small_config()
    spec = validate_config(config)
    progs = programs.for_run(config, spec, mesh)
    progs.prepare()
    replicated = sharding.replicated(mesh)
    put = lambda tree: jax.tree.map(lambda a: sharding.put_replicated(a, mesh), tree)
    x, y = progs.train_arrays()
    step_fn = make_train_step(
        progs.graphdef,
        progs.tx,
        progs.schedule,
        num_classes=spec.num_classes,
        batch_fn=lambda x, y, s, k: progs.ds.device_train_batch(x, y, s, k, config.batch_size),
        batch_sharding=sharding.batch_sharded(mesh),
    )
    concrete = put(progs.init(3))
    landed = jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated))
    landed = landed.lower(concrete, x, y).compile(xla_options.step_options())  # same options
    a, b = put(progs.init(3)), put(progs.init(3))
    for _ in range(2):
        a, ma = landed(a, x, y)
        b, mb = progs.train_step()(b, x, y)
    assert leaves_equal(jax.device_get(a), jax.device_get(b))
    assert leaves_equal(ma, mb)


def test_reparam_and_init_params_get_fresh_programs():
    mesh = sharding.make_mesh()
    config = small_config()
    spec = validate_config(config)
    cached = programs.for_run(config, spec, mesh)
    assert programs.for_run(config, spec, mesh) is cached
    weights = cached.init(0)
    tuned = programs.for_run(config, spec, mesh, init_params={"params": weights.params})
    assert tuned is not cached
    assert programs.for_run(config, spec, mesh, init_params={"params": weights.params}) is not tuned
    assert leaves_equal(tuned.init(5).params, weights.params)  # the given weights, any seed


def test_cache_keeps_the_most_recent_points(monkeypatch):
    monkeypatch.setattr(programs, "MAX_PROGRAMS", 2)
    mesh = sharding.make_mesh()
    made = []
    for lr in (0.1, 0.2, 0.3):
        config = small_config()
        config.optim.lr = lr
        made.append(programs.for_run(config, validate_config(config), mesh))
    config = small_config()
    config.optim.lr = 0.1
    assert programs.for_run(config, validate_config(config), mesh) is not made[0]  # evicted
    config.optim.lr = 0.3
    assert programs.for_run(config, validate_config(config), mesh) is made[2]


def test_a_run_waits_for_the_programs_another_thread_is_compiling():
    mesh = sharding.make_mesh()
    config = small_config(dropout=0.0)
    progs = programs.for_run(config, validate_config(config), mesh)
    started = threading.Event()
    compiled_init = progs._compiled_init

    def init_then_signal():  # prepare() holds the programs' lock from here to its end
        started.set()
        return compiled_init()

    progs._compiled_init = init_then_signal
    with count_compiles() as counts:
        ahead = threading.Thread(target=progs.prepare)
        ahead.start()
        assert started.wait(timeout=120)  # an order, not a duration: the thread is building
        before = programs.compile_seconds()
        step = progs.train_step()  # waits for the thread instead of compiling it again
        waited = programs.compile_seconds() - before
        ahead.join()
    assert step is progs.train_step()
    assert counts[LOWERING] == 3, counts  # init, step, eval: each lowered once
    assert waited > 0


def test_trainer_seeds_of_a_point_in_one_process_compile_once_and_match_fresh_runs(
    tmp_path, capsys
):
    """The real trainer, as a sweep worker calls it: seed 2 after seed 1 of the same point
    lowers and compiles nothing, and gives the same result.json metrics as a run whose programs
    were built from scratch (the cache changes when programs are built, not what they compute)."""
    from sqzexplore.train import train_and_evaluate

    def run(seed: int, name: str) -> dict:
        config = small_config(dropout=0.1)
        config.seed = seed
        config.eval_every_epochs = 100.0  # one eval, at the end
        return train_and_evaluate(config, str(tmp_path / name))

    first = run(1, "s1")
    assert "compiled in" in capsys.readouterr().out
    with count_compiles() as counts:
        second = run(2, "s2")
    assert "train step reused from an earlier run of this point" in capsys.readouterr().out
    assert counts == {LOWERING: 0, BACKEND_COMPILE: 0}, counts
    # Nothing built in the second run, so no building time is counted (not a timing bound:
    # a cached program adds exactly nothing to compile_seconds()).
    assert first["compile_time_s"] > 0 and second["compile_time_s"] == 0.0
    for r in (first, second):
        parts = r["train_time_s"] + r["compile_time_s"] + r["overhead_s"]
        assert parts == pytest.approx(r["wall_time_s"], abs=1e-6)
    programs.clear()
    fresh = run(2, "s2-fresh")
    for key in ("final", "best", "steps"):
        assert fresh[key] == second[key], key
    assert first["final"] != second["final"]  # the seed does reach the programs
    # Programs compiled ahead (as a sweep worker does for its next point) are said to be so,
    # not "reused from an earlier run", when the first run of their point starts.
    programs.clear()
    ahead = small_config(dropout=0.1)
    ahead.eval_every_epochs = 100.0
    programs.prepare(ahead)
    capsys.readouterr()
    run(0, "s0-ahead")
    out = capsys.readouterr().out
    assert "compiled ahead while the previous run trained" in out and "reused" not in out


def test_eval_compiles_in_a_background_thread_once():
    """The trainer starts the eval compile beside the first train steps; the thread builds it,
    and a run that already holds it starts no thread."""
    config = small_config(num_fire=2, pool_after=())
    progs = programs.for_run(config, validate_config(config), sharding.make_mesh())
    thread = progs.compile_eval_in_background()
    assert thread is not None and thread.name == "sqz-eval-compile"
    thread.join(timeout=300)
    assert not thread.is_alive() and progs.built("eval")
    assert progs.compile_eval_in_background() is None
    state = progs.init(0)  # compiles the initialiser
    before = programs.compile_seconds()
    with count_compiles() as counts:
        metrics = progs.evaluate(state)  # uses the thread's program: nothing compiled here
    assert counts == {LOWERING: 0, BACKEND_COMPILE: 0}, counts
    assert programs.compile_seconds() == before
    assert 0.0 <= metrics["top1"] <= 1.0


def _train_programs(progs) -> list[str]:
    return [n for n in progs.built_names() if n.startswith(("train_step", "train_block"))]


def test_blocks_of_steps_never_compile_a_second_program(tmp_path, monkeypatch):
    """steps_per_dispatch 8 on a 20-step run (blocks of 8, 8, then a tail of 4) compiles one
    block program; a run resumed at step 12 from a checkpoint written with one step per dispatch
    (its first block: 4 steps) compiles nothing new: every block, a shorter one too, runs
    through the one program of 8 (dispatch.masked_block). Before, each shorter block length was
    a program of its own, compiled inside the timed training."""
    import signal

    from sqzexplore.train import events
    from sqzexplore.train.loop import train_and_evaluate

    def config(k: int):
        c = small_config()
        c.num_steps, c.log_every_steps, c.steps_per_dispatch = 20, 8, k
        c.eval_every_epochs = c.checkpoint_every_epochs = 4.0  # 88 steps: only the end
        return c

    whole = train_and_evaluate(config(8), str(tmp_path / "whole"))
    progs = programs.for_run(config(8), validate_config(config(8)), sharding.make_mesh())
    assert _train_programs(progs) == ["train_block/8"]
    records = [r for r in _records(tmp_path / "whole") if r["split"] == "train"]
    assert [r["step"] for r in records] == [8, 16, 20] and whole["steps"] == 20

    # Preempted at step 12 with one step per dispatch, resumed in blocks of 8 (4, then 8).
    reached = events.reached
    kill = lambda point, step: (
        point == "step" and step == 12 and os.kill(os.getpid(), signal.SIGTERM)
    )
    monkeypatch.setattr(events, "reached", lambda p, s: kill(p, s) or reached(p, s))
    first = train_and_evaluate(config(1), str(tmp_path / "resumed"))
    assert first == {"status": "preempted", "step": 12}
    monkeypatch.setattr(events, "reached", reached)
    built = progs.built_names()
    with count_compiles() as counts:
        resumed = train_and_evaluate(config(8), str(tmp_path / "resumed"))
    assert progs.built_names() == built, "the resumed run compiled another block program"
    assert counts[LOWERING] == 0, counts
    assert resumed["status"] == "complete" and resumed["steps"] == 20
    # The masked steps changed nothing: the resumed run is the whole one up to float
    # reassociation between one step per dispatch and blocks.
    assert resumed["final"]["loss"] == pytest.approx(whole["final"]["loss"], rel=0.02)
    again = [r for r in _records(tmp_path / "resumed") if r["split"] == "train"]
    assert [r["step"] for r in again] == [8, 16, 20]
    assert again[-1]["loss"] == pytest.approx(records[-1]["loss"], rel=0.02)


def _records(workdir) -> list[dict]:
    import json

    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
