"""`sqz bench population`: N seeds of one design point as one program vs one after another.

    sqz bench population --members 1,2,4,8 [--config experiments/digits/squeezenet.py]
                         [--steps N] [--steps-per-dispatch 1,8] [--json PATH] [--results FILE]

For each population size N (and each steps-per-dispatch K): the trainer's own population step
(`Programs.population_step(N, K)`: the train step vmapped over N stacked members, K steps per
dispatch in one `lax.scan`) on the config's device-resident data, timed by the same windows as
`sqz bench step`. Against the lone trial's step (`Programs.train_block(K)`), it gives:

- img/s of all members together, and the gain over one member (N x its img/s would be ideal);
- trials per hour for N seeds of the point: population (compile once + train N members at once)
  vs sequential (compile once, then N trials one after another, each at the lone step's rate),
  with each trial `config`'s steps long; compile is the measured lower + compile time.

Eval and checkpoints are left out (the same for both). `population.AUTO_POPULATION` (what
`--population auto` picks) is meant to follow these rows.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from benchmarks.common import SMOKE_OVERRIDES, BenchError, Section, timed_windows
from benchmarks.plan import Plan
from sqzexplore import sharding
from sqzexplore.config import load_config_file, validate_config
from sqzexplore.train import programs
from sqzexplore.train.population import initial_states

DEFAULT_CONFIG = "experiments/digits/squeezenet.py"
DEFAULT_MEMBERS = (1, 2, 4, 8)


def parse_int_list(text: str | None, option: str, default: tuple[int, ...]) -> list[int]:
    """`--members 1,2,4` -> [1, 2, 4]: distinct integers >= 1 (BenchError otherwise)."""
    if text is None:
        return list(default)
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values) or len(set(values)) != len(values):
        raise BenchError(
            f"{option} must be distinct integers >= 1 separated by commas, got {text!r}"
        )
    return values


def check_args(args: Any) -> None:
    """Every population option, before anything compiles."""
    parse_int_list(args.members, "--members", DEFAULT_MEMBERS)
    parse_int_list(args.steps_per_dispatch, "--steps-per-dispatch", (1,))


def _config(path: str, smoke: bool):
    try:
        c = load_config_file(path, "runlocal" if smoke else None)
    except Exception as e:  # a missing file or a bad experiment: one line
        raise BenchError(f"--config {path}: {e}") from None
    if smoke:
        for key, value in SMOKE_OVERRIDES.items():
            c.model[key] = value
    c.progress, c.compilation_cache_dir = "false", ""  # cold compiles
    return c


def measure_population(args: Any, plan: Plan) -> list[dict]:
    """One row per (members, steps per dispatch); see the module docstring."""
    path = args.config or DEFAULT_CONFIG
    config = _config(path, plan.smoke)
    spec = validate_config(config)
    members = parse_int_list(args.members, "--members", DEFAULT_MEMBERS)
    ks = parse_int_list(args.steps_per_dispatch, "--steps-per-dispatch", (1,))
    programs.clear()
    progs = programs.for_run(config, spec, sharding.make_mesh())
    if not progs.ds.on_device:
        raise BenchError(f"--config {path}: populations need a device-resident dataset")
    images, labels = progs.train_arrays()
    mesh, batch = progs.mesh, progs.batch_size
    put = lambda tree: jax.tree.map(lambda a: sharding.put_replicated(np.asarray(a), mesh), tree)
    trial_steps = progs.steps.total_steps
    timing = dataclasses.asdict(plan.timing)
    rows = []
    for k in ks:
        # The lone trial: its step (or block of k steps), compiled and timed the same way.
        t0 = time.perf_counter()
        lone = progs.train_block(k)
        lone_compile = time.perf_counter() - t0
        carry = [put(progs.init(0)), None]

        def lone_step(lone=lone, carry=carry):
            carry[0], carry[1] = lone(carry[0], images, labels)

        sync = lambda carry=carry: jax.block_until_ready(carry)
        base = timed_windows(lone_step, sync, batch * k, **timing)
        for n in members:
            t0 = time.perf_counter()
            step = progs.population_step(n, k)
            compile_s = time.perf_counter() - t0
            active = sharding.put_replicated(np.ones(n, bool), mesh)
            state = [put(initial_states(progs, list(range(n)))), None]

            def pop_step(step=step, state=state, active=active):
                state[0], state[1] = step(state[0], active, images, labels)

            got = timed_windows(
                pop_step, lambda state=state: jax.block_until_ready(state), batch * k * n, **timing
            )
            losses = np.asarray(jax.device_get(state[1]["loss"]))
            train_one = trial_steps * batch / base["img_s"]  # seconds of one lone trial
            sequential_s = lone_compile + n * train_one
            population_s = compile_s + trial_steps * batch * n / got["img_s"]
            row = {
                "config": path,
                "members": n,
                "steps_per_dispatch": k,
                "batch": batch,
                "trial_steps": trial_steps,
                "img_s": got["img_s"],
                "img_s_per_member": got["img_s"] / n,
                "lone_img_s": base["img_s"],
                "gain_vs_one": got["img_s"] / base["img_s"],
                "compile_s": compile_s,
                "lone_compile_s": lone_compile,
                "trials_per_hour": 3600 * n / population_s,
                "sequential_trials_per_hour": 3600 * n / sequential_s,
                "trials_per_hour_vs_sequential": sequential_s / population_s,
                "loss_finite": bool(np.all(np.isfinite(losses))),
                "windows": got["img_s_windows"],
            }
            rows.append(row)
            del state
    return rows


def one_line(r: dict) -> str:
    return (
        f"{r['members']} members, {r['steps_per_dispatch']} steps/dispatch: {r['img_s']:,.0f} "
        f"img/s ({r['gain_vs_one']:.2f}x one member's {r['lone_img_s']:,.0f}), compile "
        f"{r['compile_s']:.1f} s; {r['trials_per_hour']:,.0f} trials/h = "
        f"{r['trials_per_hour_vs_sequential']:.2f}x sequential"
    )


def cells(r: dict) -> list[str]:
    return [
        r["config"], str(r["members"]), str(r["steps_per_dispatch"]), str(r["batch"]),
        f"{r['img_s']:,.0f}", f"{r['img_s_per_member']:,.0f}", f"{r['lone_img_s']:,.0f}",
        f"{r['gain_vs_one']:.2f}", f"{r['compile_s']:.1f}", f"{r['lone_compile_s']:.1f}",
        f"{r['trials_per_hour']:,.0f}", f"{r['sequential_trials_per_hour']:,.0f}",
        f"{r['trials_per_hour_vs_sequential']:.2f}",
    ]  # fmt: skip


COLUMNS = [
    "config", "members", "steps/dispatch", "batch", "img/s (all members)", "img/s per member",
    "one member img/s", "gain vs one", "compile s", "one member compile s", "trials/h",
    "sequential trials/h", "trials/h vs sequential",
]  # fmt: skip
TITLE = (
    "Populations (N seeds of one point as one vmapped program vs one member's step; trials/h: "
    "N trials of the config's length, compile once, population vs one after another):"
)
SECTION = Section("population", TITLE, tuple(COLUMNS), cells, line=one_line)
