"""`sqz bench` and the benchmarks in benchmarks/: well-formed output, numbers, clear errors.

These check that the benchmarks run and report sensibly; they time nothing (benchmarks are not
timed tests). The numbers themselves live in benchmarks/RESULTS.md. The benchmarks are loaded
the way `sqz bench` loads them, from this checkout's benchmarks/ directory.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from sqzexplore import cli, optim
from sqzexplore.config import base_config, model_config, validate_config
from sqzexplore.train import init_state

REPO = Path(__file__).resolve().parents[1]
cli.load_benchmarks(REPO / "benchmarks")
bench_cli = importlib.import_module("benchmarks.cli")
compile_ahead = importlib.import_module("benchmarks.compile_ahead")
plan_module = importlib.import_module("benchmarks.plan")
profile = importlib.import_module("benchmarks.profile")
step_module = importlib.import_module("benchmarks.step")
torch_compare = importlib.import_module("benchmarks.torch_compare")


def _read(path) -> dict:
    return json.loads(path.read_text())


def _run_python(code: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter importing this checkout's sqzexplore (4 fake CPU devices
    come with the environment conftest.py set up)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=timeout,
    )  # fmt: skip


def test_help_imports_no_jax(tmp_path):
    """`sqz bench --help` parses before importing jax (importing it is what made the help take
    6 s; how long the help takes on a given machine is not asserted)."""
    code = (
        "import sys\n"
        "from sqzexplore.cli import main\n"
        "try:\n"
        "    main(['bench', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('jax', 'flax', 'optax', 'tensorflow') if m in sys.modules)\n"
        "print(heavy, file=sys.stderr)\n"
    )
    done = _run_python(code, cwd=REPO / "sqzexplore" / "models")  # found by walking up
    assert done.returncode == 0 and "compile-ahead" in done.stdout, done.stderr
    assert "--benchmarks-dir" in done.stdout
    assert done.stderr.strip() == "[]", done.stderr


def test_benchmarks_dir_is_found_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(cli.BENCHMARKS_ENV, raising=False)
    assert cli.find_benchmarks_dir(cwd=str(REPO / "tests" / "data")) == REPO / "benchmarks"
    with pytest.raises(cli.BenchmarksNotFound, match="no benchmarks/ directory in .* --bench"):
        cli.find_benchmarks_dir(cwd=str(tmp_path))
    with pytest.raises(cli.BenchmarksNotFound, match="--benchmarks-dir=.*not a benchmarks dir"):
        cli.find_benchmarks_dir(str(tmp_path), cwd=str(REPO))
    monkeypatch.setenv(cli.BENCHMARKS_ENV, str(REPO / "benchmarks"))
    assert cli.find_benchmarks_dir(cwd=str(tmp_path)) == REPO / "benchmarks"
    monkeypatch.setenv(cli.BENCHMARKS_ENV, str(tmp_path))
    with pytest.raises(cli.BenchmarksNotFound, match=cli.BENCHMARKS_ENV):
        cli.find_benchmarks_dir(cwd=str(REPO))


def test_outside_a_checkout_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(cli.BENCHMARKS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "step", "--smoke"]) == 2
    err = capsys.readouterr().err
    assert "not part of the installed package" in err and "--benchmarks-dir" in err
    # --benchmarks-dir from anywhere: a bad option then fails in the benchmarks' own parser.
    argv = ["bench", "--benchmarks-dir", str(REPO / "benchmarks"), "step", "--windows", "0"]
    assert cli.main(argv) == 2
    assert "--windows must be >= 1" in capsys.readouterr().err


def test_step_smoke_writes_json_and_markdown_without_tensorflow(tmp_path):
    """The real command in a fresh process: the step row, the devices line, the markdown block,
    and no TensorFlow on the import path (the GPU image has none)."""
    out, md = tmp_path / "step.json", tmp_path / "RESULTS.md"
    code = (
        "import sys\n"
        "from sqzexplore.cli import main\n"
        f"status = main(['bench', 'step', '--smoke', '--json', {str(out)!r}, '--results', "
        f"{str(md)!r}])\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "sys.exit(status)\n"
    )
    done = _run_python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"devices: {jax.device_count()}x cpu (platform cpu)\n")
    data = _read(out)
    assert data["complete"] is True
    assert data["command"] == f"sqz bench step --smoke --json {out} --results {md}"
    machine = data["machine"]
    assert machine["device_count"] == jax.device_count()
    assert machine["platform"] == "cpu" and machine["host_cores"] >= 1
    # xla_options.configure ran before anything compiled: its line is printed and recorded.
    assert "persistent compilation cache: JAX's setting" in machine["xla"]
    assert done.stdout.splitlines()[1] == machine["xla"]
    (row,) = data["step"]
    assert row["preset"] == "digits" and row["batch"] == 8 and row["data"] == "fixed"
    for key in ("img_s", "ms_per_step", "lower_s", "compile_s", "step_bytes", "flops"):
        assert row[key] > 0, key
    assert len(row["img_s_windows"]) == row["windows"] == 2
    assert row["loss_finite"]
    assert row["device_peak_bytes"] is None  # CPU: no allocator statistics
    text = md.read_text()
    assert text.startswith("# Benchmark results")
    assert machine["machine"] in text and "sqz bench step --smoke" in text
    table_rows = [line for line in text.splitlines() if line.startswith(f"| {machine['machine']}")]
    assert len(table_rows) == 1
    cells = [c.strip() for c in table_rows[0].strip("|").split("|")]
    assert cells[:6] == [machine["machine"], "digits", "16", "8", "float32", "fixed"], cells


def test_initial_state_is_init_states_tree_filled_on_the_host():
    """The benchmarks' state has exactly `init_state`'s structure, shapes and dtypes, He-normal
    kernels, zero optimiser state and no bad step, without compiling an initialiser."""
    c = base_config()
    c.model = model_config("digits")
    spec = validate_config(c)
    tx, _ = optim.make_optimizer(c.optim, 100, 0)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    state = step_module.initial_state(spec, tx, 0, mesh)
    abstract = jax.eval_shape(lambda: init_state(spec, tx, 0))
    assert jax.tree.structure(state) == jax.tree.structure(abstract)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract), strict=True):
        assert (got.shape, got.dtype) == (want.shape, want.dtype)
    assert int(state.step) == 0 and int(state.nonfinite_step) == -1
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state))
    kernel = np.asarray(state.params["conv1"]["kernel"])
    assert kernel.std() == pytest.approx(np.sqrt(2 / np.prod(kernel.shape[:-1])), rel=0.2)


def test_torch_and_maxbatch_skip_with_notes_on_cpu(tmp_path, monkeypatch):
    """Without torch (hidden from the import system, so `torch_available` itself decides) the
    torch benchmark measures nothing, not even its JAX side, and says why; maxbatch on a CPU
    says it needs a GPU."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("torch", "torchvision") else real_find_spec(name, *a),
    )
    out = tmp_path / "skip.json"
    main = lambda argv: bench_cli.main(argv, benchmarks_dir=REPO / "benchmarks")
    assert main(["torch", "--smoke", "--json", str(out)]) == 0
    data = _read(out)
    assert data["complete"] and data["torch"] == [] and data["step"] == []
    assert data["notes"] == [
        "torch and torchvision not installed: torchvision comparison skipped (install torch and "
        "torchvision in this environment to measure the ratios)"
    ]
    assert main(["maxbatch", "--smoke", "--json", str(out)]) == 0  # rewrites the file
    data = _read(out)
    assert data["complete"] and data["maxbatch"] == []
    assert len(data["notes"]) == 1 and "needs a GPU" in data["notes"][0]


