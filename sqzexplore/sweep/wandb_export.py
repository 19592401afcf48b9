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

The command turns wandb on (`config.wandb.mode`, online unless --mode offline) with the given
project and entity, and uses absolute paths only (the `sqz` executable, the experiment file, the
runs root), so `wandb agent` works from any working directory. Each trial's wandb run gets the
design fields flat in its config (`runlog.design_fields`) and the sweep's name as its group.

`log_summary_run` is the other half: `sqz sweep report` logs a summary run into the same group
with the results and the Pareto front as wandb Tables and the report's figures as images.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from sqzexplore.sweep.analyze import INTERVAL_METRICS, frontier_columns, result_columns
from sqzexplore.sweep.dashboards import sweep_group
from sqzexplore.sweep.metric_table import ACCURACY, metric
from sqzexplore.sweep.params import Categorical, Param
from sqzexplore.sweep.space import SweepDefinition, SweepError, find_experiment
from sqzexplore.sweep.sweepfile import load_sweep

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


WANDB_RUN_MODES = ("online", "offline")


def sqz_command() -> list[str]:
    """How to start this installation's `sqz`, by absolute path: its `sqz` script next to the
    running Python, else the Python itself with `-m sqzexplore.cli`."""
    here = Path(sys.executable).parent / "sqz"
    if here.is_file() and os.access(here, os.X_OK):
        return [str(here.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "sqzexplore.cli"]


def wandb_sweep_config(
    defn: SweepDefinition,
    *,
    runs_root: str,
    wandb_project: str | None = None,
    wandb_entity: str | None = None,
    mode: str = "online",
    sqz: str | None = None,
    sweep_file: str | None = None,
) -> dict[str, Any]:
    """The wandb sweep configuration (a dict, dumped to YAML by `write_wandb_yaml`).

    `sweep_file` locates a relative base experiment (as `sqz sweep run` does); `sqz` is the
    executable the agents run (default: this installation's, by absolute path)."""
    if defn.base.path is None:
        raise SweepError(
            f"sweep {defn.name} has no base experiment file; export-wandb needs one for "
            "`sqz train --config=...`"
        )
    if mode not in WANDB_RUN_MODES:
        raise SweepError(f"--mode must be one of {WANDB_RUN_MODES}, got {mode!r}")
    experiment_path = os.path.abspath(find_experiment(defn.base.path, sweep_file))
    runs_root = os.path.abspath(runs_root)
    launcher = [os.path.abspath(sqz)] if sqz else sqz_command()
    grid = defn.sampler == "grid"
    parameters: dict[str, Any] = {}
    for key, p in defn.space.items():
        parameters[f"config.{key}"] = _parameter(p, grid)
    parameters["config.seed"] = {"values": list(defn.seeds)}
    for key, value in defn.fixed.items():
        parameters[f"config.{key}"] = {"value": _cli_value(value)}
    parameters["config.wandb.group"] = {"value": defn.name}
    parameters["config.wandb.mode"] = {"value": mode}
    if wandb_project:
        parameters["config.wandb.project"] = {"value": wandb_project}
    if wandb_entity:
        parameters["config.wandb.entity"] = {"value": wandb_entity}
    parameters["config.progress"] = {"value": "false"}  # parsed as the field's own type
    objective = defn.objectives[0]
    arg = defn.base.arg_string()
    experiment = experiment_path + (f":{arg}" if arg else "")
    # `sh -c SCRIPT NAME CMD...`: the script runs CMD (sqz train and wandb's flags) and adds the
    # per-run workdir, which needs the shell: wandb expands macros only as whole items.
    script = f'exec "$@" --workdir="{runs_root}/$WANDB_RUN_ID"'
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
        "program": launcher[0],
        "method": METHODS[defn.sampler],
        "metric": {
            "name": objective.metric.replace(".", "/"),
            "goal": objective.direction,
        },
        "parameters": parameters,
        "command": [
            "${env}",
            "sh",
            "-c",
            script,
            "sqz-train",
            *launcher,
            "train",
            f"--config={experiment}",
            "${args}",
        ],
    }
    if wandb_project:
        config["project"] = wandb_project
    if wandb_entity:
        config["entity"] = wandb_entity
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


