"""Dashboards that fill: wandb runs (read back from wandb's offline files), the exported wandb
sweep YAML run as an agent would from another directory, and the TensorBoard mirror (read back
with TensorBoard's own event reader)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import types

import pytest
import wandb_offline
import yaml
from test_sweep_support import DIGITS, REPO, run_inprocess, sr_space, write_sweep

from sqzexplore.config import load_config_file
from sqzexplore.rundir import read_jsonl, write_jsonl
from sqzexplore.runlog import MetricsWriter, mirror_to_tensorboard
from sqzexplore.sweep import cli
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs
from sqzexplore.sweep.params import categorical, int_range, log_uniform, uniform
from sqzexplore.sweep.space import Experiment, SweepError


@pytest.fixture
def wandb_env(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)


def test_a_trial_run_has_flat_design_fields_group_and_final_metrics(tmp_path, wandb_env):
    config = load_config_file(f"{DIGITS}:sr=0.25,bypass=simple")
    config.wandb.mode = "offline"
    config.wandb.group = "sr_sweep"
    config.seed = 2
    config_dict = json.loads(config.to_json_best_effort())
    design = dict(config_dict["model"], pool_after=["fire3", "fire5", "fire7"])
    complexity = {"params": 365_034, "macs": 8_600_000, "fp32_mib": 1.392}
    # The arguments the trainer passes (sqzexplore/train/loop.py).
    writer = MetricsWriter(
        str(tmp_path),
        is_main=True,
        resume_step=0,
        wandb_config=config.wandb,
        run_config=config_dict,
        summary={"design": design, "complexity": complexity},
    )
    writer.write({"step": 10, "split": "train", "loss": 1.5, "top1": 0.6})
    writer.write({"step": 20, "split": "eval", "loss": 0.2, "top1": 0.97, "top5": 1.0})
    writer.summary({"final": {"top1": 0.97, "top5": 1.0}, "best": {"top1": 0.97, "step": 20}})
    writer.close()

    run = wandb_offline.read_run(wandb_offline.run_file(tmp_path))
    assert run["group"] == "sr_sweep"
    flat = {k: run["config"][k] for k in ("squeeze_ratio", "pct_3x3", "pool_after", "bypass")}
    assert flat == {
        "squeeze_ratio": 0.25,
        "pct_3x3": 0.5,
        "pool_after": "fire3,fire5,fire7",
        "bypass": "simple",
    }
    assert run["config"]["params"] == 365_034 and run["config"]["macs"] == 8_600_000
    assert run["config"]["mib"] == 1.392 and run["config"]["seed"] == 2
    assert run["config"]["dataset"] == "digits"
    assert run["config"]["model"]["squeeze_ratio"] == 0.25  # the full config too
    assert run["summary"]["final/top1"] == 97.0 and run["summary"]["best/step"] == 20
    assert [h.get("eval/top1") for h in run["history"] if "eval/top1" in h] == [97.0]  # percent
    assert read_jsonl(tmp_path / "metrics.jsonl")[-1]["top1"] == 0.97  # the file is the truth


@pytest.mark.slow
def test_sweep_trials_log_to_wandb_with_the_real_trainer(tmp_path, wandb_env):
    path = write_sweep(
        tmp_path / "wb.py",
        name="wb_real",
        base=Experiment(DIGITS, {"runlocal": True}),
        fixed={"num_steps": 2, "eval_every_epochs": 0.05, "wandb.mode": "offline"},
        space={"model.squeeze_ratio": categorical(0.25)},
        seeds=[3],
    )
    sweep_dir, _ = run_inprocess(path, tmp_path / "w", runner=_real_trainer())
    runs = collect_runs(sweep_dir)
    assert [r.state for r in runs] == [sd.COMPLETE]
    for r in runs:
        logged = wandb_offline.read_run(wandb_offline.run_file(sweep_dir.trial_dir(r.trial_id)))
        assert logged["group"].startswith("wb_real-") and logged["name"] == f"sr=0.25 s{r.seed}"
        assert logged["config"]["squeeze_ratio"] == r.params["model.squeeze_ratio"]
        assert logged["config"]["params"] == r.complexity["params"]
        assert logged["config"]["seed"] == r.seed
        assert logged["summary"]["final/top1"] == pytest.approx(100 * r.result["final"]["top1"])


def _real_trainer():
    from sqzexplore.sweep.workers import DEFAULT_RUNNER, load_runner

    return load_runner(DEFAULT_RUNNER)


# ------------------------------------------------------------------------------ wandb summary
def test_report_summary_run_carries_the_frontier_table_and_figures(tmp_path, wandb_env):
    path = write_sweep(
        tmp_path / "s.py", name="summ", space=sr_space(0.125, 0.25, 0.5, 1.0), seeds=2
    )
    sweep_dir, _ = run_inprocess(path, tmp_path / "w")
    rc = cli.main(["report", str(sweep_dir.root), "--wandb-mode", "offline", "--quiet"])
    assert rc == 0
    run_file = wandb_offline.run_file(sweep_dir.report)
    run, files = wandb_offline.read_run(run_file), run_file.parent / "files"
    assert run["group"].startswith("summ-") and run["name"] == "summ summary"
    # History keys are flat ("frontier/_type"): wandb logs media as nested dicts.
    (logged,) = [h for h in run["history"] if "frontier/_type" in h]
    assert logged["frontier/_type"] == logged["results/_type"] == "table-file"
    assert logged["frontier/nrows"] >= 2 and logged["results/nrows"] == 4
    for name in ("accuracy_vs_params", "accuracy_vs_macs", "field_model_squeeze_ratio"):
        assert logged[f"figures/{name}/_type"] == "image-file"
        assert logged[f"figures/{name}/width"] > 0
        assert (files / logged[f"figures/{name}/path"]).is_file()
    table = json.loads((files / logged["frontier/path"]).read_text())
    assert "final.top1.mean" in table["columns"] and "fronts" in table["columns"]
    assert len(table["data"]) == logged["frontier/nrows"]


# ------------------------------------------------------------------------------ export-wandb
FAKE_SQZ = """#!{python}
import json, os, sys
from absl import flags
from ml_collections import config_flags
assert sys.argv[1] == 'train'
fv = flags.FlagValues()
config_flags.DEFINE_config_file('config', None, '', flag_values=fv, sys_argv=sys.argv[1:])
flags.DEFINE_string('workdir', None, '', flag_values=fv)
fv(sys.argv[1:])
c = fv.config
print(json.dumps({{'workdir': fv.workdir, 'sr': c.model.squeeze_ratio, 'cwd': os.getcwd(),
    'pool_after': list(c.model.pool_after), 'seed': c.seed, 'pct': c.model.pct_3x3,
    'group': c.wandb.group, 'mode': c.wandb.mode, 'project': c.wandb.project,
    'entity': c.wandb.entity, 'epochs': c.num_epochs}}))
