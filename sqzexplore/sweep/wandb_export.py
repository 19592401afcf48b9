"""`sqz sweep export-wandb SWEEP_FILE`: the same sweep as a wandb sweep YAML (for the wandb server).

For teams that drive sweeps from a wandb server (`wandb sweep sweep.yaml`, then `wandb agent ...`
on each machine). Each wandb run is one `sqz train` of the sweep's base experiment, with the design
point and seed as `--config.<dotted key>=<value>` overrides: parameters are named
`config.<dotted key>`, so wandb's `${args}` macro expands them to exactly those flags. wandb
substitutes macros only as whole command items, so the per-run workdir
(`<runs root>/<WANDB_RUN_ID>`) is formed by a small `sh -c` wrapper.

Mapping: grid -> method grid (every parameter as `values`), random -> random, nsga2 -> bayes on
the first objective (wandb sweeps optimise one metric; the Optuna engine keeps the true
multi-objective search). The metric is the trainer's wandb summary key (`final/top1`). Analytic
constraints cannot be expressed in a wandb sweep; they are listed in the description.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sqzexplore.sweep.params import Categorical, Param
from sqzexplore.sweep.space import SweepDefinition, SweepError

METHODS = {"grid": "grid", "random": "random", "nsga2": "bayes"}


def _cli_value(value: Any) -> Any:
    """A value as `sqz train` parses it: tuples as Python literals, the rest unchanged."""
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))
    return value


def _parameter(param: Param, grid: bool) -> dict[str, Any]:
    if isinstance(param, Categorical):
        return {"values": [_cli_value(v) for v in param.values]}
    stepped = param.step is not None and not (param.kind == "int" and param.step == 1)
    if grid or stepped:
        return {"values": list(param.grid_values())}
    if param.kind == "int":
        if param.log:
            return {
                "distribution": "q_log_uniform_values",
                "min": param.low,
                "max": param.high,
                "q": 1,
            }
        return {"distribution": "int_uniform", "min": int(param.low), "max": int(param.high)}
    if param.log:
        return {"distribution": "log_uniform_values", "min": param.low, "max": param.high}
    return {"distribution": "uniform", "min": param.low, "max": param.high}


def wandb_sweep_config(
    defn: SweepDefinition, *, runs_root: str, wandb_project: str | None = None
) -> dict[str, Any]:
    """The wandb sweep configuration (a dict, dumped to YAML by `write_wandb_yaml`)."""
    if defn.base.path is None:
        raise SweepError(
            f"sweep {defn.name} has no base experiment file; export-wandb needs one for "
            "`sqz train --config=...`"
        )
    grid = defn.sampler == "grid"
    parameters: dict[str, Any] = {}
    for key, p in defn.space.items():
        parameters[f"config.{key}"] = _parameter(p, grid)
    parameters["config.seed"] = {"values": list(defn.seeds)}
    for key, value in defn.fixed.items():
        parameters[f"config.{key}"] = {"value": _cli_value(value)}
    parameters["config.wandb.group"] = {"value": defn.name}
    parameters["config.progress"] = {"value": "false"}  # parsed as the field's own type
    objective = defn.objectives[0]
    arg = defn.base.arg_string()
    experiment = defn.base.path + (f":{arg}" if arg else "")
    train = f'exec sqz train --config={experiment} --workdir="{runs_root}/$WANDB_RUN_ID" "$@"'
    description = (defn.question.splitlines() or [defn.name])[0]
    if len(defn.objectives) > 1 or defn.constraints:
        notes = []
        if len(defn.objectives) > 1:
            notes.append(
                "wandb optimises only the first objective; the sqz engine searches all of: "
                + ", ".join(f"{o.direction} {o.metric}" for o in defn.objectives)
            )
        if defn.constraints:
            notes.append(
                "analytic constraints not enforced by wandb: "
                + ", ".join(f"{k}={v:g}" for k, v in defn.constraints.items())
            )
        description += " [" + "; ".join(notes) + "]"
    config: dict[str, Any] = {
        "name": defn.name,
        "description": description,
        "program": "sqz",
        "method": METHODS[defn.sampler],
        "metric": {
            "name": objective.metric.replace(".", "/"),
            "goal": objective.direction,
        },
        "parameters": parameters,
        "command": ["${env}", "sh", "-c", train, "sqz-train", "${args}"],
    }
    if wandb_project:
        config["project"] = wandb_project
    if defn.sampler == "random" and defn.n_trials:
        config["run_cap"] = defn.n_trials * len(defn.seeds)
    return config


def write_wandb_yaml(config: dict[str, Any], path: Path) -> Path:
    """Write the YAML to `path`; an existing directory gets `<name>.wandb.yaml` inside it."""
    if path.is_dir():
        path = path / f"{config['name']}.wandb.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# wandb sweep for sqzexplore sweep '{config['name']}'.\n")
        f.write(
            "# Start: wandb sweep THIS.yaml   then on each machine: wandb agent ENTITY/PROJECT/ID\n"
        )
        yaml.safe_dump(config, f, sort_keys=False, default_flow_style=False, width=100)
    return path
