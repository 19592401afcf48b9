"""`sqz describe` and the ImageNet experiment configs it reads."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from sqzexplore import runlog
from sqzexplore.config import ConfigError, load_config_file, spec_from_config
from sqzexplore.describe import main
from sqzexplore.durations import Durations
from sqzexplore.models.spec import DESIGN_FIELDS, SpecError, SqueezeNetSpec, field_infos, preset
from sqzexplore.train.usage import KEY_HELP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V1_0 = os.path.join(ROOT, "experiments", "imagenet", "squeezenet_v1_0.py")
V1_1 = os.path.join(ROOT, "experiments", "imagenet", "squeezenet_v1_1.py")


def describe_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def describe_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert "Traceback" not in captured.err
    return captured.err


# ------------------------------------------------------------------ presets and --set
def test_preset_json(capsys):
    d = describe_json(capsys, "--preset", "v1.0", "--image-size", "224")
    assert d["spec"]["name"] == "v1.0"
    assert d["params"] == 1_248_424
    assert d["macs"] == 818_924_576  # the preset's own image_size, 224
    assert d["fp32_bytes"] == 4 * 1_248_424
    assert round(d["fp32_mib"], 2) == 4.76
    assert d["activations"] == sum(layer["activations"] for layer in d["layers"])
    assert [layer["name"] for layer in d["layers"]][:3] == ["conv1", "maxpool1", "fire2"]


def test_preset_table(capsys):
    assert main(["--preset", "v1.1", "--image-size", "224"]) == 0
    out = capsys.readouterr().out
    assert "fire9" in out and "maxpool5" in out
    assert "1,235,496" in out and "349.15M" in out and "4.71 MiB" in out
    assert "Table 1" not in out  # an explicit size: no note about the paper's


def test_paper_presets_default_to_the_papers_227_pixels(capsys):
    # The paper's Table 1 lists conv1 at 111x111 (227-pixel input); the preset trains at 224.
    assert main(["--preset", "v1.0"]) == 0
    out = capsys.readouterr().out
    first, table = out.splitlines()[0], out.splitlines()[1:]
    assert "227x227" in first and "Table 1" in first and "224" in first
    assert any(line.startswith("conv1") and "111x111x96" in line for line in table)
    assert "832.67M" in out
    d = describe_json(capsys, "--preset", "v1.0")
    assert d["image_size"] == 227 and d["layers"][0]["height"] == 111
    # Other presets keep their own size, and say it in the table's first line.
    assert main(["--preset", "cifar"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("SqueezeNet 'cifar' at 32x32x3")


def test_config_file_errors_are_one_line(capsys, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(arg=None:\n    return 1\n")
    err = describe_error(capsys, f"--config={broken}")
    assert f"config file {broken} line 1: syntax error" in err
    assert err.count("\n") == 1
    raising = tmp_path / "raising.py"
    raising.write_text("def get_config(arg=None):\n    return {}['model']\n")
    err = describe_error(capsys, f"--config={raising}")
    assert f"config file {raising} line 2" in err and "KeyError" in err
    assert err.count("\n") == 1
    not_a_config = tmp_path / "plain.py"
    not_a_config.write_text("x = 1\n")
    assert "defines no get_config" in describe_error(capsys, f"--config={not_a_config}")


def test_closed_pipe_ends_quietly():
    """`sqz describe ... | head`: the reader leaves early; no BrokenPipeError traceback."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "sqzexplore.cli", "describe", "--preset", "v1.0", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    proc.stdout.close()  # before the child has printed anything (it is still importing)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err  # as if killed by SIGPIPE, like `cat | head`
    assert err == ""


def test_image_size(capsys):
    d = describe_json(capsys, "--preset", "v1.0", "--image-size", "227")
    assert round(d["macs"] / 1e6, 2) == 832.67
    assert d["image_size"] == 227
    assert d["layers"][0]["height"] == 111


