"""The persistent compilation cache and GPU compile options (sqzexplore.train.xla_options).

What is checked without a GPU: the jax.config values each platform's policy sets (read back
from jax.config), the compile options in the programs' cache key, bad option values as one-line
errors naming the field, and, in fresh processes, that a second process finds the trainer's
programs in the persistent cache and compiles nothing new (counted with JAX's monitoring events,
never timed). The GPU policy is applied on the CPU backend here: the JAX options it sets are the
same; what XLA:GPU does with the autotune cache needs a GPU (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from sqzexplore import sharding
from sqzexplore.cli import main
from sqzexplore.config import ConfigError, base_config, model_config, validate_config
from sqzexplore.train import programs, xla_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "data", "tiny_digits.py")
CACHE_OPTIONS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
    "jax_persistent_cache_enable_xla_caches",
    "jax_compilation_cache_max_size",
)


@pytest.fixture
def restore_jax_config():
    """configure() sets process-wide options: put the test session's back afterwards."""
    saved = {name: jax.config.values[name] for name in CACHE_OPTIONS}
    gpu_options = dict(xla_options._gpu_options)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    xla_options._gpu_options = gpu_options


def small_config(cache_dir: str = "", **top):
    c = base_config()
    model = dict(stem_filters=8, base_e=8, incr_e=8, num_fire=3, pool_after=("fire3",))
    c.model = model_config("digits", squeeze_ratio=0.25, **model)
    c.batch_size, c.eval_batch_size, c.num_steps = 64, 128, 3
    c.progress = False
    c.compilation_cache_dir = cache_dir
    for key, value in top.items():
        c[key] = value
    return c


def test_gpu_policy_caches_every_program_with_the_autotune_cache(tmp_path, restore_jax_config):
    cache = tmp_path / "xla"
    line = xla_options.configure(small_config(str(cache), xla_gpu_autotune_level=2), "gpu")
    values = jax.config.values
    assert values["jax_compilation_cache_dir"] == str(cache)
    assert values["jax_persistent_cache_min_compile_time_secs"] == 0.0
    assert values["jax_persistent_cache_min_entry_size_bytes"] == -1
    assert values["jax_persistent_cache_enable_xla_caches"] == xla_options.AUTOTUNE_CACHE
    assert (cache / xla_options.AUTOTUNE_CACHE).is_dir()
    assert xla_options._gpu_options == {"xla_gpu_autotune_level": 2}
    assert "every program" in line and "autotune cache on" in line and "level 2" in line
    # XLA's default level: no option at all (the compile options stay XLA's).
    line = xla_options.configure(small_config(str(cache)), "gpu")
    assert xla_options._gpu_options == {} and "XLA default (4)" in line


def test_cpu_policy_is_the_one_before_this_module(tmp_path, restore_jax_config):
    before = jax.config.values["jax_persistent_cache_enable_xla_caches"]
    line = xla_options.configure(small_config(str(tmp_path), xla_gpu_autotune_level=0), "cpu")
    values = jax.config.values
    assert values["jax_compilation_cache_dir"] == str(tmp_path)
    assert values["jax_persistent_cache_min_compile_time_secs"] == 0.5
    assert values["jax_persistent_cache_enable_xla_caches"] == before  # untouched
    assert xla_options._gpu_options == {}  # an autotune level means nothing on CPU ...
    assert xla_options.step_options() == xla_options.LEVEL_1  # ... and changes no option
    assert "unused on cpu" in line


def test_an_empty_cache_dir_leaves_jax_alone(restore_jax_config):
    before = {name: jax.config.values[name] for name in CACHE_OPTIONS}
    line = xla_options.configure(small_config(""), "gpu")
    assert {name: jax.config.values[name] for name in CACHE_OPTIONS} == before
    assert "JAX's setting" in line


def test_gpu_options_are_options_xla_knows():
    # XLA's DebugOptions are shared by its backends: a misspelt name fails on the CPU as well.
    x = jax.numpy.ones(3)
    for level in (None, 0, 5):
        options = xla_options.gpu_compile_options(level) or None
        assert float(jax.jit(lambda v: v * 2).lower(x).compile(options)(x)[0]) == 2.0
    with pytest.raises(Exception, match="No such compile option"):
        jax.jit(lambda v: v * 3).lower(x).compile({"xla_gpu_autotune_levelz": 0})


