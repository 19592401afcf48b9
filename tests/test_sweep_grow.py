"""Growing a finished sweep in place: more seeds or more grid values run only the new trials and
keep the finished ones (same trial ids, not retrained); any other change still needs --new."""

from __future__ import annotations

import json

import pytest
from test_sweep_support import FAKE_RUNNER, study_of, write_sweep

from sqzexplore.sweep import cli
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs
from sqzexplore.sweep.params import categorical


def _run(path, workdir, *extra) -> int:
    argv = ["run", str(path), "--workdir", str(workdir), "--runner", FAKE_RUNNER]
    return cli.main([*argv, "--workers", "1", "--progress", "off", *extra])


def _attempts(sweep_dir) -> dict[str, int]:
    """trial id -> how many times the runner started it (fake_runner's fake_attempts.jsonl)."""
    out = {}
    for tid in sweep_dir.trial_ids():
        path = sweep_dir.trial_dir(tid) / "fake_attempts.jsonl"
        out[tid] = len(path.read_text().splitlines()) if path.exists() else 0
    return out


def _sweep(tmp_path, values=(0.125, 0.5), seeds=(0,), **kw):
    return write_sweep(
        tmp_path / "g.py",
        name="grow",
        space={"model.squeeze_ratio": categorical(*values)},
        seeds=list(seeds),
        **kw,
    )


