"""`sqz train --config=experiments/x.py[:arg] --workdir=DIR [--config.key=value ...]`.

Exit codes: 0 finished, or preempted by SIGTERM (the message says whether a checkpoint was
saved; rerun the same command to resume); 2 bad input (config, spec, workdir); 3 non-finite loss.

The experiment file is loaded by `config.load_config_file` (a missing file, a syntax error or a
bad `:arg` is one line naming the file), each `--config.KEY` is checked against the config
(`unknown config key model.squeez_ratio; did you mean model.squeeze_ratio?`), read by the
field's type and set through `config.apply_overrides` (the path sweeps and describe use).
Everything the user gave is checked before data loading or compilation; a bad input prints
`error: ...` and exits 2 with nothing written. `--help` lists every config key with its default
and meaning.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from sqzexplore import rundir
from sqzexplore.config import (
    ConfigError,
    UnknownKeyError,
    apply_overrides,
    field_type,
    load_config_file,
    parse_override,
)
from sqzexplore.models.spec import SpecError
from sqzexplore.rundir import WorkdirConflictError, WorkdirError
from sqzexplore.train.preempt import PreemptionFlag
from sqzexplore.train.usage import help_text

EXIT_USAGE = 2
EXIT_NONFINITE = 3
HELP_FLAGS = ("-h", "--help", "-help", "--helpfull", "--helpshort", "help")
_CONFIG_FLAG = re.compile(r"^--?config(=|$)")
_OVERRIDE = re.compile(r"^--?(no)?config\.([^=]*)(=|$)")


class UsageError(ValueError):
    """A malformed command line (missing or unknown flag)."""


def _config_path(argv: list[str]) -> tuple[str | None, list[str]]:
    """The `--config=FILE[:ARG]` value and argv without it."""
    path, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if _CONFIG_FLAG.match(arg):
            if "=" in arg:
                path = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                path, i = argv[i + 1], i + 1
            else:
                raise UsageError("--config needs a value: --config=path/to/experiment.py[:arg]")
        else:
            rest.append(arg)
        i += 1
    return path, rest


def _is_bool(config: Any, dotted: str) -> bool:
    try:
        return field_type(config, dotted) is bool
    except UnknownKeyError:
        return False


def parse_args(argv: list[str]) -> tuple[Any, str]:
    """(config with overrides applied, workdir) from `sqz train` arguments (without the program
    name); UsageError / ConfigError with a one-line message on bad input.

    `--config.KEY=VALUE` (or `--config.KEY VALUE`; `--config.KEY` / `--noconfig.KEY` for a
    boolean) is read by the field's type (`config.parse_override`) and set through
    `config.apply_overrides`, the override path sweeps and `sqz describe --set` use."""
    path, rest = _config_path(argv)
    if path is None:
        raise UsageError("--config=path/to/experiment.py[:arg] is required (see sqz train --help)")
    config = load_config_file(path)
    workdir, rest = _take_flag(rest, "workdir")
    overrides: dict[str, Any] = {}
    leftover, i = [], 0
    while i < len(rest):
        arg = rest[i]
        m = _OVERRIDE.match(arg)
        if m is None:
            leftover.append(arg)
            i += 1
            continue
        negated, key, has_value = m.group(1), m.group(2), m.group(3) == "="
        if has_value:
            text = arg.split("=", 1)[1]
        elif negated or _is_bool(config, key):
            text = "false" if negated else "true"
        elif i + 1 < len(rest):
            text, i = rest[i + 1], i + 1
        else:
            raise UsageError(f"--config.{key} needs a value (--config.{key}=VALUE)")
        if negated and (has_value or not _is_bool(config, key)):
            parse_override(config, key, "0")  # an unknown key or a section: that error first
            raise UsageError(f"--noconfig.{key}: takes no value, and config.{key} is not a boolean")
        overrides[key] = parse_override(config, key, text)
        i += 1
    if leftover:
        raise UsageError(
            f"unexpected argument(s) {' '.join(leftover)}; flags are --config, --workdir "
            "and --config.KEY=VALUE"
        )
    apply_overrides(config, overrides)
    if not workdir:
        raise UsageError("--workdir=DIR is required (see sqz train --help)")
    return config, workdir


def _error(e: BaseException) -> str:
    return e.plain if isinstance(e, UnknownKeyError) else " ".join(str(e).split())


def main(argv: list[str] | None = None) -> int:
    """Train one experiment in a workdir (resuming it); exit 0 done or preempted, 2 bad input,
    3 non-finite loss."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv):
        return _help(argv)
    # Before anything heavy is imported: a SIGTERM while JAX loads is a clean preemption too.
    stop = PreemptionFlag()
    try:
        return _train(argv)
    except BAD_INPUT + (_data_error(),) as e:
        print(f"error: {_error(e)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # the disk, not the program: say which file and why
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    finally:
        stop.restore()


BAD_INPUT = (UsageError, ConfigError, SpecError, WorkdirConflictError, WorkdirError)


def _data_error() -> type[Exception]:
    """The data layer's DataError once it is loaded (it imports jax), else a stand-in: an
    argument error is reported before jax is imported."""
    data = sys.modules.get("sqzexplore.data")
    return data.DataError if data is not None else UsageError


def _take_flag(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """The value of `--NAME=V` / `--NAME V` and argv without it."""
    value, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == f"--{name}" or arg.startswith(f"--{name}="):
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            else:
                raise UsageError(f"--{name} needs a value (see sqz train --help)")
        else:
            rest.append(arg)
        i += 1
    return value, rest


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2] (distinct integers >= 0); UsageError otherwise."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError(
            f"--seeds must be distinct integers >= 0 separated by commas (e.g. 0,1,2), got {text!r}"
        )
    return seeds


