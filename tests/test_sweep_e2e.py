"""End to end with the real trainer: a tiny digits sweep from the command line, then its report."""

from __future__ import annotations

import csv
import json

import pytest
from test_sweep_support import DIGITS, write_sweep

from sqzexplore.models.complexity import complexity
from sqzexplore.models.spec import SqueezeNetSpec
from sqzexplore.rundir import read_jsonl
from sqzexplore.sweep import cli
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs
from sqzexplore.sweep.params import categorical
from sqzexplore.sweep.space import EarlyStop, Experiment


@pytest.mark.slow
def test_tiny_digits_sweep_with_the_real_trainer(tmp_path, capsys):
    path = write_sweep(
        tmp_path / "tiny.py",
        doc="Tiny digits sweep: does the real trainer run under the sweep engine?",
        name="tiny_digits",
        base=Experiment(DIGITS, {"runlocal": True}),
        fixed={
            "num_steps": 4,
            "eval_every_epochs": 0.1,  # evals (and on_eval calls) every 2 steps
            "checkpoint_every_epochs": 0.1,
            "log_every_steps": 2,
        },
        space={"model.squeeze_ratio": categorical(0.125, 0.25)},
        early_stop=EarlyStop("median", n_startup_points=5, n_warmup_evals=0),  # never fires
    )
    workdir = tmp_path / "w"
    rc = cli.main(["run", str(path), "--workdir", str(workdir), "--progress", "off"])
    assert rc == 0
    assert "2 done, 0 running, 0 failed" in capsys.readouterr().out
    sweep_dir = sd.SweepDir(workdir)
    runs = collect_runs(sweep_dir)
    assert [r.state for r in runs] == [sd.COMPLETE, sd.COMPLETE]
    for r in runs:
        trial_dir = sweep_dir.trial_dir(r.trial_id)
        assert {
            "config.json",
            "spec.json",
            "complexity.json",
            "metrics.jsonl",
            "result.json",
            "checkpoints",
            "trial.json",
        } <= {p.name for p in trial_dir.iterdir()}
        result = r.result
        assert result["status"] == "complete" and result["steps"] == 4
        assert 0.0 <= result["final"]["top1"] <= 1.0
        # compile_time_s may be 0: the worker's in-memory programs are shared by every run of
        # this (test) process with the same shapes.
        assert result["train_time_s"] > 0 and result["compile_time_s"] >= 0
        config = json.loads((trial_dir / "config.json").read_text())
        # The trainer ran the config registered in trial.json, built once by the engine, with
        # the sweep's wandb bookkeeping (readable name, one group per sweep) laid over it.
        registered = json.loads((trial_dir / "trial.json").read_text())["config"]
        assert {k: v for k, v in config.items() if k != "wandb"} == {
            k: v for k, v in registered.items() if k != "wandb"
        }
        assert config["model"]["squeeze_ratio"] == r.params["model.squeeze_ratio"]
        assert config["wandb"]["group"].startswith("tiny_digits-") and config["seed"] == 0
        assert config["wandb"]["name"] == f"sr={r.params['model.squeeze_ratio']} s0"
        expected = complexity(SqueezeNetSpec.from_dict(config["model"]))
        assert result["complexity"]["params"] == expected.params == r.complexity["params"]
        evals = [m for m in read_jsonl(trial_dir / "metrics.jsonl") if m["split"] == "eval"]
        assert [m["step"] for m in evals] == [2, 4]

    # Rerunning a finished sweep trains nothing.
    before = {
        r.trial_id: (sweep_dir.trial_dir(r.trial_id) / "result.json").stat().st_mtime for r in runs
    }
    assert cli.main(["run", str(path), "--workdir", str(workdir), "--progress", "off"]) == 0
    for tid, mtime in before.items():
        assert (sweep_dir.trial_dir(tid) / "result.json").stat().st_mtime == mtime

    assert cli.main(["report", str(workdir), "--quiet"]) == 0
    with open(workdir / "report" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["state"] for r in rows} == {"complete"}
    with open(workdir / "report" / "frontier.csv") as f:
        assert len(list(csv.DictReader(f))) >= 2  # at least one point on each front
