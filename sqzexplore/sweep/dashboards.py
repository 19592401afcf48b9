"""A sweep's dashboard settings and the names its trials carry there.

`sqz sweep run --wandb off|offline|online [--wandb-project P] [--wandb-entity E]` records the
choice in DIR/wandb.json; without the flag, `WANDB_MODE` from the environment is recorded
instead (and with neither, an earlier choice stays, else the base config's `wandb.mode`
decides). The settings live beside the sweep, not in its definition, so turning wandb on or off
never changes what the trials compute and never needs `--new`.

Every worker lays `trial_wandb` over the trial's config before training it (wandb keys are
bookkeeping: the trainer's resume check ignores them): the run is named from its design fields
and seed ('sr=0.125 pct=0.5 s0') and grouped by sweep: one group per sweep directory, named
from its creation time, so a `--new` sweep of the same name is a new group. The trainer derives
the run id from the workdir and the group (`runlog._wandb_run_id`), so a `--new` sweep in the
same directory starts new wandb runs while a resumed trial continues its own.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

from sqzexplore.rundir import read_json, write_json
from sqzexplore.sweep import dbclaims
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.design import trial_label
from sqzexplore.sweep.space import SweepError
from sqzexplore.sweep.study_view import metric_names, retire_superseded

SETTINGS_FILE = "wandb.json"
FLAG_MODES = {"off": "disabled", "offline": "offline", "online": "online"}
# WANDB_MODE values wandb itself accepts, as config.wandb.mode values.
ENV_MODES = {
    "disabled": "disabled",
    "offline": "offline",
    "dryrun": "offline",
    "online": "online",
    "run": "online",
}


def resolve_mode(flag: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The wandb mode a `sweep run` asks for: the --wandb flag, else $WANDB_MODE, else None
    (keep what the sweep directory or the base config says)."""
    if flag is not None:
        if flag not in FLAG_MODES:
            raise SweepError(f"--wandb must be one of {', '.join(FLAG_MODES)}, got {flag!r}")
        return FLAG_MODES[flag]
    env = environ.get("WANDB_MODE")
    if not env:
        return None
    if env.lower() not in ENV_MODES:
        raise SweepError(
            f"WANDB_MODE={env!r} is not a wandb mode; use one of {', '.join(ENV_MODES)} "
            "(or pass --wandb off|offline|online)"
        )
    return ENV_MODES[env.lower()]


def save_settings(
    sweep_dir: sd.SweepDir, mode: str | None, project: str | None, entity: str | None
) -> dict[str, Any]:
    """Record this `sweep run`'s wandb choice in DIR/wandb.json (keeping earlier values where
    nothing new was asked); returns the settings now in force."""
    settings = read_settings(sweep_dir)
    asked = {"mode": mode, "project": project, "entity": entity}
    if any(v is not None for v in asked.values()):
        settings.update({k: v for k, v in asked.items() if v is not None})
        write_json(sweep_dir.root / SETTINGS_FILE, settings)
    return settings


def read_settings(sweep_dir: sd.SweepDir) -> dict[str, Any]:
    """DIR/wandb.json: {'mode', 'project', 'entity'} as recorded ({} when never set)."""
    return read_json(sweep_dir.root / SETTINGS_FILE) or {}


def effective_mode(sweep_dir: sd.SweepDir, state: Mapping[str, Any]) -> str:
    """The mode the sweep's trials log with: DIR/wandb.json, else the base config's."""
    base = (state.get("base_config") or {}).get("wandb") or {}
    return read_settings(sweep_dir).get("mode") or base.get("mode") or "disabled"


def sweep_group(state: Mapping[str, Any]) -> str:
    """One wandb group per sweep directory: '<name>-<creation time, UTC>' (a `--new` sweep of the
    same name is a new group, so the dashboards never mix the two)."""
    # UTC: workers on machines in other time zones name the same group.
    created = time.strftime("%Y%m%d-%H%M%S", time.gmtime(float(state.get("created", 0))))
    return f"{state['name']}-{created}"


def trial_wandb(
    sweep_dir: sd.SweepDir, state: Mapping[str, Any], record: Mapping[str, Any]
) -> dict[str, Any]:
    """A trial's config (from its trial.json `record`) with its wandb section for this sweep:
    readable name and sweep group (which, with the workdir, makes the run id: `runlog`), and
    the mode/project/entity chosen at `sweep run`."""
    config = dict(record["config"])
    wandb = dict(config.get("wandb") or {})
    wandb.update({k: v for k, v in read_settings(sweep_dir).items() if v is not None})
    wandb["name"] = trial_label(record.get("design") or {}, int(record["seed"]))
    wandb["group"] = sweep_group(state)
    config["wandb"] = wandb
    return config


def name_objectives(sweep_dir: sd.SweepDir, state: Mapping[str, Any]) -> list[str]:
    """Name the Optuna study's objectives after the sweep's metrics with their unit
    ('final.top1 (%)', 'complexity.params'), so optuna-dashboard (`optuna-dashboard
    DIR/study.journal`) shows them instead of 'Objective 0/1', and delete the studies a grown
    sweep superseded (one study per sweep: `study_view`). Creates the study when no worker has
    yet (as the engine does: under the sweep lock, or with a server database under none).
    Returns the names."""
    import optuna  # heavy: only `sweep run` needs it here, never status or report

    names = metric_names(state)
    directions = [o[1] for o in state["definition"]["objectives"]]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = sd.open_storage(state.get("storage"), sweep_dir)
    # A server database resolves concurrent creations itself (as the engine relies on): no file
    # lock there, whose filesystem may not lock across machines (dbclaims.py).
    in_db = dbclaims.coordinates_in_db(state.get("storage"))
    with contextlib.nullcontext() if in_db else sweep_dir.lock():
        study = optuna.create_study(
            study_name=state["study_name"],
            storage=storage,
            directions=directions,
            load_if_exists=True,
        )
        if study.metric_names != names:
            with warnings.catch_warnings():  # set_metric_names is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(names)
        retire_superseded(storage, state)
    return names