def test_each_benchmark_renders_its_own_table():
    """report.py renders the sections the benchmarks declare: a markdown table per section with
    rows, the machine first, every cell as the benchmark formatted it."""
    report = importlib.import_module("benchmarks.report")
    ratio = dict(
        preset="v1.0", batch=256, image_size=224, jax_img_s=15_000.0, torch_eager_img_s=9_000.0,
        vs_eager=15 / 9, vs_eager_meets_target=True, torch_compile_img_s=16_000.0,
        vs_compile=15 / 16, vs_compile_meets_target=False,
    )  # fmt: skip
    machine = dict(
        machine="box", device_count=1, device_kind="cpu", platform="cpu", host_cpu="x",
        host_cores=2, load_average_1min=None, python="3", jax="j", jaxlib="j", flax="f",
        optax="o", compilation_cache_dir=None,
    )  # fmt: skip
    data = {"started": "now", "command": "sqz bench torch", "machine": machine, "notes": [],
            "complete": True, "torch_ratio": [ratio], "step": []}  # fmt: skip
    text = report.render_markdown(data, bench_cli.report_sections())
    lines = text.splitlines()
    start = lines.index(torch_compare.RATIO_SECTION.title)
    header, rule, row = lines[start + 2 : start + 5]
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]
    assert split(header) == ["machine", *torch_compare.RATIO_SECTION.columns]
    assert set(rule) <= {"|", "-", ":", " "}
    assert split(row) == ["box", "v1.0", "256", "224", "15,000", "9,000", "1.67", "met",
                          "16,000", "0.94", "MISSED"]  # fmt: skip
    assert "Train step" not in text and "**Incomplete run**" not in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["step", "--preset", "v9"], "--preset must be one of"),
        (["step", "--dtype", "float16"], "--dtype must be one of"),
        (["step", "--batch", "6"], "multiple of the device count"),
        (["step", "--windows", "0"], "--windows must be >= 1"),
        (["compile-ahead", "--squeeze-ratio", "1.5"], "--squeeze-ratio must be in (0, 1]"),
        (["compile-ahead", "--run-steps", "0"], "--run-steps must be >= 1"),
    ],
)
def test_bad_options_are_clear_errors_before_anything_is_written(argv, message, capsys, tmp_path):
    out = tmp_path / "bad.json"
    assert bench_cli.main([*argv, "--json", str(out)], benchmarks_dir=REPO / "benchmarks") == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _plan_args(**kw) -> argparse.Namespace:
    args = bench_cli.parser().parse_args(["compile-ahead"])
    return argparse.Namespace(**{**vars(args), **kw})