# ------------------------------------------------------------------------------ the command
def add_export_parser(sub) -> None:
    """`sqz sweep export-wandb`'s arguments (on the `sqz sweep` subparsers `sub`)."""
    export = sub.add_parser("export-wandb", help="write the sweep as a wandb sweep YAML")
    export.add_argument("sweep_file")
    export.add_argument("--arg", default=None)
    export.add_argument(
        "--output",
        default=None,
        help="a file, or a directory to put <name>.wandb.yaml in (default runs/sweeps/)",
    )
    export.add_argument(
        "--runs-root",
        default=None,
        help="where wandb agents put run workdirs (default runs/wandb/<name>; made absolute)",
    )
    export.add_argument("--project", default=None, help="wandb project")
    export.add_argument("--entity", default=None, help="wandb entity (user or team)")
    export.add_argument(
        "--mode",
        choices=WANDB_RUN_MODES,
        default="online",
        help="the trials' config.wandb.mode (default online)",
    )
    export.add_argument(
        "--sqz",
        default=None,
        help="the sqz executable the agents run (default: this installation's, absolute path)",
    )


def export_command(args: argparse.Namespace) -> int:
    """Write the YAML and say how to start it."""
    defn = load_sweep(args.sweep_file, args.arg)
    config = wandb_sweep_config(
        defn,
        runs_root=args.runs_root or os.path.join("runs", "wandb", defn.name),
        wandb_project=args.project,
        wandb_entity=args.entity,
        mode=args.mode,
        sqz=args.sqz,
        sweep_file=args.sweep_file,
    )
    output = Path(args.output or os.path.join("runs", "sweeps", f"{defn.name}.wandb.yaml"))
    output = write_wandb_yaml(config, output)
    target = "/".join(p for p in (args.entity, args.project) if p) or "ENTITY/PROJECT"
    print(
        f"wrote {output}; start it with `wandb sweep {output}`, then on each machine "
        f"`wandb agent {target}/SWEEP_ID` (from any directory)"
    )
    return 0


# ------------------------------------------------------------------------------ summary run
def _dashboard_cell(column: str, value: Any) -> Any:
    """A results-table cell as the dashboards show it: accuracy means, stds and intervals in
    percent (the trial runs log percent too, `runlog.dashboard_value`)."""
    name, _, stat = column.rpartition(".")
    if stat in ("mean", "std", "ci95") and name in INTERVAL_METRICS and value is not None:
        return 100.0 * value
    return value


def log_summary_run(
    state: dict[str, Any],
    defn: SweepDefinition,
    rows: Sequence[dict[str, Any]],
    front: Sequence[dict[str, Any]],
    mode: str,
    out: Path,
    images: dict[str, bytes] | None = None,
    settings: dict[str, Any] | None = None,
) -> str | None:
    """A wandb run in the sweep's group with the results and the Pareto front as Tables
    (accuracies in percent, each point labelled 'sr=0.125 pct=0.5'), accuracy-vs-params and
    accuracy-vs-MiB scatters and the report's figures; returns its URL (None offline).
    `settings`: the sweep's DIR/wandb.json (project, entity), else the base config's."""
    import wandb  # heavy and optional: only a report that logs a summary run needs it
    from PIL import Image

    wb = {**(state.get("base_config", {}).get("wandb", {}) or {}), **(settings or {})}
    run = wandb.init(
        project=wb.get("project") or "sqzexplore",
        entity=wb.get("entity"),
        group=sweep_group(state),
        name=f"{defn.name} summary",
        job_type="sweep-report",
        tags=["sweep-report", defn.name, *defn.tags],
        config={"sweep": state.get("definition")},
        mode=mode,
        dir=os.environ.get("WANDB_DIR") or str(out),
    )
    try:
        columns = result_columns(defn)
        table = wandb.Table(
            columns=columns,
            data=[[_dashboard_cell(c, r.get(c)) for c in columns] for r in rows],
        )
        front_columns = [*frontier_columns(defn), "fronts"]
        front_table = wandb.Table(
            columns=front_columns,
            data=[
                [
                    ", ".join(r["fronts"]) if c == "fronts" else _dashboard_cell(c, r.get(c))
                    for c in front_columns
                ]
                for r in front
            ],
        )
        logged: dict[str, Any] = {"results": table, "frontier": front_table}
        for size, short in (("complexity.params", "params"), ("complexity.fp32_mib", "mib")):
            logged[f"accuracy_vs_{short}"] = wandb.plot.scatter(
                table,
                size,
                f"{ACCURACY}.mean",
                title=f"{defn.name}: {metric(ACCURACY).label} vs {metric(size).label}",
            )
        for name, png in (images or {}).items():
            logged[f"figures/{name}"] = wandb.Image(Image.open(io.BytesIO(png)), caption=name)
        run.log(logged)
        run.summary["frontier_points"] = len(front)
        url = getattr(run, "url", None)
    finally:
        run.finish()
    return url
