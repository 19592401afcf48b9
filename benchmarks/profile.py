"""Where a step's time goes: a JAX profiler trace of a few steps, summarised per op.

`--profile` traces each step row and lists the top ops (XLA ops or GPU kernels on an
accelerator, XLA thunks on a CPU) by exclusive time, grouped by kind (convolutions, max-pool
forward/backward, elementwise fusions, copies), each labelled from the compiled HLO with its
shape and the JAX op it came from; on an accelerator also how busy the device was. This is the
evidence RESULTS.md cites when a target is missed.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import jax


class Steppable(Protocol):
    """What a profile runs: a compiled step and its inputs (benchmarks.step.CompiledStep is
    one); `state` is replaced by the traced steps' result (its buffers are donated)."""

    compiled: Any
    state: Any
    images: Any
    labels: Any


def profile_step(step: Steppable, *, steps: int) -> dict:
    """Trace `steps` steps with the JAX profiler and summarise where the time went: the top ops
    (XLA ops or GPU kernels on an accelerator, XLA thunks on a CPU) and, on an accelerator, the
    fraction of the traced wall time some kernel was running (below ~0.9: the host or the launch
    overhead limits the step, not the device)."""
    trace_dir = tempfile.mkdtemp(prefix="sqz-trace-")
    try:
        state, images, labels = step.state, step.images, step.labels
        with jax.profiler.trace(trace_dir):
            t0 = time.perf_counter()
            for _ in range(steps):
                state, metrics = step.compiled(state, images, labels)
            jax.block_until_ready((state, metrics))
            wall = time.perf_counter() - t0
        step.state = state
        files = sorted(Path(trace_dir).rglob("*.xplane.pb"))
        if not files:
            return {"error": "the profiler wrote no trace"}
        summary = summarize_trace(str(files[-1]), hlo=hlo_labels(step.compiled))
        summary["wall_ms_per_step"] = 1e3 * wall / steps
        if summary.get("busy_ns"):
            summary["device_busy_fraction"] = min(1.0, summary["busy_ns"] / 1e9 / wall)
        for key in ("total_ns", "busy_ns"):
            if summary.get(key) is not None:
                summary[key.replace("_ns", "_ms_per_step")] = summary.pop(key) / 1e6 / steps
        for op in summary.get("top", []):
            op["ms_per_step"] = op.pop("ns") / 1e6 / steps
        return summary
    except Exception as e:  # a profile is evidence, not a requirement: report and carry on
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)


# Host-thread events that are bookkeeping (or the executor wrapping the real ops), not work.
_TRACE_NOISE = ("ThreadpoolListener", "end: ", "SlinkyThreadPool", "ThunkExecutor", "$")


def self_times(events: list[tuple[str, float, float]]) -> dict[str, float]:
    """Exclusive time per name on one trace line, whose events nest (a `while` or `call` op
    contains its body's ops): each event's duration less that of its direct children."""
    out: dict[str, float] = {}
    stack: list[list] = []  # [name, end_ns, child_ns]

    def close(entry):
        name, end, children, duration = entry
        out[name] = out.get(name, 0.0) + max(0.0, duration - children)

    for name, start, duration in sorted(events, key=lambda e: (e[1], -e[2])):
        while stack and stack[-1][1] <= start:
            close(stack.pop())
        if stack:
            stack[-1][2] += duration
        stack.append([name, start + duration, 0.0, duration])
    while stack:
        close(stack.pop())
    return out


def summarize_trace(path: str, top: int = 12, hlo: dict[str, str] | None = None) -> dict:
    """Per-op device time from an `.xplane.pb` trace (parsed with `jax.profiler.ProfileData`).

    Op times are exclusive (nested ops are not counted twice). `hlo` (from `hlo_labels`) labels
    and categorises ops the trace names only by HLO instruction (the CPU thunks). Returns
    {"source", "total_ns",
    "busy_ns" (accelerators: union of kernel intervals), "top": [{"name", "ns", "share"}],
    "categories": {category: share}}.
    """
    data = jax.profiler.ProfileData.from_file(path)
    ops: dict[str, float] = {}
    kernels: dict[str, float] = {}
    cpu_ops: dict[str, float] = {}
    intervals: list[tuple[float, float]] = []
    # XLA Ops events on a GPU carry the HLO category and text; keep them to label the top ops.
    hlo_category: dict[str, str] = {}
    hlo_text: dict[str, str] = dict(hlo or {})

    def merge(into: dict[str, float], line_events) -> None:
        for name, ns in self_times(line_events).items():
            into[name] = into.get(name, 0.0) + ns

    for plane in data.planes:
        if plane.name.startswith("/device:"):
            for line in plane.lines:
                events = [(ev.name, ev.start_ns, ev.duration_ns) for ev in line.events]
                if line.name == "XLA Ops":
                    merge(ops, events)
                    for ev in line.events:
                        if ev.name in hlo_category:
                            continue
                        stats = _event_stats(ev)
                        hlo_category[ev.name] = str(stats.get("hlo_category", ""))
                        hlo_text[ev.name] = str(stats.get("long_name", ""))[:160]
                elif line.name.startswith(("Stream", "Compute")):
                    merge(kernels, events)
                    intervals += [(start, start + dur) for _, start, dur in events]
                    for ev in line.events:
                        if ev.name not in hlo_text:  # the HLO op a kernel belongs to
                            hlo_text[ev.name] = str(_event_stats(ev).get("hlo_op", ""))[:160]
        elif plane.name == "/host:CPU":
            for line in plane.lines:
                if line.name.startswith("tf_XLA"):
                    events = [
                        (ev.name, ev.start_ns, ev.duration_ns)
                        for ev in line.events
                        if ev.duration_ns > 0 and not ev.name.startswith(_TRACE_NOISE)
                    ]
                    merge(cpu_ops, events)
    if ops:
        source, table = "XLA ops on the device", ops
    elif kernels:
        source, table = "GPU kernels", kernels
    else:
        source, table = "XLA thunks on host CPU threads", cpu_ops
    total = sum(table.values())
    ranked = sorted(table.items(), key=lambda kv: -kv[1])
    categories: dict[str, float] = {}
    for name, ns in ranked:
        cat = hlo_category.get(name) or op_category(name, hlo_text.get(name, ""))
        categories[cat] = categories.get(cat, 0.0) + ns
    return {
        "source": source,
        "total_ns": total,
        "busy_ns": union_length(intervals) if intervals else None,
        "top": [
            {
                "name": name[:90],
                "ns": ns,
                "share": ns / total if total else 0.0,
                "hlo": hlo_text.get(name, ""),
            }
            for name, ns in ranked[:top]
        ],
        "categories": {
            k: v / total if total else 0.0
            for k, v in sorted(categories.items(), key=lambda kv: -kv[1])
        },
    }


