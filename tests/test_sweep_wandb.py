"""`sqz sweep run --wandb ...`: one readable wandb run per trial and a summary run, read back
from wandb's offline files (no network), with the stand-in runner."""

from __future__ import annotations

import json

import pytest
import wandb_offline
from test_sweep_support import FAKE_RUNNER, write_sweep

from sqzexplore.sweep import cli
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs
from sqzexplore.sweep.dashboards import resolve_mode
from sqzexplore.sweep.params import categorical
from sqzexplore.sweep.space import SweepError


@pytest.fixture
def wandb_env(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)


def _sweep(tmp_path):
    return write_sweep(
        tmp_path / "wb.py",
        name="wbs",
        space={"model.squeeze_ratio": categorical(0.125, 0.5), "model.pct_3x3": categorical(0.5)},
        seeds=[0],
    )


def _run(path, workdir, *extra):
    argv = ["run", str(path), "--workdir", str(workdir), "--runner", FAKE_RUNNER]
    return cli.main([*argv, "--workers", "1", "--progress", "off", *extra])


def _trial_runs(sweep_dir):
    return {
        r.trial_id: wandb_offline.read_run(wandb_offline.run_file(sweep_dir.trial_dir(r.trial_id)))
        for r in collect_runs(sweep_dir)
    }


def test_sweep_run_wandb_offline_names_groups_and_sizes_every_trial(tmp_path, wandb_env, capsys):
    path = _sweep(tmp_path)
    assert _run(path, tmp_path / "w", "--wandb", "offline", "--wandb-project", "sqz-test") == 0
    sweep_dir = sd.SweepDir(tmp_path / "w")
    runs = {r.trial_id: r for r in collect_runs(sweep_dir)}
    logged = _trial_runs(sweep_dir)
    assert len(logged) == 2
    groups = {run["group"] for run in logged.values()}
    assert len(groups) == 1 and groups.pop().startswith("wbs-")
    assert sorted(run["name"] for run in logged.values()) == [
        "sr=0.125 pct=0.5 s0",
        "sr=0.5 pct=0.5 s0",
    ]
    for tid, run in logged.items():
        r = runs[tid]
        assert run["config"]["squeeze_ratio"] == r.params["model.squeeze_ratio"]
        assert run["config"]["pct_3x3"] == 0.5
        assert run["config"]["params"] == r.complexity["params"]
        assert run["config"]["macs"] == r.complexity["macs"]
        assert run["config"]["mib"] == pytest.approx(r.complexity["fp32_mib"])
        # Accuracy in percent, as in the report; per-step curves for train and eval.
        assert run["summary"]["final/top1"] == pytest.approx(100 * r.result["final"]["top1"])
        train = [h["train/top1"] for h in run["history"] if "train/top1" in h]
        evals = [h["eval/top1"] for h in run["history"] if "eval/top1" in h]
        assert len(train) == 8 and len(evals) >= 2 and 1.0 < evals[-1] <= 100.0
    summary = wandb_offline.read_run(wandb_offline.run_file(sweep_dir.report))
    assert (
        summary["name"] == "wbs summary"
        and summary["group"] == next(iter(logged.values()))["group"]
    )
    (tables,) = [h for h in summary["history"] if "frontier/_type" in h]
    files = wandb_offline.run_file(sweep_dir.report).parent / "files"
    front = json.loads((files / tables["frontier/path"]).read_text())
    label = front["columns"].index("label")
    assert {row[label] for row in front["data"]} <= {"sr=0.125 pct=0.5", "sr=0.5 pct=0.5"}
    acc = front["columns"].index("final.top1.mean")
    assert all(50.0 < row[acc] <= 100.0 for row in front["data"])  # percent
    for size in ("params", "mib"):  # accuracy-vs-size scatters over the results table
        assert tables[f"accuracy_vs_{size}_table/nrows"] == 2
    assert "wandb: 2 trial runs and a summary run" in capsys.readouterr().out


