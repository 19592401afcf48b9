"""Train several trials of one program as ONE program: `train_population(configs, workdirs)`.

The driver (driver.py, the one loop for 1..N members, which lone runs use too) on the population
program (engines.Population).

A population is a list of configs that are identical up to `seed` (the seeds of a design point):
their programs have the same shapes, so their train states are stacked on a leading member axis
and trained by one program over it (programs.py `population_step`): one compile and one dispatch
per step for all members. How the program runs the members (`config.population_lowering`): the
train step vmapped over them on a GPU/TPU, where a small trial leaves the device mostly idle, so
N members cost little more than one (see `auto_population_size`); each member's own step
unrolled one after another on a CPU, where vmapped (grouped) convolutions run 2.5x slower.

Each member is the trial it would be alone:
- the same init bit for bit (each member is initialised from its own seed by the point's compiled
  initialiser, then the members are stacked), the same batches, augmentation and dropout keys at
  every step (the step draws them from the member's own `rng` and `step`);
- its own workdir with the files `train_and_evaluate` writes (config.json, spec.json,
  complexity.json, metrics.jsonl with the same records, checkpoints/, result.json last);
- vmapped, its numbers are not bit-identical to the lone trial's: vmap changes how XLA orders
  floating point sums (tests/test_population.py measures the drift); unrolled, each member runs
  the lone trial's step.

A member that goes non-finite is frozen (its state no longer changes: the step keeps the old
state where the member's `active` flag is False) and reported as the lone trial would be (a
`NonFiniteError` message, status "failed" in its entry of the returned list; the marker file
`nonfinite.json` in its workdir keeps it frozen when the population is resumed). A member that
`on_eval` stops is checkpointed, gets its result.json with status "pruned" and is frozen; the
others go on.

Resume: every member's checkpoints live in its own workdir (checkpoint.py). A rerun resumes the
unfinished members together from the newest step that all of them have committed (newer ones
that only some have, left by a kill between two members' saves, are deleted: they are recomputed
identically), so a SIGKILL or SIGTERM at any phase (events.py) ends in the uninterrupted result.
The program always has one slot per config, finished members included (their slots are frozen),
so a resumed population runs exactly the program of the first attempt.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from sqzexplore import rundir
from sqzexplore.config import flat_defaults, validate_config
from sqzexplore.train import driver, engines, events, padding, programs
from sqzexplore.train.driver import NONFINITE_FILE, OnEval
from sqzexplore.train.engines import PopulationError
from sqzexplore.train.preempt import PreemptionFlag

__all__ = [
    "NONFINITE_FILE",
    "PopulationError",
    "auto_population_size",
    "check_population",
    "initial_states",
    "train_population",
]

# Largest population that still gains over training the members one after another, per
# platform. CPU: 1 (off): nothing to gain: vmapped members measured 0.50x the img/s of one
# member, unrolled members 1.20x but 1.00x the trials/h of one after another once the larger
# compile is paid (`sqz bench population --members 1,3 --lowering unroll,vmap --steps 20`, digits,
# 1 device, 2-core EPYC VM). GPU: 8: one H200, digits step vmapped over 8 seeds ran 51.2k img/s
# against 22.3k img/s for one member (2.3x), compiled in 17.4 s against 14.3 s (issue 16's
# measurement, jax 0.11.2, CUDA 13); `sqz bench population` re-measures it.
AUTO_POPULATION = {"cpu": 1, "gpu": 8, "cuda": 8, "rocm": 8, "tpu": 8}


def auto_population_size(platform: str | None = None) -> tuple[int, str]:
    """(members, why) for `--population auto` on `platform` (default: JAX's backend)."""
    platform = platform or jax.default_backend()
    n = AUTO_POPULATION.get(platform, 1)
    if n <= 1:
        why = (
            f"off on {platform}: populations measured no faster there than training the "
            "members one after another (unrolled 1.00x the trials/h, vmapped 0.5x)"
        )
    else:
        why = (
            f"{n} on {platform}: the measured largest population that still gains (digits on "
            "one H200: 8 members 2.3x the img/s of one)"
        )
    return n, why


def check_population(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]):
    """Raise PopulationError unless `configs` are identical up to the seed and the channel widths
    (padding.WIDTH_FIELDS: such members are padded to one network), with one distinct workdir
    each."""
    if not configs:
        raise PopulationError("a population needs at least one config")
    if len(configs) != len(workdirs):
        raise PopulationError(
            f"a population needs one workdir per config: {len(configs)} configs, "
            f"{len(workdirs)} workdirs"
        )
    paths = [os.path.abspath(w) for w in workdirs]
    if len(set(paths)) != len(paths):
        raise PopulationError(f"the workdirs of a population must be distinct, got {paths}")

    def strip(config):
        return padding.width_free(rundir.semantic(json.loads(config.to_json_best_effort())))

    first = strip(configs[0])
    for i, config in enumerate(configs[1:], 1):
        diff = rundir.flat_diff(first, strip(config))
        if diff:
            raise PopulationError(
                "configs of a population must be identical up to the seed and the channel "
                f"widths; config {i} differs "
                f"from config 0 in {', '.join(diff[:3])}"
            )


def train_population(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str],
    *,
    on_eval: OnEval | None = None,
) -> list[dict]:
    """Train `configs` (identical up to the seed) as one program, member i in `workdirs[i]`.

    Returns one result per member, in order: what `train_and_evaluate` would return for it
    alone (status complete or pruned), {"status": "failed", "error": ...} for a member stopped
    by a non-finite loss, or {"status": "preempted", "step": N} for every unfinished member when
    a SIGTERM stopped the population (rerun to resume). `on_eval(member, step, metrics) -> stop`
    is called for each active member after each evaluation; True stops that member ('pruned').
    """
    t_start = time.perf_counter()
    check_population(configs, workdirs)
    for c in configs:
        validate_config(c)
    pairs = enumerate(zip(configs, workdirs, strict=True))
    members = [driver.Member(i, c, w) for i, (c, w) in pairs]
    for m in members:
        stored = rundir.read_result(m.workdir)
        if stored is not None:
            rundir.check_config(m.workdir, m.config_dict, flat_defaults())
            m.result = stored
        else:
            marker = rundir.read_json(os.path.join(m.workdir, NONFINITE_FILE))
            if isinstance(marker, dict) and "error" in marker:
                m.result = {"status": "failed", "error": marker["error"]}
    if all(not m.active for m in members):
        return [m.result for m in members]
    stop = PreemptionFlag()
    try:
        events.reached("startup", 0)
        mesh = driver.start(members[0].config)
        return driver.run(members, engines.Population(members, mesh), on_eval, stop, t_start)
    finally:
        stop.restore()


def initial_states(progs: programs.Programs, seeds: Sequence[int]) -> Any:
    """Fresh states of `seeds`, stacked on a leading member axis (host values): each member
    initialised alone from its seed by the point's compiled initialiser, bit for bit the init of
    its lone trial."""
    if not seeds:
        return None
    states = [progs.init(s) for s in seeds]
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)
