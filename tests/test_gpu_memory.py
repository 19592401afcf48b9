"""GPU memory of local sweep workers that share a GPU, and preflight's population sizing, on the
CPU with fakes: no nvidia-smi on PATH, a GPU build of jax pretended where needed.

Without nvidia-smi and CUDA_VISIBLE_DEVICES, the GPUs are counted by jax in a child process; each
worker on a shared GPU gets its share of memory in the spelling of JAX's variable its jaxlib
reads (the other set empty: both set is an error in newer jaxlib); where the GPUs cannot be
counted, more than one worker is refused in one line before any worker starts.
"""

from __future__ import annotations

import pytest
from test_sweep_support import sr_space, write_sweep

from sqzexplore.sweep import cli, launch
from sqzexplore.sweep.space import SweepError

FAKE_RUNNER = "fake_runner:run_fake_trial"


@pytest.fixture
def no_nvidia_smi(monkeypatch, tmp_path):
    """A PATH without nvidia-smi and no GPU selection in the environment."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    for name in ("CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS", "JAX_PLATFORM_NAME",
                 *launch.MEM_FRACTION_VARS):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_gpus_counted_by_jax_without_nvidia_smi(no_nvidia_smi, monkeypatch):
    monkeypatch.setattr(launch, "gpu_jax_installed", lambda: True)
    monkeypatch.setattr(launch, "jax_gpu_count", lambda: 1)
    gpus = launch.visible_gpus()
    assert gpus == ["0"] and launch.default_workers(gpus) == 1
    envs = launch.worker_envs(2, gpus)  # two workers on the one GPU: each its share
    var = launch.mem_fraction_var()
    other = next(v for v in launch.MEM_FRACTION_VARS if v != var)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "0"]
    assert {e[var] for e in envs} == {"0.45"} and {e[other] for e in envs} == {""}


def test_cpu_only_jax_means_no_gpus_without_a_probe(no_nvidia_smi, monkeypatch):
    assert not launch.gpu_jax_installed()  # this venv: CPU jax only
    monkeypatch.setattr(launch, "jax_gpu_count", lambda: pytest.fail("probed"))
    assert launch.visible_gpus() == []


def test_the_probe_counts_with_jax_itself(no_nvidia_smi):
    """The real child process: on this CPU jax sees no GPU (and allocates nothing)."""
    assert launch.jax_gpu_count() == 0


def test_uncountable_gpus_refuse_shared_workers(no_nvidia_smi, monkeypatch):
    monkeypatch.setattr(launch, "gpu_jax_installed", lambda: True)
    monkeypatch.setattr(launch, "jax_gpu_count", lambda: None)  # the probe failed
    assert launch.visible_gpus() is None and launch.default_workers(None) == 1
    assert launch.worker_envs(1, None) == [{}]
    with pytest.raises(SweepError, match="CUDA_VISIBLE_DEVICES"):
        launch.worker_envs(2, None)


def test_sweep_run_refuses_in_one_line(no_nvidia_smi, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(launch, "visible_gpus", lambda: None)
    path = write_sweep(tmp_path / "s.py", space=sr_space(0.125, 0.25))
    argv = ["run", str(path), "--workdir", str(tmp_path / "w"), "--runner", FAKE_RUNNER,
            "--workers", "2", "--progress", "off"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--workers 2" in err and "CUDA_VISIBLE_DEVICES" in err
    assert not list((tmp_path / "w").glob("trials/*/result.json"))  # nothing trained


def test_the_users_fraction_is_split_between_sharing_workers():
    var = launch.mem_fraction_var()
    for name in launch.MEM_FRACTION_VARS:  # either spelling is the sweep's total
        envs = launch.worker_envs(4, ["0", "1"], environ={name: "0.5"})
        assert {e[var] for e in envs} == {"0.25"}
    assert launch.memory_total({}) == launch.DEFAULT_MEM_TOTAL
    with pytest.raises(SweepError, match="XLA_CLIENT_MEM_FRACTION must be a fraction"):
        launch.memory_total({"XLA_CLIENT_MEM_FRACTION": "1.5"})


def test_the_spelling_is_the_one_the_jaxlib_reads():
    import importlib.util
    from pathlib import Path

    source = Path(importlib.util.find_spec("jaxlib").origin).with_name("xla_client.py")
    newer = "XLA_CLIENT_MEM_FRACTION" in source.read_text()
    assert launch.mem_fraction_var() == (
        "XLA_CLIENT_MEM_FRACTION" if newer else "XLA_PYTHON_CLIENT_MEM_FRACTION"
    )


def test_preflight_sizes_the_whole_population(monkeypatch):
    """N members hold N sets of activations and parameters at once (the dataset once): a
    population that one member's check would pass is refused, naming the members."""
    import jax

    from sqzexplore.config import ConfigError, base_config, model_config
    from sqzexplore.models.spec import preset
    from sqzexplore.train import preflight

    class FakeGpu:
        platform, device_kind, process_index, id = "gpu", "H200", jax.process_index(), 0

        def __init__(self, limit):
            self.limit = limit

        def memory_stats(self):
            return {"bytes_limit": self.limit}

    monkeypatch.setattr(preflight, "host_memory_bytes", lambda: 1 << 50)
    c = base_config()
    c.model = model_config("digits", image_size=224)
    c.data.name, c.batch_size = "synthetic", 256
    spec = preset("digits", image_size=224)
    one = preflight.step_memory_bytes(c, spec, 1)
    eight = preflight.step_memory_bytes(c, spec, 1, members=8)
    assert eight["activations"] == 8 * one["activations"] and eight["state"] == 8 * one["state"]
    assert eight["dataset"] == one["dataset"] and one["state"] > 0
    fits_one = FakeGpu(2 * (one["activations"] + one["state"] + one["dataset"]))
    preflight.check_memory(c, spec, [fits_one])  # one member fits ...
    with pytest.raises(ConfigError) as e:  # ... eight do not
        preflight.check_memory(c, spec, [fits_one], members=8)
    assert "population of 8 members" in str(e.value) and "fewer members" in str(e.value)
