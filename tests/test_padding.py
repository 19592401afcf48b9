"""Width-padded populations (sqzexplore/train/padding.py): points that differ only in channel
widths trained as one padded program, each member computing its own narrow network.

Members: the tiny digits point at squeeze ratio 0.125, 0.5, 1.0 and pct_3x3 0.25, 0.75
(tests/data/padded_population.py). Each must be its narrow lone trial: the same init bit for bit,
the same first-step loss within 1e-5 relative, final top-1 within 2 points, its own spec,
complexity and (narrow) checkpoints; padded weights, optimiser state and statistics exactly 0 to
the end; kills and SIGTERMs resume it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from trainer_env import trainer_env

from sqzexplore import rundir, sharding
from sqzexplore.checkpoint import load_run
from sqzexplore.models.squeezenet import _dropout_mask
from sqzexplore.train import padding
from sqzexplore.train.loop import train_and_evaluate
from sqzexplore.train.population import PopulationError, train_population
from sqzexplore.train.state import init_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "data"))
from padded_population import POINTS, configs  # noqa: E402

SCRIPT = os.path.join(REPO, "tests", "data", "padded_population.py")
# The tests of the `layout` and `trained` fixtures on one xdist worker (built once).
SHARED = pytest.mark.xdist_group("padding")
TIMING = ("wall_time_s", "compile_time_s", "train_time_s", "overhead_s", "images_per_s")


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in TIMING}


def _records(workdir) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k != "images_per_s"}
        for r in rundir.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    ]


def _put(tree, mesh):
    return jax.tree.map(lambda a: sharding.put_replicated(np.asarray(a), mesh), tree)


@pytest.fixture(scope="module")
def layout():
    return padding.layout(configs(2.0), sharding.make_mesh())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The five points alone and as one padded population (2 epochs = 44 steps); the padded
    state of every member at its last checkpoint is recorded."""
    root = tmp_path_factory.mktemp("padding")
    cs = configs(2.0)
    singles = [train_and_evaluate(c, str(root / f"single{i}")) for i, c in enumerate(cs)]
    final: dict[int, object] = {}
    real = padding.Padded.extract

    def extract(self, index, state):
        final[index] = state  # the last call per member is its final checkpoint
        return real(self, index, state)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(padding.Padded, "extract", extract)
        members = train_population(cs, [str(root / f"m{i}") for i in range(len(cs))])
    return dict(root=root, configs=cs, singles=singles, members=members, final=final)


@SHARED
@pytest.mark.slow
def test_init_is_the_narrow_init_embedded(layout, trained):
    """`trained` first: the lone trials have compiled the narrow programs this test reuses."""
    assert isinstance(layout, padding.Padded)
    for i, c in enumerate(configs(2.0)):
        spec, tx = layout.specs[i], layout.narrow[i].tx
        alone = jax.device_get(layout.narrow[i].init(c.seed))  # what the lone trial starts from
        if i in (0, 2):  # the narrowest and the widest: also by an independent init_state
            independent = jax.jit(lambda s=c.seed, p=spec, t=tx: init_state(p, t, s))()
            jax.tree.map(np.testing.assert_array_equal, jax.device_get(independent), alone)
        embedded = layout.init(i, c.seed)
        pm, bm, _, where, _ = layout._layout(i)
        # At the member's positions exactly the narrow values; zero everywhere else.
        for padded, mask, narrow in zip(
            jax.tree.leaves(embedded.params), jax.tree.leaves(pm), jax.tree.leaves(alone.params)
        ):
            np.testing.assert_array_equal(padded[mask], np.asarray(narrow).ravel())
            assert not np.any(padded[~mask])
        back = layout.extract(i, embedded)
        jax.tree.map(np.testing.assert_array_equal, back.params, alone.params)
        jax.tree.map(np.testing.assert_array_equal, back.opt_state, alone.opt_state)
        np.testing.assert_array_equal(back.rng, alone.rng)
        assert where.size == ravel_pytree(alone.params)[0].size


