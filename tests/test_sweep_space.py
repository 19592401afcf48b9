"""Sweep definitions: parsing, validation messages, grids, identities, the shipped sweep files."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_sweep_support import FAKE_RUNNER, REPO, TESTS, sr_space, write_sweep

from sqzexplore.config import base_config
from sqzexplore.sweep import cli
from sqzexplore.sweep.space import (
    EarlyStop,
    SweepDefinition,
    SweepError,
    categorical,
    fingerprint,
    int_range,
    log_uniform,
    point_key,
    uniform,
)
from sqzexplore.sweep.sweepfile import check_against_config, load_base_config, load_sweep

SHIPPED = ("squeeze_ratio", "pct_3x3", "downsampling", "bypass", "frontier")


def minimal(**changes):
    d = {
        "name": "t",
        "space": sr_space(0.125, 0.25),
        "objectives": [("final.top1", "maximize")],
    }
    d.update(changes)
    return d


def test_parse_builds_the_definition():
    d = SweepDefinition(
        name="demo",
        space={
            "model.squeeze_ratio": categorical(0.125, 0.5),
            "model.pool_after": categorical(("fire3", "fire5"), ("fire4", "fire8")),
            "optim.lr": log_uniform(1e-3, 1e-1, num=3),
        },
        objectives=[("final.top1", "maximize"), ("complexity.macs", "minimize")],
        seeds=2,
        constraints={"max_mib": 3.0},
    )
    assert d.keys == ("model.pool_after", "model.squeeze_ratio", "optim.lr")  # sorted
    assert d.seeds == (0, 1)
    assert d.grid_size == 2 * 2 * 3
    assert d.planned_points == 12
    pool = d.param("model.pool_after")
    # One typed value travels; its only other form is the Optuna label, and it decodes back.
    assert [pool.encode(v) for v in pool.values] == ["fire3,fire5", "fire4,fire8"]
    assert pool.decode("fire4,fire8") == ("fire4", "fire8")
    assert d.param("optim.lr").grid_values() == pytest.approx((1e-3, 1e-2, 1e-1))
    assert d.constraints == {"max_mib": 3.0}
    points = d.grid_points()
    assert len(points) == 12 and len({point_key(p) for p in points}) == 12
    assert points == d.grid_points()  # the order is seeded
    # The JSON form (sweep.json) gives back the same definition.
    assert SweepDefinition.from_dict(json.loads(json.dumps(d.to_dict()))) == d


def test_grid_values_of_ranges():
    d = SweepDefinition(
        **minimal(
            space={
                "model.squeeze_ratio": uniform(0.25, 1.0, step=0.25),
                "model.num_fire": int_range(4, 8, step=2),
                "optim.lr": uniform(0.1, 0.3, num=3),
            }
        )
    )
    assert d.param("model.squeeze_ratio").grid_values() == (0.25, 0.5, 0.75, 1.0)
    assert d.param("model.num_fire").grid_values() == (4, 6, 8)
    assert d.param("optim.lr").grid_values() == pytest.approx((0.1, 0.2, 0.3))


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"space": {}}, ["space is empty"]),
        ({"objectives": []}, ["objectives are empty"]),
        ({"objectives": [("final.top2", "maximize")]}, ["final.top2", "unknown", "final.top5"]),
        ({"objectives": [("final.top1", "up")]}, ["'maximize' or 'minimize'", "'up'"]),
        ({"sampler": "tpe"}, ["sampler must be one of", "grid", "nsga2", "'tpe'"]),
        ({"sampler": "random"}, ["n_trials must be >= 1"]),
        ({"seeds": 0}, ["seeds must be >= 1"]),
        ({"seeds": [1, 1]}, ["seeds repeat"]),
        ({"constraints": {"max_flops": 3}}, ["max_flops", "max_macs"]),
        ({"constraints": {"max_mib": -1}}, ["max_mib", "positive"]),
        ({"early_stop": EarlyStop("hyperband")}, ["early_stop.rule", "median"]),
        ({"early_stop": EarlyStop("median", n_warmup_evals=-1)}, ["n_warmup_evals", ">= 0"]),
        ({"name": "a b"}, ["sweep name"]),
        ({"space": {"squeeze_ratio": categorical(0.1)}}, ["dotted config path"]),
        ({"space": {"model.squeeze_ratio": [0.1]}}, ["categorical(...)", "[0.1]"]),
        ({"space": {"model.squeeze_ratio": uniform(0.1, 0.5)}}, ["grid sampler", "num="]),
        ({"space": {"model.squeeze_ratio": uniform(0.5, 0.1)}}, ["low < high"]),
        ({"space": {"optim.lr": log_uniform(0.0, 0.1, num=2)}}, ["log range needs low > 0"]),
        ({"space": {"model.bypass": categorical()}}, ["at least one value"]),
        ({"space": {"model.bypass": categorical("none", "none")}}, ["repeat"]),
        ({"space": sr_space(0.1), "fixed": {"model.squeeze_ratio": 0.2}}, ["both fixed and"]),
    ],
)
def test_bad_definitions_are_rejected_with_the_field_named(changes, words):
    with pytest.raises(SweepError) as e:
        SweepDefinition(**minimal(**changes))
    for w in words:
        assert w in str(e.value)


def test_keys_and_values_are_checked_against_the_base_config():
    config = base_config()
    bad_key = SweepDefinition(**minimal(space={"model.squeez_ratio": categorical(0.1)}))
    with pytest.raises(SweepError) as e:
        check_against_config(bad_key, config)
    assert "model.squez_ratio" not in str(e.value)
    assert "'model.squeez_ratio'" in str(e.value)
    assert "did you mean 'model.squeeze_ratio'" in str(e.value)

    bad_group = SweepDefinition(**minimal(space={"optimizer.lr": categorical(0.1)}))
    with pytest.raises(SweepError, match="keys under the config: .*optim"):
        check_against_config(bad_group, config)

    bad_type = SweepDefinition(**minimal(space={"model.bypass": categorical(3)}))
    with pytest.raises(SweepError, match="model.bypass"):
        check_against_config(bad_type, config)

    with pytest.raises(SweepError, match="sweep fixed: .*optim.lrr"):
        load_base_config(SweepDefinition(**minimal(fixed={"optim.lrr": 0.1})))


def test_fingerprint_and_point_key_are_stable():
    config = base_config()
    a = SweepDefinition(**minimal(), question="one")
    b = SweepDefinition(**minimal(), question="edited docstring only")
    assert fingerprint(a, config) == fingerprint(b, config)
    c = SweepDefinition(**minimal(space=sr_space(0.125, 0.5)))
    assert fingerprint(a, config) != fingerprint(c, config)
    config.optim.lr = 0.123  # the base experiment changed: a different sweep
    assert fingerprint(a, config) != fingerprint(a, base_config())
    p = {"model.squeeze_ratio": 0.25, "model.pool_after": ("fire3",)}
    assert point_key(p) == point_key(dict(reversed(list(p.items()))))
    assert point_key(p) == point_key({"model.squeeze_ratio": 0.25, "model.pool_after": ["fire3"]})
    assert point_key(p) != point_key({**p, "model.squeeze_ratio": 0.5})


def test_load_sweep_requires_docstring_and_get_sweep(tmp_path):
    no_doc = tmp_path / "no_doc.py"
    no_doc.write_text("def get_sweep(arg=None):\n    return {}\n")
    with pytest.raises(SweepError, match="no docstring"):
        load_sweep(str(no_doc))
    no_fn = tmp_path / "no_fn.py"
    no_fn.write_text('"""A question."""\n')
    with pytest.raises(SweepError, match="defines no get_sweep"):
        load_sweep(str(no_fn))
    with pytest.raises(SweepError, match="does not exist"):
        load_sweep(str(tmp_path / "missing.py"))
    not_typed = tmp_path / "plain.py"
    not_typed.write_text('"""A question."""\n\ndef get_sweep(arg=None):\n    return {}\n')
    with pytest.raises(SweepError, match="must return a SweepDefinition"):
        load_sweep(str(not_typed))
    broken = tmp_path / "broken.py"
    broken.write_text('"""A question."""\n\ndef get_sweep(arg=None)\n    return 1\n')
    with pytest.raises(SweepError, match="broken.py line 3: syntax error"):
        load_sweep(str(broken))


@pytest.mark.parametrize(
    "fields, words",
    [
        (
            dict(space={"model.squeez_ratio": categorical(0.1)}),
            ["model.squeez_ratio", "did you mean"],
        ),
        (dict(space={}), ["space is empty"]),
        (dict(spaces={}), ["unknown sweep field 'spaces'", "did you mean 'space'"]),
        (
            dict(space=sr_space(0.1), objectives=[("final.top11", "maximize")]),
            ["final.top11", "unknown", "did you mean 'final.top1'"],
        ),
        (dict(space=sr_space(0.1), sampler="bayes"), ["sampler must be one of"]),
    ],
)
def test_cli_rejects_bad_sweep_files(tmp_path, capsys, fields, words):
    path = write_sweep(tmp_path / "bad.py", **fields)
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
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ")
    for w in words:
        assert w in err
    assert not (tmp_path / "w" / "sweep.json").exists()  # nothing was created


def test_cli_rejects_a_bad_runner(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.py", space=sr_space(0.25))
    rc = cli.main(["run", str(path), "--workdir", str(tmp_path / "w"), "--runner", "nope"])
    assert rc == 2
    assert "module:function" in capsys.readouterr().err


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize(
    "arg", [None, "runlocal", "dataset=cifar10", "experiment=experiments/cifar10/squeezenet.py"]
)
def test_shipped_sweeps_load_and_fit_their_base_experiment(name, arg):
    path = REPO / "sweeps" / f"{name}.py"
    defn = load_sweep(str(path), arg)
    check_against_config(defn, load_base_config(defn))
    assert defn.name == name
    assert "paper" in defn.question  # quotes the paper's numbers, labelled as the paper's
    assert "sqz sweep run sweeps/" in defn.question  # and the command
    if arg == "runlocal":
        assert defn.base.arg == {"runlocal": True} and defn.base.arg_string() == "runlocal"
        full = load_sweep(str(path))
        assert defn.planned_points * len(defn.seeds) < full.planned_points * len(full.seeds)
    expected_base = "cifar10" if arg and "cifar10" in arg else "digits"
    assert Path(defn.base.path).parts[1] == expected_base


def test_an_unknown_dataset_names_the_ones_that_exist():
    with pytest.raises(SweepError, match="no experiment for dataset 'mnist'.*digits"):
        load_sweep(str(REPO / "sweeps" / "bypass.py"), "dataset=mnist")


def test_shipped_sweeps_answer_the_papers_questions():
    sr = load_sweep(str(REPO / "sweeps/squeeze_ratio.py"))
    assert sr.param("model.squeeze_ratio").values == (0.125, 0.25, 0.5, 0.75, 1.0)
    assert dict(sr.fixed)["model.pct_3x3"] == 0.5
    pct = load_sweep(str(REPO / "sweeps/pct_3x3.py"))
    values = pct.param("model.pct_3x3").values
    assert values[0] == 0.01 and values[-1] == 0.99 and 0.5 in values
    assert dict(pct.fixed)["model.squeeze_ratio"] == 0.5
    down = load_sweep(str(REPO / "sweeps/downsampling.py"))
    options = down.param("model.pool_after").values
    assert ("conv1", "fire3", "fire5") in options and ("conv1", "fire4", "fire8") in options
    assert len({len(o) for o in options}) == 1  # the same number of pools everywhere
    assert [o.metric for o in down.objectives] == ["final.top1", "complexity.macs"]
    bypass = load_sweep(str(REPO / "sweeps/bypass.py"))
    assert bypass.param("model.bypass").values == ("none", "simple", "complex")
    frontier = load_sweep(str(REPO / "sweeps/frontier.py"))
    assert frontier.sampler == "nsga2"
    assert set(frontier.keys) == {
        "model.squeeze_ratio",
        "model.pct_3x3",
        "model.pool_after",
        "model.bypass",
    }
    assert [(o.metric, o.direction) for o in frontier.objectives] == [
        ("final.top1", "maximize"),
        ("complexity.params", "minimize"),
    ]
    limited = load_sweep(str(REPO / "sweeps/frontier.py"), "max_mib=1.5")
    assert limited.constraints == {"max_mib": 1.5}
    # The tuple literal of a pooling option is what `sqz train --config.model.pool_after=` reads.
    assert ast.literal_eval(repr(options[0])) == options[0]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_sweeps_run_end_to_end_in_runlocal_mode(tmp_path, name, capsys):
    """Every shipped sweep file runs from the command line with its runlocal setting, through
    sampling, constraints, scheduling and the report (trials by the fast stand-in runner; the
    real trainer under the engine is tested in test_sweep_e2e.py)."""
    workdir = tmp_path / name
    sweep = str(REPO / "sweeps" / f"{name}.py")
    common = ["--workdir", str(workdir), "--progress", "off"]
    runner = ["--runner", FAKE_RUNNER]
    assert cli.main(["run", sweep, "--arg", "runlocal", *common, *runner]) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out and " 0 pending" in out
    assert cli.main(["report", str(workdir), "--quiet"]) == 0
    assert (workdir / "report" / "report.html").exists()
    assert (workdir / "report" / "frontier.csv").read_text().count("\n") >= 2


def test_sweeps_run_from_a_copy_of_the_package_and_another_directory(tmp_path):
    """As after a non-editable install: the package lives elsewhere (site-packages) and the
    command runs from another directory; the sweep file still finds its base experiment next to
    itself, not through the package's own path."""
    site = tmp_path / "site"
    shutil.copytree(
        REPO / "sqzexplore", site / "sqzexplore", ignore=shutil.ignore_patterns("__pycache__")
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "sqzexplore.sweep.cli", "run", str(REPO / "sweeps/bypass.py")]
        + ["--arg", "runlocal", "--workdir", "w", "--runner", FAKE_RUNNER, "--progress", "off"],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{TESTS}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 done, 0 running, 0 failed" in done.stdout
    state = json.loads((elsewhere / "w" / "sweep.json").read_text())
    assert state["definition"]["base"]["path"] == "experiments/digits/frontier.py"


