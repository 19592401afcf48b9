"""`sqz sweep export-wandb SWEEP_FILE`: the same sweep as a wandb sweep YAML (for the wandb server).

For teams that drive sweeps from a wandb server (`wandb sweep sweep.yaml`, then `wandb agent ...`
on each machine). Each wandb run is one `sqz train` of the sweep's base experiment, with the design
point and seed as `--config.<dotted key>=<value>` overrides: parameters are named
`config.<dotted key>`, so wandb's `${args}` macro expands them to exactly those flags. wandb
substitutes macros only as whole command items, so the per-run workdir
(`<runs root>/<WANDB_RUN_ID>`) is formed by a small `sh -c` wrapper.

Only what wandb runs faithfully is exported: grid -> method grid (every parameter and the seeds
as `values`, so each point trains with every seed: enumerated, not searched), random -> random
(each draw trains once, with the first seed; the description says so when there are more).
NSGA-II (several objectives, a Pareto front) has no wandb equivalent: it is refused with one line,
or exported as its grid or random form with `--as grid|random`, the description naming what is
lost. The metric is the trainer's wandb summary key (`final/top1`); analytic constraints are
listed in the description; `run_cap` is the sweep's run count; the description is the sweep's
whole question.

Nothing of the exporting machine is baked in: the experiment file and the runs root are paths
relative to the checkout root the agents run from (or absolute under `--checkout DIR`, the
checkout's path on the agents' machines), the launcher is `sqz` on the agents' PATH (or
`--sqz`), and the trials' wandb mode is each agent's `$WANDB_MODE` (online when unset) unless
`--mode` fixes it. Each trial's wandb run gets the design fields flat in its config
(`runlog.design_fields`) and the sweep's name as its group.

The other half, the summary run `sqz sweep report` logs into the same group, is
`wandb_summary.py`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml

from sqzexplore.sweep.params import Categorical, Param
from sqzexplore.sweep.space import SweepDefinition, SweepError, find_experiment
from sqzexplore.sweep.sweepfile import load_sweep

METHODS = {"grid": "grid", "random": "random"}
# The agent's wandb mode: its environment's WANDB_MODE at run time (wandb agents run online).
MODE_FROM_ENV = "${WANDB_MODE:-online}"


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


def _agent_path(path: str, checkout: str | None) -> str:
    """A path on the machines the agents run on: relative to the checkout root they run from,
    or under `checkout` when given. Never this machine's absolute paths."""
    if os.path.isabs(path):
        rel = os.path.relpath(path)
        if rel.startswith(".."):
            raise SweepError(
                f"{path} is outside the current directory; run export-wandb from the checkout "
                "root (paths in the YAML are relative to it, or under --checkout)"
            )
        path = rel
    return os.path.join(checkout, path) if checkout else path


def _description(defn: SweepDefinition, notes: list[str]) -> str:
    """The sweep's question (its first paragraph, whole) and what the export cannot keep."""
    first = (defn.question.strip().split("\n\n") or [""])[0]
    text = " ".join(line.strip() for line in first.splitlines()) or defn.name
    return text + ("" if not notes else " [" + "; ".join(notes) + "]")