def test_wandb_mode_env_is_respected_without_the_flag_and_new_sweeps_get_new_runs(
    tmp_path, wandb_env, monkeypatch
):
    path = _sweep(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert _run(path, tmp_path / "w") == 0
    first = {run["name"]: run for run in _trial_runs(sd.SweepDir(tmp_path / "w")).values()}
    assert set(first) == {"sr=0.125 pct=0.5 s0", "sr=0.5 pct=0.5 s0"}
    ids = {p.name for p in (tmp_path / "w" / "trials").rglob("offline-run-*") if p.is_dir()}
    assert _run(path, tmp_path / "w", "--new") == 0
    again = {p.name for p in (tmp_path / "w" / "trials").rglob("offline-run-*") if p.is_dir()}
    # offline-run-<time>-<run id>: the --new sweep's runs have ids of their own.
    assert {n.rsplit("-", 1)[1] for n in ids}.isdisjoint({n.rsplit("-", 1)[1] for n in again})


def test_wandb_off_beats_the_environment_and_bad_modes_are_one_line(tmp_path, wandb_env, capsys):
    assert resolve_mode("off", {"WANDB_MODE": "online"}) == "disabled"
    assert resolve_mode(None, {"WANDB_MODE": "dryrun"}) == "offline"
    assert resolve_mode(None, {}) is None
    with pytest.raises(SweepError, match="WANDB_MODE='onlin'"):
        resolve_mode(None, {"WANDB_MODE": "onlin"})
    path = _sweep(tmp_path)
    assert _run(path, tmp_path / "w", "--wandb", "off") == 0
    assert not list((tmp_path / "w" / "trials").rglob("*.wandb"))


def _summary_dirs(sweep_dir):
    return sorted((sweep_dir.report / "wandb").glob("offline-run-*"))


def test_repeated_reports_leave_one_summary_run_and_the_hint_syncs_every_run(
    tmp_path, wandb_env, capsys
):
    """`sweep run` on a finished sweep and two reports leave one offline summary run; a report
    of a changed sweep replaces it; the printed command names every trial's run and it."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    path = _sweep(tmp_path)
    workdir = tmp_path / "w"
    assert _run(path, workdir, "--wandb", "offline") == 0
    sweep_dir = sd.SweepDir(workdir)
    (first,) = _summary_dirs(sweep_dir)
    assert _run(path, workdir) == 0  # finished: nothing to train, the summary stays
    for _ in range(2):
        assert cli.main(["report", str(workdir), "--quiet"]) == 0
    assert _summary_dirs(sweep_dir) == [first]
    out = capsys.readouterr().out
    (command,) = {
        ln.split("upload them all with: ", 1)[1] for ln in out.splitlines() if "wandb sync" in ln
    }
    # The command's paths, expanded by a shell as the user's would: every trial run and the
    # summary, each once.
    expanded = subprocess.run(
        ["bash", "-c", "printf '%s\\n' " + command.removeprefix("wandb sync ")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    trial_runs = sorted(str(p) for p in (workdir / "trials").glob("*/wandb/offline-run-*"))
    assert len(trial_runs) == 2
    assert sorted(expanded) == sorted([*trial_runs, str(first)])
    wandb_cli = shutil.which("wandb") or str(Path(sys.executable).parent / "wandb")
    dry = subprocess.run(
        ["bash", "-c", command.replace("wandb sync", f"{wandb_cli} sync --dry-run", 1)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    listed = dry.stdout + dry.stderr
    assert "Would sync 3 run(s)" in listed
    assert all(Path(p).name.rsplit("-", 1)[1] in listed for p in [*trial_runs, str(first)])
    # A changed sweep (one more seed) gets a new summary that replaces the old one.
    grown = write_sweep(
        tmp_path / "wb.py",
        name="wbs",
        space={"model.squeeze_ratio": categorical(0.125, 0.5), "model.pct_3x3": categorical(0.5)},
        seeds=[0, 1],
    )
    assert _run(grown, workdir) == 0
    (second,) = _summary_dirs(sweep_dir)
    assert second != first


def test_sweep_report_prints_no_wandb_chatter(tmp_path, monkeypatch):
    """`sqz sweep report` logs its summary run without wandb's own lines (WANDB_SILENT unset)."""
    import os
    import subprocess
    import sys

    from test_sweep_support import REPO, TESTS

    monkeypatch.delenv("WANDB_MODE", raising=False)
    path = _sweep(tmp_path)
    assert _run(path, tmp_path / "w", "--wandb", "off") == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PYTHONPATH"] = str(TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "sqzexplore.sweep.cli", "report", str(tmp_path / "w"),
         "--wandb-mode", "offline", "--quiet"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    chatter = [ln for ln in lines if ln.startswith("wandb:") and "summary run" not in ln]
    assert not chatter, chatter