def _event_stats(event) -> dict:
    try:
        return {str(k): v for k, v in event.stats}
    except Exception:  # the stats API differs across jaxlib versions; labels are optional
        return {}


# Substrings of op / kernel names, by category, tried in order (first match wins).
_OP_CATEGORIES = (
    ("max-pool (fwd/bwd)", ("select_and_scatter", "select-and-scatter", "reduce_window",
                            "reduce-window")),
    # ynn_fusion: the XLA CPU backend's YNNPACK fusions (its convolutions and dots).
    ("convolution", ("conv", "cudnn", "xmma", "gemm", "implicit", "dot", "cutlass", "wgrad",
                     "dgrad", "fprop", "ynn")),
    ("reductions", ("reduce", "reduction")),
    ("copies/transposes", ("copy", "transpose", "memcpy", "memset")),
    ("iota/broadcast", ("iota", "broadcast")),
    ("elementwise fusions", ("fusion", "loop", "add", "multiply", "select")),
)  # fmt: skip


def op_category(name: str, label: str = "") -> str:
    """A coarse class for an op or kernel: where a memory-bound step spends its time. The JAX
    op that an HLO label names (its `op_name` metadata) decides first, then the op's own name."""
    source = label.rsplit(" <- ", 1)[-1] if " <- " in label else ""
    for text in (source.lower(), name.lower()):
        for category, keys in _OP_CATEGORIES:
            if text and any(k in text for k in keys):
                return category
    return "other"


_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\(")
_HLO_COMPUTATION = re.compile(r"^%?([\w.\-]+) \(.*\) -> .* \{$")
_HLO_CALLS = re.compile(r"calls=%([\w.\-]+)")
_HLO_OP_NAME = re.compile(r'op_name="([^"]+)"')


def hlo_labels(compiled) -> dict[str, str]:
    """`{instruction: "shape opcode <- jax op"}` for a compiled executable's HLO, so profile rows
    named by instruction (`wrapped_iota.5`, `ynn_fusion.70`) say what they compute and which JAX
    op they come from (a fusion's op is its root's `op_name` metadata)."""
    try:
        text = compiled.as_text()
    except Exception:
        return {}
    roots: dict[str, str] = {}  # computation -> op_name of its root
    instructions: dict[str, tuple[str, str, str, str]] = {}
    computation = None
    for line in text.splitlines():
        head = _HLO_COMPUTATION.match(line.strip())
        if head:
            computation = head.group(1)
            continue
        match = _HLO_INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode = match.groups()
        op_name = _HLO_OP_NAME.search(line)
        calls = _HLO_CALLS.search(line)
        instructions[name] = (shape, opcode, op_name.group(1) if op_name else "",
                              calls.group(1) if calls else "")  # fmt: skip
        if line.lstrip().startswith("ROOT") and computation and op_name:
            roots[computation] = op_name.group(1)
    labels = {}
    for name, (shape, opcode, op_name, calls) in instructions.items():
        source = op_name or roots.get(calls, "")
        source = source.split("/")[-1] if source else ""
        labels[name] = f"{shape[:80]} {opcode}" + (f" <- {source}" if source else "")
    return labels


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def profile_markdown(title: str, p: dict) -> list[str]:
    """A profile as RESULTS.md lines: categories on one line, then the top ops."""
    busy = p.get("device_busy_fraction")
    head = f"Profile of {title}, {p.get('source', '?')}"
    if busy is not None:
        head += f"; device busy {100 * busy:.0f}% of wall"
    if "error" in p:
        return [f"{head}: failed ({p['error']})", ""]
    cats = "; ".join(f"{k} {100 * v:.0f}%" for k, v in p["categories"].items())
    lines = [f"{head}: {cats}"]
    for op in p.get("top", [])[:8]:
        hlo = f": `{op['hlo'][:110]}`" if op.get("hlo") else ""
        lines.append(
            f"  - `{op['name']}` {op['ms_per_step']:.3f} ms/step ({100 * op['share']:.1f}%){hlo}"
        )
    return [*lines, ""]
