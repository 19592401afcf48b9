"""Bad input across the whole `sqz` CLI: each row is a clear error, never a traceback, and changes
nothing on disk.

One table (`BAD_INPUT`) over every command: design points (`--config.model.*`), experiment
files, config overrides, data, workdirs, sweep files and flags, storage, compression settings,
.sqz files and bench arguments. Every row runs in-process through `sqzexplore.cli.main` (as the
`sqz` console script does) inside a prepared directory tree, and must

- exit non-zero (2 for bad input unless the row says otherwise),
- print a message of at most three lines (argparse's usage lines aside) that contains the row's
  words: the field or file, and the allowed values,
- print no traceback, and
- leave the tree exactly as it was (every path, file content and mode compared).

A few rows need a state a test process cannot fake in-process (a GPU granted by SLURM): those
are marked below; the read-only workdir has its own test, which as root runs as `nobody`. The
`.sqz` rows reuse the fake finished run of tests/test_compress_cli.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import shutil
from pathlib import Path

import pytest
from test_compress_cli import _rebuild, fake_finished_run, random_trees

from sqzexplore import rundir
from sqzexplore.cli import COMMANDS, main
from sqzexplore.compress import (
    encode_sqz,
    flatten_params,
    make_masks,
    quantize_params,
    unflatten_params,
)
from sqzexplore.config import load_config_file, spec_from_config
from sqzexplore.sweep import cli as sweep_cli
from sqzexplore.train import programs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "data", "tiny_digits.py")
SR_SWEEP = os.path.join(REPO, "sweeps", "squeeze_ratio.py")

# Files of the prepared tree ({w} in a row is its root).
FILES = {
    "syntax.py": "def get_config(arg=None:\n    return None\n",
    "noget.py": '"""An experiment without get_config."""\nX = 1\n',
    "raising.py": "def get_config(arg=None):\n    return {}['model']\n",
    "returns_dict.py": "def get_config(arg=None):\n    return {'model': {}}\n",
    "typo.py": (
        "from sqzexplore.config import base_config\n\n\n"
        "def get_config(arg=None):\n    c = base_config()\n    c.optim.learning_rate = 0.1\n"
        "    return c\n"
    ),
    "afile": "not a directory\n",
    "sweep_syntax.py": '"""A sweep."""\ndef get_sweep(arg=None:\n    pass\n',
    "sweep_nodoc.py": "def get_sweep(arg=None):\n    return None\n",
    "garbage.sqz": "x" * 200,
}


def train_row(*overrides: str, config: str = TINY, workdir: str = "{w}/run_new") -> list[str]:
    return ["train", f"--config={config}", f"--workdir={workdir}", *overrides]


def over(key: str, value: str) -> list[str]:
    return train_row(f"--config.{key}={value}")


# (id, argv, words the message must contain[, environment changes (None: unset)])
BAD_INPUT: list[tuple] = [
    # ---------------------------------------------------------------- design point (spec)
    ("spec-sr-zero", over("model.squeeze_ratio", "0"), ["squeeze_ratio", "(0, 1]"]),
    ("spec-sr-high", over("model.squeeze_ratio", "1.5"), ["squeeze_ratio", "(0, 1]"]),
    ("spec-sr-nan", over("model.squeeze_ratio", "nan"), ["squeeze_ratio", "(0, 1]"]),
    ("spec-pct-high", over("model.pct_3x3", "1.5"), ["pct_3x3", "[0, 1]"]),
    ("spec-bypass", over("model.bypass", "diagonal"), ["bypass", "simple", "complex"]),
    ("spec-pool-unknown", over("model.pool_after", "fire99"), ["pool_after", "fire99", "conv1"]),
    ("spec-image-tiny", over("model.image_size", "2"), ["image_size"]),
    (
        "spec-image-huge",
        over("model.image_size", "100000"),
        ["image_size=100000", "TiB", "available host RAM"],
    ),
    ("spec-classes-zero", over("model.num_classes", "0"), ["num_classes", ">= 1"]),
    ("spec-dtype", over("model.dtype", "int8"), ["dtype", "float32", "bfloat16"]),
    ("spec-init", over("model.init", "xavier"), ["init", "caffe", "torchvision"]),
    ("spec-dropout", over("model.dropout", "1.0"), ["dropout", "[0, 1)"]),
    ("spec-num-fire", over("model.num_fire", "-1"), ["num_fire"]),
    ("spec-freq", over("model.freq", "0"), ["freq", ">= 1"]),
    ("spec-fire-widths", over("model.fire_widths", "((1,2,3),)"), ["fire_widths"]),
    ("spec-stem-kernel", over("model.stem_kernel", "-1"), ["stem_kernel"]),
    # ---------------------------------------------------------------- experiment files
    ("file-missing", train_row(config="{w}/nosuch.py"), ["nosuch.py", "does not exist"]),
    ("file-directory", train_row(config="{w}/adir"), ["adir", "not a file"]),
    ("file-syntax", train_row(config="{w}/syntax.py"), ["syntax.py line 1", "syntax error"]),
    ("file-no-get-config", train_row(config="{w}/noget.py"), ["noget.py", "get_config"]),
    ("file-raises", train_row(config="{w}/raising.py"), ["raising.py line 2", "KeyError"]),
    ("file-returns-dict", train_row(config="{w}/returns_dict.py"), ["ConfigDict", "dict"]),
    (
        "file-unknown-key",
        train_row(config="{w}/typo.py"),
        ["unknown config key optim.learning_rate", "known keys of optim", " lr,"],
    ),
    ("file-arg-unknown", train_row(config=TINY + ":nosuch=1"), ["nosuch", "allowed", "epochs"]),
    ("file-arg-type", train_row(config=TINY + ":epochs=lots"), ["epochs", "a number", "lots"]),
    ("file-arg-no-value", train_row(config=TINY + ":epochs"), ["epochs", "needs a value"]),
    ("describe-syntax", ["describe", "--config={w}/syntax.py"], ["syntax.py line 1", "syntax"]),
    ("describe-missing", ["describe", "--config={w}/nosuch.py"], ["nosuch.py", "does not exist"]),
    ("describe-raises", ["describe", "--config={w}/raising.py"], ["raising.py line 2"]),
    ("describe-preset", ["describe", "--preset", "v9"], ["v9", "v1.0", "digits"]),
    ("describe-set", ["describe", "--preset", "v1.0", "--set", "width=3"], ["width", "unknown"]),
    # ---------------------------------------------------------------- command line
    ("train-no-config", ["train", "--workdir={w}/run_new"], ["--config", "required"]),
    ("train-no-workdir", ["train", f"--config={TINY}"], ["--workdir", "required"]),
    ("train-flag-typo", train_row("--wrokdir=x"), ["wrokdir", "workdir"]),
    ("train-extra-arg", train_row("extra"), ["extra", "--config.KEY=VALUE"]),
    ("command-unknown", ["tarin"], ["unknown command tarin", "did you mean train?"]),
    (
        "data-prepare-digits",
        ["data", "prepare", f"--config={TINY}", "--out={w}/copy"],
        ["config.data.name='digits'", "only TFDS datasets"],
    ),
    # ---------------------------------------------------------------- overrides
    (
        "key-typo",
        over("model.squeez_ratio", "0.3"),
        ["unknown config key model.squeez_ratio; did you mean model.squeeze_ratio?"],
    ),
    ("key-unknown", over("nosuch", "1"), ["unknown config key nosuch", "batch_size"]),
    ("key-section", over("optim", "3"), ["--config.optim", "section", "optim."]),
    ("value-type", over("batch_size", "abc"), ["config.batch_size", "abc"]),
    ("lr-nan", over("optim.lr", "nan"), ["config.optim.lr", "(0, 100]"]),
    ("lr-zero", over("optim.lr", "0"), ["config.optim.lr", "(0, 100]"]),
    ("lr-huge", over("optim.lr", "1e9"), ["config.optim.lr", "(0, 100]"]),
    ("wd-nan", over("optim.weight_decay", "nan"), ["config.optim.weight_decay", "[0, inf)"]),
    ("wd-negative", over("optim.weight_decay", "-1"), ["config.optim.weight_decay", "[0, inf)"]),
    ("momentum-one", over("optim.momentum", "1.0"), ["config.optim.momentum", "[0, 1)"]),
    ("momentum-nan", over("optim.momentum", "nan"), ["config.optim.momentum", "[0, 1)"]),
    ("b1-high", over("optim.b1", "1.5"), ["config.optim.b1", "[0, 1)"]),
    ("b2-nan", over("optim.b2", "nan"), ["config.optim.b2", "[0, 1)"]),
    ("warmup-nan", over("optim.warmup_epochs", "nan"), ["config.optim.warmup_epochs", "finite"]),
    ("warmup-negative", over("optim.warmup_epochs", "-1"), ["config.optim.warmup_epochs"]),
    ("clip-inf", over("optim.grad_clip_norm", "inf"), ["config.optim.grad_clip_norm", "finite"]),
    ("smoothing-one", over("optim.label_smoothing", "1"), ["label_smoothing", "[0, 1)"]),
    ("end-lr-high", over("optim.end_lr_fraction", "2"), ["end_lr_fraction", "[0, 1]"]),
    ("power-zero", over("optim.power", "0"), ["config.optim.power", "(0, inf)"]),
    ("optimizer-name", over("optim.name", "adagrad"), ["config.optim.name", "sgd", "adamw"]),
    ("schedule", over("optim.schedule", "step"), ["config.optim.schedule", "poly", "cosine"]),
    ("epochs-inf", over("num_epochs", "inf"), ["config.num_epochs", "finite"]),
    ("epochs-zero", over("num_epochs", "0"), ["config.num_epochs", "> 0"]),
    ("steps-negative", over("num_steps", "-1"), ["config.num_steps", ">= 0"]),
    ("batch-zero", over("batch_size", "0"), ["config.batch_size", ">= 1"]),
    ("batch-split", over("batch_size", "30"), ["config.batch_size=30", "device count 4"]),
    ("eval-batch-split", over("eval_batch_size", "30"), ["config.eval_batch_size=30", "4"]),
    ("keep-zero", over("keep_checkpoints", "0"), ["config.keep_checkpoints", ">= 1"]),
    ("eval-every-zero", over("eval_every_epochs", "0"), ["config.eval_every_epochs", "> 0"]),
    ("log-every-zero", over("log_every_steps", "0"), ["config.log_every_steps", ">= 1"]),
    ("wandb-mode", over("wandb.mode", "cloud"), ["config.wandb.mode", "offline"]),
    ("progress", over("progress", "maybe"), ["config.progress", "auto"]),
    ("platform-name", over("platform", "quantum"), ["config.platform", "cpu, gpu, tpu"]),
    (
        "platform-absent",
        over("platform", "gpu"),
        ["config.platform=gpu", 'pip install -e ".[cuda12]'],
    ),
    (
        "slurm-gpus-cpu-jax",
        over("seed", "1"),
        ["SLURM_GPUS_ON_NODE=2", "only CPU devices", 'pip install -e ".[cuda12]"'],
        {"SLURM_GPUS_ON_NODE": "2", "JAX_PLATFORMS": None},
    ),
    (
        "cuda-visible-cpu-jax",
        over("seed", "2"),
        ["CUDA_VISIBLE_DEVICES=0", "only CPU devices", "config.platform=cpu"],
        {"CUDA_VISIBLE_DEVICES": "0", "JAX_PLATFORMS": None},
    ),
    # ---------------------------------------------------------------- data
    ("data-name", over("data.name", "no_such_dataset_xyz"), ["no_such_dataset_xyz", "digits"]),
    ("data-augment", over("data.augment", "mixup"), ["config.data.augment", "crop_flip"]),
    ("data-classes", over("model.num_classes", "7"), ["num_classes=10", "7"]),
    ("data-fraction", over("data.digits_test_fraction", "2"), ["digits_test_fraction", "(0, 1)"]),
    ("data-on-device", over("data.on_device", "false"), ["on_device", "digits"]),
    (
        "data-synthetic-size",
        train_row("--config.data.name=synthetic", "--config.data.synthetic_train_size=0"),
        ["synthetic_train_size", ">= 1"],
    ),
    (
        "data-unprepared-tfds",
        train_row("--config.data.name=mnist", "--config.data.data_dir={w}/adir"),
        ["mnist", "{w}/adir"],
    ),
    (
        "data-dir-is-file",
        train_row("--config.data.name=mnist", "--config.data.data_dir={w}/afile"),
        ["data_dir", "{w}/afile"],
    ),
    # ---------------------------------------------------------------- workdir
    ("workdir-file", train_row(workdir="{w}/afile"), ["--workdir", "afile", "is a file"]),
    ("workdir-under-file", train_row(workdir="{w}/afile/run"), ["afile is a file", "--workdir"]),
    (
        "workdir-other-config",
        train_row(workdir="{w}/other_run"),
        ["{w}/other_run", "different config", "model.squeeze_ratio"],
    ),
    (
        "cache-dir-file",
        train_row("--config.compilation_cache_dir={w}/afile"),
        ["config.compilation_cache_dir", "afile", "is a file"],
    ),
    # ---------------------------------------------------------------- sweeps
    ("sweep-missing", ["sweep", "run", "{w}/nosweep.py"], ["nosweep.py", "does not exist"]),
    ("sweep-syntax", ["sweep", "run", "{w}/sweep_syntax.py"], ["sweep_syntax.py", "syntax"]),
    ("sweep-no-docstring", ["sweep", "run", "{w}/sweep_nodoc.py"], ["docstring"]),
    (
        "sweep-arg",
        ["sweep", "run", SR_SWEEP, "--arg", "nosuch=1", "--workdir", "{w}/sw"],
        ["nosuch", "allowed"],
    ),
    (
        "sweep-storage",
        ["sweep", "run", SR_SWEEP, "--storage", "bogus://x", "--workdir", "{w}/sw"],
        ["--storage", "bogus"],
    ),
    ("sweep-workers", ["sweep", "run", SR_SWEEP, "--workers", "0"], ["--workers", ">= 1"]),
    (
        "sweep-array",
        ["sweep", "run", SR_SWEEP, "--slurm", "--array", "0", "--workdir", "{w}/sw"],
        ["--array", ">= 1"],
    ),
    (
        "sweep-time",
        ["sweep", "run", SR_SWEEP, "--slurm", "--time", "4h", "--workdir", "{w}/sw"],
        ["--time", "HH:MM:SS"],
    ),
    (
        "sweep-mem",
        ["sweep", "run", SR_SWEEP, "--slurm", "--mem", "lots", "--workdir", "{w}/sw"],
        ["--mem", "32G"],
    ),
    (
        "sweep-runner",
        ["sweep", "run", SR_SWEEP, "--runner", "nosuch_mod:fn", "--workdir", "{w}/sw"],
        ["nosuch_mod"],
    ),
    ("sweep-workdir-file", ["sweep", "run", SR_SWEEP, "--workdir", "{w}/afile"], ["afile"]),
    ("sweep-status-not-sweep", ["sweep", "status", "{w}/adir"], ["adir"]),
    ("sweep-worker-not-sweep", ["sweep", "worker", "{w}/adir"], ["adir", "not a sweep directory"]),
    (
        "sweep-export-wandb-missing",
        ["sweep", "export-wandb", "{w}/nosweep.py", "--output", "{w}/out.yaml"],
        ["nosweep.py", "does not exist"],
    ),
    ("sweep-report-not-sweep", ["sweep", "report", "{w}/adir"], ["adir", "not a sweep directory"]),
    # ---------------------------------------------------------------- compression
    ("compress-bits-high", ["compress", "--size-only", "--preset=v1.0", "--bits=9"], ["--bits"]),
    ("compress-bits-text", ["compress", "--size-only", "--preset=v1.0", "--bits=six"], ["--bits"]),
    (
        "compress-density",
        ["compress", "--size-only", "--preset=v1.0", "--bits=6", "--density=2"],
        ["--density", "(0, 1]"],
    ),
    ("compress-preset", ["compress", "--size-only", "--bits=6", "--preset=v9"], ["v9", "v1.0"]),
    ("compress-no-run", ["compress", "--workdir={w}/nosuch", "--bits=6"], ["--workdir", "nosuch"]),
    # ---------------------------------------------------------------- .sqz files
    (
        "sqz-garbage",
        ["compress", "--decode={w}/garbage.sqz", "--workdir={w}/run"],
        ["garbage.sqz", "not a .sqz file"],
    ),
    (
        "sqz-truncated",
        ["compress", "--decode={w}/truncated.sqz", "--workdir={w}/run"],
        ["truncated.sqz", "truncated"],
    ),
    (
        "sqz-huge-shape",
        ["compress", "--decode={w}/huge.sqz", "--workdir={w}/run"],
        ["huge.sqz", "corrupted .sqz header"],
    ),
    (
        "sqz-missing",
        ["compress", "--decode={w}/none.sqz", "--workdir={w}/run"],
        ["none.sqz", "does not exist"],
    ),
    # ---------------------------------------------------------------- export
    ("export-no-run", ["export", "--workdir={w}/nosuch", "--out={w}/x"], ["--workdir", "nosuch"]),
    (
        "export-sqz-truncated",
        ["export", "--sqz={w}/truncated.sqz", "--out={w}/x"],
        ["--sqz", "truncated.sqz", "truncated"],
    ),
    ("export-batch", ["export", "--preset=v1.1", "--batch=0", "--out={w}/x"], ["--batch", "0"]),
    ("export-layout", ["export", "--preset=v1.1", "--layout=hwcn", "--out={w}/x"], ["nhwc"]),
    # ---------------------------------------------------------------- bench
    ("bench-command", ["bench", "sprint"], ["sprint", "step"]),
    ("bench-latency-threads", ["bench", "latency", "--threads", "0"], ["--threads", "'0'"]),
    ("bench-batch", ["bench", "step", "--batch", "-4"], ["--batch", "-4"]),
    ("bench-batch-text", ["bench", "step", "--batch", "many"], ["--batch", "many"]),
    ("bench-dtype", ["bench", "step", "--dtype", "int3"], ["--dtype", "int3", "float32"]),
    ("bench-preset", ["bench", "step", "--preset", "v9"], ["--preset", "v9"]),
    ("bench-image-size", ["bench", "step", "--image-size", "0"], ["--image-size", "0"]),
    ("bench-steps", ["bench", "step", "--steps", "0"], ["--steps", "0"]),
]


def snapshot(root: str) -> dict[str, str]:
    """Every path under `root` (directories too) with its file's sha256 and its mode."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            path = os.path.join(directory, name)
            out[os.path.relpath(path, root)] = f"dir {os.stat(path).st_mode:o}"
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, root)] = f"{digest} {os.stat(path).st_mode:o}"
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> str:
    """The tree every row runs in (and against): experiment and sweep files good and broken, a
    plain file, an empty directory, a workdir holding another config, a fake finished run and
    .sqz files."""
    root = tmp_path_factory.mktemp("inputs")
    for name, text in FILES.items():
        (root / name).write_text(text)
    (root / "adir").mkdir()
    config = load_config_file(TINY)
    other = json.loads(config.to_json_best_effort())
    other["model"]["squeeze_ratio"] = 0.75
    (root / "other_run").mkdir()  # a workdir holding a run of another design point
    rundir.write_json(root / "other_run" / rundir.CONFIG_FILE, other)
    fake_finished_run(root / "run", config)
    spec = spec_from_config(config)
    params, stats = random_trees(spec)
    layers = quantize_params(params, make_masks(params, 0.5), 4)
    good = encode_sqz(
        spec.to_dict(),
        layers,
        unflatten_params({**flatten_params(params), **flatten_params(stats)}),
    )

    def huge(header):
        header["layers"][0]["shape"] = [10**6, 10**6, 3, 3]

    (root / "truncated.sqz").write_bytes(good[:-10])
    (root / "huge.sqz").write_bytes(_rebuild(good, huge))
    return str(root)


