"""The `sqz sweep` command line: every subcommand's options, checked as they are parsed.

Numbers are checked against their allowed range with an error naming the option; every argument
error is one line, with a 'did you mean' for a misspelled option or subcommand (options are never
abbreviated: '--worker 2' is a typo, not '--workers 2'), never the 20-line usage block.
`sqz sweep --help` lists `run`'s options too. The commands themselves are in `cli`.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import math
import re
from collections.abc import Sequence

from sqzexplore.sweep.dashboards import FLAG_MODES
from sqzexplore.train.cli import parse_population

RUN_DEFAULTS = {"heartbeat_s": 10.0, "stale_after_s": 300.0, "poll_s": 2.0}


def _bounded(kind: type, low: float, name: str):
    """An argparse type: a `kind` number >= `low`, with an error naming the allowed range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(
                f"{name} must be {'an integer' if kind is int else 'a number'} >= {low}, "
                f"got {text!r}"
            )
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line, naming the option and the allowed values, with a 'did you
    mean' for a misspelled option or command, without the usage block (which buries the error
    under 20 lines)."""

    argv: Sequence[str] = ()

    def error(self, message: str):
        hint, prog = "", self.prog
        command = self._command()
        if command is not None:
            prog = command.prog
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            options = (command or self)._option_strings()
            for token in unknown.group(1).split():
                if token.startswith("-"):
                    close = difflib.get_close_matches(token.split("=")[0], options, n=1)
                    hint += f"; did you mean {close[0]!r} for {token!r}?" if close else ""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            names = re.findall(r"'([^']*)'", choice.group(2))
            close = difflib.get_close_matches(choice.group(1), names, n=1)
            hint += f"; did you mean {close[0]!r}?" if close else ""
        self.exit(2, f"{self.prog}: error: {message}{hint} (`{prog} --help` for the options)\n")

    def _option_strings(self) -> list[str]:
        return [o for a in self._actions for o in a.option_strings]

    def _command(self) -> argparse.ArgumentParser | None:
        """The subcommand's parser named in the command line being parsed, if any."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for token in self.argv:
                    if token in action.choices:
                        return action.choices[token]
        return None


def _population(text: str) -> str | int:
    try:
        return parse_population(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runner",
        default=None,
        help="trial runner MODULE:FUNCTION (default sqzexplore.train.runner:train_and_evaluate), "
        "for custom trainers and tests",
    )
    p.add_argument(
        "--max-runs", type=_bounded(int, 0, "--max-runs"), help="stop each worker after N runs"
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="exit when only other workers' trials remain (instead of standing by)",
    )
    p.add_argument(
        "--heartbeat-s",
        type=_bounded(float, 0.01, "--heartbeat-s"),
        default=RUN_DEFAULTS["heartbeat_s"],
        help="seconds between a worker's liveness stamps on its claims (default 10); a claim "
        "unstamped for --stale-after-s is taken over by another worker",
    )
    p.add_argument(
        "--poll-s",
        type=_bounded(float, 0.01, "--poll-s"),
        default=RUN_DEFAULTS["poll_s"],
        help="how often a worker with nothing to do checks for runs to take over",
    )
    p.add_argument(
        "--stale-after-s",
        type=_bounded(float, 1.0, "--stale-after-s"),
        default=RUN_DEFAULTS["stale_after_s"],
        help="a claim from another host without heartbeat this long is taken over",
    )
    p.add_argument(
        "--population",
        type=_population,
        default="auto",
        help="train up to N pending seeds of a design point as one program: auto | N | off "
        "(auto: off on a CPU, where it measured slower; up to 8 on a GPU; see "
        "sqzexplore/train/population.py)",
    )
    p.add_argument(
        "--compile-ahead",
        choices=("auto", "on", "off"),
        default="auto",
        help="compile a worker's next design point while its current run trains (auto: on "
        "with an accelerator, or with more CPU cores than local workers)",
    )