def test_set_overrides(capsys):
    d = describe_json(
        capsys,
        "--preset",
        "v1.0",
        "--set",
        "squeeze_ratio=0.25",
        "--set",
        "pool_after=('conv1','fire4')",
        "--set",
        "model.bypass=complex",  # the experiment-config spelling works too
    )
    assert d["spec"]["squeeze_ratio"] == 0.25
    assert d["spec"]["pool_after"] == ["conv1", "fire4"]
    assert d["spec"]["bypass"] == "complex"
    assert d["params"] == 1_967_080 + 341_248
    assert [x["name"] for x in d["layers"] if x["kind"] == "maxpool"] == ["maxpool1", "maxpool4"]


def test_set_single_pool_position_as_string(capsys):
    d = describe_json(capsys, "--preset", "cifar", "--set", "pool_after=fire4")
    assert d["spec"]["pool_after"] == ["fire4"]


@pytest.mark.parametrize(
    "text", ["fire4,fire8", "('fire4','fire8')", "(fire4, fire8)", "['fire4', 'fire8']"]
)
def test_set_reads_values_as_config_overrides_do(capsys, text):
    """`--set` reads text as `sqz train --config.model.FIELD=` does (issue 24: a comma list was
    "unknown position 'fire4,fire8'" here and a tuple there); tests/test_overrides.py compares
    the two over a table of inputs."""
    d = describe_json(capsys, "--preset", "digits", "--set", f"pool_after={text}")
    assert d["spec"]["pool_after"] == ["fire4", "fire8"]
    d = describe_json(capsys, "--preset", "digits", "--set", "batch_norm=yes")
    assert d["spec"]["batch_norm"] is True
    err = describe_error(capsys, "--preset", "digits", "--set", "batch_norm=maybe")
    assert err == (
        "error: config.model.batch_norm must be true or false (or yes/no, on/off, 1/0), "
        "got 'maybe'\n"
    )


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--preset", "v9"], ["--preset", "v9", "v1.0"]),
        (["--preset", "v1.0", "--set", "squeeze_ratio=2"], ["squeeze_ratio", "(0, 1]"]),
        (["--preset", "v1.0", "--set", "bypass=bogus"], ["bypass", "complex"]),
        (["--preset", "v1.0", "--set", "width=3"], ["unknown spec field", "width"]),
        (["--preset", "v1.0", "--set", "pool_after=5"], ["pool_after", "'5'"]),
        (["--preset", "v1.0", "--set", "freq=x"], ["config.model.freq", "an integer >= 1", "'x'"]),
        (["--preset", "v1.0", "--set", "pool_after=('fire12',)"], ["pool_after", "fire12"]),
        (["--preset", "v1.0", "--set", "squeeze_ratio"], ["FIELD=VALUE"]),
        (["--preset", "v1.0", "--image-size", "16"], ["collapses"]),
        (["--preset", "v1.0", "--image-size", "0"], ["--image-size"]),
        (["--config", "no/such/experiment.py"], ["does not exist"]),
        ([f"--config={V1_0}:solver=adam"], ["solver", "paper", "release"]),
        ([f"--config={V1_1}:sr=0.5"], ["'sr'", "runlocal"]),
    ],
)
def test_errors_name_the_field(capsys, argv, names):
    err = describe_error(capsys, *argv)
    for name in names:
        assert name in err


def test_argparse_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main([])  # neither --preset nor --config
    assert e.value.code == 2
    assert "--preset" in capsys.readouterr().err


def test_runs_as_module():
    # The `if __name__ == "__main__"` entry point, error path included (status 2, no traceback).
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "sqzexplore.describe", "--preset", "v1.0", "--set", "freq=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: config.model: freq must be an integer >= 1")
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ ImageNet experiments
@pytest.mark.parametrize(
    "path, params, macs_227",
    [(V1_0, 1_248_424, 832_667_936), (V1_1, 1_235_496, 387_747_520)],
)
def test_imagenet_configs_describe(capsys, path, params, macs_227):
    d = describe_json(capsys, f"--config={path}")
    assert d["params"] == params
    assert d["image_size"] == 227  # random 227x227 crops, as in Caffe
    assert d["macs"] == macs_227
    d224 = describe_json(capsys, f"--config={path}", "--image-size", "224")
    assert d224["macs"] == {V1_0: 818_924_576, V1_1: 349_151_936}[path]


