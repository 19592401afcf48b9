"""Interrupted runs finish with the uninterrupted run's results, bit for bit.

Kills (SIGKILL) and preemptions (SIGTERM) are aimed at the named points between a run's writes
(sqzexplore/train/events.py) through tests/data/fault_train.py, in subprocesses; each chain of
interrupted attempts in one workdir must end with the same result.json metrics and metrics.jsonl
records as one uninterrupted run. Also: checkpoint checksums, the best-so-far's exactness, and
file modes under the umask.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from trainer_env import trainer_env

from sqzexplore import rundir
from sqzexplore.checkpoint import Best, CorruptCheckpointError, verify_manifest, write_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULT = os.path.join(REPO, "tests", "data", "fault_train.py")
# 3 epochs of 22 steps: log every 5, eval and checkpoint at 22, 44, 66.
CONFIG = f"--config={REPO}/tests/data/tiny_digits.py:epochs=3"
# The tests of the `reference` fixture on one xdist worker (built once).
REFERENCE_GROUP = pytest.mark.xdist_group("train_faults_reference")
TIMING = ("wall_time_s", "compile_time_s", "train_time_s", "overhead_s", "images_per_s")


def _train(workdir, fault: str | None = None) -> subprocess.CompletedProcess:
    prefix = [FAULT, fault] if fault else ["-m", "sqzexplore.train"]
    cmd = [sys.executable, *prefix, CONFIG, f"--workdir={workdir}"]
    env = trainer_env()
    return subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )


def _committed(workdir) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(
        int(s) for s in os.listdir(d) if s.isdigit() and os.path.exists(f"{d}/{s}/sha256.json")
    )


def _assert_same_run(ref, run) -> None:
    """result.json (but timings) and metrics.jsonl (but images/s) identical to the reference."""
    a, b = (rundir.read_json(os.path.join(d, "result.json")) for d in (ref, run))
    assert b is not None and b["final"], b
    assert {k: v for k, v in a.items() if k not in TIMING} == {
        k: v for k, v in b.items() if k not in TIMING
    }
    strip = lambda d: [
        {k: v for k, v in r.items() if k != "images_per_s"}
        for r in rundir.read_jsonl(os.path.join(d, "metrics.jsonl"))
    ]
    assert strip(ref) == strip(run)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    p = _train(workdir)
    assert p.returncode == 0, p.stdout
    return workdir


@REFERENCE_GROUP
@pytest.mark.slow
def test_kills_after_each_commit_and_before_the_result(tmp_path, reference):
    run = tmp_path / "run"
    p = _train(run, "checkpoint_committed@22:KILL")
    assert p.returncode == -9, p.stdout
    assert _committed(run) == [22] and not (run / "result.json").exists()
    p = _train(run, "checkpoint_committed@44:KILL")
    assert p.returncode == -9 and "resuming" in p.stdout, p.stdout
    assert _committed(run) == [22, 44]
    # Killed after the final checkpoint, before result.json: the rerun resumes at the last step.
    p = _train(run, "before_result:KILL")
    assert p.returncode == -9, p.stdout
    assert 66 in _committed(run) and not (run / "result.json").exists()
    # An older version could leave a result.json without a final evaluation: not a result.
    rundir.write_json(run / "result.json", {"status": "complete", "final": {}})
    p = _train(run)
    assert (
        p.returncode == 0 and "resuming" in p.stdout and "done (complete): 66 steps" in p.stdout
    ), p.stdout
    _assert_same_run(reference, run)


@REFERENCE_GROUP
@pytest.mark.slow
def test_sigterm_at_every_phase_saves_or_exits_cleanly(tmp_path, reference):
    run = tmp_path / "run"
    # Start-up and compilation: nothing trained yet, nothing to save; a clean exit.
    for point, phase in (("startup", "start-up"), ("compile", "compilation")):
        p = _train(run, f"{point}:TERM")
        assert p.returncode == 0, p.stdout
        assert f"preempted (SIGTERM) during {phase}" in p.stdout, p.stdout
        assert not (run / "checkpoints").exists() or not _committed(run)
    # Training, between two log points: the checkpoint is on disk before the message.
    p = _train(run, "step@12:TERM")
    assert p.returncode == 0 and "at step 12: checkpoint saved" in p.stdout, p.stdout
    assert _committed(run) == [12]
    # Evaluation and a checkpoint save: acted on at the next step.
    p = _train(run, "eval@22:TERM")
    assert p.returncode == 0 and "at step 23: checkpoint saved" in p.stdout, p.stdout
    p = _train(run, "checkpoint_save@44:TERM")
    assert p.returncode == 0 and "at step 45: checkpoint saved" in p.stdout, p.stdout
    assert _committed(run)[-2:] == [44, 45]
    assert not (run / "result.json").exists()
    p = _train(run)
    assert p.returncode == 0 and "done (complete): 66 steps" in p.stdout, p.stdout
    _assert_same_run(reference, run)


# ---------------------------------------------------------------------------- checksums
def _step_dir(tmp_path):
    d = tmp_path / "7"
    (d / "default").mkdir(parents=True)
    (d / "default" / "data").write_bytes(bytes(range(256)) * 4)
    (d / "meta.json").write_text("{}")
    write_manifest(str(d))
    return d


@pytest.mark.parametrize("damage", ["same_size", "truncated", "deleted", "added", "no_manifest"])
def test_manifest_detects_damage(tmp_path, damage):
    d = _step_dir(tmp_path)
    verify_manifest(str(d))  # intact
    data = d / "default" / "data"
    if damage == "same_size":
        raw = bytearray(data.read_bytes())
        raw[100] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncated":
        data.write_bytes(data.read_bytes()[:10])
    elif damage == "deleted":
        data.unlink()
    elif damage == "added":
        (d / "default" / "stray").write_text("x")
    else:
        (d / "sha256.json").unlink()
    with pytest.raises(CorruptCheckpointError):
        verify_manifest(str(d))


# ---------------------------------------------------------------------------- best so far
def test_best_is_exact_and_ties_keep_the_first_step():
    top1 = 357 / 360
    assert float(np.float32(top1)) != top1  # what a float32 checkpoint would have restored
    best = Best().update(22, {"top1": top1, "count": 360})
    assert (best.correct, best.count, best.step) == (357, 360, 22)
    assert best.top1 == top1  # bit for bit, from the integer counts a checkpoint holds
    restored = Best(correct=best.correct, count=best.count, step=best.step)
    assert restored.update(44, {"top1": top1, "count": 360}).step == 22  # a tie keeps step 22
    assert restored.update(44, {"top1": 358 / 360, "count": 360}).step == 44
    assert restored.update(44, {"top1": 356 / 360, "count": 360}) == restored


def test_a_checkpoint_of_another_state_layout_is_named_and_kept(tmp_path, capsys):
    """An intact checkpoint whose train state is laid out differently (e.g. the per-array
    optimiser state of older versions) is reported as such, kept aside, and not restored."""
    import jax
    import jax.numpy as jnp

    from sqzexplore.checkpoint import Checkpointer
    from sqzexplore.train.state import TrainState

    def state(opt_state):
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params={"w": jnp.ones((3,))},
            batch_stats={},
            opt_state=opt_state,
            rng=jnp.zeros((2,), jnp.uint32),
            aux={},
            nonfinite_step=jnp.full((), -1, jnp.int32),
        )

    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    old = state([{"mu": {"w": jnp.zeros((3,))}}, {"nu": {"w": jnp.zeros((3,))}}])
    ckpt = Checkpointer(str(tmp_path), keep=2, sharding=sharding)
    ckpt.save(5, old, Best())
    ckpt.close()
    new_layout = jax.eval_shape(lambda: state([jnp.zeros((3,))]))
    ckpt = Checkpointer(str(tmp_path), keep=2, sharding=sharding)
    assert ckpt.restore_latest(new_layout) is None
    ckpt.close()
    assert "differently laid out train state" in capsys.readouterr().out
    kept = os.listdir(tmp_path / "checkpoints.unreadable")
    assert len(kept) == 1 and kept[0].startswith("5-")


def test_load_run_falls_back_to_the_newest_intact_checkpoint(tmp_path, capsys):
    """`load_run` restores through the checkpointer's one restore path: a finished run whose
    final checkpoint is damaged (same-size overwrite) loads the earlier intact step, says so,
    and leaves the run directory as it is; with no intact step it is a clear error."""
    import jax
    import jax.numpy as jnp

    from sqzexplore.checkpoint import Checkpointer, load_run
    from sqzexplore.models.spec import PRESETS
    from sqzexplore.train.state import TrainState

    def state(value: float) -> TrainState:
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params={"w": jnp.full((3,), value)},
            batch_stats={"m": jnp.full((2,), -value)},
            opt_state=jnp.zeros((3,)),
            rng=jnp.zeros((2,), jnp.uint32),
            aux={},
            nonfinite_step=jnp.full((), -1, jnp.int32),
        )

    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    ckpt = Checkpointer(str(tmp_path), keep=3, sharding=sharding)
    for step in (1, 2):
        ckpt.save(step, state(float(step)), Best())
    ckpt.close()
    rundir.write_json(tmp_path / "config.json", {"seed": 0})
    rundir.write_json(tmp_path / "spec.json", PRESETS["digits"].to_dict())
    rundir.write_json(tmp_path / "result.json", {"status": "complete", "final": {"top1": 0.5}})

    intact = load_run(tmp_path)
    assert intact["step"] == 2 and intact["params"]["w"].tolist() == [2.0] * 3
    assert intact["spec"] == PRESETS["digits"] and intact["config"].seed == 0
    capsys.readouterr()

    def corrupt(step: int) -> None:
        for root, _, files in os.walk(tmp_path / "checkpoints" / str(step)):
            for f in files:
                if f != "sha256.json":
                    path = os.path.join(root, f)
                    with open(path, "r+b") as fh:
                        flipped = bytes(b ^ 0x5A for b in fh.read())
                        fh.seek(0)
                        fh.write(flipped)

    corrupt(2)
    run = load_run(tmp_path)
    assert run["step"] == 1 and run["params"]["w"].tolist() == [1.0] * 3
    assert run["batch_stats"]["m"].tolist() == [-1.0] * 2
    out = capsys.readouterr().out
    assert "final checkpoint (step 2) is damaged; using step 1" in out, out
    assert _committed(tmp_path) == [1, 2]  # a reader moves nothing aside
    assert not (tmp_path / "checkpoints.unreadable").exists()
    corrupt(1)
    with pytest.raises(FileNotFoundError, match=r"no usable checkpoint \(unreadable steps: \[2, 1"):
        load_run(tmp_path)