@SHARED
@pytest.mark.slow
def test_first_step_is_the_narrow_first_step(layout, trained):
    """Vmapped (the GPU lowering; the CPU's, unrolled, is what `trained` ran)."""
    progs, mesh = layout.programs, layout.programs.mesh
    seeds = [c.seed for c in configs(2.0)]
    states = [layout.init(i, s) for i, s in enumerate(seeds)]
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)
    active = sharding.put_replicated(np.ones(len(seeds), bool), mesh)
    images, labels = progs.train_arrays()
    step = progs.population_step(len(seeds), 1, "vmap")
    new, metrics = step(_put(stacked, mesh), active, images, labels)
    new = jax.device_get(new)
    for i in range(len(seeds)):
        narrow = layout.narrow[i]
        after, alone = narrow.train_step()(_put(layout.extract(i, states[i]), mesh), images, labels)
        for k in ("loss", "grad_norm", "param_norm"):  # norms count only the real weights
            assert float(metrics[k][i]) == pytest.approx(float(alone[k]), rel=1e-5), (i, k)
        mine = layout.extract(i, jax.tree.map(lambda a, i=i: a[i], new))
        for a, b in zip(
            jax.tree.leaves(mine.params), jax.tree.leaves(jax.device_get(after.params))
        ):
            # Adam's first update is lr * g / (|g| + eps), about lr * sign(g): a gradient near
            # 0 whose last digits differ moves its weight by another fraction of lr (3e-3 peak;
            # measured: at most 2e-5 off, in under 1% of a layer's weights).
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    # A few more steps: every padded weight, statistic and optimiser moment is still exactly 0.
    state = _put(new, mesh)
    for _ in range(4):
        state, _ = step(state, active, images, labels)
    _assert_padding_zero(layout, jax.device_get(state), range(len(seeds)), steps=5)


def test_dropout_mask_is_drawn_at_the_narrow_shape():
    key = jax.random.key(3)
    narrow = np.asarray(jax.random.bernoulli(key, 0.8, (4, 2, 2, 5)))
    # Narrow channels 0-1 (expand1x1) then 2-4 (expand3x3), padded to [3 | 4] channels.
    index = np.array([0, 1, -1, 2, 3, 4, -1], np.int32)
    padded = np.asarray(_dropout_mask(key, 0.8, (4, 2, 2, 7), (index, np.int32(5))))
    np.testing.assert_array_equal(padded[..., index >= 0], narrow)
    assert not padded[..., index < 0].any()


@SHARED
@pytest.mark.slow
def test_members_are_their_narrow_lone_trials(trained, capsys):
    drift = []
    for i, (single, member) in enumerate(zip(trained["singles"], trained["members"], strict=True)):
        lone, mine = trained["root"] / f"single{i}", trained["root"] / f"m{i}"
        assert member["status"] == "complete" and member["steps"] == single["steps"] == 44
        assert member["complexity"] == single["complexity"]  # the narrow network's
        for name in ("spec.json", "complexity.json", "config.json"):
            assert rundir.read_json(mine / name) == rundir.read_json(lone / name), name
        a, b = _records(lone), _records(mine)
        assert [(r["step"], r["split"]) for r in a] == [(r["step"], r["split"]) for r in b]
        # The first record averages steps 1-5: padding reorders sums, so it drifts a little.
        assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-4)
        drift.append(member["final"]["top1"] - single["final"]["top1"])
        assert abs(drift[-1]) <= 0.02, (POINTS[i], single["final"], member["final"])
        # Its checkpoint is the narrow trial's: same shapes, restorable as the lone run's.
        ours, theirs = load_run(mine), load_run(lone)
        shapes = lambda t: jax.tree.map(np.shape, t)
        assert shapes(ours["params"]) == shapes(theirs["params"])
        assert shapes(ours["batch_stats"]) == shapes(theirs["batch_stats"])
    with capsys.disabled():
        print(f"\npadded members' final top-1 - lone narrow trial's: {drift} (points {POINTS})")


