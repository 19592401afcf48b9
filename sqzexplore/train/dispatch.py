"""How a run's steps are dispatched: blocks of steps, the cadence, and the programs' bodies.

- `steps_per_dispatch`: the train steps per host call (one `lax.scan`), cut to divide the log,
  eval and checkpoint cadences, so blocks end exactly at those steps.
- `masked_block`: a block of k steps that runs only its first `n` (a traced argument; the state
  of a step past `n` is the state before it), so the tail of training that is not a multiple of
  k, and the first block of a run resumed at a step another block size wrote, go through the
  same compiled program: blocks never cause a second compile.
- `population_lowering` / `over_members`: how a population's program runs its members.
- `cadence` / `next_boundary`: which steps log, evaluate, checkpoint or end the run.

programs.py compiles these bodies; the driver (driver.py) dispatches them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from sqzexplore import sharding
from sqzexplore.durations import Durations
from sqzexplore.train import xla_options
from sqzexplore.train.evaluate import eval_metrics
from sqzexplore.train.state import TrainState

# Steps per dispatch when config.steps_per_dispatch is 0 (auto), per platform. CPU: 1. On
# XLA:CPU the scanned block of the digits step compiled in 40.4 s against 16.8 s for one step and
# ran at 3347 ms a step against 312 ms (K=10, 1 CPU device; /tmp script in docs/architecture.md,
# 2-core AMD EPYC VM loaded by concurrent work): XLA:CPU runs a while loop's body far slower.
# Accelerators: 8 (cut to divide the cadences), NOT yet measured on a GPU: one dispatch there
# costs about as much as a small step; `sqz bench population --steps-per-dispatch 1,8` measures it.
AUTO_STEPS_PER_DISPATCH = {"cpu": 1}
AUTO_STEPS_PER_DISPATCH_ACCELERATOR = 8


def population_lowering(config: Any, platform: str | None = None) -> str:
    """How a population's program runs its members: "vmap" (one batched step: the convolutions
    become grouped ones, which GPUs run well) or "unroll" (each member's own step, one after
    another, unrolled in the one program: one compile and one dispatch, compile time growing
    with the members). `config.population_lowering` auto: unroll on CPU, vmap elsewhere.
    Measured on XLA:CPU (`sqz bench population --members 1,3 --lowering unroll,vmap --steps 20`,
    1 device, digits, quiet 2-core EPYC VM, 2026-12-04): 3 members unrolled 1,142 img/s (1.20x
    one member's 952; compile 21.6 s vs 6.8 s), vmapped 473 img/s (0.50x; compile 8.3 s); a
    `lax.map` loop was slower still (a probe: 6.5x one member's step time per member)."""
    wanted = (config.get("population_lowering", "auto") if config is not None else "") or "auto"
    if wanted != "auto":
        return wanted
    return "unroll" if (platform or jax.default_backend()) == "cpu" else "vmap"


def over_members(fn: Callable, lowering: str) -> Callable:
    """`fn(state, *shared)` applied to every member of a state with a leading member axis (the
    other arguments shared), outputs stacked on a leading member axis: `jax.vmap`, or each
    member's own call unrolled (see `population_lowering`)."""
    if lowering == "vmap":
        return lambda state, *shared: jax.vmap(fn, in_axes=(0,) + (None,) * len(shared))(
            state, *shared
        )

    def unrolled(state, *shared):
        members = jax.tree.leaves(state)[0].shape[0]
        outs = [fn(jax.tree.map(lambda a, i=i: a[i], state), *shared) for i in range(members)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return unrolled


def steps_per_dispatch(config: Any, steps: Any, on_device: bool) -> tuple[int, str]:
    """(k, why): the train steps per host call. The largest divisor of the log, eval and
    checkpoint cadences' greatest common divisor that is at most the wanted count, so that blocks
    end exactly at those steps; 1 with streamed data (each step's batch comes from the host).
    The end of training and a resumed run's first step need not be multiples of k: those blocks
    run fewer steps through the same program (`masked_block`)."""
    wanted = int(config.get("steps_per_dispatch", 0) or 0)
    if not on_device:
        return 1, "the batches are streamed from the host"
    if wanted == 0:
        platform = jax.default_backend()
        wanted = AUTO_STEPS_PER_DISPATCH.get(platform, AUTO_STEPS_PER_DISPATCH_ACCELERATOR)
        why = f"auto on {platform}"
    else:
        why = f"config.steps_per_dispatch={wanted}"
    cadence = math.gcd(int(config.log_every_steps), steps.eval_every, steps.checkpoint_every)
    k = max(d for d in range(1, min(wanted, cadence) + 1) if cadence % d == 0)
    if k != wanted:
        why += f", cut to {k} to divide the log/eval/checkpoint cadences ({cadence})"
    return k, why


def cadence(step: int, steps: Durations, log_every: int) -> tuple[bool, bool, bool]:
    """(eval, checkpoint, log) due after `step`: eval and checkpoints at their intervals and at
    the last step, and a log record at its interval and wherever either of them is."""
    last = step == steps.total_steps
    is_eval = step % steps.eval_every == 0 or last
    is_ckpt = step % steps.checkpoint_every == 0 or last
    return is_eval, is_ckpt, step % log_every == 0 or is_eval or is_ckpt


def next_boundary(step: int, steps: Any, log_every: int) -> int:
    """The first step after `step` that logs, evaluates, checkpoints or ends the run."""
    nxt = lambda every: (step // every + 1) * every
    every = (log_every, steps.eval_every, steps.checkpoint_every)
    return min(*(nxt(e) for e in every), steps.total_steps)


def masked_block(step_fn: Callable, length: int) -> Callable:
    """`length` steps of `step_fn(state, *args) -> (state, metrics)` as one function
    `(state, *args, n) -> (state, metrics)` that applies only the first `n` (a traced int32, 1 to
    `length`): a later step's new state is discarded (a select, not a branch: no host round trip
    on a GPU), and its metrics are junk the host drops. Metrics have a leading step axis."""

    def block(state, *args):
        *shared, n = args

        def body(s, i):
            new, metrics = step_fn(s, *shared)
            keep = i < n
            return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, s), metrics

        return jax.lax.scan(body, state, jnp.arange(length, dtype=jnp.int32))

    return block


def population_body(step_fn: Callable, lowering: str, length: int) -> Callable:
    """The population's step `(state, active, images, labels[, n]) -> (state, metrics)`:
    `step_fn` over the leading member axis (`over_members`); a member whose `active` flag is
    False keeps its state (frozen). With `length` > 1 a masked block (`masked_block`) taking `n`."""
    step = over_members(step_fn, lowering)

    def one_step(state, active, images, labels):
        new, metrics = step(state, images, labels)
        pick = lambda n, o: jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
        return jax.tree.map(pick, new, state), metrics

    return one_step if length == 1 else masked_block(one_step, length)


def _needs_device_data(ds: Any, what: str) -> None:
    if not ds.on_device:
        raise ValueError(
            f"{what} need a device-resident dataset (config.data.on_device true, or auto within "
            f"the memory budget); {ds.name} is streamed"
        )


class PopulationPrograms:
    """The population programs of `programs.Programs` (population.py trains with them): the
    train step and the eval over stacked members. Built through the class's `_once`, cached with
    the point's other programs."""

    def abstract_population(self, members: int) -> TrainState:
        """The state of `members` stacked members (a leading member axis), replicated."""
        replicated = sharding.replicated(self.mesh)
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct((members, *s.shape), s.dtype, sharding=replicated),
            self._lowered_init().out_info,
        )

    def population_step(
        self, members: int, length: int = 1, lowering: str | None = None
    ) -> Callable:
        """The compiled step of a population: `(state, active, images, labels[, n]) -> (state,
        metrics)`, the train step over the leading member axis of `state`; a member whose
        `active` flag is False keeps its state (frozen). Metrics have a member axis (after a
        leading step axis when `length` > 1: a block of `length` steps, one scan, that applies
        its first `n`, as `train_block`). `lowering`: "vmap" or "unroll" (`over_members`);
        None: `population_lowering`'s auto."""
        _needs_device_data(self.ds, "populations")
        lowering = lowering or population_lowering(None)
        replicated = sharding.replicated(self.mesh)

        def build():
            active = jax.ShapeDtypeStruct((members,), jnp.bool_, sharding=replicated)
            count = [jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)]
            return self._compile_block(
                population_body(self.step_fn(), lowering, length),
                self.abstract_population(members),
                active,
                *self._example_batch(),
                *(count if length > 1 else []),
            )

        compiled = self._once(f"population_step/{members}/{length}/{lowering}", build)
        return compiled if length == 1 else self._counted(compiled, length)

    def population_eval(
        self, members: int, lowering: str | None = None
    ) -> Callable[[TrainState], list[dict]]:
        """Exact eval metrics of every member of a stacked state (the eval scan over members,
        `lowering` as in `population_step`)."""
        lowering = lowering or population_lowering(None)

        def build():
            runner = self.eval_runner
            scan = over_members(runner._scan, lowering)
            lowered = jax.jit(scan).lower(self.abstract_population(members), *runner.arrays)
            compiled = lowered.compile(xla_options.step_options())

            def evaluate(state: TrainState) -> list[dict]:
                totals = jax.device_get(compiled(state, *runner.arrays))
                return [
                    eval_metrics(jax.tree.map(lambda a, i=i: a[i], totals)) for i in range(members)
                ]

            return evaluate

        return self._once(f"population_eval/{members}/{lowering}", build)
