"""Trainer tests: correctness of the step across device counts, resume, failures, outputs."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from trainer_env import trainer_env

from sqzexplore import train
from sqzexplore.config import ConfigError, base_config, model_config
from sqzexplore.models.spec import SpecError
from sqzexplore.train.state import model_graphdef

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**changes) -> object:
    """A seconds-long digits run: a narrow SqueezeNet on 16x16 digits."""
    c = base_config()
    c.model = model_config(
        "digits", stem_filters=16, base_e=16, incr_e=16, squeeze_ratio=0.25, dropout=0.1
    )
    c.data.name = "digits"
    c.batch_size = 64
    c.eval_batch_size = 128
    c.num_epochs = 2.0
    c.optim.name = "adamw"
    c.optim.lr = 3e-3
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 1e-4
    c.eval_every_epochs = 1.0
    c.checkpoint_every_epochs = 1.0
    c.log_every_steps = 5
    c.progress = False
    c.compilation_cache_dir = os.environ["SQZ_TEST_XLA_CACHE"]
    for k, v in changes.items():
        node = c
        *parents, last = k.split(".")
        for p in parents:
            node = node[p]
        node[last] = v
    return c


def test_digits_run_writes_all_outputs(tmp_path):
    result = train.train_and_evaluate(tiny_config(), str(tmp_path))
    for name in ("config.json", "spec.json", "complexity.json", "metrics.jsonl", "result.json"):
        assert (tmp_path / name).exists(), name
    assert result["status"] == "complete"
    assert result["final"]["count"] == 360  # the whole digits test split, exactly once
    # An epoch is 1437 // 64 = 22 whole batches (the data layer drops the remainder).
    assert result["steps"] == 2 * (1437 // 64) == 44
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r["split"] == "train"]
    eval_recs = [r for r in records if r["split"] == "eval"]
    assert {"loss", "top1", "lr", "grad_norm", "images_per_s"} <= set(train_recs[0])
    assert {"loss", "top1", "top5"} <= set(eval_recs[-1])
    assert eval_recs[-1]["top1"] == result["final"]["top1"]
    saved = json.loads((tmp_path / "result.json").read_text())
    assert (
        saved["complexity"]["params"]
        == json.loads((tmp_path / "complexity.json").read_text())["params"]
    )
    assert saved["device_count"] == jax.device_count()
    # A finished run is not trained again: calling again returns the stored result.
    again = train.train_and_evaluate(tiny_config(), str(tmp_path))
    assert again == saved


def _one_step_state(config, devices):
    """State after exactly one train step on a mesh of `devices` (the public step API)."""
    from sqzexplore import optim, sharding
    from sqzexplore.config import spec_from_config
    from sqzexplore.data import load_dataset

    spec = spec_from_config(config)
    mesh = sharding.make_mesh(devices)
    ds = load_dataset(config.data, spec)
    tx, schedule = optim.make_optimizer(config.optim, 10, 0)
    state = jax.device_put(train.init_state(spec, tx, 0), sharding.replicated(mesh))
    step_fn = train.make_train_step(
        model_graphdef(spec),
        tx,
        schedule,
        num_classes=spec.num_classes,
        label_smoothing=config.optim.label_smoothing,
        batch_fn=lambda x, y, step, key: ds.device_train_batch(x, y, step, key, config.batch_size),
        batch_sharding=sharding.batch_sharded(mesh),
    )
    x, y = (sharding.put_replicated(a, mesh) for a in ds.train_arrays())
    new_state, metrics = jax.jit(step_fn)(state, x, y)
    return jax.device_get(new_state), jax.device_get(metrics)


def test_train_time_counts_the_wait_for_the_device(tmp_path, monkeypatch):
    """Dispatch is asynchronous: the device's work is waited for at each log point's sync, so a
    train interval ends after that sync. A sync made 0.2 s slower (a slow device) must show in
    train_time_s and in the logged images/s (it did not when the interval ended before it)."""
    from sqzexplore.train import driver

    real, syncs = driver._Loop._sync, []

    def slow_sync(self, *args, **kwargs):
        time.sleep(0.2)
        syncs.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(driver._Loop, "_sync", slow_sync)
    result = train.train_and_evaluate(tiny_config(num_epochs=1.0), str(tmp_path))
    assert syncs and result["train_time_s"] >= 0.2 * len(syncs), (len(syncs), result)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records if r["split"] == "train"]
    assert rates and max(rates) <= 5 * 64 / 0.2, rates  # 5 steps of 64 images, >= 0.2 s each


@pytest.mark.parametrize("batch_norm", [False, True])
def test_four_devices_equal_one_device(batch_norm):
    """Same global batch on 4 fake CPU devices and on 1: same update (float32 tolerance 1e-5),
    and with BatchNorm the same running statistics (so they are over the global batch)."""
    assert jax.device_count() >= 4
    c = tiny_config(**{"model.batch_norm": batch_norm, "model.dropout": 0.0})
    one, m1 = _one_step_state(c, jax.devices()[:1])
    four, m4 = _one_step_state(c, jax.devices()[:4])
    assert int(one.step) == int(four.step) == 1
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    if batch_norm:
        stats1, stats4 = jax.tree.leaves(one.batch_stats), jax.tree.leaves(four.batch_stats)
        assert stats1
        for a, b in zip(stats1, stats4):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_train_step_compiles_once(tmp_path, caplog):
    """The step is compiled once (ahead of time) and never retraced across log/eval/ckpt points."""
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            train.train_and_evaluate(tiny_config(num_epochs=3.0), str(tmp_path))
    finally:
        jax.config.update("jax_log_compiles", False)
    compiles = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(train_step)")]
    assert len(compiles) == 1, [r.getMessage()[:200] for r in compiles]


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"batch_size": 30}, "batch_size"),  # not a multiple of 4 devices
        ({"optim.lr": -1.0}, "lr"),
        ({"optim.name": "adagrad"}, "optim.name"),
        ({"data.name": "no_such_dataset_xyz"}, "no_such_dataset_xyz"),
        ({"model.squeeze_ratio": 0.001}, "squeeze"),
        ({"model.image_size": 4}, "image_size"),
        ({"num_epochs": 0.0}, "num_epochs"),
        ({"wandb.mode": "cloud"}, "wandb.mode"),
    ],
)
def test_bad_configs_fail_before_compiling(tmp_path, changes, field):
    c = tiny_config(**changes)
    with pytest.raises((ConfigError, SpecError, ValueError)) as e:
        train.train_and_evaluate(c, str(tmp_path / "run"))
    assert field in str(e.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_config_key_rejected(tmp_path):
    c = tiny_config()
    c.optim.learning_rate = 0.1
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        train.train_and_evaluate(c, str(tmp_path))


def test_workdir_with_other_config_is_refused(tmp_path):
    train.train_and_evaluate(tiny_config(num_epochs=1.0), str(tmp_path))
    before = (tmp_path / "result.json").read_text()
    with pytest.raises(train.WorkdirConflictError, match="model.squeeze_ratio"):
        train.train_and_evaluate(tiny_config(**{"model.squeeze_ratio": 0.5}), str(tmp_path))
    assert (tmp_path / "result.json").read_text() == before


def test_nan_stops_with_step_named_and_keeps_checkpoint(tmp_path):
    c = tiny_config(
        num_epochs=4.0,
        **{
            "optim.name": "sgd",
            "optim.lr": 100.0,
            "optim.schedule": "constant",
            "optim.momentum": 0.9,
        },
    )
    with pytest.raises(train.NonFiniteError, match=r"at step \d+"):
        train.train_and_evaluate(c, str(tmp_path))
    assert not (tmp_path / "result.json").exists()


def test_corrupted_latest_checkpoint_falls_back(tmp_path, capsys):
    """A damaged newest checkpoint is detected, moved aside, and the previous one resumed."""
    c = tiny_config(num_epochs=3.0)
    ref = train.train_and_evaluate(c, str(tmp_path / "ref"))
    run = tmp_path / "run"
    train.train_and_evaluate(c, str(run))
    os.remove(run / "result.json")
    steps = sorted(int(p) for p in os.listdir(run / "checkpoints") if p.isdigit())
    assert len(steps) >= 2
    # Same-size corruption (bit rot, an overwrite): every file keeps its size, so only the
    # checksums written at save time can tell.
    for root, _, files in os.walk(run / "checkpoints" / str(steps[-1])):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "r+b") as fh:
                flipped = bytes(b ^ 0x5A for b in fh.read())
                fh.seek(0)
                fh.write(flipped)
    result = train.train_and_evaluate(c, str(run))
    assert "unreadable" in capsys.readouterr().out
    assert result["final"] == ref["final"] and result["best"] == ref["best"]
    # The bad checkpoint was kept aside, not deleted.
    assert os.listdir(run / "checkpoints.unreadable")


def _run_cli(workdir, extra=(), **popen):
    cmd = [
        sys.executable,
        "-m",
        "sqzexplore.train",
        f"--config={REPO}/tests/data/tiny_digits.py",
        f"--workdir={workdir}",
        *extra,
    ]
    env = trainer_env()
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _wait_for_checkpoint(workdir, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        d = os.path.join(workdir, "checkpoints")
        if os.path.isdir(d) and any(p.isdigit() for p in os.listdir(d)):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def test_sigkill_and_rerun_gives_identical_result(tmp_path):
    ref = _run_cli(tmp_path / "ref")
    out = ref.communicate(timeout=300)[0]
    assert ref.returncode == 0, out
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    for _ in range(2):  # kill twice at random points after the first checkpoint
        p = _run_cli(run)
        if _wait_for_checkpoint(run, p):
            time.sleep(float(rng.uniform(0.0, 1.5)))
        p.send_signal(signal.SIGKILL)
        p.wait()
    p = _run_cli(run)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    a = json.loads((tmp_path / "ref" / "result.json").read_text())
    b = json.loads((run / "result.json").read_text())
    assert a["final"] == b["final"] and a["best"] == b["best"] and a["steps"] == b["steps"]
    ra = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rs: [(r["step"], r["split"], r["loss"], r.get("top1")) for r in rs]
    assert strip(ra) == strip(rb)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    p = _run_cli(tmp_path, extra=["--config.num_epochs=20"])
    assert _wait_for_checkpoint(tmp_path, p)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 0, out
    line = next(x for x in out.splitlines() if x.startswith("preempted (SIGTERM) at step"))
    step = int(line.split()[4].rstrip(":"))
    assert "checkpoint saved" in line
    assert not (tmp_path / "result.json").exists()
    # The step it names is on disk, sealed with its checksums.
    assert (tmp_path / "checkpoints" / str(step) / "sha256.json").exists()


def test_cli_rejects_bad_override(tmp_path):
    p = _run_cli(tmp_path, extra=["--config.optim.lr=-3"])
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 2
    assert "config.optim.lr" in out


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    """A real TFDS dataset written to disk by the test: 32x32 RGB images, 10 classes."""
    from tfds_fixture import prepare

    def shapes(seed, count):
        rng = np.random.default_rng(seed)
        return [
            (rng.integers(0, 60, (32, 32, 3), dtype=np.uint8) + np.uint8(i % 10 * 19), i % 10)
            for i in range(count)
        ]

    splits = {"train": shapes(0, 48), "test": shapes(1, 20)}
    return prepare(str(tmp_path_factory.mktemp("tfds")), "tiny_shapes", splits, num_classes=10)


@pytest.mark.parametrize("on_device", [False, "auto"])
def test_full_run_on_tfds_dataset(tmp_path, tiny_tfds_dir, on_device):
    """The real TFDS code path end to end on a dataset the test wrote in TFDS format: the
    tf.data stream (on_device false) and the load-onto-the-devices path (auto)."""
    c = tiny_config(
        **{
            "data.name": "tiny_shapes",
            "data.data_dir": tiny_tfds_dir,
            "data.on_device": on_device,
            "num_epochs": 2.0,
            "batch_size": 16,
            "eval_batch_size": 8,
        }
    )
    c.model = model_config("cifar", stem_filters=8, base_e=16, incr_e=16, squeeze_ratio=0.25)
    result = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert result["status"] == "complete"
    assert result["final"]["count"] == 20  # every eval example exactly once (padded + masked)
    assert result["steps"] == 2 * (48 // 16)
    assert 0.0 <= result["final"]["top1"] <= 1.0 and np.isfinite(result["final"]["loss"])


def test_wandb_offline_mirror(tmp_path, monkeypatch):
    """wandb mode 'offline' mirrors the run without network or account (sync later)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    c = tiny_config(num_epochs=1.0, **{"wandb.mode": "offline", "wandb.group": "sweep-x"})
    train.train_and_evaluate(c, str(tmp_path))
    runs = [p for p in (tmp_path / "wandb").iterdir() if p.name.startswith("offline-run-")]
    assert len(runs) == 1
    assert any(f.suffix == ".wandb" for f in runs[0].iterdir())


def test_run_files_respect_the_umask(tmp_path):
    """Every file a run writes (JSON, metrics.jsonl, checkpoints) has the umask's mode, so
    teammates on a shared filesystem can read results (0640 / 0750 under umask 027 here)."""
    old = os.umask(0o027)
    try:
        train.train_and_evaluate(tiny_config(num_epochs=1.0), str(tmp_path / "run"))
    finally:
        os.umask(old)
    modes = {}
    for root, dirs, files in os.walk(tmp_path / "run"):
        for name in dirs + files:
            path = os.path.join(root, name)
            want = 0o750 if os.path.isdir(path) else 0o640
            modes[os.path.relpath(path, tmp_path)] = (os.stat(path).st_mode & 0o777, want)
    assert "run/result.json" in modes and "run/metrics.jsonl" in modes
    assert any(p.endswith("sha256.json") for p in modes)
    wrong = {p: (oct(have), oct(want)) for p, (have, want) in modes.items() if have != want}
    assert not wrong, wrong