def _assert_padding_zero(layout, states, members, steps: int) -> None:
    """Padded params, batch stats and flat optimiser vectors exactly 0 in `states` (one state
    per member, or stacked ones)."""
    for i in members:
        state = states[i] if isinstance(states, dict) else jax.tree.map(lambda a, i=i: a[i], states)
        assert int(state.step) == steps
        pm, bm, _, where, _ = layout._layout(i)
        for leaf, mask in zip(jax.tree.leaves(state.params), jax.tree.leaves(pm), strict=True):
            assert not np.any(leaf[~mask]) and np.any(leaf[mask])
        for leaf, mask in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(bm)):
            assert not np.any(leaf[~mask])
        size = int(sum(m.size for m in jax.tree.leaves(pm)))
        outside = np.ones(size, bool)
        outside[where] = False
        flats = [x for x in jax.tree.leaves(state.opt_state) if np.shape(x) == (size,)]
        assert flats and all(not np.any(np.asarray(x)[outside]) for x in flats)


@SHARED
@pytest.mark.slow
def test_padded_weights_stay_exactly_zero(trained):
    layout = padding.layout(trained["configs"], sharding.make_mesh())
    assert sorted(trained["final"]) == list(range(len(POINTS)))
    _assert_padding_zero(layout, trained["final"], range(len(POINTS)), steps=44)


def test_unpaddable_points_are_one_line_errors(tmp_path):
    cs = configs(2.0)[:2]
    cs[1].model.pool_after = ("fire3",)
    with pytest.raises(PopulationError, match="seed and the channel widths.*pool_after"):
        train_population(cs, [str(tmp_path / "a"), str(tmp_path / "b")])
    cs = configs(2.0)[:2]
    cs[1].model.pct_3x3 = 1.0  # no expand1x1 conv: not the same network structure
    with pytest.raises(PopulationError, match="cannot be padded.*expand1x1"):
        train_population(cs, [str(tmp_path / "a"), str(tmp_path / "b")])
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------- kills
def _train(workdir, fault: str | None = None) -> subprocess.CompletedProcess:
    env = trainer_env()
    cmd = [sys.executable, SCRIPT, str(workdir), *([fault] if fault else [])]
    return subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
    )