def test_v1_0_paper_recipe():
    c = load_config_file(V1_0)
    spec = spec_from_config(c)
    assert spec.name == "v1.0" and spec.init == "caffe" and spec.image_size == 227
    assert (c.data.name, c.data.augment) == ("imagenet2012", "paper")
    assert (c.batch_size, c.num_steps) == (512, 170_000)
    o = c.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay) == ("sgd", 0.04, 0.9, 2e-4)
    assert (o.schedule, o.power) == ("poly", 1.0)
    assert Durations.from_config(c, train_size=1_281_167).total_steps == 170_000


def test_v1_0_release_solver():
    c = load_config_file(V1_0, "solver=release")
    assert (c.optim.lr, c.optim.power, c.num_steps, c.batch_size) == (0.08, 0.5, 85_000, 1024)
    assert spec_from_config(c) == spec_from_config(load_config_file(V1_0))


def test_v1_1_recipe():
    c = load_config_file(V1_1)
    assert spec_from_config(c).name == "v1.1"
    assert (c.optim.lr, c.optim.power, c.num_steps, c.batch_size) == (0.04, 1.0, 170_000, 512)
    with pytest.raises(ConfigError, match="solver"):
        load_config_file(V1_1, "solver=release")


@pytest.mark.parametrize(
    "path, arg", [(V1_0, "runlocal"), (V1_0, "runlocal,solver=release"), (V1_1, "runlocal")]
)
def test_runlocal_is_the_same_experiment_shrunk(path, arg):
    full = load_config_file(path, arg.replace("runlocal", "runlocal=false"))
    local = load_config_file(path, arg)
    # The smoke run builds exactly the real model with the real optimiser...
    assert spec_from_config(local) == spec_from_config(full)
    assert local.optim.to_dict() == full.optim.to_dict()
    assert local.data.augment == full.data.augment
    # ...on synthetic data, a batch the 4 fake test devices can share, and a few steps.
    assert local.data.name == "synthetic"
    assert local.batch_size % 4 == 0 and local.eval_batch_size % 4 == 0
    assert local.batch_size <= 16 and 0 < local.num_steps <= 10
    assert (
        Durations.from_config(local, local.data.synthetic_train_size).total_steps == local.num_steps
    )


# ------------------------------------------------------------------ spec-field metadata
def test_every_spec_field_carries_its_help_type_and_range():
    infos = field_infos()
    assert list(infos) == [f.name for f in dataclasses.fields(SqueezeNetSpec)]
    for name, info in infos.items():
        assert info.help and info.kind in (int, float, bool, str, tuple), name
    # The same metadata is what `sqz train --help` says and what wandb's design fields are.
    assert {k: v for k, v in KEY_HELP.items() if k.startswith("model.")} == {
        f"model.{k}": v.line for k, v in infos.items()
    }
    assert runlog.DESIGN_KEYS == DESIGN_FIELDS
    assert {"squeeze_ratio", "pct_3x3", "pool_after", "bypass"} <= set(DESIGN_FIELDS)
    assert "dtype" not in DESIGN_FIELDS and "name" not in DESIGN_FIELDS


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("squeeze_ratio", 0.0, "squeeze_ratio must be in (0, 1], got 0.0"),
        ("pct_3x3", 1.5, "pct_3x3 must be in [0, 1], got 1.5"),
        ("pct_3x3", "half", "pct_3x3 must be a number in [0, 1], got 'half'"),
        ("dropout", 1.0, "dropout must be in [0, 1), got 1.0"),
        ("stem_padding", -1, "stem_padding must be an integer >= 0, got -1"),
        ("freq", 1.5, "freq must be an integer >= 1, got 1.5"),
        ("bypass", "all", "bypass must be one of ('none', 'simple', 'complex'), got 'all'"),
    ],
)
def test_range_errors_name_the_field_and_the_allowed_range(field, value, message):
    with pytest.raises(SpecError) as err:
        preset("v1.0", **{field: value})
    assert str(err.value) == message


def test_the_table_ends_with_the_design_dimensions(capsys):
    assert main(["--preset", "digits", "--set", "squeeze_ratio=0.25"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("design: ") and "squeeze_ratio=0.25" in last
    assert all(f"{k}=" in last for k in DESIGN_FIELDS)
