"""One override path for typed configs (`config.apply_overrides`): sweep trials, a sweep's fixed
values and space checks, and `sqz describe --set` all set values through it."""

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
    with pytest.raises(SpecError, match=r"config\.model\.freq must be an integer >= 1, got 1\.5"):
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