@pytest.mark.slow
def test_padded_population_resumes_after_kill_and_sigterm(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    p = _train(ref)
    assert p.returncode == 0 and p.stdout.count("member: complete 44") == 5, p.stdout
    # Four runs of five members, one device: a kill as the first checkpoint commits (before it
    # is sealed: the rerun starts over), a SIGTERM mid-interval (its checkpoint at step 30),
    # then the resume from step 30 to the end.
    p = _train(run, "checkpoint_committed@22:KILL")
    assert p.returncode == -9, p.stdout
    p = _train(run, "step@30:TERM")
    assert p.returncode == 0 and "preempted (SIGTERM) at step 30" in p.stdout, p.stdout
    p = _train(run)
    assert "resuming population of 5 from step 30" in p.stdout, p.stdout
    assert p.returncode == 0 and p.stdout.count("member: complete 44") == 5, p.stdout
    for i in range(len(POINTS)):
        a, b = (rundir.read_json(d / f"m{i}" / "result.json") for d in (ref, run))
        assert _strip(a) == _strip(b)
        assert _records(ref / f"m{i}") == _records(run / f"m{i}")


# ---------------------------------------------------------------------------- grouping by cost
def test_grouping_pays_by_measured_cost():
    from sqzexplore.sweep import grouping

    base, wide, other = (json.loads(c.to_json_best_effort()) for c in configs(2.0)[:3])
    other["model"]["pool_after"] = ["fire3"]
    assert grouping.width_key(base) == grouping.width_key(wide)
    assert grouping.pays([base], other, None) == (False, "differs in more than channel widths")
    assert grouping.pays([base], wide, None)[0] is False  # nothing measured yet: no padding
    macs = grouping.group_macs([base, wide])  # the padded network's
    assert macs > grouping.group_macs([base])
    cheap = grouping.Measured(compile_s=20.0, seconds_per_mac_step=1e-12, steps=44)
    dear = grouping.Measured(compile_s=0.1, seconds_per_mac_step=1e-6, steps=44)
    ok, why = grouping.pays([base], wide, cheap)
    assert ok and "compile saved" in why, why
    assert not grouping.pays([base], wide, dear)[0]  # widens the network for `base`
    assert not grouping.pays([wide], base, dear)[0]  # padded itself
    assert grouping.pays([wide], base, cheap)[0]
    result = {"status": "complete", "steps": 44, "train_time_s": 4.4, "compile_time_s": 9.0}
    m = grouping.Measured.from_result(result, 1000)
    assert m == grouping.Measured(9.0, 4.4 / 44 / 1000, 44)
    assert grouping.Measured.from_result({"status": "failed"}, 1000) is None


@pytest.mark.slow
@pytest.mark.soak
def test_sweep_pads_the_points_of_one_width_group(tmp_path, capsys):
    """A squeeze-ratio sweep, one seed a point, `--population 3`: the first run measures the
    costs, the two other points then train as one padded program; each trial is its own
    point's (narrow complexity), and the log says which points share a program and why."""
    from test_sweep_support import write_sweep

    from sqzexplore.sweep import cli as sweep_cli
    from sqzexplore.sweep import sweepdir as sd
    from sqzexplore.sweep.analyze import collect_runs
    from sqzexplore.sweep.params import categorical
    from sqzexplore.sweep.runconfig import analytic_complexity
    from sqzexplore.sweep.space import Experiment

    path = write_sweep(
        tmp_path / "widths.py",
        doc="Three squeeze ratios of the tiny digits point, padded into one program.",
        name="widths",
        base=Experiment(os.path.join(REPO, "tests", "data", "tiny_digits.py"), {}),
        fixed={"num_steps": 6, "eval_every_epochs": 0.1, "log_every_steps": 2},
        space={"model.squeeze_ratio": categorical(0.125, 0.5, 1.0)},
        seeds=1,
    )
    workdir = tmp_path / "w"
    argv = ["run", str(path), "--workdir", str(workdir), "--progress", "off"]
    # Off: compile-ahead would claim the second point's group while the first run trains,
    # before any cost is measured, and so pad nothing (sweep/workers.py claim_group).
    argv += ["--compile-ahead", "off"]
    assert sweep_cli.main([*argv, "--population", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 done, 0 running, 0 failed" in out, out
    assert "not padded: no cost measured yet" in out, out
    assert "padded into its program: padded steps cost" in out, out
    assert "as one width-padded population (one program)" in out, out
    assert out.count("compiling the train step") == 2, out  # 3 points, 2 programs
    runs = collect_runs(sd.SweepDir(workdir))
    assert len(runs) == 3 and all(r.state == sd.COMPLETE for r in runs)
    for r in runs:
        record = rundir.read_json(sd.SweepDir(workdir).trial_dir(r.trial_id) / "trial.json")
        own = analytic_complexity(record["config"])
        assert r.result["complexity"]["params"] == own["params"], r.trial_id
    assert len({r.result["complexity"]["params"] for r in runs}) == 3


def test_bench_widths_bad_values():
    from pathlib import Path

    from benchmarks import cli as bench_cli

    where = Path(REPO) / "benchmarks"
    for bad in ("0,0.5", "0.5,0.5", "x", "1.5"):
        assert bench_cli.main(["population", "--widths", bad], benchmarks_dir=where) == 2