def test_compile_ahead_plan_runs_distinct_design_points():
    plan = plan_module.build_plan(_plan_args(), jax.device_count())  # the CPU plan
    assert [c.squeeze_ratio for c in plan.ahead] == [0.125, 0.25, 0.5]
    assert {(c.preset, c.batch, c.dtype) for c in plan.ahead} == {("digits", 64, "float32")}
    configs = [plan_module.step_config(c) for c in plan.ahead]
    assert [validate_config(c).squeeze_ratio for c in configs] == [0.125, 0.25, 0.5]
    plan = plan_module.build_plan(_plan_args(squeeze_ratio=[0.75], run_steps=7), 4)
    assert [c.squeeze_ratio for c in plan.ahead] == [0.75] and plan.ahead_steps == 7


def test_compile_ahead_overlaps_the_next_compile_with_training(monkeypatch):
    """The scheduling itself, with stand-in runs that log when they start and end: ahead, the
    next run's compile starts before the current run's training ends (each training waits for
    it, so without overlap it would time out); sequentially, each compile starts only after the
    previous training ended. Orders are asserted, not durations."""
    events: list[tuple[str, float]] = []
    lock = threading.Lock()
    started = {}  # squeeze ratio -> Event: its compile has started

    def log(kind, sr):
        with lock:
            events.append((kind, sr))

    def prepare(config):
        log("compile", config)
        started.setdefault(config, threading.Event()).set()
        return compile_ahead.Run(config, step=None, eval_step=None, mask=None, compile_s=0.0)

    def train(run, steps):
        log("train", run.squeeze_ratio)
        if overlap:  # ahead: the next compile runs in the background meanwhile
            nxt = configs.index(run.squeeze_ratio) + 1
            if nxt < len(configs):
                overlapped = started.setdefault(configs[nxt], threading.Event()).wait(60)
                log("overlapped" if overlapped else "NOT overlapped", run.squeeze_ratio)
        log("trained", run.squeeze_ratio)
        return 1.0

    monkeypatch.setattr(compile_ahead, "prepare", prepare)
    monkeypatch.setattr(compile_ahead, "train", train)
    monkeypatch.setattr(compile_ahead, "_record", lambda run, t, steps, waited_s: {
        "squeeze_ratio": run.squeeze_ratio})  # fmt: skip
    configs = [0.125, 0.25, 0.5]
    overlap = False
    sequential = compile_ahead.run_sequential(configs, 1)
    assert events == [(kind, sr) for sr in configs for kind in ("compile", "train", "trained")]
    assert [r["squeeze_ratio"] for r in sequential["runs"]] == configs
    events.clear()
    started.clear()
    overlap = True
    ahead = compile_ahead.run_ahead(configs, 1)
    assert [r["squeeze_ratio"] for r in ahead["runs"]] == configs
    assert ("overlapped", 0.125) in events and ("overlapped", 0.25) in events, events
    for i, sr in enumerate(configs[1:]):
        # compile of run i+1 before the end of run i's training; its own training after
        assert events.index(("compile", sr)) < events.index(("trained", configs[i])), events
        assert events.index(("compile", sr)) < events.index(("train", sr)), events