def parse_population(value: str) -> str | int:
    """`--population` value: 'auto', 'off' or an integer >= 1 (1 is the same as off)."""
    text = str(value).strip().lower()
    if text in ("auto", "off"):
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1 or str(n) != text:
        raise ValueError(f"--population must be auto, off or an integer >= 1, got {value!r}")
    return n


def _train(argv: list[str]) -> int:
    seeds_text, argv = _take_flag(argv, "seeds")
    population_text, argv = _take_flag(argv, "population")
    if population_text is not None and seeds_text is None:
        raise UsageError("--population needs --seeds (it trains several seeds as one program)")
    config, workdir = parse_args(argv)
    if seeds_text is not None:
        seeds = parse_seeds(seeds_text)
        try:
            population = parse_population(population_text or "auto")
        except ValueError as e:
            raise UsageError(str(e)) from None
        return _train_seeds(config, workdir, seeds, population)
    if rundir.read_result(workdir) is None:
        rundir.check_writable_dir(workdir)
    if config.compilation_cache_dir:
        rundir.check_writable_dir(config.compilation_cache_dir, "config.compilation_cache_dir")
    _apply_platform(config)
    from sqzexplore.train.loop import NonFiniteError, train_and_evaluate

    try:
        result = train_and_evaluate(config, workdir)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    if result.get("status") == "preempted":
        return 0
    print(final_line(result, workdir), flush=True)
    return 0


def _train_seeds(config: Any, workdir: str, seeds: list[int], population: str | int) -> int:
    """`--seeds`: one trial per seed in `workdir/seed_N`, trained as populations of up to
    `population` members (auto: by platform, `population.auto_population_size`) or one by one."""
    workdirs = [os.path.join(workdir, f"seed_{s}") for s in seeds]
    for w in workdirs:
        if rundir.read_result(w) is None:
            rundir.check_writable_dir(w)
    if config.compilation_cache_dir:
        rundir.check_writable_dir(config.compilation_cache_dir, "config.compilation_cache_dir")
    _apply_platform(config)
    from sqzexplore.train.loop import NonFiniteError, train_and_evaluate
    from sqzexplore.train.population import auto_population_size, train_population

    if population == "auto":
        size, why = auto_population_size()
        print(f"population: {why}", flush=True)
    else:
        size = 1 if population == "off" else int(population)
    configs = []
    for s in seeds:
        c = config.copy_and_resolve_references()
        c.seed = s
        configs.append(c)
    results: list[dict] = []
    for lo in range(0, len(seeds), size):
        group = slice(lo, lo + size)
        if size > 1:
            print(f"training seeds {seeds[group]} as one population", flush=True)
            results += train_population(configs[group], workdirs[group])
            continue
        try:
            results.append(train_and_evaluate(configs[lo], workdirs[lo]))
        except NonFiniteError as e:
            results.append({"status": "failed", "error": f"{type(e).__name__}: {e}"})
    code = 0
    for s, w, r in zip(seeds, workdirs, results, strict=True):
        if r.get("status") == "failed":
            print(f"error: seed {s}: {r['error']}", file=sys.stderr)
            code = EXIT_NONFINITE
        elif r.get("status") != "preempted":
            print(f"seed {s}: {final_line(r, w)}", flush=True)
    return code


def final_line(result: dict, workdir: str) -> str:
    """`done: 44 steps, top-1 final 91.39% / best 91.94% (step 22); wall 31.2 s, compile ...`."""
    final, best = result.get("final") or {}, result.get("best") or {}
    pct = lambda v: "n/a" if v is None else f"{100 * float(v):.2f}%"
    top5 = f", top-5 final {pct(final['top5'])}" if final.get("top5") is not None else ""
    best_step = f" (step {best['step']})" if best.get("step") is not None else ""
    timing = f"wall {result.get('wall_time_s', 0.0):.1f} s"
    if result.get("compile_time_s") is not None:
        timing += f", compile {result['compile_time_s']:.1f} s"
    params = result.get("complexity", {}).get("params")
    return (
        f"done ({result.get('status', 'complete')}): {result.get('steps', '?')} steps, "
        f"top-1 final {pct(final.get('top1'))} / best {pct(best.get('top1'))}{best_step}{top5}; "
        f"{timing}; "
        + (f"{params:,} params; " if params is not None else "")
        + f"results in {workdir}/result.json"
    )


def _help(argv: list[str]) -> int:
    """Print the usage and the config keys (of the experiment given with --config, if any)."""
    config, source = None, None
    try:
        path, _ = _config_path([a for a in argv if a not in HELP_FLAGS])
        if path:
            config, source = load_config_file(path), path
    except (UsageError, ConfigError) as e:
        print(f"note: {_error(e)}; listing the base config instead", file=sys.stderr)
    print(help_text(config, source))
    return 0


def _apply_platform(config: Any) -> None:
    """`config.platform=cpu` picks the CPU even where an accelerator exists, when JAX has not
    chosen its devices yet (the check after start-up refuses any other mismatch)."""
    import jax

    if config.get("platform", "auto") != "cpu" or str(jax.config.jax_platforms or ""):
        return
    try:
        from jax._src import xla_bridge  # the public API cannot ask whether devices are chosen

        if xla_bridge.backends_are_initialized():
            return
    except (ImportError, AttributeError):  # pragma: no cover - private API moved
        return
    jax.config.update("jax_platforms", "cpu")


if __name__ == "__main__":
    sys.exit(main())
