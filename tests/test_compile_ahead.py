"""Compile-ahead builds exactly the programs the next run trains with, with the real trainer on
the CPU: a sweep worker (`sqz sweep run`, in this process, the journal-file run store) with
populations, several steps per dispatch and compile-ahead forced on. Every program build is
recorded (the program cache's `Programs._once`): none compiled ahead that no run used, and no
train program compiled inside a run's timed training loop. Each result.json states the
matmul/conv precision it ran at.

Before compile-ahead claimed the next run's whole group (sweep/workers.py `claim_group`), it
compiled a population of `--population` members (3 here) while the run that followed trained its
point's 2 seeds: population_step/3/4/unroll and population_eval/3/unroll were built and wasted.
"""

from __future__ import annotations

import threading

import pytest
from test_sweep_support import TESTS, sr_space, write_sweep

from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.analyze import collect_runs
from sqzexplore.train import driver, programs

# The compiled programs (not their nested parts: graphdef, lowered init, step function).
TOP = ("init", "eval", "train_step", "train_block/", "population_step/", "population_eval/")
TRAIN = ("train_step", "train_block/", "population_step/")


def _top(name: str) -> bool:
    return name in TOP or name.startswith(TOP[3:])


@pytest.mark.slow  # two population programs compiled on the CPU: about 80 s on 2 cores
def test_compile_ahead_builds_only_the_programs_the_runs_train(tmp_path, monkeypatch, capsys):
    from sqzexplore.sweep import cli as sweep_cli_main
    from sqzexplore.sweep.space import Experiment

    builds: list[tuple[str, object, str, bool]] = []  # thread, programs, name, in training
    uses: list[tuple[str, object, str]] = []
    keep: list[object] = []  # the Programs objects stay alive: identities stay unique
    training = threading.Event()
    once, train = programs.Programs._once, driver._Loop.train

    def recording_once(self, name, build):
        thread = threading.current_thread().name
        keep.append(self)

        def recorded():
            builds.append((thread, self, name, training.is_set()))
            return build()

        uses.append((thread, self, name))
        return once(self, name, recorded)

    def timed_train(self, *args, **kwargs):
        training.set()
        try:
            return train(self, *args, **kwargs)
        finally:
            training.clear()

    monkeypatch.setattr(programs.Programs, "_once", recording_once)
    monkeypatch.setattr(driver._Loop, "train", timed_train)
    programs.clear()
    path = write_sweep(
        tmp_path / "ahead.py",
        doc="Two squeeze ratios of the tiny digits point, two seeds each, as populations.",
        name="ahead",
        base=Experiment(str(TESTS / "data" / "tiny_digits.py"), {}),
        # 10 steps in blocks of 4 (the last one shorter), evaluated and saved every 8.
        fixed={
            "num_steps": 10,
            "steps_per_dispatch": 4,
            "log_every_steps": 4,
            "eval_every_epochs": 8 / 22,
            "checkpoint_every_epochs": 8 / 22,
        },
        space=sr_space(0.125, 0.25),
        seeds=2,
    )
    workdir = tmp_path / "w"
    argv = ["run", str(path), "--workdir", str(workdir), "--progress", "off", "--workers", "1"]
    argv += ["--population", "3", "--compile-ahead", "on"]
    assert sweep_cli_main.main(argv) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    runs = collect_runs(sd.SweepDir(workdir))
    assert len(runs) == 4 and all(r.state == sd.COMPLETE for r in runs), runs
    assert all(r.result["steps"] == 10 for r in runs)
    # Each result says what precision its matmuls and convolutions ran at (the driver's field).
    precision = "matmul/conv precision float32 (jax_default_matmul_precision="
    assert all(r.result["precision"].startswith(precision) for r in runs), runs
    assert "4 steps per dispatch" in out, out

    ahead = {(p, n) for thread, p, n, _ in builds if thread == "compile-ahead" and _top(n)}
    used = {(p, n) for thread, p, n in uses if thread != "compile-ahead" and _top(n)}
    assert any(n == "population_step/2/4/unroll" for _, n in ahead), ahead
    wasted = sorted(n for _, n in ahead - used)
    assert not wasted, f"compiled ahead, used by no run: {wasted}"
    mid_training = [n for _, _, n, timed in builds if timed and n.startswith(TRAIN)]
    assert not mid_training, f"train programs compiled inside timed training: {mid_training}"
    # The second point's population trained with the programs compiled ahead.
    assert "compiling" in out and "ahead (a population of 2)" in out, out
    assert "train step compiled ahead while the previous run trained" in out, out
