"""Compile time of one trial's programs (init, train step, eval), part by part: cold, or from the
persistent cache.

Each run is a fresh Python process. Without --cache the persistent XLA cache is off, so it pays
what a new design point pays on a fresh machine; with --cache DIR the trainer's own cache
settings (sqzexplore.train.xla_options) are used with DIR, so a second run shows what a cached
point costs, and a run of another point shows what XLA's per-fusion autotune cache saves (GPU).
It builds the experiment's programs exactly as the trainer does (`sqzexplore.train.programs`)
and prints, per part, wall and CPU seconds (tracing, lowering and compiling), persistent-cache
hits and writes (JAX's monitoring events, not timing), the optimised train step's fused-kernel
count, and the step's time over 30 steps.

    python -m benchmarks.compile_time                                  # digits, 3 runs
    python -m benchmarks.compile_time --config experiments/digits/squeezenet.py:sr=0.5 --runs 5
    python -m benchmarks.compile_time --compare ../old-checkout        # alternate with another
    python -m benchmarks.compile_time --runs 1 --cache /tmp/c --json cold.json   # then again:
    python -m benchmarks.compile_time --runs 1 --cache /tmp/c --json warm.json   # from the cache
    python -m benchmarks.compile_time --autotune-level 0               # GPU: no autotuning

`--compare DIR` alternates runs of this checkout with runs of the checkout in DIR (its package
on PYTHONPATH, this script), so that both see the same machine load; it prints the medians.
`--autotune-level N` sets config.xla_gpu_autotune_level (GPU only; its cost shows in step ms).
XLA flags without a config key go through XLA_FLAGS, e.g.
`XLA_FLAGS=--xla_gpu_enable_llvm_module_compilation_parallelism=true`. Measured numbers, with
machine and command: benchmarks/RESULTS.md ("Second round", "GPU compile time (issue 16)").
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


CACHE_EVENTS = {
    "/jax/compilation_cache/compile_requests_use_cache": "requests",
    "/jax/compilation_cache/cache_hits": "hits",
    "/jax/compilation_cache/cache_misses": "writes",  # JAX records a miss when it writes
}


def measure(config_arg: str, cache: str = "", autotune_level: int | None = None) -> dict:
    """One build of the programs of `config_arg` (PATH[:ARG]) in this process: cold, or with the
    persistent cache in `cache`."""
    import jax

    from sqzexplore import sharding
    from sqzexplore.config import load_config_file, validate_config
    from sqzexplore.train import programs, xla_options

    jax.config.update("jax_compilation_cache_dir", None)
    path, _, arg = config_arg.partition(":")
    config = load_config_file(path, arg or None)
    config.compilation_cache_dir = cache
    if autotune_level is not None:
        config.xla_gpu_autotune_level = autotune_level
    spec = validate_config(config)
    out: dict = {"platform": jax.default_backend()}
    if hasattr(xla_options, "configure"):
        out["settings"] = xla_options.configure(config)
    elif cache:  # a --compare checkout from before xla_options.configure
        raise SystemExit("--cache needs a checkout with sqzexplore.train.xla_options.configure")
    counts = dict.fromkeys(CACHE_EVENTS.values(), 0)

    def listener(event, **kwargs):
        if event in CACHE_EVENTS:
            counts[CACHE_EVENTS[event]] += 1

    jax.monitoring.register_event_listener(listener)
    progs = programs.for_run(config, spec, sharding.make_mesh())

    def timed(name, build):
        before = dict(counts)
        t, c = time.perf_counter(), _cpu()
        build()
        out[name] = time.perf_counter() - t
        out[name + "_cpu"] = _cpu() - c
        for k, v in counts.items():
            out[f"{name}_{k}"] = v - before[k]

    timed("init", progs._compiled_init)
    timed("step", progs.train_step)
    timed("eval", lambda: progs._compiled_eval(progs.abstract_state()))
    out["train_eval"] = out["step"] + out["eval"]
    out["all"] = out["init"] + out["train_eval"]
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
    jax.monitoring.unregister_event_listener(listener)
    out.update({k: v for k, v in counts.items()})
    if cache:  # the per-fusion autotune results XLA:GPU keeps there (none on CPU)
        tuned = os.path.join(os.path.expanduser(cache), xla_options.AUTOTUNE_CACHE)
        out["autotune_cache_files"] = len(os.listdir(tuned)) if os.path.isdir(tuned) else 0
    return out


def _run_in(checkout: str, config_arg: str, extra: list[str]) -> dict:
    # The checkout first, then the inherited path: where the dependencies come from PYTHONPATH
    # (the GPU image: no virtualenv, carried wheels in a target directory) they must stay.
    inherited = os.environ.get("PYTHONPATH", "")
    path = os.pathsep.join(p for p in (os.path.abspath(checkout), inherited) if p)
    env = dict(os.environ, PYTHONPATH=path)
    # -P: not benchmarks/ first on sys.path, where profile.py would shadow the standard library's
    # module of that name (jax imports it).
    cmd = [sys.executable, "-P", os.path.abspath(__file__), "--one", "--config", config_arg]
    cmd += extra
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=checkout)
    if proc.returncode != 0:
        raise SystemExit(f"run in {checkout} failed:\n{proc.stdout}{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(name: str, r: dict) -> str:
    cached = f"  cache hits {r['hits']:3.0f} writes {r['writes']:3.0f}" if "hits" in r else ""
    return (
        f"{name:>8}: init {r['init']:5.1f} s  step {r['step']:5.1f} s ({r['step_cpu']:5.1f} CPU)"
        f"  eval {r['eval']:4.1f} s  train+eval {r['train_eval']:5.1f} s"
        f"  kernels {r['fused_kernels']:5.0f}  step {r['step_ms']:6.1f} ms{cached}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="experiment file[:arg]")
    p.add_argument("--runs", type=int, default=3, help="fresh processes per checkout (>= 1)")
    p.add_argument("--compare", metavar="DIR", help="another checkout to alternate with")
    p.add_argument(
        "--cache", default="", metavar="DIR",
        help="use the trainer's persistent cache settings with DIR (default: cache off, cold)",
    )  # fmt: skip
    p.add_argument(
        "--autotune-level", type=int, metavar="N",
        help="config.xla_gpu_autotune_level (0-5; GPU only; default XLA's)",
    )  # fmt: skip
    p.add_argument("--json", metavar="PATH", help="write every run and the medians here")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be at least 1, got {args.runs}")
    if args.autotune_level is not None and not 0 <= args.autotune_level <= 5:
        p.error(f"--autotune-level must be in 0..5 (XLA's xla_gpu_autotune_level), got "
                f"{args.autotune_level}")  # fmt: skip
    if args.cache and os.path.exists(args.cache) and not os.path.isdir(args.cache):
        p.error(f"--cache {args.cache} is a file, not a directory")
    if args.compare and (args.cache or args.autotune_level is not None):
        p.error("--compare measures cold compiles at the default level: drop --cache and "
                "--autotune-level")  # fmt: skip
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
        print(json.dumps(measure(args.config, args.cache, args.autotune_level)))
        return 0
    shown_args = sys.argv[1:] if argv is None else list(argv)
    extra = ["--cache", os.path.abspath(os.path.expanduser(args.cache))] if args.cache else []
    if args.autotune_level is not None:
        extra += ["--autotune-level", str(args.autotune_level)]
    checkouts = {"this": HERE}
    if args.compare:
        checkouts = {"other": args.compare, "this": HERE}
    results: dict[str, list[dict]] = {name: [] for name in checkouts}
    for _ in range(args.runs):
        for name, checkout in checkouts.items():
            r = _run_in(checkout, args.config, extra)
            results[name].append(r)
            print(_row(name, r), flush=True)
            if args.json:  # rewritten after every run: a stopped benchmark keeps its rows
                _write_json(args.json, shown_args, results)
    for name, rows in results.items():
        print(_row(f"{name} med", _medians(rows)))
    if args.json:
        _write_json(args.json, shown_args, results)
    if results["this"][0].get("settings"):
        print(f"settings: {results['this'][0]['settings']}")
    return 0


def _medians(rows: list[dict]) -> dict:
    numeric = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    return {k: statistics.median(r[k] for r in rows) for k in numeric}


def _write_json(path: str, argv: list[str], results: dict[str, list[dict]]) -> None:
    out = {
        "command": " ".join(["python -m benchmarks.compile_time", *argv]),
        "runs": results,
        "median": {name: _medians(rows) for name, rows in results.items()},
    }
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
