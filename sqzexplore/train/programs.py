"""A run's compiled programs (init, train step, eval), kept in memory for the point's other seeds.

A sweep worker trains the seeds of a design point one after another in one process. Their
programs differ only in the seed, which the initialiser here takes as an argument (the PRNG key
data, so every seed `jax.random.key` accepts gives the same values as before), so the second
seed compiles nothing. `for_run` hands out the programs of a config: from a process-level cache
keyed by the config's semantic part minus the seed plus the mesh, or newly made and cached (the
`MAX_PROGRAMS` most recently used are kept). Runs with `reparam` or `init_params` (compression
retraining, fine-tuning) bake those into their programs, so they get fresh, uncached ones.
Device-resident datasets are cached the same way, keyed by `config.data` and the spec fields the
data layer reads, so the points of a sweep share one copy.

Everything is compiled ahead of time from abstract values (shapes, dtypes, shardings), so
`prepare()` can build a run's programs before its state exists, e.g. in a background thread
while the previous run trains (`sqz sweep worker --compile-ahead`). `compile_seconds()` counts
every second a thread spends tracing, lowering and compiling (or waiting for a background thread
that does), the initialiser included.

The programs' bodies (the masked block of steps, the population step over stacked members) and
the dispatch plan (steps per dispatch, cadence) are dispatch.py's; their names are re-exported
here. Compile options: `xla_options` (the initialiser at backend optimisation level 1 everywhere,
bit-identical and less than half the compile time: digits 4.1 s vs 10.1 s of CPU; the step and
eval at level 1 on CPU).
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, SingleDeviceSharding

from sqzexplore import optim, rundir, sharding
from sqzexplore.durations import Durations
from sqzexplore.models.spec import SqueezeNetSpec
from sqzexplore.train import xla_options
from sqzexplore.train.dispatch import (  # noqa: F401 - re-exported: callers use programs.X
    PopulationPrograms,
    _needs_device_data,
    cadence,
    masked_block,
    next_boundary,
    over_members,
    population_body,
    population_lowering,
    steps_per_dispatch,
)
from sqzexplore.train.evaluate import EvalRunner
from sqzexplore.train.state import TrainState, init_state, model_graphdef
from sqzexplore.train.step import make_train_step

MAX_PROGRAMS = 4  # design points whose programs one process keeps
MAX_DATASETS = 2

# Counters for tests and benchmarks: programs built, and reused from the cache.
stats: collections.Counter = collections.Counter()

_lock = threading.Lock()
_spent = threading.local()  # compile seconds (and nesting depth) per thread
_programs: collections.OrderedDict[str, Programs] = collections.OrderedDict()
_datasets: collections.OrderedDict[str, Any] = collections.OrderedDict()
# A dataset's train split on the devices, per mesh; freed with the dataset.
_placed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _mesh_key(mesh: Mesh) -> list:
    return [list(mesh.axis_names), [int(d.id) for d in mesh.devices.flat], jax.process_count()]


def program_key(config: ml_collections.ConfigDict, mesh: Mesh) -> str:
    """What the programs of a run depend on: its semantic config minus the seed, the mesh, and
    the compile options in force (xla_options.configure)."""
    semantic = rundir.semantic(json.loads(config.to_json_best_effort()))
    semantic.pop("seed", None)
    key = {"config": semantic, "mesh": _mesh_key(mesh), "xla": xla_options.step_options()}
    return json.dumps(key, sort_keys=True)


def clear() -> None:
    """Forget every cached program and dataset (tests; or to free memory)."""
    with _lock:
        _programs.clear()
        _datasets.clear()


def for_run(
    config: ml_collections.ConfigDict,
    spec: SqueezeNetSpec,
    mesh: Mesh,
    *,
    reparam: Any = None,
    init_params: dict | None = None,
) -> Programs:
    """The programs of a run of `config`: cached ones when the run bakes nothing in."""
    if reparam is not None or init_params is not None:
        stats["built"] += 1
        return Programs(config, spec, mesh, reparam=reparam, init_params=init_params)
    key = program_key(config, mesh)
    with _lock:
        found = _programs.get(key)
        if found is not None:
            _programs.move_to_end(key)
            stats["reused"] += 1
            return found
    programs = Programs(config, spec, mesh)
    with _lock:
        # Another thread (compile-ahead) may have made the same ones meanwhile: keep one.
        programs = _programs.setdefault(key, programs)
        _programs.move_to_end(key)
        while len(_programs) > MAX_PROGRAMS:
            _programs.popitem(last=False)
    stats["built"] += 1
    return programs


def prepare(config: ml_collections.ConfigDict, *, population: int = 1) -> Programs:
    """Compile the programs of a future run of `config` now (compile-ahead); cached: the init,
    the eval and the block of steps the run dispatches (`steps_per_dispatch`: every block of the
    run, a shorter one included, goes through that one program). With
    `population` > 1, those of a population of that many members (population.py)."""
    from sqzexplore.config import validate_config

    spec = validate_config(config)
    programs = for_run(config, spec, sharding.make_mesh())
    k, _ = steps_per_dispatch(config, programs.steps, programs.ds.on_device)
    with programs._lock:
        if population > 1 and programs.ds.on_device:
            programs._compiled_init()
            lowering = population_lowering(config)
            programs.population_step(population, k, lowering)
            programs.population_eval(population, lowering)
        else:
            programs._compiled_init()
            programs.train_block(k)
            programs._compiled_eval(programs.abstract_state())
    return programs


def _dataset(config: ml_collections.ConfigDict, spec: SqueezeNetSpec) -> Any:
    from sqzexplore.data import load_dataset  # the data layer imports TF lazily itself

    # load_dataset reads config.data and these spec fields (its docstring).
    shape = [spec.image_size, spec.in_channels, spec.num_classes]
    key = json.dumps(
        [json.loads(config.data.to_json_best_effort()), shape, jax.process_index()],
        sort_keys=True,
    )
    with _lock:
        if key in _datasets:
            _datasets.move_to_end(key)
            return _datasets[key]
    ds = load_dataset(
        config.data, spec, process_index=jax.process_index(), process_count=jax.process_count()
    )
    if ds.on_device:  # a streamed one is cheap to open, and each point's programs hold it
        with _lock:
            _datasets[key] = ds
            while len(_datasets) > MAX_DATASETS:
                _datasets.popitem(last=False)
    return ds


def compile_seconds() -> float:
    """Seconds this thread has spent building programs, waiting for another thread included
    (a run's compile time is the change over the run)."""
    return getattr(_spent, "seconds", 0.0)


class Programs(PopulationPrograms):
    """The dataset, optimiser, and compiled init / train step / eval of one design point.

    Each program is built on first use (or by `prepare()`), once, under a lock, so a run that
    needs a program another thread is compiling waits for it; the time counts in
    `compile_seconds()` of the thread that built or waited.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        spec: SqueezeNetSpec,
        mesh: Mesh,
        *,
        reparam: Any = None,
        init_params: dict | None = None,
    ):
        self.spec, self.mesh = spec, mesh
        self.ds = _dataset(config, spec)
        self.steps = Durations.from_config(config, self.ds.train_size)
        self.batch_size = int(config.batch_size)
        self.tx, self.schedule = optim.make_optimizer(
            config.optim, self.steps.total_steps, self.steps.warmup_steps
        )
        self._reparam, self._init_params = reparam, init_params
        self._label_smoothing = config.optim.label_smoothing
        self._lock = threading.RLock()
        self._eval_batch_size = config.eval_batch_size
        self._built: dict[str, Any] = {}
        self._counts: dict[int, jax.Array] = {}  # a block's step counts, on the devices
        # Runs that trained with these programs (a program built before the first is one
        # compiled ahead, while another point's run trained).
        self.runs = 0

    def built(self, name: str) -> bool:
        """Whether program `name` ("init", "train_step", "eval") is built already."""
        return name in self._built

    def built_names(self) -> list[str]:
        """The programs built so far, e.g. ["init", "train_block/8", ...] (tests count compiles
        with it)."""
        return sorted(self._built)

    def _once(self, name: str, build: Callable[[], Any]) -> Any:
        """`build()`'s value, built by the first caller; timed into `compile_seconds()`."""
        if name in self._built:
            return self._built[name]
        depth = getattr(_spent, "depth", 0)
        t0 = time.perf_counter()
        _spent.depth = depth + 1
        try:
            with self._lock:
                if name not in self._built:
                    self._built[name] = build()
                return self._built[name]
        finally:
            _spent.depth = depth
            if depth == 0:  # nested builds are inside the outer one's time
                _spent.seconds = compile_seconds() + time.perf_counter() - t0

    # ---------------------------------------------------------------------------- programs
    @property
    def graphdef(self):
        return self._once("graphdef", lambda: model_graphdef(self.spec))

    @property
    def _device(self):
        # Initialise on one local device and replicate: compiling the initialisers' RNG for a
        # multi-device SPMD program is several times slower, and each process computes the same
        # values from the same seed anyway.
        return jax.local_devices()[0]

    def _init_fn(self, key_data: jax.Array) -> TrainState:
        key = jax.random.wrap_key_data(key_data)
        return init_state(
            self.spec, self.tx, key, init_params=self._init_params, reparam=self._reparam
        )

    def _lowered_init(self):
        def lower():
            one_device = SingleDeviceSharding(self._device)
            arg = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=one_device)
            return jax.jit(self._init_fn).lower(arg)

        return self._once("lowered_init", lower)

    def abstract_state(self) -> TrainState:
        """The state's shapes and dtypes (a restore target), replicated over the mesh."""
        replicated = sharding.replicated(self.mesh)
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
            self._lowered_init().out_info,
        )

    def _compiled_init(self):
        return self._once("init", lambda: self._lowered_init().compile(xla_options.INIT))

    def init(self, seed: int) -> TrainState:
        """A fresh state from `seed` (host values; what `init_state(spec, tx, seed)` gives)."""
        compiled = self._compiled_init()
        key_data = np.asarray(jax.random.key_data(jax.random.key(seed)))
        return jax.device_get(compiled(jax.device_put(key_data, self._device)))

    def train_arrays(self) -> tuple[jax.Array, jax.Array]:
        """A device-resident train split, placed on the devices once per dataset and mesh (the
        points of a sweep share one copy)."""
        placed = _placed.setdefault(self.ds, {})
        key = json.dumps(_mesh_key(self.mesh))
        if key not in placed:
            placed[key] = tuple(
                sharding.put_replicated(a, self.mesh) for a in self.ds.train_arrays()
            )
        return placed[key]

    def _example_batch(self) -> tuple[Any, Any]:
        if self.ds.on_device:
            return self.train_arrays()
        batch = sharding.batch_sharded(self.mesh)
        images = jax.ShapeDtypeStruct(
            (self.batch_size, *self.ds.image_shape), self.ds.batch_dtype, sharding=batch
        )
        return images, jax.ShapeDtypeStruct((self.batch_size,), jnp.int32, sharding=batch)

    def step_fn(self) -> Callable:
        """The pure train step of this point (step.py), with the device-resident batch function
        where the data lives on the devices: what `train_step` and the population programs
        compile."""

        def build():
            batch_fn = self.ds.device_stream_batch  # streamed uint8: normalised in the step
            if self.ds.on_device:
                ds, batch_size = self.ds, self.batch_size
                batch_fn = lambda images, labels, step, key: ds.device_train_batch(
                    images, labels, step, key, batch_size
                )
            return make_train_step(
                self.graphdef,
                self.tx,
                self.schedule,
                num_classes=self.spec.num_classes,
                label_smoothing=self._label_smoothing,
                reparam=self._reparam,
                batch_fn=batch_fn,
                batch_sharding=sharding.batch_sharded(self.mesh),
            )

        return self._once("step_fn", build)

    def train_step(self) -> Callable:
        """The compiled step `(state, images, labels) -> (state, metrics)`; it never retraces."""

        def build():
            replicated = sharding.replicated(self.mesh)
            jitted = jax.jit(
                self.step_fn(), donate_argnums=0, out_shardings=(replicated, replicated)
            )
            lowered = jitted.lower(self.abstract_state(), *self._example_batch())
            return lowered.compile(xla_options.step_options())

        return self._once("train_step", build)

    def train_block(self, length: int) -> Callable:
        """The compiled block of `length` steps `(state, images, labels, n=length) -> (state,
        metrics)`: one `lax.scan` over the train step (device-resident data only) that applies
        its first `n` steps (dispatch.masked_block: a shorter block runs through this same
        program), metrics with a leading step axis of `length`; `length` 1 is `train_step()`."""
        if length == 1:
            return self.train_step()
        _needs_device_data(self.ds, "several steps per dispatch")

        def build():
            return self._compile_block(
                masked_block(self.step_fn(), length),
                self.abstract_state(),
                *self._example_batch(),
                jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(self.mesh)),
            )

        return self._counted(self._once(f"train_block/{length}", build), length)

    def _compile_block(self, fn: Callable, *abstract: Any) -> Any:
        replicated = sharding.replicated(self.mesh)
        jitted = jax.jit(fn, donate_argnums=0, out_shardings=(replicated, replicated))
        return jitted.lower(*abstract).compile(xla_options.step_options())

    def _counted(self, compiled: Any, length: int) -> Callable:
        """`compiled(*args, n)` with `n` (default `length`) as a replicated int32, placed once."""

        def run(*args, n: int = length):
            if n not in self._counts:
                self._counts[n] = sharding.put_replicated(np.asarray(n, np.int32), self.mesh)
            return compiled(*args, self._counts[n])

        return run

    @property
    def eval_runner(self) -> EvalRunner:
        """Exact evaluation over the eval split (compiled by `evaluate` or `prepare`)."""
        return self._once(
            "eval_runner",
            lambda: EvalRunner(
                self.ds,
                self._eval_batch_size,
                self.graphdef,
                self.spec.num_classes,
                self.mesh,
                reparam=self._reparam,
            ),
        )

    def _compiled_eval(self, state: Any) -> None:
        self._once("eval", lambda: self.eval_runner.compile(state) or True)

    def evaluate(self, state: TrainState) -> dict:
        """Exact metrics over the whole eval split (`EvalRunner`), compiling it on first use."""
        self._compiled_eval(state)
        return self.eval_runner(state)

    def compile_in_background(self, name: str, build: Callable[[], Any]) -> threading.Thread | None:
        """Start `build()` (compiling the evaluation program `name`) in a thread: it is first
        needed after some training. None where `name` is built already or the run spans
        processes (a compile there may end in a barrier that every process must reach from the
        main thread). A failure is left to the main thread, which builds again when it evaluates
        and reports the error there."""
        if self.built(name) or jax.process_count() > 1:
            return None

        def compile_eval():
            with contextlib.suppress(Exception):  # raised again where the main thread evaluates
                build()

        thread = threading.Thread(target=compile_eval, name="sqz-eval-compile")
        thread.start()
        return thread

    def compile_eval_in_background(self) -> threading.Thread | None:
        """The lone run's evaluation compiled in a thread (`compile_in_background`)."""
        return self.compile_in_background(
            "eval", lambda: self._compiled_eval(self.abstract_state())
        )

    def prepare(self) -> None:
        """Compile everything a run needs (init, step, eval) from abstract values."""
        with self._lock:
            self._compiled_init()
            self.train_step()
            self._compiled_eval(self.abstract_state())