# ------------------------------------------------------------------ typed arguments beat presets
def _arg_defaults(monkeypatch, path: Path, load) -> dict:
    """The argument defaults a sweep or experiment file passes to `parse_arg` (recorded by
    wrapping it while the file loads)."""
    import sqzexplore.config as config_module

    seen: dict = {}
    real = config_module.parse_arg

    def recording(arg, **defaults):
        seen.setdefault(str(path), defaults)
        return real(arg, **defaults)

    monkeypatch.setattr(config_module, "parse_arg", recording)
    load(str(path), "runlocal")
    monkeypatch.setattr(config_module, "parse_arg", real)
    return seen.get(str(path), {})


# String arguments with a fixed set of choices: another valid choice.
_OTHER_CHOICE = {"solver": "release", "bypass": "simple", "dataset": "cifar10"}


def _other_value(key, default):
    if isinstance(default, str):
        return _OTHER_CHOICE.get(key)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default * 2 if default else 1.0
    return None


def _files():
    sweeps = sorted((REPO / "sweeps").glob("*.py"))
    experiments = sorted((REPO / "experiments").glob("**/*.py"))
    return [("sweep", p) for p in sweeps] + [("experiment", p) for p in experiments]


@pytest.mark.parametrize("kind,path", _files(), ids=lambda v: getattr(v, "name", v))
def test_a_typed_argument_wins_over_the_runlocal_preset(monkeypatch, kind, path):
    """In every sweep and experiment file, each argument typed beside `runlocal` changes what
    the file builds (a preset never silently replaces a value the user typed)."""
    from sqzexplore.config import load_config_file

    def load(p, arg):
        if kind == "sweep":
            defn = load_sweep(p, arg)
            return repr({k: v for k, v in vars(defn).items() if k not in ("question", "source")})
        return json.dumps(load_config_file(p, arg).to_dict(), sort_keys=True, default=str)

    defaults = _arg_defaults(monkeypatch, path, load)
    if kind == "experiment" and path.name == "frontier.py":
        defaults = _arg_defaults(monkeypatch, path.with_name("squeezenet.py"), load)
    assert "runlocal" in defaults, f"{path} takes no runlocal argument"
    plain = load(str(path), "runlocal")
    checked = []
    for key, default in defaults.items():
        value = _other_value(key, default)
        if key == "runlocal" or value is None:
            continue
        typed = load(str(path), f"runlocal,{key}={value}")
        assert typed != plain, f"{path.name}: runlocal,{key}={value} built the same as runlocal"
        checked.append(key)
    assert checked or set(defaults) == {"runlocal"}, f"{path}: no typed argument checked"


def test_runlocal_with_an_ignored_data_dir_is_refused():
    from sqzexplore.config import ConfigError, load_config_file

    with pytest.raises(ConfigError, match="'data_dir' has no effect with 'runlocal'"):
        load_config_file(str(REPO / "experiments/cifar10/squeezenet.py"), "runlocal,data_dir=/x")


@pytest.mark.parametrize("sweep", ["squeeze_ratio", "pct_3x3", "bypass"])
def test_a_data_dir_the_base_would_ignore_is_refused(sweep, tmp_path):
    """`runlocal` bases train on synthetic (or bundled) data: a typed data_dir is refused, not
    silently dropped."""
    path = str(REPO / "sweeps" / f"{sweep}.py")
    for arg in (f"runlocal,dataset=cifar10,data_dir={tmp_path}", f"data_dir={tmp_path}"):
        with pytest.raises(SweepError, match="data.data_dir=.* has no effect"):
            load_base_config(load_sweep(path, arg))