def test_torch_ratios_against_targets():
    step_rows = [
        dict(
            preset="v1.0", batch=256, image_size=224, dtype="bfloat16", data="fixed", img_s=15_000
        ),
        dict(preset="v1.0", batch=256, image_size=224, dtype="float32", data="fixed", img_s=5_000),
    ]
    torch_rows = [
        dict(preset="v1.0", batch=256, image_size=224, mode="eager", img_s=9_000),
        dict(preset="v1.0", batch=256, image_size=224, mode="compile", img_s=16_000),
    ]
    (ratio,) = torch_compare.torch_ratios(torch_rows, step_rows)
    assert ratio["jax_img_s"] == 15_000  # the bf16 row, not the fp32 one
    assert ratio["vs_eager"] == pytest.approx(15_000 / 9_000)
    assert ratio["vs_eager_meets_target"] is True
    assert ratio["vs_compile"] == pytest.approx(15_000 / 16_000)
    assert ratio["vs_compile_meets_target"] is False


def test_self_times_do_not_count_nested_ops_twice():
    # A `while` op (0-100 ns) containing two ops, one of which contains another.
    events = [("while", 0, 100), ("a", 10, 20), ("b", 40, 30), ("c", 45, 10), ("d", 200, 5)]
    assert profile.self_times(events) == {"while": 50, "a": 20, "b": 20, "c": 10, "d": 5}
    assert profile.union_length([(0, 10), (5, 20), (30, 40)]) == 30


def test_op_categories():
    assert profile.op_category("select-and-scatter.3") == "max-pool (fwd/bwd)"
    assert profile.op_category("sm90_xmma_fprop_implicit_gemm_bf16") == "convolution"
    assert profile.op_category("loop_multiply_fusion") == "elementwise fusions"


@pytest.mark.slow
def test_all_smoke_runs_every_benchmark(tmp_path):
    """`sqz bench all --smoke --profile`: step (profiled), e2e through train_and_evaluate, and
    compile-ahead over two real runs, in a fresh process that never imports TensorFlow."""
    out, md = tmp_path / "all.json", tmp_path / "RESULTS.md"
    code = (
        "import sys\n"
        "from sqzexplore.cli import main\n"
        f"status = main(['bench', 'all', '--smoke', '--profile', '--json', {str(out)!r}, "
        f"'--results', {str(md)!r}])\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "sys.exit(status)\n"
    )
    done = _run_python(code, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    data = _read(out)
    (e2e,) = data["e2e"]
    assert e2e["experiment"] == "digits" and e2e["pipeline"] == "device-resident"
    for key in ("step_img_s", "device_step_img_s", "loop_img_s", "wall_time_s", "compile_s"):
        assert e2e[key] > 0, key
    assert e2e["loop_vs_step"] == pytest.approx(e2e["loop_img_s"] / e2e["step_img_s"])
    profiled = data["step"][0]["profile"]
    assert "error" not in profiled, profiled
    assert profiled["top"] and all(op["ms_per_step"] >= 0 for op in profiled["top"])
    assert sum(profiled["categories"].values()) == pytest.approx(1.0)
    (ahead,) = data["compile_ahead"]
    assert ahead["squeeze_ratios"] == [0.25, 0.5] and ahead["steps_per_run"] == 3
    for mode in ("sequential", "ahead"):
        assert [r["squeeze_ratio"] for r in ahead[mode]["runs"]] == [0.25, 0.5]
        assert all(r["compile_s"] > 0 and r["train_s"] > 0 for r in ahead[mode]["runs"])
    assert ahead["speedup"] == pytest.approx(ahead["sequential_wall_s"] / ahead["ahead_wall_s"])
    text = md.read_text()
    assert "End to end" in text and "Compile-ahead" in text


def test_compile_time_script_times_each_program_in_a_fresh_process(capsys):
    """benchmarks/compile_time.py: a cold build per run, one row per run and the medians."""
    from benchmarks import compile_time

    tiny = str(REPO / "tests" / "data" / "tiny_digits.py")
    assert compile_time.main(["--config", tiny, "--runs", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [r.split(":")[0].strip() for r in rows] == ["this", "this med", "settings"]
    for part in ("init", "step", "eval", "train+eval", "kernels"):
        assert part in rows[0]
    with pytest.raises(SystemExit):
        compile_time.main(["--runs", "0"])
    assert "--runs must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compile_time.main(["--config", str(REPO / "no_such_experiment.py"), "--runs", "1"])
    err = capsys.readouterr().err
    assert "no_such_experiment.py does not exist" in err and "Traceback" not in err