def refuse_to_compile(*args, **kwargs):
    raise AssertionError("bad input must be refused before the train step is built")


def run_row(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own exit on a malformed command line
        status = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def message_lines(err: str) -> list[str]:
    """The message without argparse's usage block (which lists the options, not the error)."""
    lines, in_usage = [], False
    for line in err.splitlines():
        if line.startswith("usage:"):
            in_usage = True
            continue
        if in_usage and (line.startswith(" ") or not line.strip()):
            continue
        in_usage = False
        if line.strip():
            lines.append(line)
    return lines


@pytest.mark.parametrize("row", BAD_INPUT, ids=[row[0] for row in BAD_INPUT])
def test_bad_input_is_a_clear_error_and_changes_nothing(world, capsys, monkeypatch, row):
    name, argv, words, *environ = row
    for key, value in (environ[0] if environ else {}).items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(world)  # default output paths (runs/...) would land in the tree
    # `sqz bench` finds benchmarks/ from the working directory, which is now outside the checkout.
    monkeypatch.setenv("SQZ_BENCHMARKS_DIR", os.path.join(REPO, "benchmarks"))
    monkeypatch.setattr(programs, "make_train_step", refuse_to_compile)
    before = snapshot(world)
    status, out, err = run_row([a.format(w=world) for a in argv], capsys)
    assert status == 2, (status, out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = message_lines(err)
    assert 1 <= len(lines) <= 3, err
    for word in words:
        assert word.format(w=world) in err, (word, err)
    assert snapshot(world) == before  # nothing created, changed or removed


def test_every_command_has_rows():
    """The table covers the CLI as it is: every `sqz` command and every `sqz sweep` sub-command
    (read from the real parsers, so a new command without a bad-input row fails here), and no
    two rows run the same command line."""
    rows = [row[1] for row in BAD_INPUT]
    assert set(COMMANDS) <= {argv[0] for argv in rows}, set(COMMANDS) - {a[0] for a in rows}
    (sub,) = (a for a in sweep_cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    covered = {argv[1] for argv in rows if argv[0] == "sweep"}
    assert set(sub.choices) <= covered, set(sub.choices) - covered
    assert len({row[0] for row in BAD_INPUT}) == len({tuple(argv) for argv in rows}) == len(rows)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot write: mode 0555. Root ignores modes, so as root the
    test runs as `nobody` meanwhile (real and effective uid; the saved uid stays 0, which lets
    it become root again after), on a directory under /tmp that `nobody` can reach (pytest's
    tmp_path is private to root). Nothing here needs `chattr`, so it never skips."""
    import tempfile

    root = tempfile.mkdtemp(prefix="sqz-ro-") if os.geteuid() == 0 else str(tmp_path)
    os.chmod(root, 0o755)
    ro = Path(root) / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        if os.geteuid() != 0:
            yield ro
            return
        nobody = pwd.getpwnam("nobody").pw_uid
        os.setresuid(nobody, nobody, 0)
        try:
            assert not os.access(ro, os.W_OK), "still able to write the read-only directory"
            yield ro
        finally:
            os.setresuid(0, 0, 0)
    finally:
        os.chmod(ro, 0o755)
        if root != str(tmp_path):
            shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("inside", [False, True], ids=["workdir", "its-parent"])
def test_read_only_workdir_is_refused(read_only_dir, tmp_path, capsys, monkeypatch, inside):
    """A workdir (or the directory it would be made in) that cannot be written: one line, before
    any data is loaded or anything is written."""
    monkeypatch.setattr(programs, "make_train_step", refuse_to_compile)
    workdir = read_only_dir / "run" if inside else read_only_dir
    before = snapshot(str(tmp_path))
    status, out, err = run_row(["train", f"--config={TINY}", f"--workdir={workdir}"], capsys)
    assert status == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"--workdir {workdir} is not writable" in err
    if inside:
        assert f"its existing parent {read_only_dir} is not writable" in err
    assert snapshot(str(tmp_path)) == before