def test_program_key_holds_the_compile_options(monkeypatch):
    config, mesh = small_config(), sharding.make_mesh()
    key = programs.program_key(config, mesh)
    monkeypatch.setattr(xla_options, "step_options", lambda: {"xla_gpu_autotune_level": 0})
    assert programs.program_key(config, mesh) != key


@pytest.mark.parametrize("level", [6, -1, True, "2", 2.5])
def test_bad_autotune_level_is_one_line_naming_field_and_range(level):
    config = small_config()
    validate_config(config)  # None (XLA's default) is fine, and so is 0..5:
    config.xla_gpu_autotune_level = 5
    validate_config(config)
    with config.ignore_type():
        config.xla_gpu_autotune_level = level
    with pytest.raises(ConfigError) as e:
        validate_config(config)
    message = str(e.value)
    assert "config.xla_gpu_autotune_level" in message and "0..5" in message, message
    assert "\n" not in message


def test_bad_cache_dir_type_is_a_config_error():
    config = small_config()
    with config.ignore_type():
        config.compilation_cache_dir = None
    with pytest.raises(ConfigError, match=r"config\.compilation_cache_dir must be"):
        validate_config(config)


def test_cli_refuses_a_bad_level_before_writing_anything(tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["train", f"--config={TINY}", f"--workdir={workdir}"]
    status = main([*argv, "--config.xla_gpu_autotune_level=9"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert "config.xla_gpu_autotune_level" in err and "0..5" in err and "got 9" in err
    assert len(err.splitlines()) == 1
    assert not workdir.exists()


# A fresh process that builds the trainer's three programs of `small_config` (the test module
# is imported for it) with the persistent cache of one platform's policy, and prints the cache
# events of each build.
CHILD = """
import json, sys
import jax
from sqzexplore import sharding
from sqzexplore.config import validate_config
from sqzexplore.train import programs, xla_options
sys.path.insert(0, {tests!r})
from test_xla_options import small_config

events = {{"/jax/compilation_cache/compile_requests_use_cache": "requests",
          "/jax/compilation_cache/cache_hits": "hits",
          "/jax/compilation_cache/cache_misses": "writes"}}
counts = {{}}
part = ["setup"]
def listener(event, **kwargs):
    if event in events:
        key = part[0] + "/" + events[event]
        counts[key] = counts.get(key, 0) + 1
jax.monitoring.register_event_listener(listener)
config = small_config({cache!r})
xla_options.configure(config, {policy!r})
progs = programs.for_run(config, validate_config(config), sharding.make_mesh())
for name, build in [("init", progs._compiled_init), ("step", progs.train_step),
                    ("eval", lambda: progs._compiled_eval(progs.abstract_state()))]:
    part[0] = name
    build()
print("COUNTS" + json.dumps(counts))
"""


def _child(cache: str, policy: str) -> dict:
    code = CHILD.format(tests=os.path.join(REPO, "tests"), cache=cache, policy=policy)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("COUNTS")][-1]
    return json.loads(line[len("COUNTS") :])


@pytest.mark.parametrize("policy", ["gpu", pytest.param("cpu", marks=pytest.mark.slow)])
def test_a_second_process_compiles_nothing_new(tmp_path, policy):
    cache = str(tmp_path / "xla")
    first = _child(cache, policy)
    # GPU policy: every program is written. CPU policy: those that took >= 0.5 s to compile, a
    # set that depends on the machine's load (the tiny eval may compile faster), but the step
    # always takes longer.
    cached = [n for n in ("init", "step", "eval") if first.get(f"{n}/writes") == 1]
    assert cached == ["init", "step", "eval"] if policy == "gpu" else "step" in cached, first
    entries = sorted(os.listdir(cache))
    second = _child(cache, policy)
    for name in cached:  # ... and read back, not compiled, by the next process
        assert second.get(f"{name}/hits") == 1 and not second.get(f"{name}/writes"), second
    if policy == "gpu":  # no floor: every request of the second process is a hit
        assert not any(k.endswith("/writes") for k in second), second  # nothing new anywhere
        requests = sum(v for k, v in second.items() if k.endswith("/requests"))
        hits = sum(v for k, v in second.items() if k.endswith("/hits"))
        assert requests == hits, second
        assert sorted(os.listdir(cache)) == entries


# The compile-ahead hook of the default trainer, as a sweep worker calls it (in a thread, before
# its run configures anything), as the first compile of a fresh process: every compile must see
# the run's cache directory, from the first on (JAX sets its cache up at the first compile).
AHEAD_CHILD = """
import json, sys, threading
import jax
from jax._src import compiler
sys.path.insert(0, {tests!r})
from test_xla_options import small_config
from sqzexplore.sweep.workers import DEFAULT_RUNNER, load_runner, prepare_hook
from sqzexplore.train import xla_options

seen = []
original = compiler.compile_or_get_cached
def recording(*args, **kwargs):
    seen.append(jax.config.values["jax_compilation_cache_dir"])
    return original(*args, **kwargs)
compiler.compile_or_get_cached = recording
assert jax.config.values["jax_compilation_cache_dir"] is None
hook = prepare_hook(load_runner(DEFAULT_RUNNER))
ahead = threading.Thread(target=hook, args=(small_config({cache!r}),))
ahead.start()
ahead.join()
print("SEEN" + json.dumps([seen, xla_options.active_cache_dir()]))
"""


def test_compile_ahead_configures_the_cache_before_its_first_compile(tmp_path):
    cache = str(tmp_path / "xla")
    code = AHEAD_CHILD.format(tests=os.path.join(REPO, "tests"), cache=cache)
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO,
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("SEEN")][-1]
    seen, active = json.loads(line[len("SEEN") :])
    assert len(seen) >= 3 and set(seen) == {cache}, seen  # init, step, eval: all configured
    assert active == cache
    assert f"persistent compilation cache {cache}" in proc.stdout  # the settings line, once
    assert proc.stdout.count("persistent compilation cache") == 1


# Two processes that share one cache directory compile the same programs at the same time (the
# GPU policy: every program cached, so tiny ones are); a third reads them all back.
SHARED_CHILD = """
import json, sys, time
import jax, jax.numpy as jnp
sys.path.insert(0, {tests!r})
from test_xla_options import small_config
from sqzexplore.train import xla_options

events = {{"/jax/compilation_cache/cache_hits": "hits",
          "/jax/compilation_cache/cache_misses": "writes"}}
counts = {{"hits": 0, "writes": 0}}
def listener(event, **kwargs):
    if event in events:
        counts[events[event]] += 1
jax.monitoring.register_event_listener(listener)
xla_options.configure(small_config({cache!r}), "gpu")
while time.time() < {start}:  # both processes compile at once
    time.sleep(0.01)
x = jnp.arange(64.0).reshape(8, 8)
total = 0.0
for k in range(1, 7):
    total += float(jax.jit(lambda v, k=k: jnp.tanh(v @ v.T * k).sum())(x))
print("SHARED" + json.dumps({{**counts, "total": total}}))
"""


def _shared_child(cache: str, start: float) -> subprocess.Popen:
    code = SHARED_CHILD.format(tests=os.path.join(REPO, "tests"), cache=cache, start=start)
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO,
    )  # fmt: skip


