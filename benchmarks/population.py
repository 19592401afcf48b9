"""`sqz bench population`: N seeds of one design point as one program vs one after another.

    sqz bench population --members 1,2,4,8 [--config experiments/digits/squeezenet.py]
                         [--steps N] [--steps-per-dispatch 1,8] [--json PATH] [--results FILE]
    sqz bench population --widths [0.125,0.25,0.5,0.75,1.0] [--config ...]

`--widths` measures width-padded populations instead (`measure_widths`, train/padding.py).

For each population size N (and each steps-per-dispatch K): the trainer's own population step
(`Programs.population_step(N, K, lowering)`: the train step over N stacked members, vmapped or
unrolled (`--lowering vmap,unroll`; default the platform's auto), K steps per dispatch in one
`lax.scan`) on the config's device-resident data, timed by the same windows as
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


def parse_lowerings(text: str | None) -> list[str]:
    """`--lowering vmap,unroll` -> ["vmap", "unroll"]; None: the platform's auto."""
    if text is None:
        return [programs.population_lowering(None)]
    values = [x.strip() for x in text.split(",") if x.strip()]
    allowed = ("vmap", "unroll")
    if not values or any(v not in allowed for v in values) or len(set(values)) != len(values):
        raise BenchError(f"--lowering must be vmap and/or unroll separated by commas, got {text!r}")
    return values


def check_args(args: Any) -> None:
    """Every population option, before anything compiles."""
    parse_int_list(args.members, "--members", DEFAULT_MEMBERS)
    parse_int_list(args.steps_per_dispatch, "--steps-per-dispatch", (1,))
    parse_lowerings(getattr(args, "lowering", None))
    if getattr(args, "widths", None) is not None:
        parse_widths(args.widths)


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
    lowerings = parse_lowerings(getattr(args, "lowering", None))
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
        for n, lowering in [(n, lo) for n in members for lo in lowerings]:
            t0 = time.perf_counter()
            step = progs.population_step(n, k, lowering)
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
                "lowering": lowering,
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
        f"{r['members']} members ({r.get('lowering', 'vmap')}), "
        f"{r['steps_per_dispatch']} steps/dispatch: {r['img_s']:,.0f} "
        f"img/s ({r['gain_vs_one']:.2f}x one member's {r['lone_img_s']:,.0f}), compile "
        f"{r['compile_s']:.1f} s; {r['trials_per_hour']:,.0f} trials/h = "
        f"{r['trials_per_hour_vs_sequential']:.2f}x sequential"
    )


def cells(r: dict) -> list[str]:
    return [
        r["config"], str(r["members"]), r.get("lowering", "vmap"),
        str(r["steps_per_dispatch"]), str(r["batch"]),
        f"{r['img_s']:,.0f}", f"{r['img_s_per_member']:,.0f}", f"{r['lone_img_s']:,.0f}",
        f"{r['gain_vs_one']:.2f}", f"{r['compile_s']:.1f}", f"{r['lone_compile_s']:.1f}",
        f"{r['trials_per_hour']:,.0f}", f"{r['sequential_trials_per_hour']:,.0f}",
        f"{r['trials_per_hour_vs_sequential']:.2f}",
    ]  # fmt: skip


COLUMNS = [
    "config", "members", "lowering", "steps/dispatch", "batch", "img/s (all members)",
    "img/s per member",
    "one member img/s", "gain vs one", "compile s", "one member compile s", "trials/h",
    "sequential trials/h", "trials/h vs sequential",
]  # fmt: skip
TITLE = (
    "Populations (N seeds of one point as one program, vmapped or unrolled, vs one member's "
    "step; trials/h: N trials of the config's length, compile once, population vs one after "
    "another):"
)
SECTION = Section("population", TITLE, tuple(COLUMNS), cells, line=one_line)


# ---------------------------------------------------------------------------- --widths
DEFAULT_WIDTHS = (0.125, 0.25, 0.5, 0.75, 1.0)  # the README squeeze-ratio sweep's points


def parse_widths(text: str | None) -> list[float]:
    """`--widths 0.125,0.5,1.0` -> squeeze ratios in (0, 1], distinct (BenchError otherwise);
    an empty value: the squeeze-ratio sweep's points."""
    if not text:
        return list(DEFAULT_WIDTHS)
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 < v <= 1 for v in values) or len(set(values)) != len(values):
        raise BenchError(
            f"--widths must be distinct squeeze ratios in (0, 1] separated by commas, got {text!r}"
        )
    return values


