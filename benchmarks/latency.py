"""`sqz bench latency`: batch-1 inference latency of exported models on this host.

    sqz bench latency [--preset v1.0 --preset v1.1] [--workdir RUN] [--sqz FILE] [--spec FILE]
                      [--runtime onnxruntime,jax] [--threads 1,all] [--warmup 10] [--repeats 50]
                      [--layout nhwc] [--json PATH] [--results benchmarks/RESULTS.md]

Each target (a preset or spec at random init, a finished run, a .sqz model) is exported for
the runtime in memory (`sqzexplore.export`) and timed by `sqzexplore.export.latency.
measure_latency`, the function sweeps reuse: median and p90 of `--repeats` single calls after
`--warmup` untimed ones, with 1 intra-op thread and with all (JAX with a thread count runs in a
child process started with XLA's thread flags and pinned to that many cores). With two or more
models, a ratio row sets each one's latency against the first's beside their MACs ratio (v1.1
claims 2.4x fewer MACs than v1.0).
Defaults: v1.0 and v1.1, ONNX Runtime, threads 1 and all.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from benchmarks.common import Section, num

DEFAULT_PRESETS = ("v1.0", "v1.1")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sqz bench latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", action="append", help="a preset (random init); repeatable")
    p.add_argument("--spec", action="append", help="a spec.json (random init); repeatable")
    p.add_argument("--workdir", action="append", help="a finished run (final); repeatable")
    p.add_argument("--sqz", action="append", help="a .sqz model; repeatable")
    p.add_argument("--runtime", default="onnxruntime", help="onnxruntime, jax, litert (comma list)")
    p.add_argument("--threads", default="1,all", help="intra-op threads: e.g. 1,all (default)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls first (default 10)")
    p.add_argument("--repeats", type=int, default=50, help="timed calls (default 50)")
    p.add_argument("--layout", default="nhwc", help="input layout: nhwc (default) or nchw")
    p.add_argument("--json", help="write machine-readable results here")
    p.add_argument("--results", help="append markdown tables here (benchmarks/RESULTS.md)")
    return p


def _threads(text: str) -> list[int | None]:
    from sqzexplore.export.source import ExportError

    out: list[int | None] = []
    for part in (t.strip() for t in text.split(",") if t.strip()):
        if part == "all":
            out.append(None)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise ExportError("threads", f"must be integers >= 1 or 'all', got {part!r}")
    if not out:
        raise ExportError("threads", "name at least one, e.g. 1,all")
    return out


def _targets(args) -> list[tuple[str, str]]:
    targets = [("preset", p) for p in args.preset or []]
    targets += [("spec", p) for p in args.spec or []]
    targets += [("workdir", p) for p in args.workdir or []]
    targets += [("sqz", p) for p in args.sqz or []]
    return targets or [("preset", p) for p in DEFAULT_PRESETS]


def _load(kind: str, value: str):
    from sqzexplore.export import source

    if kind == "preset":
        return source.from_preset(value)
    if kind == "spec":
        return source.from_spec_file(value)
    if kind == "workdir":
        return source.from_run(value)
    return source.from_sqz(value)


def _cells(r: dict) -> list[str]:
    return [
        r["target"], num(r["params"]), f"{r['macs'] / 1e6:,.1f}", r["runtime"], str(r["threads"]),
        r["layout"], num(r["median_ms"], 2), num(r["p90_ms"], 2), num(r["min_ms"], 2),
        f"{r['warmup']} + {r['repeats']}",
    ]  # fmt: skip


def _line(r: dict) -> str:
    return (
        f"{r['target']} {r['runtime']} threads {r['threads']}: median {r['median_ms']:.2f} ms, "
        f"p90 {r['p90_ms']:.2f} ms"
    )


SECTION = Section(
    name="latency",
    title="Inference latency (batch 1, exported model, BatchNorm folded; each call timed alone "
    "after warm-up; median and p90 of the timed calls):",
    columns=("model", "params", "M MACs", "runtime", "threads", "layout", "median ms", "p90 ms",
             "min ms", "warmup + timed"),
    cells=_cells,
    line=_line,
)  # fmt: skip


def _ratio_cells(r: dict) -> list[str]:
    return [
        f"{r['base']} / {r['target']}", r["runtime"], str(r["threads"]),
        f"{r['macs_ratio']:.2f}", f"{r['latency_ratio']:.2f}",
    ]  # fmt: skip


RATIO_SECTION = Section(
    name="latency_ratio",
    title="Latency ratio beside MACs ratio (first model over each other one; > 1: the other is "
    "cheaper):",
    columns=("models", "runtime", "threads", "MACs ratio", "median latency ratio"),
    cells=_ratio_cells,
    line=lambda r: (
        f"{r['base']} / {r['target']} ({r['runtime']}, threads {r['threads']}): MACs "
        f"{r['macs_ratio']:.2f}x, latency {r['latency_ratio']:.2f}x"
    ),
)


def _ratios(rows: list[dict]) -> list[dict]:
    out = []
    first = rows[0]["target"] if rows else None
    base = {(r["runtime"], r["threads"]): r for r in rows if r["target"] == first}
    for r in rows:
        b = base.get((r["runtime"], r["threads"]))
        if r["target"] == first or b is None:
            continue
        out.append({
            "base": first, "target": r["target"], "runtime": r["runtime"],
            "threads": r["threads"], "macs_ratio": b["macs"] / r["macs"],
            "latency_ratio": b["median_ms"] / r["median_ms"],
        })  # fmt: skip
    return out


def main(argv: list[str]) -> int:
    """`sqz bench latency ...`; returns the exit status."""
    args = _parser().parse_args(argv)
    from benchmarks.report import Report, append_results
    from sqzexplore.export import artifact, latency
    from sqzexplore.export.source import ExportError
    from sqzexplore.models.complexity import complexity

    try:  # every option checked before anything is built or measured
        runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
        if not runtimes:
            raise ExportError("runtime", f"name one of {', '.join(latency.RUNTIMES)}")
        for runtime in runtimes:
            latency.check_runtime(runtime)
        threads = _threads(args.threads)
        latency.check_counts(args.warmup, args.repeats)
        artifact.check_layout(args.layout)
        targets = _targets(args)
        loaded = [(value, _load(kind, value)) for kind, value in targets]
    except ExportError as err:
        print(f"error: --{err.field}: {err.message}", file=sys.stderr)
        return 2
    sections = [SECTION, RATIO_SECTION]
    report = Report("sqz bench latency " + shlex.join(argv), args.json, sections)
    for name, weights in loaded:
        cost = complexity(weights.spec)
        for runtime in runtimes:
            for t in threads:
                row = latency.measure_latency(
                    weights, runtime, t, warmup=args.warmup, repeats=args.repeats,
                    layout=args.layout,
                )  # fmt: skip
                report.add("latency", {**row, "target": name, "params": cost.params,
                                       "macs": cost.macs})  # fmt: skip
    for row in _ratios(report.data["latency"]):
        report.add("latency_ratio", row)
    report.data["complete"] = True
    report.data["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    report.flush()
    if args.results:
        append_results(args.results, report.data, sections)
        print(f"appended to {args.results}", flush=True)
    return 0