def _shared_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "persistent compilation cache entry" not in err, err[-3000:]  # JAX's read/write errors
    return json.loads([x for x in out.splitlines() if x.startswith("SHARED")][-1][len("SHARED") :])


def test_two_processes_share_one_cache_directory(tmp_path):
    import time

    cache = str(tmp_path / "xla")
    start = time.time() + 8  # after both have imported jax
    first, second = _shared_child(cache, start), _shared_child(cache, start)
    a, b = _shared_result(first), _shared_result(second)
    assert a["total"] == b["total"]
    # Each process compiles the same programs (the six functions and the eager helpers), each
    # read from the cache or written to it; whichever wrote first, the entries are one set.
    programs = a["writes"] + a["hits"]
    assert programs >= 6 and b["writes"] + b["hits"] == programs, (a, b)
    entries = [n for n in os.listdir(cache) if n.endswith("-cache")]
    assert len(entries) == programs, sorted(os.listdir(cache))
    assert os.path.exists(os.path.join(cache, ".lockfile"))  # reads and writes were locked
    third = _shared_result(_shared_child(cache, 0))
    assert third == {"hits": programs, "writes": 0, "total": a["total"]}


def test_autotune_temp_files_on_the_cache_filesystem(tmp_path, monkeypatch):
    """XLA renames its autotune results from its temporary directory into the cache: where that
    is another filesystem, TEST_TMPDIR (first in XLA's order) moves into the cache."""
    cache, elsewhere = tmp_path / "xla", tmp_path / "tmp"
    cache.mkdir()
    elsewhere.mkdir()
    env = {"TMPDIR": str(elsewhere)}
    assert xla_options.xla_tempdir(env) == str(elsewhere)
    assert xla_options.autotune_tmpdir(str(cache), env) == ""  # one filesystem: unchanged
    assert env == {"TMPDIR": str(elsewhere)}
    devices = {str(elsewhere): 1, str(cache): 2}
    monkeypatch.setattr(xla_options, "_device_of", lambda path: devices.get(str(path), 2))
    note = xla_options.autotune_tmpdir(str(cache), env)
    assert env["TEST_TMPDIR"] == str(cache / xla_options.AUTOTUNE_TMP) and note
    assert (cache / xla_options.AUTOTUNE_TMP).is_dir()
    assert xla_options.xla_tempdir(env) == env["TEST_TMPDIR"]  # what XLA now takes


