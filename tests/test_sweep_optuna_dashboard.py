"""optuna-dashboard on a sweep's study: it loads the study journal, and the objectives carry the
sweep's metric names instead of 'Objective 0/1' (`sqz sweep run` names them)."""

from __future__ import annotations

import io
import json
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from test_sweep_support import FAKE_RUNNER, sr_space, write_sweep

from sqzexplore.sweep import cli
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs

optuna_dashboard = pytest.importorskip("optuna_dashboard", reason="pip install -e '.[dashboard]'")


def _get(app, path: str) -> tuple[str, bytes]:
    environ = {"PATH_INFO": path, "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    return status[0], body


def test_the_study_loads_in_optuna_dashboard_with_named_objectives(tmp_path):
    path = write_sweep(tmp_path / "o.py", name="od", space=sr_space(0.125, 0.5), seeds=2)
    argv = ["run", str(path), "--workdir", str(tmp_path / "w"), "--runner", FAKE_RUNNER]
    assert cli.main([*argv, "--workers", "1", "--progress", "off"]) == 0
    sweep_dir = sd.SweepDir(tmp_path / "w")
    storage = sd.open_storage(None, sweep_dir)  # what `optuna-dashboard DIR/study.journal` opens
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert study.metric_names == ["final.top1 (%)", "complexity.params"]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2
    # Percent, as on every other dashboard, with each seed's value and the sizes as numbers.
    runs = {r.trial_id: r for r in collect_runs(sweep_dir)}
    for t in complete:
        mine = [r for r in runs.values() if r.point == t.user_attrs["point"]]
        per_seed = {f"final.top1 s{r.seed}": 100 * r.result["final"]["top1"] for r in mine}
        assert t.values[0] == pytest.approx(sum(per_seed.values()) / 2)
        for name, value in per_seed.items():
            assert t.user_attrs[name] == pytest.approx(value)
        assert t.user_attrs["macs"] == mine[0].complexity["macs"]
        assert t.user_attrs["params"] == mine[0].complexity["params"] == t.values[1]
        assert isinstance(t.user_attrs["mib"], float)

    app = optuna_dashboard.wsgi(storage)
    status, body = _get(app, "/api/studies")
    assert status.startswith("200")
    (listed,) = json.loads(body)["study_summaries"]
    assert listed["study_name"] == summary.study_name
    status, body = _get(app, f"/csv/{listed['study_id']}")
    header = body.decode().splitlines()[0].split(",")
    assert header[:4] == ["Number", "State", "final.top1 (%)", "complexity.params"]