def _run_parser(sub) -> argparse.ArgumentParser:
    """`sqz sweep run`'s options (on the `sqz sweep` subparsers `sub`)."""
    run = sub.add_parser("run", help="run (or resume) a sweep with local workers or SLURM")
    run.add_argument("sweep_file", help="sweeps/<name>.py")
    run.add_argument("--arg", default=None, help="the sweep's arg, e.g. 'runlocal,dataset=cifar10'")
    run.add_argument("--workdir", default=None, help="sweep directory (default runs/sweeps/<name>)")
    run.add_argument(
        "--workers",
        type=_bounded(int, 1, "--workers"),
        default=None,
        help="local worker processes, >= 1 (default: one per visible GPU, else 1)",
    )
    run.add_argument(
        "--storage",
        default=None,
        help="Optuna RDB URL (e.g. postgresql://...); default: a journal file in the sweep dir",
    )
    run.add_argument(
        "--new", action="store_true", help="archive an existing sweep directory and start over"
    )
    _worker_options(run)
    run.add_argument(
        "--wandb",
        choices=tuple(FLAG_MODES),
        default=None,
        help="log every trial to wandb (one run per trial, one group per sweep, plus a summary "
        "run when the sweep finishes); default: $WANDB_MODE if set, else the earlier choice "
        "for this directory, else the base config's wandb.mode",
    )
    run.add_argument("--wandb-project", default=None, help="wandb project (default sqzexplore)")
    run.add_argument("--wandb-entity", default=None, help="wandb entity (user or team)")
    run.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="progress bar over trials on stderr (auto: only on a terminal)",
    )
    from sqzexplore.sweep.slurm import add_options

    add_options(run, _bounded)
    return run


def build_parser(description: str) -> argparse.ArgumentParser:
    """The whole `sqz sweep` command line (`description`: the top-level help's first line)."""
    p = _Parser(
        prog="sqz sweep",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # Subcommands take no abbreviations either: '--worker 2' is a typo, not '--workers 2'.
    sub.add_parser = functools.partial(sub.add_parser, allow_abbrev=False)

    run = _run_parser(sub)

    worker = sub.add_parser(
        "worker",
        help="one more worker for an existing sweep directory (on this or another machine "
        "sharing the directory); what `run --workers N` and SLURM array tasks start",
        description="Add one worker to a sweep that `sqz sweep run` created: it claims pending "
        "trials, trains them and records the outcome until the sweep is done. It needs only "
        "the sweep directory (each trial's full config is in its trial.json).",
    )
    worker.add_argument("workdir", help="the sweep directory (`sweep run --workdir`)")
    _worker_options(worker)
    worker.add_argument("--worker-name", default=None, help="name in logs and claim files")

    status = sub.add_parser(
        "status",
        help="done/running/failed/pending counts, best, ETA",
        description="Print a sweep's progress from its files only (no Optuna, no jax): trials "
        "done, running, failed, stopped early, skipped and pending; the best point per "
        "objective; the Pareto front's size; live workers and an ETA.",
    )
    status.add_argument("workdir", help="the sweep directory")
    status.add_argument("--json", action="store_true", help="the same as one JSON object")

    report = sub.add_parser("report", help="results.csv, frontier.csv, figures, report.html")
    report.add_argument("workdir", help="the sweep directory")
    report.add_argument("--out", default=None, help="output directory (default DIR/report)")
    report.add_argument(
        "--wandb-mode",
        choices=("disabled", "offline", "online"),
        default=None,
        help="log a summary run (default: the base config's wandb.mode)",
    )
    report.add_argument("--quiet", action="store_true", help="do not print the frontier tables")
    report.add_argument(
        "--watch",
        action="store_true",
        help="rebuild the report every --interval seconds until the sweep finishes; the open "
        "page reloads itself meanwhile",
    )
    report.add_argument(
        "--interval",
        type=_bounded(float, 1.0, "--interval"),
        default=30.0,
        help="seconds between rebuilds with --watch (default 30)",
    )
    report.add_argument(
        "--tensorboard",
        action="store_true",
        help="also mirror every trial's metrics.jsonl as TensorBoard event files under "
        "DIR/tensorboard (view with `tensorboard --logdir DIR`)",
    )

    from sqzexplore.sweep.wandb_export import add_export_parser

    add_export_parser(sub)
    # `sqz sweep --help` shows what most people came for: run's options.
    p.epilog = (
        "Each command's own options: `sqz sweep COMMAND --help`. Those of `sqz sweep run`:\n\n"
        + run.format_help().split("\n\n", 1)[1]
    )
    return p
