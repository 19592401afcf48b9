"""A stand-in trainer that exercises the sweep machinery in seconds: it trains nothing.

`run_fake_trial(config, workdir, *, on_eval=None)` honours the trainer's run-directory contract
(config.json, spec.json, complexity.json, metrics.jsonl, result.json written last, resuming from
its own "checkpoint" in checkpoints/) but its accuracy is a fixed, smooth function of the design
point: it grows with the parameter count with diminishing returns, peaks at pct_3x3 = 0.5, likes
late pooling and bypasses, plus a small deterministic per-seed offset. The tests use it (through
`--runner fake_runner:run_fake_trial`, with tests/ on the path) to check scheduling,
kill-and-resume, early stopping and reports; it is also the template of a custom runner. Never
use its numbers as results.

Environment knobs (for tests): SQZ_FAKE_STEP_S seconds of sleep per step (default 0),
SQZ_FAKE_STEPS steps when config.num_steps is 0 (default 20), SQZ_FAKE_GATE a file every run
waits for before its first step (so a test can hold several workers mid-run at once). Each start
appends a line to fake_attempts.jsonl in the workdir (pid, the step it resumed from), so tests
can count reruns.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import ml_collections

from sqzexplore.config import spec_from_config
from sqzexplore.models.complexity import complexity
from sqzexplore.models.spec import SqueezeNetSpec
from sqzexplore.rundir import append_jsonl, read_json, write_json
from sqzexplore.runlog import MetricsWriter


def fake_accuracy(spec: SqueezeNetSpec, seed: int) -> float:
    """The final top-1 this stand-in reports for a design point and seed."""
    params = complexity(spec).params
    size_term = 0.22 * (1.0 - math.exp(-params / 400_000))
    pct_term = 0.03 * (1.0 - (2.0 * spec.pct_3x3 - 1.0) ** 2)
    positions = ("conv1", *spec.fire_names)
    lateness = sum(positions.index(p) for p in spec.pool_after) / max(
        1, len(spec.pool_after) * (len(positions) - 1)
    )
    pool_term = 0.04 * lateness
    bypass_term = {"none": 0.0, "simple": 0.02, "complex": 0.012}[spec.bypass]
    digest = hashlib.sha1(f"{spec.to_json(sort_keys=True)}|{seed}".encode()).digest()
    noise = (digest[0] / 255.0 - 0.5) * 0.008
    return min(0.999, 0.70 + size_term + pct_term + pool_term + bypass_term + noise)


def _curve(final: float, fraction: float) -> float:
    return final * (1.0 - 0.5 * math.exp(-5.0 * fraction))


def run_fake_trial(config: ml_collections.ConfigDict, workdir: str, *, on_eval=None) -> dict:
    """Write a complete (or stopped early) run directory for `config` in `workdir`."""
    t_start = time.perf_counter()
    run_dir = Path(workdir)
    done = read_json(run_dir / "result.json")
    if done is not None:
        return done
    spec = spec_from_config(config)
    cplx = complexity(spec)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", json.loads(config.to_json_best_effort()))
    write_json(run_dir / "spec.json", spec.to_dict())
    write_json(run_dir / "complexity.json", cplx.to_dict())

    steps = int(config.num_steps) or int(os.environ.get("SQZ_FAKE_STEPS", 20))
    eval_every = max(1, steps // 4)
    step_s = float(os.environ.get("SQZ_FAKE_STEP_S", 0.0))
    checkpoint = run_dir / "checkpoints" / "fake_state.json"
    start_step = int((read_json(checkpoint) or {}).get("step", 0))
    append_jsonl(
        run_dir / "fake_attempts.jsonl",
        {"pid": os.getpid(), "start_step": start_step, "time": time.time()},
    )
    # Through the trainer's own log writer (as a custom runner should): it drops the log points
    # after the restored checkpoint, and mirrors to wandb as config.wandb says.
    config_dict = json.loads(config.to_json_best_effort())
    metrics = MetricsWriter(
        str(run_dir),
        is_main=True,
        resume_step=start_step,
        wandb_config=config.wandb,
        run_config=config_dict,
        summary={"design": spec.to_dict(), "complexity": cplx.totals()},
    )

    gate = os.environ.get("SQZ_FAKE_GATE")
    deadline = time.time() + 120
    while gate and not os.path.exists(gate) and time.time() < deadline:
        time.sleep(0.02)

    final_top1 = fake_accuracy(spec, int(config.seed))
    status, last_eval, best = "complete", {}, {"top1": -1.0, "step": -1}
    step = start_step
    try:
        while step < steps:
            time.sleep(step_s)
            step += 1
            fraction = step / steps
            loss = 2.3 * (1.0 - fraction) + 0.1
            train = dict(
                step=step,
                split="train",
                loss=loss,
                top1=_curve(final_top1, fraction),
                top5=1.0,
                lr=0.01 * (1 - fraction),
                grad_norm=1.0,
                images_per_s=1e4,
            )
            metrics.write(train)
            if step % eval_every == 0 or step == steps:
                top1 = _curve(final_top1, fraction)
                last_eval = {"loss": loss, "top1": top1, "top5": min(1.0, top1 + 0.05)}
                if top1 > best["top1"]:
                    best = {"top1": top1, "step": step}
                metrics.write(dict(step=step, split="eval", **last_eval))
                write_json(checkpoint, {"step": step})
                if on_eval is not None and on_eval(step, dict(last_eval)) and step < steps:
                    status = "pruned"  # what the trainer says when on_eval stops a run
                    break
        metrics.summary({"final": last_eval, "best": best})
    finally:
        metrics.close()
    result = {
        "status": status,
        "final": last_eval,
        "best": best,
        "complexity": cplx.totals(),
        "steps": step,
        "epochs": step / 10.0,
        "wall_time_s": time.perf_counter() - t_start,
        "compile_time_s": 0.0,
        "train_time_s": (step - start_step) * step_s,
        "images_per_s": 1e4,
        "device_kind": "fake",
        "device_count": 1,
        "process_count": 1,
    }
    write_json(run_dir / "result.json", result)
    return result