def measure_widths(args: Any, plan: Plan) -> list[dict]:
    """The squeeze-ratio sweep's points (one seed each) as one width-padded program vs one
    program per point: compile seconds (cold, in this process) and trials per hour, each trial
    `config`'s steps long at the measured step rate (eval and checkpoints left out)."""
    from sqzexplore.train import padding  # the trainer's padding (jax)

    path = args.config or DEFAULT_CONFIG
    ratios = parse_widths(args.widths)
    configs = []
    for seed, sr in enumerate(ratios):
        c = _config(path, plan.smoke)
        c.seed, c.model.squeeze_ratio = seed, sr
        configs.append(c)
    programs.clear()
    mesh, n = sharding.make_mesh(), len(configs)
    timing = dataclasses.asdict(plan.timing)
    put = lambda tree: jax.tree.map(lambda a: sharding.put_replicated(np.asarray(a), mesh), tree)
    # One program per point: each point's init and step, compiled and timed alone.
    per_point_s, compile_total, rates = 0.0, 0.0, []
    for c in configs:
        progs = programs.for_run(c, validate_config(c), mesh)
        if not progs.ds.on_device:
            raise BenchError(f"--config {path}: populations need a device-resident dataset")
        images, labels = progs.train_arrays()
        t0 = time.perf_counter()
        step = progs.train_step()
        carry = [put(progs.init(c.seed)), None]
        compile_s = time.perf_counter() - t0

        def lone_step(step=step, carry=carry, images=images, labels=labels):
            carry[0], carry[1] = step(carry[0], images, labels)

        got = timed_windows(
            lone_step, lambda carry=carry: jax.block_until_ready(carry), progs.batch_size, **timing
        )
        rates.append(got["img_s"])
        compile_total += compile_s
        per_point_s += compile_s + progs.steps.total_steps * progs.batch_size / got["img_s"]
    programs.clear()  # the padded group compiles its own (and the narrow inits) cold
    t0 = time.perf_counter()
    layout = padding.layout(configs, mesh)
    progs = layout.programs
    inits = [layout.init(i, c.seed) for i, c in enumerate(configs)]
    state = [put(jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *inits)), None]
    step = progs.population_step(n)
    padded_compile = time.perf_counter() - t0
    active = sharding.put_replicated(np.ones(n, bool), mesh)
    images, labels = progs.train_arrays()

    def pop_step():
        state[0], state[1] = step(state[0], active, images, labels)

    got = timed_windows(
        pop_step, lambda: jax.block_until_ready(state), progs.batch_size * n, **timing
    )
    losses = np.asarray(jax.device_get(state[1]["loss"]))
    padded_s = padded_compile + progs.steps.total_steps * progs.batch_size * n / got["img_s"]
    return [
        {
            "config": path,
            "squeeze_ratios": ratios,
            "points": n,
            "trial_steps": progs.steps.total_steps,
            "batch": progs.batch_size,
            "padded_compile_s": padded_compile,
            "per_point_compile_s": compile_total,
            "padded_img_s": got["img_s"],
            "per_point_img_s": [float(r) for r in rates],
            "padded_trials_per_hour": 3600 * n / padded_s,
            "per_point_trials_per_hour": 3600 * n / per_point_s,
            "padded_vs_per_point": per_point_s / padded_s,
            "loss_finite": bool(np.all(np.isfinite(losses))),
        }
    ]


def widths_line(r: dict) -> str:
    return (
        f"{r['points']} squeeze ratios as one padded program: compile {r['padded_compile_s']:.1f}"
        f" s vs {r['per_point_compile_s']:.1f} s for one program per point; "
        f"{r['padded_trials_per_hour']:,.0f} vs {r['per_point_trials_per_hour']:,.0f} trials/h "
        f"({r['padded_vs_per_point']:.2f}x)"
    )


def widths_cells(r: dict) -> list[str]:
    return [
        r["config"], ",".join(str(x) for x in r["squeeze_ratios"]), str(r["trial_steps"]),
        f"{r['padded_compile_s']:.1f}", f"{r['per_point_compile_s']:.1f}",
        f"{r['padded_img_s']:,.0f}", f"{r['padded_trials_per_hour']:,.0f}",
        f"{r['per_point_trials_per_hour']:,.0f}", f"{r['padded_vs_per_point']:.2f}",
    ]  # fmt: skip


WIDTHS_COLUMNS = (
    "config", "squeeze ratios", "trial steps", "padded compile s", "per-point compile s (sum)",
    "padded img/s (all)", "padded trials/h", "per-point trials/h", "padded vs per-point",
)  # fmt: skip
WIDTHS_SECTION = Section(
    "population_widths",
    "Width-padded populations (`sqz bench population --widths`: the squeeze-ratio sweep's points, "
    "one seed each, as one padded program vs one program per point; compile cold, trials/h at "
    "the measured step rates):",
    WIDTHS_COLUMNS,
    widths_cells,
    line=widths_line,
)
