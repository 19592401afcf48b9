"""What `sqz` prints when things go wrong or when asked: one-line argument errors, a typo hint
once, a failure repeated by every trial printed once, help texts, `sqz --version`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_sweep_support import write_sweep

from sqzexplore import cli as sqz_cli
from sqzexplore.sweep import cli
from sqzexplore.sweep.params import categorical


def unprepared(config, workdir, **kw):
    """A runner failing as the trainer does on a dataset that is not prepared (4 lines)."""
    raise RuntimeError(
        "TFDS dataset 'cifar10' is not prepared in data_dir /nowhere.\n"
        "Prepare it on a machine with network access:\n"
        "  tfds build cifar10 --data_dir=/nowhere\n"
        "and set config.data.data_dir to that directory."
    )


def test_sqz_version(capsys):
    assert sqz_cli.main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("sqz 0.") and "jax " in out and "python " in out
    assert len(out.splitlines()) == 1


def test_a_bad_option_is_one_line_without_the_usage_block(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.py")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", str(path), "--workers", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err
    assert "--workers must be an integer >= 1, got '0'" in err


def test_a_sweep_key_typo_says_did_you_mean_once(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.py", space={"model.squeez_ratio": categorical(0.25)})
    assert cli.main(["run", str(path), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.count("did you mean") == 1 and "model.squeeze_ratio" in err
    assert cli.one_line("x; did you mean 'a'?; did you mean 'a'? (k)") == "x; did you mean 'a'? (k)"


def test_a_failure_every_trial_repeats_is_printed_once(tmp_path, capsys):
    path = write_sweep(
        tmp_path / "s.py", space={"model.squeeze_ratio": categorical(0.125, 0.25, 0.5)}, seeds=2
    )
    argv = ["run", str(path), "--workdir", str(tmp_path / "w"), "--workers", "1"]
    runner = "test_sweep_cli_messages:unprepared"
    assert cli.main([*argv, "--runner", runner, "--progress", "off"]) == 1
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    # The first failure's first line, then the summary's error; never the 6 trials' 4 lines.
    assert printed.count("is not prepared") == 2, printed
    assert printed.count("tfds build") == 0
    assert "further repeats are not printed" in printed
    assert "error: all 6 trials failed" in captured.err


@pytest.mark.parametrize(
    "argv, wanted",
    [
        (["status", "--help"], "the sweep directory"),
        (["status", "--help"], "Print a sweep's progress"),
        (["worker", "--help"], "Add one worker to a sweep"),
        (["worker", "--help"], "liveness stamps"),  # --heartbeat-s
        (["run", "--help"], "--wandb {off,offline,online}"),
    ],
)
def test_help_texts(argv, wanted, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert wanted in " ".join(capsys.readouterr().out.split())


def _cifar_sweep(tmp_path, data_dir):
    """A sweep over the cifar10 experiment with its data_dir fixed (nothing prepared there)."""
    from test_sweep_support import REPO

    from sqzexplore.sweep.space import Experiment

    experiment = Experiment(str(REPO / "experiments" / "cifar10" / "squeezenet.py"))
    return write_sweep(
        tmp_path / "c.py",
        base=experiment,
        fixed={"data.data_dir": str(data_dir), "num_steps": 2},
        space={"model.squeeze_ratio": categorical(0.125, 0.5)},
        seeds=2,
    )


def test_a_sweep_on_an_unprepared_dataset_stops_in_one_line_before_registering(tmp_path, capsys):
    """The default trainer's sweep on a TFDS dataset that is not prepared: one line, exit 2,
    and no sweep directory (nothing registered, nothing compiled)."""
    empty = tmp_path / "tfds"
    empty.mkdir()
    path = _cifar_sweep(tmp_path, empty)
    workdir = tmp_path / "w"
    argv = ["run", str(path), "--workdir", str(workdir), "--workers", "1", "--progress", "off"]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert "TFDS dataset 'cifar10' is not prepared in data_dir" in captured.err
    assert "no trial was registered" in captured.err
    assert "compile" not in captured.out + captured.err
    assert not (workdir / "trials").exists()


def test_a_sweep_with_a_storage_that_does_not_open_or_an_unwritable_workdir_stops(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.py", space={"model.squeeze_ratio": categorical(0.125)})
    argv = ["run", str(path), "--workers", "1", "--progress", "off"]
    bad_db = "postgresql://nobody@127.0.0.1:9/none"
    assert cli.main([*argv, "--workdir", str(tmp_path / "w"), "--storage", bad_db]) == 2
    assert "--storage" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main([*argv, "--workdir", str(blocker / "w")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a writable directory" in err


def test_a_sweep_asking_for_a_tpu_jax_does_not_see_stops_before_registering(tmp_path, capsys):
    path = write_sweep(
        tmp_path / "s.py",
        space={"model.squeeze_ratio": categorical(0.125)},
        fixed={"num_steps": 2, "platform": "tpu"},
    )
    workdir = tmp_path / "w"
    argv = ["run", str(path), "--workdir", str(workdir), "--workers", "1", "--progress", "off"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.platform=tpu" in err
    assert not (workdir / "trials").exists()


@pytest.mark.parametrize(
    "argv, wanted, help_of",
    [
        (["run", "s.py", "--worker", "2"], "did you mean '--workers' for '--worker'?", "run"),
        (["report", "d", "--wandb_mode", "offline"], "did you mean '--wandb-mode'", "report"),
        (["status", "d", "--jsn"], "did you mean '--json' for '--jsn'?", "status"),
        (["rnu", "s.py"], "did you mean 'run'?", None),
    ],
)
def test_a_misspelled_flag_or_command_says_did_you_mean(argv, wanted, help_of, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and wanted in err, err
    assert f"`sqz sweep {help_of} --help`" in err if help_of else "`sqz sweep --help`" in err


def test_sweep_help_lists_the_options_of_run(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for option in ("--arg", "--workdir", "--workers", "--storage", "--wandb", "--population"):
        assert option in out, option


def test_the_device_check_leaves_jax_out_of_the_sweep_process():
    """`sqz sweep run` checks the devices in a child: listing them in the launching process
    would initialise the accelerator there (on a GPU: preallocate most of its memory, held while
    the workers train) and fork the workers from a multithreaded process."""
    probe = (
        "import sys\n"
        "from sqzexplore.train import runner  # as sqz sweep run: jax imported, no backend\n"
        "from sqzexplore.sweep import preflight\n"
        "from sqzexplore.sweep.space import SweepError\n"
        "preflight.check_devices({'platform': 'auto'})\n"
        "assert set(preflight.device_platforms()) == {'cpu'}, preflight.device_platforms()\n"
        "try:\n"
        "    preflight.check_devices({'platform': 'tpu'})\n"
        "    raise SystemExit('a tpu config passed on a CPU')\n"
        "except SweepError as e:\n"
        "    assert 'config.platform=tpu' in str(e) and '\\n' not in str(e), e\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge._backends, 'the device check initialised a backend here'\n"
    )
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
