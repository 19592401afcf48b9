"""`sqz train` as a user meets it: --help, what it prints while it runs, the checks made once the
devices are known (platform, SLURM GPUs, memory), and a non-finite update never applied."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sqzexplore.cli import main
from sqzexplore.config import ConfigError, base_config, load_config_file, model_config
from sqzexplore.models.spec import preset
from sqzexplore.optim import FlatOptimizer
from sqzexplore.train import preflight
from sqzexplore.train.state import init_state, model_graphdef
from sqzexplore.train.step import make_train_step
from sqzexplore.train.usage import KEY_HELP, flat_keys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "data", "tiny_digits.py")


# ------------------------------------------------------------------ --help
def test_help_lists_every_config_key_with_default_and_meaning(capsys):
    assert set(KEY_HELP) == set(flat_keys(base_config())), "KEY_HELP and base_config() differ"
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sqz train --config=EXPERIMENT.py[:ARG] --workdir=DIR")
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    for key, meaning in KEY_HELP.items():
        assert key in rows, key
        assert meaning in rows[key], key
    assert re.search(r"model\.squeeze_ratio\s+0\.125\s+squeeze filters", out)
    assert re.search(r"optim\.momentum\s+0\.9\s+SGD momentum, in \[0, 1\)", out)
    assert re.search(r"platform\s+'auto'\s+devices to train on", out)


def test_help_with_an_experiment_shows_its_values(capsys):
    assert main(["train", f"--config={TINY}:epochs=7", "-h"]) == 0
    out = capsys.readouterr().out
    assert f"values of {TINY}:epochs=7" in out
    assert re.search(r"num_epochs\s+7\.0\s", out)
    assert re.search(r"batch_size\s+64\s", out)
    # A broken experiment still gets the help (of the base config), with a note why.
    assert main(["train", "--config=/no/such.py", "--help"]) == 0
    captured = capsys.readouterr()
    assert "does not exist" in captured.err and "usage: sqz train" in captured.out


# ------------------------------------------------------------------ the checks after start-up
def fake_devices(platform: str, n: int = 1, kind: str = "fake", memory: int | None = None):
    stats = {"bytes_limit": memory} if memory else None
    return [
        SimpleNamespace(
            platform=platform, device_kind=kind, process_index=0, memory_stats=lambda: stats
        )
        for _ in range(n)
    ]


def test_device_line():
    assert preflight.describe_devices(fake_devices("gpu", 2, "NVIDIA H200")) == (
        "gpu, 2 x NVIDIA H200 (1 process)"
    )
    assert preflight.describe_devices(jax.devices()) == "cpu, 4 x cpu (1 process)"


@pytest.mark.parametrize(
    "environ, granted",
    [
        ({}, None),
        ({"SLURM_GPUS_ON_NODE": "0"}, None),
        ({"SLURM_GPUS_ON_NODE": "4"}, "SLURM_GPUS_ON_NODE=4"),
        ({"SLURM_JOB_GPUS": "0,1"}, "SLURM_JOB_GPUS=0,1"),
        ({"CUDA_VISIBLE_DEVICES": ""}, None),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
        ({"CUDA_VISIBLE_DEVICES": "2"}, "CUDA_VISIBLE_DEVICES=2"),
    ],
)
def test_gpu_grant(environ, granted):
    assert preflight.gpu_grant(environ) == granted


def test_platform_checks():
    cpu, gpu = fake_devices("cpu", 4), fake_devices("gpu", 1)
    preflight.check_platform("auto", cpu, {})
    preflight.check_platform("auto", gpu, {"SLURM_GPUS_ON_NODE": "1"})
    preflight.check_platform("gpu", gpu, {})
    preflight.check_platform("cpu", cpu, {"SLURM_GPUS_ON_NODE": "1"})  # the CPU on purpose
    preflight.check_platform("auto", cpu, {"SLURM_GPUS_ON_NODE": "1", "JAX_PLATFORMS": "cpu"})
    with pytest.raises(ConfigError, match=r'SLURM_GPUS_ON_NODE=1.*pip install -e "\.\[cuda12\]"'):
        preflight.check_platform("auto", cpu, {"SLURM_GPUS_ON_NODE": "1"})
    with pytest.raises(ConfigError, match=r'config.platform=tpu.*pip install -e "\.\[tpu\]"'):
        preflight.check_platform("tpu", cpu, {})
    with pytest.raises(ConfigError, match="config.platform=cpu but JAX sees only gpu.*JAX_PLAT"):
        preflight.check_platform("cpu", gpu, {})


def memory_config(image_size: int, batch: int = 64, data: str = "synthetic"):
    c = base_config()
    c.model = model_config("digits", image_size=image_size)
    c.data.name = data
    c.batch_size = batch
    return c


def test_memory_bound_names_the_limit(monkeypatch):
    monkeypatch.setattr(preflight, "host_memory_bytes", lambda: 64 * 2**30)
    gpu = fake_devices("gpu", 1, "H200", memory=140 * 2**30)
    c = memory_config(224, batch=256)
    spec = preset("digits", image_size=224)
    preflight.check_memory(c, spec, gpu)  # ~25 GiB of activations: fits a 140 GiB device
    need = preflight.step_memory_bytes(c, spec, 1)
    # A lower bound: at least every layer's output for the batch, in float32.
    from sqzexplore.models.complexity import complexity

    assert need["activations"] >= 4 * 256 * complexity(spec).activations
    with pytest.raises(ConfigError) as e:
        preflight.check_memory(memory_config(1024, 256), preset("digits", image_size=1024), gpu)
    assert "config.model.image_size=1024" in str(e.value)
    assert "more than the 140.00 GiB of H200 memory per device" in str(e.value)
    # CPU devices share the host's RAM: four of them hold four per-device shares at once.
    cpu4 = fake_devices("cpu", 4)
    spec = preset("digits", image_size=400)
    one = preflight.step_memory_bytes(memory_config(400, 64), spec, 4)
    per_device = one["activations"] + one["dataset"]
    monkeypatch.setattr(preflight, "host_memory_bytes", lambda: int(per_device * 4.5))
    preflight.check_memory(memory_config(400, 64), spec, cpu4)
    monkeypatch.setattr(preflight, "host_memory_bytes", lambda: int(per_device * 3.5))
    with pytest.raises(ConfigError, match="available host RAM"):
        preflight.check_memory(memory_config(400, 64), spec, cpu4)


# ------------------------------------------------------------------ a non-finite update
def test_a_non_finite_update_is_not_applied():
    """A finite loss and gradient with a NaN update (a NaN learning rate here) keeps the old
    parameters and optimiser state and records the step."""
    spec = preset("digits", stem_filters=8, base_e=8, incr_e=8, num_fire=2, pool_after=())
    graphdef = model_graphdef(spec)
    tx = FlatOptimizer(optax.sgd(float("nan"), momentum=0.9))
    state = jax.jit(lambda: init_state(spec, tx, 0))()
    step = jax.jit(make_train_step(graphdef, tx, optax.constant_schedule(0.1), num_classes=10))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16, 16, 1)), jnp.float32)
    y = jnp.arange(8) % 10
    new, metrics = step(state, x, y)
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert int(new.nonfinite_step) == 0
    assert int(new.step) == 1
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), new.params, state.params)
    assert all(jax.tree.leaves(same))
    same_opt = jax.tree.map(
        lambda a, b: bool(jnp.array_equal(a, b)), new.opt_state, state.opt_state
    )
    assert all(jax.tree.leaves(same_opt))


# ------------------------------------------------------------------ a real run's output
@pytest.mark.slow
def test_train_prints_devices_compile_and_a_final_line_in_percent(tmp_path, capsys):
    workdir = tmp_path / "run"
    config = load_config_file(TINY, "epochs=1")
    assert config.num_epochs == 1.0
    assert main(["train", f"--config={TINY}:epochs=1", f"--workdir={workdir}"]) == 0
    out = capsys.readouterr().out.splitlines()
    result = json.loads((workdir / "result.json").read_text())
    assert out[0] == "devices: cpu, 4 x cpu (1 process)"
    assert "compiling the train step ..." in out
    assert any(re.fullmatch(r"compiled in \d+\.\d s", line) for line in out)
    final = out[-1]
    top1 = f"{100 * result['final']['top1']:.2f}%"
    best = f"{100 * result['best']['top1']:.2f}%"
    assert final.startswith(f"done (complete): {result['steps']} steps, top-1 final {top1}")
    assert f"best {best} (step {result['best']['step']})" in final
    assert f"wall {result['wall_time_s']:.1f} s, compile {result['compile_time_s']:.1f} s" in final
    assert final.endswith(f"results in {workdir}/result.json")


def test_help_and_argument_errors_answer_before_jax_is_imported():
    code = (
        "import sys\n"
        "from sqzexplore.cli import main\n"
        "main(['train', '--help'])\n"
        "assert main(['train', '--config=/no/such.py', '--workdir=/tmp/x']) == 2\n"
        f"assert main(['train', '--config={TINY}', '--workdir=/tmp/x', '--config.nosuch=1']) == 2\n"
        "print(sorted(m for m in ('jax', 'flax', 'orbax', 'tensorflow') if m in sys.modules),"
        " file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "usage: sqz train" in done.stdout
    err = done.stderr.splitlines()
    assert err[0] == "error: config file /no/such.py does not exist"
    assert err[1] == "error: unknown config key nosuch; known keys: " + ", ".join(
        sorted(base_config().keys())
    )
    assert err[-1] == "[]", done.stderr


def test_progress_bar_shows_loss_and_eval_top1(capsys):
    from sqzexplore.progress import Progress

    bar = Progress(True, total=10, initial=0, is_main=True)
    bar.update(5, loss=0.5, img_s=100)
    bar.update(5, top1=0.9125)
    bar.close()
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "loss=0.5" in last and "eval top1=91.25%" in last and "img_s=100" in last