def test_more_seeds_run_only_the_new_trials(tmp_path, capsys):
    workdir = tmp_path / "w"
    assert _run(_sweep(tmp_path), workdir) == 0
    sweep_dir = sd.SweepDir(workdir)
    before = _attempts(sweep_dir)
    assert len(before) == 2 and set(before.values()) == {1}
    mtimes = {t: (sweep_dir.trial_dir(t) / "result.json").stat().st_mtime_ns for t in before}

    assert _run(_sweep(tmp_path, seeds=(0, 1)), workdir) == 0
    out = capsys.readouterr().out
    assert "growing the sweep" in out and "seeds [0] -> [0, 1]" in out
    after = _attempts(sweep_dir)
    assert set(after) == set(before) | {t.replace("-s0", "-s1") for t in before}
    assert all(after[t] == 1 for t in before)  # the finished trials were not trained again
    assert all(after[t] == 1 for t in after)  # each new trial once
    for t, m in mtimes.items():
        assert (sweep_dir.trial_dir(t) / "result.json").stat().st_mtime_ns == m
    runs = collect_runs(sweep_dir)
    assert [r.state for r in runs] == [sd.COMPLETE] * 4
    # The grown study knows every point with its mean over both seeds.
    complete = [t for t in study_of(sweep_dir).trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2
    state = json.loads(sweep_dir.sweep_json.read_text())
    assert state["definition"]["seeds"] == [0, 1] and len(state["grown"]) == 1
    # One study: the grown sweep's; the superseded one is gone from the storage.
    import optuna

    assert optuna.get_all_study_names(sd.open_storage(None, sweep_dir)) == [state["study_name"]]


def test_more_grid_values_run_only_the_new_points(tmp_path, capsys):
    workdir = tmp_path / "w"
    assert _run(_sweep(tmp_path), workdir) == 0
    sweep_dir = sd.SweepDir(workdir)
    before = _attempts(sweep_dir)
    assert _run(_sweep(tmp_path, values=(0.125, 0.25, 0.5)), workdir) == 0
    after = _attempts(sweep_dir)
    assert len(after) == 3 and all(after[t] == 1 for t in after)
    (new,) = set(after) - set(before)
    runs = {r.trial_id: r for r in collect_runs(sweep_dir)}
    assert runs[new].params["model.squeeze_ratio"] == 0.25
    assert "model.squeeze_ratio + [0.25]" in capsys.readouterr().out
    st = cli.main(["status", str(workdir)])
    assert st == 0 and "3 points x 1 seed(s) = 3 trials" in capsys.readouterr().out


@pytest.mark.parametrize(
    "change",
    [
        {"fixed": {"num_steps": 9}},  # the fixed config
        {"objectives": [("final.top1", "maximize")]},  # the objectives
        {"values": (0.125,)},  # a grid value removed
        {"seeds": (1,)},  # a seed replaced, not added
    ],
)
def test_other_changes_still_need_new(tmp_path, capsys, change):
    workdir = tmp_path / "w"
    assert _run(_sweep(tmp_path), workdir) == 0
    before = _attempts(sd.SweepDir(workdir))
    assert _run(_sweep(tmp_path, **change), workdir) == 2
    err = capsys.readouterr().err
    assert "the sweep definition changed" in err and "--new" in err
    assert _attempts(sd.SweepDir(workdir)) == before


def test_a_sweep_written_before_a_config_key_existed_resumes_as_the_same_sweep(tmp_path, capsys):
    """A sweep.json whose base config lacks a key added since (at its default) is the same
    sweep: it resumes without --new, keeps its study and trains nothing again; a key that an
    old sweep lacks but the new base config sets to a non-default value still needs --new."""
    workdir = tmp_path / "w"
    path = _sweep(tmp_path)
    assert _run(path, workdir) == 0
    sweep_dir = sd.SweepDir(workdir)
    before = _attempts(sweep_dir)
    state = json.loads(sweep_dir.sweep_json.read_text())
    # As an older sqzexplore wrote it: no model.expand3x3_groups, another fingerprint.
    del state["base_config"]["model"]["expand3x3_groups"]
    state["fingerprint"] = "0" * 64
    sweep_dir.sweep_json.write_text(json.dumps(state))
    assert _run(path, workdir) == 0
    refreshed = json.loads(sweep_dir.sweep_json.read_text())
    assert refreshed["study_name"] == state["study_name"]  # the same study, not a grown one
    assert refreshed["fingerprint"] != "0" * 64
    assert refreshed["base_config"]["model"]["expand3x3_groups"] == 1
    assert _attempts(sweep_dir) == before  # nothing trained again
    assert "growing" not in capsys.readouterr().out


def test_a_run_written_before_a_config_key_existed_is_the_same_run(tmp_path):
    from sqzexplore import rundir
    from sqzexplore.config import base_config, flat_defaults

    config = json.loads(base_config().to_json_best_effort())
    old = json.loads(json.dumps(config))
    del old["model"]["expand3x3_groups"]
    rundir.write_json(tmp_path / rundir.CONFIG_FILE, old)
    rundir.check_config(tmp_path, config, flat_defaults())  # at its default: the same run
    assert rundir.config_diffs(old, config, flat_defaults()) == []
    config["model"]["expand3x3_groups"] = 2
    assert rundir.config_diffs(old, config, flat_defaults()) == ["model.expand3x3_groups"]
    with pytest.raises(rundir.WorkdirConflictError, match="model.expand3x3_groups"):
        rundir.check_config(tmp_path, config, flat_defaults())
    # Without defaults (as before), any added key is a difference.
    config["model"]["expand3x3_groups"] = 1
    assert rundir.config_diffs(old, config) == ["model.expand3x3_groups"]


def test_a_typed_seeds_grows_a_finished_runlocal_sweep_by_the_new_seed(tmp_path, capsys):
    """`--arg runlocal,seeds=2` on a finished `--arg runlocal` sweep of a shipped sweep file
    trains exactly the second seed of each point (the preset's one seed no longer wins)."""
    from test_sweep_support import REPO

    sweep_file, workdir = str(REPO / "sweeps" / "squeeze_ratio.py"), tmp_path / "w"
    assert _run(sweep_file, workdir, "--arg", "runlocal") == 0
    sweep_dir = sd.SweepDir(workdir)
    before = _attempts(sweep_dir)
    assert len(before) == 2 and all(t.endswith("-s0") for t in before)
    assert _run(sweep_file, workdir, "--arg", "runlocal,seeds=2") == 0
    assert "2 points x 2 seed(s)" in capsys.readouterr().out
    after = _attempts(sweep_dir)
    assert set(after) - set(before) == {t.replace("-s0", "-s1") for t in before}
    assert all(n == 1 for n in after.values())  # the first seed's trials were not retrained