def wandb_sweep_config(
    defn: SweepDefinition,
    *,
    runs_root: str | None = None,
    wandb_project: str | None = None,
    wandb_entity: str | None = None,
    mode: str | None = None,
    sqz: str | None = None,
    sweep_file: str | None = None,
    checkout: str | None = None,
    export_as: str | None = None,
) -> dict[str, Any]:
    """The wandb sweep configuration (a dict, dumped to YAML by `write_wandb_yaml`).

    Only what a wandb sweep runs faithfully: grid and random sweeps. An NSGA-II sweep (several
    objectives, a Pareto front) has no wandb equivalent and is refused, unless `export_as`
    ('grid' or 'random') asks for that form of it, and the description says what is lost.
    Paths are relative to the checkout root the agents run from (or under `checkout`); `sqz`
    is the agents' launcher (default `sqz` on their PATH); the trials' wandb mode is the agent's
    $WANDB_MODE (online when unset) unless `mode` fixes it. `run_cap` is the sweep's size."""
    if defn.base.path is None:
        raise SweepError(
            f"sweep {defn.name} has no base experiment file; export-wandb needs one for "
            "`sqz train --config=...`"
        )
    if mode is not None and mode not in WANDB_RUN_MODES:
        raise SweepError(f"--mode must be one of {WANDB_RUN_MODES}, got {mode!r}")
    sampler, notes = export_as or defn.sampler, []
    if sampler not in METHODS:
        raise SweepError(
            f"sweep {defn.name} searches with {defn.sampler} over "
            f"{', '.join(o.metric for o in defn.objectives)}: a wandb sweep optimises one metric "
            "and has no Pareto search, so it cannot run this faithfully; run it with `sqz sweep "
            "run`, or export its grid or random form with --as grid|random"
        )
    if export_as and export_as != defn.sampler:
        notes.append(f"exported as {export_as} search; the sqz sweep uses {defn.sampler}")
    if sampler == "grid" and defn.finite_size is None:
        raise SweepError(
            f"sweep {defn.name} has a continuous range; a grid export needs every range "
            "stepped (step= or num=); use --as random"
        )
    if len(defn.objectives) > 1:
        notes.append(
            f"wandb shows {defn.objectives[0].metric} only; the front over "
            + ", ".join(f"{o.direction} {o.metric}" for o in defn.objectives)
            + " comes from `sqz sweep report`"
        )
    if defn.constraints:
        notes.append(
            "analytic constraints not enforced by wandb: "
            + ", ".join(f"{k}={v:g}" for k, v in defn.constraints.items())
        )
    experiment = _agent_path(find_experiment(defn.base.path, sweep_file), checkout)
    runs_root = _agent_path(runs_root or os.path.join("runs", "wandb", defn.name), checkout)
    launcher = sqz or "sqz"
    grid = sampler == "grid"
    parameters: dict[str, Any] = {}
    for key, p in defn.space.items():
        parameters[f"config.{key}"] = _parameter(p, grid)
    seeds = list(defn.seeds)
    if grid:  # a grid axis: every point trains with every seed, enumerated, not searched
        parameters["config.seed"] = {"values": seeds}
        points = defn.planned_points
    else:  # a random draw trains once: the first seed
        parameters["config.seed"] = {"value": seeds[0]}
        points = defn.n_trials
        if len(seeds) > 1:
            notes.append(f"random search trains each point with seed {seeds[0]} only, not {seeds}")
    for key, value in defn.fixed.items():
        parameters[f"config.{key}"] = {"value": _cli_value(value)}
    parameters["config.wandb.group"] = {"value": defn.name}
    if mode:
        parameters["config.wandb.mode"] = {"value": mode}
    if wandb_project:
        parameters["config.wandb.project"] = {"value": wandb_project}
    if wandb_entity:
        parameters["config.wandb.entity"] = {"value": wandb_entity}
    parameters["config.progress"] = {"value": "false"}  # parsed as the field's own type
    objective = defn.objectives[0]
    arg = defn.base.arg_string()
    experiment += f":{arg}" if arg else ""
    # `sh -c SCRIPT NAME CMD...`: the script runs CMD (sqz train and wandb's flags) and adds the
    # per-run workdir and the agent's wandb mode, which need the shell: wandb expands macros
    # only as whole items.
    script = f'exec "$@" --workdir="{runs_root}/$WANDB_RUN_ID"'
    if not mode:
        script += f' --config.wandb.mode="{MODE_FROM_ENV}"'
    config: dict[str, Any] = {
        "name": defn.name,
        "description": _description(defn, notes),
        "program": launcher,
        "method": METHODS[sampler],
        "metric": {
            "name": objective.metric.replace(".", "/"),
            "goal": objective.direction,
        },
        "parameters": parameters,
        "run_cap": points * (len(seeds) if grid else 1),
        "command": [
            "${env}",
            "sh",
            "-c",
            script,
            "sqz-train",
            launcher,
            "train",
            f"--config={experiment}",
            "${args}",
        ],
    }
    if wandb_project:
        config["project"] = wandb_project
    if wandb_entity:
        config["entity"] = wandb_entity
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
            "# Run the agents from the root of a sqzexplore checkout with `sqz` on the PATH\n"
            "# (paths below are relative to it unless exported with --checkout).\n"
        )
        yaml.safe_dump(config, f, sort_keys=False, default_flow_style=False, width=100)
    return path


# ------------------------------------------------------------------------------ the command
def add_export_parser(sub) -> None:
    """`sqz sweep export-wandb`'s arguments (on the `sqz sweep` subparsers `sub`)."""
    export = sub.add_parser(
        "export-wandb",
        help="write a grid or random sweep as a wandb sweep YAML (wandb agents run its trials)",
    )
    export.add_argument("sweep_file")
    export.add_argument("--arg", default=None, help="the sweep's arg, as for `sweep run`")
    export.add_argument(
        "--output",
        default=None,
        help="a file, or a directory to put <name>.wandb.yaml in (default runs/sweeps/)",
    )
    export.add_argument(
        "--runs-root",
        default=None,
        help="where the agents put run workdirs (default runs/wandb/<name>, relative to the "
        "checkout the agents run from)",
    )
    export.add_argument(
        "--checkout",
        default=None,
        help="the checkout's path on the agents' machines: paths become absolute under it, so "
        "agents may run from any directory (default: relative paths; run agents from the "
        "checkout root)",
    )
    export.add_argument(
        "--sqz", default=None, help="the agents' sqz command (default `sqz` on their PATH)"
    )
    export.add_argument("--project", default=None, help="wandb project")
    export.add_argument("--entity", default=None, help="wandb entity (user or team)")
    export.add_argument(
        "--mode",
        choices=WANDB_RUN_MODES,
        default=None,
        help="fix the trials' wandb mode (default: each agent's $WANDB_MODE, online if unset)",
    )
    export.add_argument(
        "--as",
        dest="export_as",
        choices=tuple(METHODS),
        default=None,
        help="export an NSGA-II sweep as this search (wandb has no multi-objective search; "
        "the description says what is lost)",
    )


def export_command(args: argparse.Namespace) -> int:
    """Write the YAML and say how to start it."""
    defn = load_sweep(args.sweep_file, args.arg)
    config = wandb_sweep_config(
        defn,
        runs_root=args.runs_root,
        wandb_project=args.project,
        wandb_entity=args.entity,
        mode=args.mode,
        sqz=args.sqz,
        sweep_file=args.sweep_file,
        checkout=args.checkout,
        export_as=args.export_as,
    )
    output = Path(args.output or os.path.join("runs", "sweeps", f"{defn.name}.wandb.yaml"))
    output = write_wandb_yaml(config, output)
    target = "/".join(p for p in (args.entity, args.project) if p) or "ENTITY/PROJECT"
    where = (
        f"from any directory (paths under {args.checkout})"
        if args.checkout
        else ("from the checkout root, with sqz on the PATH")
    )
    print(
        f"wrote {output} ({config['run_cap']} runs); start it with `wandb sweep {output}`, "
        f"then on each machine `wandb agent {target}/SWEEP_ID` {where}"
    )
    return 0
