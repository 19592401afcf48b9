"""One override path for typed configs (`config.apply_overrides`): sweep trials, a sweep's fixed
values and space checks, and `sqz describe --set` all set values through it; and one parser from
text to a typed value (`overrides.parse_value`): experiment arguments, `sqz train
--config.KEY=VALUE` and `sqz describe --set` read the same text as the same value, or refuse it
with the same error."""

import json
import os

import pytest

from sqzexplore.config import (
    ConfigError,
    UnknownKeyError,
    apply_overrides,
    base_config,
    load_config_file,
    typed_config,
)
from sqzexplore.describe import apply_spec_overrides
from sqzexplore.models.spec import SpecError, preset
from sqzexplore.sweep.runconfig import trial_config
from sqzexplore.sweep.space import SweepDefinition, SweepError, categorical, config_json
from sqzexplore.sweep.sweepfile import check_against_config

DEFN = SweepDefinition(
    name="t",
    space={"model.squeeze_ratio": categorical(0.25, 1)},
    objectives=[("final.top1", "maximize")],
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_json_config_regains_its_field_types():
    config = load_config_file(
        os.path.join(ROOT, "experiments", "digits", "squeezenet.py"), "runlocal"
    )
    as_json = config_json(config)
    assert config_json(typed_config(as_json)) == as_json
    with pytest.raises(UnknownKeyError) as err:
        typed_config({**as_json, "optimiser": {"lr": 0.1}})
    assert err.value.key == "optimiser" and "optim" in err.value.known


def test_trial_points_go_through_the_typed_path():
    base = config_json(base_config())
    # An integer for a float field is stored as the float the field holds.
    c = trial_config(base, DEFN, {"model.squeeze_ratio": 1}, 0, "p0-s0")
    assert c["model"]["squeeze_ratio"] == 1.0 and isinstance(c["model"]["squeeze_ratio"], float)
    with pytest.raises(ConfigError, match=r"config\.model\.bypass must be one of"):
        trial_config(base, DEFN, {"model.bypass": 3}, 0, "p0-s0")
    with pytest.raises(UnknownKeyError):
        trial_config(base, DEFN, {"model.squeez_ratio": 0.5}, 0, "p0-s0")


def test_unknown_sweep_keys_suggest_the_close_match_once():
    bad = SweepDefinition(
        name="t",
        space={"model.squeez_ratio": categorical(0.5)},
        objectives=[("final.top1", "maximize")],
    )
    with pytest.raises(SweepError) as err:
        check_against_config(bad, base_config())
    message = str(err.value)
    assert message.count("did you mean") == 1
    assert "did you mean 'model.squeeze_ratio'?" in message
    assert "(keys under model: " in message and "pct_3x3" in message


def test_describe_set_uses_the_same_path():
    spec = apply_spec_overrides(preset("digits"), ["squeeze_ratio=1", "pool_after=fire3"])
    assert spec.squeeze_ratio == 1.0 and spec.pool_after == ("fire3",)
    with pytest.raises(ConfigError, match=r"config\.model\.freq must be an integer >= 1, got '1"):
        apply_spec_overrides(preset("digits"), ["freq=1.5"])
    with pytest.raises(SpecError, match="did you mean 'squeeze_ratio'"):
        apply_spec_overrides(preset("digits"), ["squeez_ratio=1"])
    config = base_config()
    with pytest.raises(ConfigError, match=r"config\.model\.freq must be an integer >= 1"):
        apply_overrides(config, {"model.freq": 1.5})


def test_train_overrides_use_the_same_path(monkeypatch):
    """`sqz train --config.KEY=VALUE`: the text read by the field's type (`parse_override`),
    the value set through `apply_overrides`; the same errors as the other paths."""
    from sqzexplore import config as config_module
    from sqzexplore.train.cli import UsageError, parse_args

    seen = []
    real = config_module.apply_overrides
    monkeypatch.setattr(
        "sqzexplore.train.cli.apply_overrides", lambda c, o: seen.append(dict(o)) or real(c, o)
    )
    tiny = f"--config={ROOT}/tests/data/tiny_digits.py"
    argv = [tiny, "--workdir=/nonexistent/w", "--config.model.pool_after=fire3,fire5"]
    argv += ["--config.batch_size", "32", "--noconfig.model.batch_norm", "--config.optim.lr=1e-3"]
    argv += ["--config.xla_gpu_autotune_level=2", "--config.model.bypass=simple"]
    config, workdir = parse_args(argv)
    assert workdir == "/nonexistent/w"
    assert config.model.pool_after == ("fire3", "fire5") and config.batch_size == 32
    assert config.model.batch_norm is False and config.optim.lr == 1e-3
    assert config.xla_gpu_autotune_level == 2 and config.model.bypass == "simple"
    assert seen and seen[-1]["batch_size"] == 32  # through the one override path
    parsed, _ = parse_args([tiny, "--workdir=w", "--config.model.pool_after=('fire4',)"])
    assert parsed.model.pool_after == ("fire4",)
    bad = {
        "--config.batch_size=abc": "config.batch_size must be an integer",
        "--config.model.squeeze_ratio=x": "config.model.squeeze_ratio must be",
        "--config.model.batch_norm=maybe": "must be true or false",
        "--config.optim=3": "is a section",
        "--config.num_epochs": "needs a value",
        "--noconfig.batch_size": "is not a boolean",
        "stray": "unexpected argument",
    }
    for arg, message in bad.items():
        with pytest.raises((ConfigError, UsageError), match=message):
            parse_args([tiny, "--workdir=w", arg])
    with pytest.raises(UnknownKeyError, match="did you mean 'model.squeeze_ratio'"):
        parse_args([tiny, "--workdir=w", "--config.model.squeez_ratio=0.5"])


# ---------------------------------------------------------------- one parser for text, everywhere
TINY = os.path.join(ROOT, "tests", "data", "tiny_digits.py")
WIDTHS = ",".join(["(4,8,8)"] * 8)  # explicit widths for tiny_digits' 8 Fire modules
BOOL_ERROR = "must be true or false (or yes/no, on/off, 1/0), got 'maybe'"

# (spec field, text, the value, or the error both `sqz describe --set` and `sqz train
# --config.model.FIELD` give). Errors come from the parser (the text is not of the field's type)
# or from the spec's validation (`config.model: ...`), the same on both paths.
SPEC_TABLE = [
    ("batch_norm", "true", True),
    ("batch_norm", "Yes", True),
    ("batch_norm", "on", True),
    ("batch_norm", "1", True),
    ("batch_norm", "FALSE", False),
    ("batch_norm", "no", False),
    ("batch_norm", "off", False),
    ("batch_norm", "0", False),
    ("batch_norm", "maybe", f"config.model.batch_norm {BOOL_ERROR}"),
    ("freq", "3", 3),
    ("freq", " 4 ", 4),
    ("freq", "1.5", "config.model.freq must be an integer >= 1, got '1.5'"),
    ("freq", "true", "config.model.freq must be an integer >= 1, got 'true'"),
    ("freq", "0", "config.model: freq must be an integer >= 1, got 0"),
    ("squeeze_ratio", "0.5", 0.5),
    ("squeeze_ratio", "1", 1.0),
    ("squeeze_ratio", "2.5e-1", 0.25),
    ("squeeze_ratio", "half", "config.model.squeeze_ratio must be a number in (0, 1], got 'half'"),
    ("squeeze_ratio", "2", "config.model: squeeze_ratio must be in (0, 1], got 2.0"),
    ("pool_after", "fire4,fire8", ("fire4", "fire8")),
    ("pool_after", "('fire4','fire8')", ("fire4", "fire8")),
    ("pool_after", "(fire4, fire8)", ("fire4", "fire8")),
    ("pool_after", "[fire4,fire8]", ("fire4", "fire8")),
    ("pool_after", "fire4", ("fire4",)),
    ("pool_after", "'fire4'", ("fire4",)),
    ("pool_after", "()", ()),
    ("pool_after", "fire12", "config.model: pool_after has unknown position 'fire12'; allowed: "),
    ("pool_after", "{1: 2}", "config.model.pool_after must be a tuple such as"),
    ("fire_widths", "none", None),
    ("fire_widths", "None", None),
    ("fire_widths", WIDTHS, ((4, 8, 8),) * 8),
    ("fire_widths", f"({WIDTHS})", ((4, 8, 8),) * 8),
    ("fire_widths", "(4,8,8)", "config.model: fire_widths must be ((squeeze, expand1x1, "),
    ("fire_widths", "(4,8,8),(4,8,8)", "config.model: fire_widths has 2 entries but num_fire is 8"),
    ("fire_widths", "maybe", "config.model: fire_widths must be ((squeeze, expand1x1, "),
    ("bypass", "simple", "simple"),
    ("bypass", "'complex'", "complex"),
    ("bypass", "bogus", "config.model: bypass must be one of ('none', 'simple', 'complex')"),
    ("name", "none", "none"),  # a string field that may not be None: the text
    ("name", '"quoted"', "quoted"),
    ("dtype", "bfloat16", "bfloat16"),
]


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def via_describe(capsys, field: str, text: str):
    """`sqz describe --config=tiny_digits.py --set FIELD=TEXT --json`: the spec's value, or the
    error line."""
    from sqzexplore.describe import main

    status = main([f"--config={TINY}", "--set", f"{field}={text}", "--json"])
    out = capsys.readouterr()
    if status != 0:
        assert status == 2 and out.err.startswith("error: ") and out.err.count("\n") == 1
        return out.err.removeprefix("error: ").rstrip("\n")
    return _tuples(json.loads(out.out)["spec"][field])


def via_train(argv: list[str], key: str):
    """`sqz train` arguments read and checked as `sqz train` does before it loads anything: the
    config's value at `key`, or the error message."""
    from sqzexplore.config import validate_config
    from sqzexplore.train.cli import parse_args

    try:
        config, _ = parse_args(argv)
        validate_config(config)
    except (ConfigError, SpecError) as e:
        return str(e)
    value = config
    for part in key.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize("field, text, expected", SPEC_TABLE)
def test_describe_set_and_config_override_read_text_alike(capsys, field, text, expected):
    described = via_describe(capsys, field, text)
    trained = via_train(
        [f"--config={TINY}", "--workdir=w", f"--config.model.{field}={text}"], f"model.{field}"
    )
    assert described == trained  # the same value, or the same error
    if isinstance(expected, str) and expected.startswith("config.model"):
        assert isinstance(trained, str) and trained.startswith(expected), trained
    else:
        assert trained == expected and type(trained) is type(expected), trained


# An experiment argument is read by the type of its default; the experiment below sends each
# argument to a config key of that type, so `FILE:ARG=TEXT` and `--config.KEY=TEXT` can be
# compared. (argument, its default, the config key, text, the value or the error's tail)
EXPERIMENT = """
from sqzexplore.config import base_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg, flag=False, count=64, rate=0.1, names=("a",), label="x", runlocal=False)
    c = base_config()
    c.optim.nesterov, c.batch_size, c.optim.lr = a.flag, a.count, a.rate
    c.wandb.tags, c.wandb.project = a.names, a.label
    return c
"""
ARG_TABLE = [
    ("flag", "optim.nesterov", "true", True),
    ("flag", "optim.nesterov", "YES", True),
    ("flag", "optim.nesterov", "on", True),
    ("flag", "optim.nesterov", "0", False),
    ("flag", "optim.nesterov", "off", False),
    ("flag", "optim.nesterov", "maybe", BOOL_ERROR),
    ("count", "batch_size", "32", 32),
    ("count", "batch_size", "1.5", "must be an integer, got '1.5'"),
    ("count", "batch_size", "x", "must be an integer, got 'x'"),
    ("rate", "optim.lr", "1e-3", 1e-3),
    ("rate", "optim.lr", "2", 2.0),
    ("rate", "optim.lr", "fast", "must be a number, got 'fast'"),
    ("names", "wandb.tags", "a,b", ("a", "b")),
    ("names", "wandb.tags", "(a, b)", ("a", "b")),
    ("names", "wandb.tags", "('a','b')", ("a", "b")),
    ("names", "wandb.tags", "a", ("a",)),
    ("names", "wandb.tags", "()", ()),
    ("label", "wandb.project", "abc", "abc"),
    ("label", "wandb.project", "'abc'", "abc"),
    ("label", "wandb.project", "none", "none"),
]


@pytest.mark.parametrize("arg, key, text, expected", ARG_TABLE)
def test_experiment_arguments_read_text_as_config_overrides_do(tmp_path, arg, key, text, expected):
    experiment = tmp_path / "experiment.py"
    experiment.write_text(EXPERIMENT)
    from_arg = via_train([f"--config={experiment}:{arg}={text}", "--workdir=w"], key)
    from_flag = via_train([f"--config={experiment}", "--workdir=w", f"--config.{key}={text}"], key)
    if isinstance(expected, str) and "must be" in expected:
        # The same error, each naming its own field: the argument, or the config key.
        assert from_arg.endswith(f"experiment argument {arg!r} {expected}"), from_arg
        assert from_flag == f"config.{key} {expected}"
    else:
        assert from_arg == from_flag == expected
        assert type(from_arg) is type(from_flag) is type(expected)


def test_experiment_arguments_split_at_top_level_commas():
    from sqzexplore.config import parse_arg

    defaults = dict(names=("a",), runlocal=False, rate=0.1)
    a = parse_arg("names=b,c,runlocal,rate=0.5", **defaults)  # a tuple's items follow its key
    assert (a.names, a.runlocal, a.rate) == (("b", "c"), True, 0.5)
    a = parse_arg("names=(b, 'c,d'),runlocal=no", **defaults)
    assert (a.names, a.runlocal) == (("b", "c,d"), False)
    with pytest.raises(ConfigError, match="unknown experiment argument 'c'; allowed: names,"):
        parse_arg("rate=0.5,c", **defaults)  # only a tuple takes further items
    with pytest.raises(ConfigError, match="experiment argument 'names' needs a value"):
        parse_arg("names", **defaults)


def test_auto_settings_take_the_same_boolean_words():
    from sqzexplore.config import tristate

    config = via_train([f"--config={TINY}", "--workdir=w", "--config.progress=yes"], "progress")
    assert config is True
    assert [tristate(w, "progress") for w in ("auto", "on", "No", "1", False)] == [
        None,
        True,
        False,
        True,
        False,
    ]
    with pytest.raises(ConfigError, match=r"config\.progress must be 'auto' or true or false \(or"):
        tristate("sometimes", "progress")
    argv = [f"--config={TINY}", "--workdir=w", "--config.progress=sometimes"]
    message = via_train(argv, "progress")
    assert message.startswith("config.progress must be 'auto' or true or false")


def test_none_where_a_field_may_be_none():
    text = {"--config.data.data_dir=none": None, "--config.xla_gpu_autotune_level=None": None}
    text |= {"--config.xla_gpu_autotune_level=3": 3, "--config.wandb.project=none": "none"}
    for flag, value in text.items():
        key = flag.removeprefix("--config.").partition("=")[0]
        assert via_train([f"--config={TINY}", "--workdir=w", flag], key) == value, flag
    message = via_train(
        [f"--config={TINY}", "--workdir=w", "--config.xla_gpu_autotune_level=x"],
        "xla_gpu_autotune_level",
    )
    assert message == "config.xla_gpu_autotune_level must be an integer or none, got 'x'"