"""


def test_export_wandb_yaml_turns_wandb_on_and_runs_from_any_directory(tmp_path, capsys):
    path = write_sweep(
        tmp_path / "wb.py",
        name="wbdemo",
        base=Experiment("experiments/digits/squeezenet.py", {"runlocal": True}),
        space={
            "model.squeeze_ratio": categorical(0.125, 0.5),
            "model.pool_after": categorical(
                ("fire2", "fire4", "fire6"), ("conv1", "fire4", "fire8")
            ),
        },
        fixed={"model.pct_3x3": 0.25},
        seeds=2,
    )
    fake_sqz = tmp_path / "bin" / "sqz"
    fake_sqz.parent.mkdir()
    fake_sqz.write_text(FAKE_SQZ.format(python=sys.executable))
    fake_sqz.chmod(0o755)
    output = tmp_path / "wb.yaml"
    args = ["export-wandb", str(path), "--output", str(output), "--project", "sqz-proj"]
    args += ["--entity", "team", "--runs-root", "relative/runs", "--sqz", str(fake_sqz)]
    args += ["--checkout", str(REPO)]  # the checkout's path where the agents run
    cwd = os.getcwd()
    try:
        os.chdir(REPO)  # the base experiment is found relative to the repository
        assert cli.main(args) == 0
    finally:
        os.chdir(cwd)
    assert "wandb agent team/sqz-proj/" in capsys.readouterr().out
    config = yaml.safe_load(output.read_text())
    assert config["name"] == "wbdemo" and config["method"] == "grid"
    assert config["project"] == "sqz-proj" and config["entity"] == "team"
    assert config["metric"] == {"name": "final/top1", "goal": "maximize"}
    params = config["parameters"]
    assert "config.wandb.mode" not in params  # the agent's $WANDB_MODE, online when unset
    assert '--config.wandb.mode="${WANDB_MODE:-online}"' in config["command"][3]
    assert config["run_cap"] == 2 * 2 * 2  # points x seeds
    assert params["config.wandb.project"] == {"value": "sqz-proj"}
    assert params["config.wandb.entity"] == {"value": "team"}
    assert params["config.wandb.group"] == {"value": "wbdemo"}
    assert params["config.model.squeeze_ratio"] == {"values": [0.125, 0.5]}
    pools = [ast.literal_eval(v) for v in params["config.model.pool_after"]["values"]]
    assert pools == [("fire2", "fire4", "fire6"), ("conv1", "fire4", "fire8")]
    assert params["config.seed"] == {"values": [0, 1]}
    assert params["config.model.pct_3x3"] == {"value": 0.25}
    command = config["command"]
    assert command[0] == "${env}" and command[-1] == "${args}"
    assert str(fake_sqz) in command
    config_arg = next(c for c in command if c.startswith("--config="))
    assert os.path.isabs(config_arg.split("=", 1)[1].split(":")[0])
    assert f"{REPO}/relative/runs/$WANDB_RUN_ID" in command[3]  # under --checkout

    # Expand the command as a wandb agent does and run it from an unrelated directory.
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    run_args = {k: {"value": v["value"]} for k, v in params.items() if "value" in v}
    run_args["config.model.squeeze_ratio"] = {"value": 0.5}
    run_args["config.model.pool_after"] = {"value": params["config.model.pool_after"]["values"][0]}
    run_args["config.seed"] = {"value": 1}
    expanded = sweep_utils.create_sweep_command_args({"args": run_args})
    argv = []
    for item in command:
        argv += {"${env}": ["/usr/bin/env"], "${args}": expanded["args"]}.get(item, [item])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "WANDB_RUN_ID": "abc123", "WANDB_MODE": "offline"}
    done = subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "workdir": f"{REPO}/relative/runs/abc123",
        "cwd": str(elsewhere),
        "sr": 0.5,
        "pool_after": ["fire2", "fire4", "fire6"],
        "seed": 1,
        "pct": 0.25,
        "group": "wbdemo",
        "mode": "offline",  # from the agent's environment
        "project": "sqz-proj",
        "entity": "team",
        "epochs": 2.0,  # runlocal experiment
    }


def test_export_wandb_has_no_paths_of_the_exporting_machine(tmp_path, monkeypatch):
    from sqzexplore.sweep.sweepfile import load_sweep
    from sqzexplore.sweep.wandb_export import wandb_sweep_config, write_wandb_yaml

    monkeypatch.chdir(REPO)  # exported from the checkout root
    sweep_file = "sweeps/squeeze_ratio.py"
    config = wandb_sweep_config(load_sweep(sweep_file), mode="offline", sweep_file=sweep_file)
    assert config["parameters"]["config.wandb.mode"] == {"value": "offline"}  # fixed by --mode
    assert config["program"] == "sqz" and config["command"][5] == "sqz"  # the agents' PATH
    text = write_wandb_yaml(config, tmp_path / "s.yaml").read_text()
    assert str(REPO) not in text and sys.executable not in text and "/work" not in text
    assert "--config=experiments/" in text and "runs/wandb/" in text  # relative to the checkout
    assert "config.wandb.project" not in config["parameters"]  # the base config's project
    # The description is the sweep's whole question, not its first line.
    question = load_sweep(sweep_file).question.strip().split("\n\n")[0]
    assert " ".join(line.strip() for line in question.splitlines()) in config["description"]


def test_export_wandb_maps_samplers_and_ranges(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # exported from the checkout root
    from sqzexplore.sweep.sweepfile import load_sweep
    from sqzexplore.sweep.wandb_export import wandb_sweep_config

    frontier = str(REPO / "sweeps" / "frontier.py")
    with pytest.raises(SweepError, match="cannot run this faithfully.*--as grid\\|random"):
        wandb_sweep_config(load_sweep(frontier), runs_root="runs/x", sweep_file=frontier)
    config = wandb_sweep_config(
        load_sweep(frontier), runs_root="runs/x", sweep_file=frontier, export_as="grid"
    )
    assert config["method"] == "grid"  # NSGA-II's grid form, saying what is lost
    assert "exported as grid search" in config["description"]
    assert "comes from `sqz sweep report`" in config["description"]
    assert config["run_cap"] == load_sweep(frontier).planned_points
    assert config["parameters"]["config.model.squeeze_ratio"]["values"][0] == 0.125  # stepped
    assert config["parameters"]["config.model.bypass"] == {"values": ["none", "simple", "complex"]}
    path = write_sweep(
        tmp_path / "r.py",
        sampler="random",
        n_trials=5,
        seeds=1,
        base=Experiment(DIGITS),
        space={
            "optim.lr": log_uniform(1e-4, 1e-1),
            "model.pct_3x3": uniform(0.1, 0.9),
            "model.num_fire": int_range(4, 8),
        },
    )
    config = wandb_sweep_config(load_sweep(str(path)), runs_root="r", checkout="/agents/sqz")
    p = config["parameters"]
    assert config["method"] == "random" and config["run_cap"] == 5
    assert p["config.seed"] == {"value": 0}  # a fixed seed, not a searched value
    assert p["config.optim.lr"] == {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1}
    assert p["config.model.pct_3x3"] == {"distribution": "uniform", "min": 0.1, "max": 0.9}
    assert p["config.model.num_fire"] == {"distribution": "int_uniform", "min": 4, "max": 8}
    assert "--config=/agents/sqz/experiments/digits/squeezenet.py" in config["command"]


# ------------------------------------------------------------------------------ TensorBoard
def _scalars(logdir, monkeypatch) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a TensorBoard run directory, read by TensorBoard itself."""
    # Without TensorFlow loaded, TensorBoard reads with its own stub (no 10 s TF import).
    if "tensorflow" not in sys.modules:
        monkeypatch.setitem(sys.modules, "tensorboard.compat.notf", types.ModuleType("notf"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_mirror_is_incremental_and_readable(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.jsonl"
    pending = tmp_path / "tb" / "not-started"
    assert mirror_to_tensorboard(metrics, pending) == 0 and not pending.exists()
    first = [
        {"step": 10, "split": "train", "loss": 2.0, "top1": 0.3},
        {"step": 20, "split": "train", "loss": 1.0, "top1": 0.6},
        {"step": 20, "split": "eval", "loss": 0.9, "top1": 0.7, "top5": 0.95},
    ]
    write_jsonl(metrics, first)
    logdir = tmp_path / "tb" / "sr=0.125" / "seed0"
    assert mirror_to_tensorboard(metrics, logdir, hparams={"squeeze_ratio": 0.125}) == 3
    assert mirror_to_tensorboard(metrics, logdir) == 0  # nothing new: no new file
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1
    later = [*first, {"step": 30, "split": "train", "loss": 0.5, "top1": 0.9}]
    write_jsonl(metrics, later)
    assert mirror_to_tensorboard(metrics, logdir) == 1
    scalars = _scalars(logdir, monkeypatch)
    assert scalars["train/loss"] == [(10, 2.0), (20, 1.0), (30, 0.5)]  # each step once
    assert scalars["eval/top1"] == [(20, pytest.approx(70.0))]  # percent, as in the report
    assert "eval/top5" in scalars and "train/step" not in scalars


def test_report_tensorboard_mirrors_every_trial(tmp_path, monkeypatch, capsys):
    path = write_sweep(tmp_path / "t.py", name="tbs", space=sr_space(0.125, 0.5), seeds=2)
    sweep_dir, _ = run_inprocess(path, tmp_path / "w")
    rc = cli.main(["report", str(sweep_dir.root), "--tensorboard", "--quiet"])
    assert rc == 0
    assert f"tensorboard --logdir {sweep_dir.root / 'tensorboard'}" in capsys.readouterr().out
    runs = sorted({p.parent for p in (sweep_dir.root / "tensorboard").rglob("events.out.*")})
    names = sorted(str(p.relative_to(sweep_dir.root / "tensorboard")) for p in runs)
    assert names.pop(0) == "."  # the HParams experiment (its metric columns), at the root
    assert names == [
        "squeeze_ratio=0.125/seed0",
        "squeeze_ratio=0.125/seed1",
        "squeeze_ratio=0.5/seed0",
        "squeeze_ratio=0.5/seed1",
    ]
    for run in collect_runs(sweep_dir):
        sr = run.design["model.squeeze_ratio"]
        logdir = sweep_dir.root / "tensorboard" / f"squeeze_ratio={sr}" / f"seed{run.seed}"
        evals = _scalars(logdir, monkeypatch)["eval/top1"]
        assert evals[-1][1] == pytest.approx(100 * run.result["final"]["top1"], rel=1e-6)
