"""Cold compile time of one trial's programs (init, train step, eval), part by part.

Each run is a fresh Python process with the persistent XLA cache off, so it pays what a new
design point pays in a sweep: it builds the experiment's programs exactly as the trainer does
(`sqzexplore.train.programs`) and prints, per part, wall and CPU seconds (tracing, lowering and
compiling), the optimised train step's fused-kernel count, and the step's time over 30 steps.

    python -m benchmarks.compile_time                                  # digits, 3 runs
    python -m benchmarks.compile_time --config experiments/digits/squeezenet.py:sr=0.5 --runs 5
    python -m benchmarks.compile_time --compare ../old-checkout        # alternate with another

`--compare DIR` alternates runs of this checkout with runs of the checkout in DIR (its package
on PYTHONPATH, this script), so that both see the same machine load; it prints the medians.
Measured numbers, with machine and command: benchmarks/RESULTS.md ("Second round").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(HERE, "experiments", "digits", "squeezenet.py")
STEPS = 30


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(config_arg: str) -> dict:
    """One cold build of the programs of `config_arg` (PATH[:ARG]) in this process."""
    import jax

    from sqzexplore import sharding
    from sqzexplore.config import load_config_file, validate_config
    from sqzexplore.train import programs

    jax.config.update("jax_compilation_cache_dir", None)
    path, _, arg = config_arg.partition(":")
    config = load_config_file(path, arg or None)
    config.compilation_cache_dir = ""
    spec = validate_config(config)
    progs = programs.for_run(config, spec, sharding.make_mesh())
    out: dict = {}

    def timed(name, build):
        t, c = time.perf_counter(), _cpu()
        build()
        out[name] = time.perf_counter() - t
        out[name + "_cpu"] = _cpu() - c

    timed("init", progs._compiled_init)
    timed("step", progs.train_step)
    timed("eval", lambda: progs._compiled_eval(progs.abstract_state()))
    out["train_eval"] = out["step"] + out["eval"]
    out["fused_kernels"] = progs.train_step().as_text().count("calls=%fused")
    state = jax.device_put(progs.init(0))
    images, labels = progs.train_arrays()
    step = progs.train_step()
    for _ in range(3):
        state, metrics = step(state, images, labels)
    jax.block_until_ready(state)
    t = time.perf_counter()
    for _ in range(STEPS):
        state, metrics = step(state, images, labels)
    jax.block_until_ready(state)
    out["step_ms"] = 1000 * (time.perf_counter() - t) / STEPS
    out["loss_after"] = float(metrics["loss"])
    return out


def _run_in(checkout: str, config_arg: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    cmd = [sys.executable, os.path.abspath(__file__), "--one", "--config", config_arg]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=checkout)
    if proc.returncode != 0:
        raise SystemExit(f"run in {checkout} failed:\n{proc.stdout}{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(name: str, r: dict) -> str:
    return (
        f"{name:>8}: init {r['init']:5.1f} s  step {r['step']:5.1f} s ({r['step_cpu']:5.1f} CPU)"
        f"  eval {r['eval']:4.1f} s  train+eval {r['train_eval']:5.1f} s"
        f"  kernels {r['fused_kernels']:5.0f}  step {r['step_ms']:6.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="experiment file[:arg]")
    p.add_argument("--runs", type=int, default=3, help="fresh processes per checkout (>= 1)")
    p.add_argument("--compare", metavar="DIR", help="another checkout to alternate with")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be at least 1, got {args.runs}")
    if args.compare and not os.path.isdir(os.path.join(args.compare, "sqzexplore")):
        p.error(f"--compare {args.compare}: no sqzexplore package there")
    from sqzexplore.config import ConfigError, load_config_file, validate_config
    from sqzexplore.models.spec import SpecError

    path, _, arg = args.config.partition(":")
    try:  # a bad experiment is one line here, before any process starts or anything compiles
        validate_config(load_config_file(path, arg or None))
    except (ConfigError, SpecError, ValueError) as e:
        p.error(f"--config {args.config}: {e}")
    if args.one:
        print(json.dumps(measure(args.config)))
        return 0
    checkouts = {"this": HERE}
    if args.compare:
        checkouts = {"other": args.compare, "this": HERE}
    results: dict[str, list[dict]] = {name: [] for name in checkouts}
    for _ in range(args.runs):
        for name, checkout in checkouts.items():
            r = _run_in(checkout, args.config)
            results[name].append(r)
            print(_row(name, r), flush=True)
    for name, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(_row(f"{name} med", med))
    return 0


if __name__ == "__main__":
    sys.exit(main())