def test_configure_is_idempotent_and_says_when_jax_keeps_another_cache(
    tmp_path, restore_jax_config, monkeypatch, capsys
):
    config = small_config(str(tmp_path))
    first = xla_options.configure(config, "gpu")
    assert xla_options.configure(config, "gpu") == first
    assert capsys.readouterr().out.count(first) <= 1  # printed at most once per process
    monkeypatch.setattr(xla_options, "active_cache_dir", lambda: "/elsewhere")
    line = xla_options.configure(config, "gpu")
    assert "stays /elsewhere" in line and "applies to new processes" in line


def test_gpu_precision_is_stated(restore_jax_config):
    """The settings line says what float32 matmuls and convolutions run as on a GPU."""
    saved = jax.config.values["jax_default_matmul_precision"]
    try:
        jax.config.update("jax_default_matmul_precision", None)
        line = xla_options.configure(small_config(""), "gpu")
        assert "matmul/conv precision TF32" in line and "=default" in line
        assert xla_options.member_tolerance("gpu") == 1e-2
        jax.config.update("jax_default_matmul_precision", "highest")
        assert "precision float32" in xla_options.precision_line("gpu")
        assert xla_options.member_tolerance("gpu") == 1e-4
        assert "bfloat16" in xla_options.precision_line("gpu", "bfloat16")
    finally:
        jax.config.update("jax_default_matmul_precision", saved)
    assert xla_options.member_tolerance("cpu") == 1e-5  # what tests/test_population.py holds
    assert xla_options.member_tolerance("gpu", "bfloat16") == 5e-2
    assert "precision" not in xla_options.configure(small_config(""), "cpu")


def test_a_cache_written_without_a_size_limit_still_takes_new_entries(tmp_path):
    """Entries from before the size limit (no access-time file) would make every later write
    fail when JAX's LRU cache makes room: configure gives them one first."""
    cache = tmp_path / "xla"
    cache.mkdir()
    (cache / "jit_old-0123-cache").write_bytes(b"old entry")
    assert xla_options.backfill_access_times(str(cache)) == 1
    assert (cache / "jit_old-0123-atime").stat().st_size == 8
    assert xla_options.backfill_access_times(str(cache)) == 0  # idempotent
    (cache / "jit_older-4567-cache").write_bytes(b"older entry")
    third = _shared_result(_shared_child(str(cache), 0))  # configures, then writes its programs
    assert third["writes"] >= 6 and third["hits"] == 0
    entries = {n for n in os.listdir(cache) if n.endswith("-cache")}
    assert len(entries) == 2 + third["writes"], sorted(os.listdir(cache))
