"""`sqz bench e2e`: `train_and_evaluate` against the step it compiles.

The repository's experiment config (`experiments/digits/squeezenet.py`,
`experiments/cifar10/squeezenet.py`: their optimiser, eval, log and checkpoint cadence) runs for
a fixed number of steps on digits, CIFAR-shaped synthetic data, or a TFDS dataset with
--data-dir (device-resident and tf.data). Its loop img/s is compared with the same config's step
on a fixed batch (target: >= 0.9) and on device-resident data.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
from pathlib import Path
from typing import Any

import jax

from benchmarks.common import SMOKE_OVERRIDES, BenchError, Section, mark, num
from benchmarks.plan import EXPERIMENTS, E2ECase, Plan
from benchmarks.profile import profile_markdown
from benchmarks.step import compile_step, step_row, time_step
from sqzexplore import train
from sqzexplore.config import load_config_file

TARGET_LOOP_VS_STEP = 0.9  # the Performance issue's "within 10%"


def e2e_config(case: E2ECase, plan: Plan, repo_root: Path, data_dir: str | None):
    """The repository's experiment file for `case.experiment`, set to `plan.e2e_steps` steps of
    the case's batch, dtype and data source; eval, logging and checkpoint cadence stay the
    experiment's (those stalls are what the wall-time numbers include)."""
    path = repo_root / EXPERIMENTS[case.experiment]
    if not path.exists():
        raise BenchError(f"e2e needs the experiment file {path} (--benchmarks-dir's checkout)")
    c = load_config_file(str(path), "runlocal" if plan.smoke else None)
    if plan.smoke:
        for key, value in SMOKE_OVERRIDES.items():
            c.model[key] = value
    c.model.dtype = case.dtype
    c.data.name = case.source
    c.data.on_device = case.on_device
    if case.source == "synthetic":
        c.data.synthetic_train_size = plan.synthetic_train_size
        c.data.synthetic_eval_size = plan.synthetic_eval_size
    elif case.source != "digits":
        c.data.data_dir = data_dir
    c.batch_size = case.batch
    n = jax.device_count()
    c.eval_batch_size = max(n, (c.eval_batch_size // n) * n)
    c.num_steps = plan.e2e_steps
    c.progress = "false"
    c.compilation_cache_dir = ""  # cold compiles, as the first trial of a sweep sees them
    c.wandb.mode = "disabled"
    if plan.smoke:
        c.log_every_steps = 2
    return c


def measure_e2e(
    case: E2ECase, plan: Plan, repo_root: Path, data_dir: str | None, *, profile: bool = False
) -> dict:
    """`train_and_evaluate` for `case` in a scratch workdir, against the same step on a fixed
    synthetic batch and on device-resident data (the 'within 10%' comparison). With `profile`,
    both reference steps are traced: their difference is the on-device input pipeline."""
    config = e2e_config(case, plan, repo_root, data_dir)
    streamed = case.on_device == "false"
    row: dict[str, Any] = {
        "experiment": case.experiment,
        "source": case.source,
        "pipeline": "tf.data" if streamed else "device-resident",
        "batch": case.batch,
        "dtype": case.dtype,
        "steps": plan.e2e_steps,
    }
    # The reference steps are timed before and after the run and their windows pooled, so a
    # change in background load (a shared machine) shifts both sides of the ratio alike.
    references = {"fixed": compile_step(config, data="fixed")}
    if not streamed:
        references["device"] = compile_step(config, data="device")
    before = {kind: step_row(step, plan, profile=profile) for kind, step in references.items()}
    with tempfile.TemporaryDirectory(prefix="sqz-bench-e2e-") as workdir:
        result = train.train_and_evaluate(config, workdir)
    for kind, step in references.items():
        windows = before[kind]["img_s_windows"] + time_step(step, plan.timing)["img_s_windows"]
        key = "step_img_s" if kind == "fixed" else "device_step_img_s"
        row[key] = statistics.median(windows)
        row[key + "_windows"] = windows
        if profile:
            row[key.replace("img_s", "profile")] = before[kind].get("profile")
    del references
    gc.collect()
    steps, train_s = int(result["steps"]), float(result["train_time_s"])
    row.update(
        loop_img_s=steps * case.batch / train_s if train_s > 0 else None,
        last_interval_img_s=float(result["images_per_s"]),
        compile_s=float(result["compile_time_s"]),
        train_time_s=train_s,
        wall_time_s=float(result["wall_time_s"]),
        top1=result["final"].get("top1"),
    )
    row["wall_img_s"] = steps * case.batch / row["wall_time_s"]
    row["train_fraction_of_wall"] = train_s / row["wall_time_s"]
    row["loop_vs_step"] = row["loop_img_s"] / row["step_img_s"] if row["loop_img_s"] else None
    row["meets_target"] = bool(row["loop_vs_step"] and row["loop_vs_step"] >= TARGET_LOOP_VS_STEP)
    return row


# ---------------------------------------------------------------------------------- its report
def _cells(r: dict) -> list[str]:
    return [
        r["experiment"], r["source"], r["pipeline"], str(r["batch"]), r["dtype"], str(r["steps"]),
        num(r["step_img_s"]), num(r.get("device_step_img_s")), num(r.get("loop_img_s")),
        num(r.get("loop_vs_step"), 2), mark(r.get("meets_target")), f"{r['compile_s']:.1f}",
        f"{r['wall_time_s']:.1f}", f"{r['train_fraction_of_wall']:.2f}",
    ]  # fmt: skip


def _line(r: dict) -> str:
    ratio = r.get("loop_vs_step")
    return (
        f"{r['experiment']}/{r['source']} ({r['pipeline']}) b{r['batch']}: loop "
        f"{num(r.get('loop_img_s'))} img/s vs step {num(r['step_img_s'])}"
        + (f" = {ratio:.2f}" if ratio else "")
    )


def _profiles(rows: list[dict]) -> list[str]:
    """The two reference steps' profiles of each row."""
    lines: list[str] = []
    for r in rows:
        for key, kind in (("step_profile", "fixed"), ("device_step_profile", "device")):
            if r.get(key):
                title = f"{r['experiment']} b{r['batch']} {r['dtype']} step ({kind} data)"
                lines += profile_markdown(title, r[key])
    return lines


SECTION = Section(
    name="e2e",
    title="End to end (`train_and_evaluate`, the experiment's recipe and eval/checkpoint "
    "cadence; loop img/s = steps x batch / train_time_s; target loop/step >= "
    f"{TARGET_LOOP_VS_STEP}):",
    columns=("experiment", "data", "pipeline", "batch", "dtype", "steps",
             "step img/s (fixed batch)", "step img/s (device data)", "loop img/s", "loop/step",
             "target", "compile s", "wall s", "train/wall"),
    cells=_cells,
    line=_line,
    after=_profiles,
)  # fmt: skip
