"""`sqz bench torch`: torchvision's SqueezeNets on the same device and batch as the JAX step.

torchvision `squeezenet1_0` / `squeezenet1_1` with the paper's optimiser, bf16 autocast,
channels-last, eager and under `torch.compile`, timed by the same window loop as the JAX step, in
a child process (its own CUDA context and allocator, so neither framework's memory pool squeezes
the other). The ratio table divides the JAX bf16 step's img/s by each. Skipped, with a note,
when torch or torchvision is not installed (neither is a dependency).

This module imports no jax at the top: the child process measures torch alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import Section, mark, nbytes, num, timed_windows
from benchmarks.plan import TORCHVISION_MODELS, Plan, StepCase, step_config
from sqzexplore.models.spec import PRESETS

if TYPE_CHECKING:
    from benchmarks.report import Report

# The Performance issue's targets (ratios measured in one run on the same device).
TARGET_VS_TORCH_EAGER = 1.5
TARGET_VS_TORCH_COMPILE = 1.0
WORKER_COMMAND = "_torch-worker"  # `sqz bench _torch-worker PAYLOAD`: the child process
_RESULT_PREFIX = "SQZ_TORCH_JSON "


def torch_available() -> str | None:
    """None if torch and torchvision can be imported, else why not."""
    missing = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not installed: torchvision comparison skipped "
            "(install torch and torchvision in this environment to measure the ratios)"
        )
    return None


def run_torch(plan: Plan, benchmarks_dir: Path, report: Report, *, profile: bool = False) -> None:
    """The torch rows and the ratio table, adding the JAX bf16 step rows they need to `report`."""
    why = torch_available()
    if why:
        report.note(why)
        return
    if not plan.torch:
        report.note("torch: no v1.0/v1.1 cases in this plan (torchvision has only those two)")
        return
    from benchmarks.step import measure_step  # jax: imported here, never in the torch child

    # The JAX side of each ratio first (it is the number this project owns): reuse this run's
    # bf16 rows, measure the missing ones.
    for case in plan.torch:
        size = case.image_size or PRESETS[case.preset].image_size
        have = any(
            (r["preset"], r["batch"], r["image_size"], r["dtype"], r["data"])
            == (case.preset, case.batch, size, "bfloat16", "fixed")
            for r in report.data["step"]
        )
        if not have:
            config = step_config(case, smoke=plan.smoke)
            report.add("step", measure_step(config, plan, profile=profile))
    for row in measure_torch(plan.torch, plan, benchmarks_dir):
        report.add("torch", row)
    for entry in torch_ratios(report.data["torch"], report.data["step"]):
        report.add("torch_ratio", entry)


def measure_torch(
    cases: list[StepCase], plan: Plan, benchmarks_dir: Path, timeout_s: float = 1200.0
) -> list[dict]:
    """torchvision rows for `cases`, measured in a child `sqz bench` process."""
    payload = {
        "cases": [dataclasses.asdict(c) for c in cases],
        "timing": dataclasses.asdict(plan.timing),
    }
    cmd = [sys.executable, "-m", "sqzexplore.cli", "bench", "--benchmarks-dir",
           str(benchmarks_dir), WORKER_COMMAND, json.dumps(payload)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX) :])
    tail = (proc.stderr or proc.stdout)[-800:]
    raise RuntimeError(f"the torch worker failed (exit {proc.returncode}): {tail}")


def worker_main(payload_json: str) -> int:
    """The child process: measure, then print the rows on one line for the parent to read."""
    rows = torch_worker(json.loads(payload_json))
    print(_RESULT_PREFIX + json.dumps(rows), flush=True)
    return 0


def torch_worker(payload: dict) -> list[dict]:
    """Every case in eager AMP channels-last mode, then under torch.compile."""
    import torch
    import torch.nn.functional as F
    import torchvision

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    for raw in payload["cases"]:
        case = StepCase(**raw)
        size = case.image_size or PRESETS[case.preset].image_size
        for mode in ("eager", "compile"):
            row: dict[str, Any] = {
                "preset": case.preset,
                "model": TORCHVISION_MODELS[case.preset],
                "image_size": size,
                "batch": case.batch,
                "mode": mode,
                "amp_dtype": "bfloat16",
                "channels_last": True,
                "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
            }
            try:
                torch.manual_seed(0)
                ctor = getattr(torchvision.models, TORCHVISION_MODELS[case.preset])
                model = ctor(num_classes=1000).to(device).to(memory_format=torch.channels_last)
                model.train()
                # The paper's solver, as in the JAX step (SGD momentum 0.9, weight decay 2e-4).
                opt = torch.optim.SGD(model.parameters(), lr=0.04, momentum=0.9, weight_decay=2e-4)
                net = torch.compile(model) if mode == "compile" else model
                x = torch.randn(case.batch, 3, size, size, device=device)
                x = x.contiguous(memory_format=torch.channels_last)
                y = torch.randint(0, 1000, (case.batch,), device=device)

                def step(net=net, opt=opt, x=x, y=y):
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                        loss = F.cross_entropy(net(x), y)
                    loss.backward()
                    opt.step()
                    return loss

                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                step()
                sync()
                row["first_step_s"] = time.perf_counter() - t0  # includes torch.compile
                row.update(timed_windows(step, sync, case.batch, **payload["timing"]))
                row["compile_s"] = row["first_step_s"] - row["ms_per_step"] / 1e3
                row["peak_bytes"] = int(torch.cuda.max_memory_allocated()) if cuda else None
            except Exception as e:  # one failing mode must not hide the other's numbers
                row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            rows.append(row)
            with contextlib.suppress(Exception):
                del net, model, opt
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return rows


def torch_ratios(torch_rows: list[dict], step_rows: list[dict]) -> list[dict]:
    """JAX bf16 step img/s over torchvision's, per (preset, batch, image size)."""
    out = []
    for key in sorted({(r["preset"], r["batch"], r["image_size"]) for r in torch_rows}):
        jax_row = next(
            (
                r for r in step_rows
                if (r["preset"], r["batch"], r["image_size"]) == key
                and r["dtype"] == "bfloat16" and r["data"] == "fixed"
            ),
            None,
        )  # fmt: skip
        modes = {
            r["mode"]: r for r in torch_rows if (r["preset"], r["batch"], r["image_size"]) == key
        }
        entry: dict[str, Any] = {"preset": key[0], "batch": key[1], "image_size": key[2]}
        entry["jax_img_s"] = jax_row["img_s"] if jax_row else None
        for mode, target in (
            ("eager", TARGET_VS_TORCH_EAGER),
            ("compile", TARGET_VS_TORCH_COMPILE),
        ):
            t = modes.get(mode, {})
            entry[f"torch_{mode}_img_s"] = t.get("img_s")
            ratio = entry["jax_img_s"] / t["img_s"] if jax_row and t.get("img_s") else None
            entry[f"vs_{mode}"] = ratio
            entry[f"vs_{mode}_meets_target"] = None if ratio is None else ratio >= target
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------- its report
def _torch_cells(r: dict) -> list[str]:
    head = [r["model"], r["mode"], str(r["image_size"]), str(r["batch"])]
    if "error" in r:
        return [*head, f"failed: {r['error'][:120]}", "", "", "", r.get("torch", "")]
    return [*head, f"{r['img_s']:,.0f}", f"{r['ms_per_step']:.2f}", f"{r['first_step_s']:.1f}",
            nbytes(r.get("peak_bytes")), r["torch"]]  # fmt: skip


def _ratio_cells(r: dict) -> list[str]:
    return [
        r["preset"], str(r["batch"]), str(r["image_size"]), num(r["jax_img_s"]),
        num(r["torch_eager_img_s"]), num(r["vs_eager"], 2), mark(r["vs_eager_meets_target"]),
        num(r["torch_compile_img_s"]), num(r["vs_compile"], 2),
        mark(r["vs_compile_meets_target"]),
    ]  # fmt: skip


TORCH_SECTION = Section(
    name="torch",
    title="torchvision (bf16 autocast, channels-last, same optimiser, same device and batch):",
    columns=("model", "mode", "image", "batch", "img/s", "ms/step", "first step s",
             "peak memory", "torch"),
    cells=_torch_cells,
)  # fmt: skip

RATIO_SECTION = Section(
    name="torch_ratio",
    title=f"JAX bf16 step / torchvision (targets: >= {TARGET_VS_TORCH_EAGER}x eager AMP, "
    f">= {TARGET_VS_TORCH_COMPILE}x torch.compile):",
    columns=("preset", "batch", "image", "JAX img/s", "eager img/s", "JAX/eager", "target",
             "compile img/s", "JAX/compile", "target"),
    cells=_ratio_cells,
)  # fmt: skip
