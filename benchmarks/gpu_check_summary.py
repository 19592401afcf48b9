"""The summary of one `benchmarks/gpu_check.sh` run: summary.md and stages.json in $OUT.

summary.md, ready to paste into benchmarks/RESULTS.md: the stage table (limit, seconds, exit
status), the targets with the values measured against them, the stages that did not run and
why (not selected, or their limit did not fit the budget), one JSON block per stage (its key
numbers) and the markdown the bench commands wrote. stages.json: every stage's full JSON, keyed
by stage name. Called by gpu_check.sh; reads the stage files it left in its scratch directory:

    python -m benchmarks.gpu_check_summary --scratch DIR --out DIR --total S --budget S [--smoke]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

# Issue 25's targets: (name, what is compared, the bound).
TARGETS = (
    ("cold digits programs (init + step + eval) <= 10 s", "compile_cold"),
    ("README sweep <= 30 s at >= 0.8 sweep efficiency", "sweep"),
    ("README sweep from a warm cache <= 30 s at >= 0.8 sweep efficiency", "sweep_warm"),
    ("population of 8 >= 2x one member's img/s", "population"),
    ("loop/step >= 0.9 (e2e, digits)", "e2e"),
)


def load_stages(scratch: str) -> dict[str, dict]:
    """Each stage's JSON from the scratch directory, keyed by stage name."""
    stages: dict[str, dict] = {}
    for path in sorted(glob.glob(os.path.join(scratch, "*.json"))):
        name = os.path.basename(path)[: -len(".json")]
        for prefix in ("compile_", "sweep_"):  # compile_compile_cold.json, sweep_sweep.json
            if name.startswith(prefix) and name[len(prefix) :].startswith(prefix.rstrip("_")):
                name = name[len(prefix) :]
        try:
            with open(path) as f:
                stages[name] = json.load(f)
        except (OSError, json.JSONDecodeError) as e:  # a stage stopped while writing it
            stages[name] = {"error": f"{type(e).__name__}: {e}"}
    return stages


def key_numbers(name: str, data: dict) -> dict:
    """The few numbers of a stage worth a line in RESULTS.md."""
    if name.startswith("compile_") and "runs" in data:
        r = data["runs"]["this"][0]
        keys = ("init", "step", "eval", "all", "hits", "writes", "autotune_cache_files", "step_ms")
        return {"platform": r.get("platform"), **{k: r.get(k) for k in keys},
                "settings": r.get("settings")}  # fmt: skip
    if name.startswith("sweep"):
        compiles = [t["compile_time_s"] for t in data.get("trials", []) if t["compile_time_s"]]
        return {
            "trials": len(data.get("trials", [])),
            "wall_s": data.get("wall_s"),
            "sum_train_s": data.get("sum_train_s"),
            "efficiency": data.get("efficiency"),
            "compile_s_per_trial": [min(compiles, default=0), max(compiles, default=0)],
        }
    rows = {k: v for k, v in data.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
    keep = ("members", "lowering", "img_s", "lone_img_s", "gain_vs_one", "compile_s",
            "loop_vs_step", "preset", "batch", "padded_compile_s", "trials_per_hour")  # fmt: skip
    return {
        section: [{k: r[k] for k in keep if k in r} for r in section_rows]
        for section, section_rows in rows.items()
    }


def target_rows(stages: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(target, measured, met) for each of TARGETS; '-' where its stage did not run."""
    out = []
    for target, stage in TARGETS:
        data = stages.get(stage)
        measured, met = "-", "not measured"
        if data and stage == "compile_cold" and "runs" in data:
            s = data["runs"]["this"][0]["all"]
            measured, met = f"{s:.1f} s", _yes(s <= 10)
        elif data and stage.startswith("sweep") and data.get("wall_s") is not None:
            wall, eff = data["wall_s"], data.get("efficiency") or 0.0
            measured, met = f"{wall:.1f} s, efficiency {eff:.2f}", _yes(wall <= 30 and eff >= 0.8)
        elif data and stage == "population":
            rows = data.get("population") or []
            if rows:
                top = max(rows, key=lambda r: r["members"])
                gain = top["gain_vs_one"]
                measured = f"{top['members']} members: {gain:.2f}x"
                met = _yes(gain >= 2) if top["members"] >= 8 else "smoke (fewer than 8 members)"
        elif data and stage == "e2e":
            ratios = [r["loop_vs_step"] for r in data.get("e2e") or [] if r.get("loop_vs_step")]
            if ratios:
                measured, met = ", ".join(f"{x:.2f}" for x in ratios), _yes(min(ratios) >= 0.9)
        out.append((target, measured, met))
    return out


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def render(rows: list[list[str]], stages: dict, total: str, budget: str, smoke: bool,
           not_selected: list[str]) -> list[str]:  # fmt: skip
    lines = [f"# gpu_check.sh{' (SMOKE: tiny sizes, not a measurement)' if smoke else ''}", "",
             f"total {total} s of a {budget} s budget", "",
             "| stage | limit s | took s | exit |", "|---|---|---|---|"]  # fmt: skip
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## Targets (issue 25)", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {ok} |" for t, m, ok in target_rows(stages)]
    skipped = [r[0] for r in rows if r[3].startswith("not run")]
    failed = [r[0] for r in rows if r[3] not in ("0",) and not r[3].startswith("not run")]
    lines += ["", "## Not run", ""]
    if skipped:
        lines.append(f"- did not fit the budget: {', '.join(skipped)} (a later device call: "
                     f"`STAGES=\"{' '.join(skipped)}\" bash benchmarks/gpu_check.sh`)")  # fmt: skip
    if not_selected:
        lines.append(f"- not selected (STAGES): {', '.join(not_selected)}")
    if not skipped and not not_selected:
        lines.append("- none: every stage ran")
    if failed:
        lines.append(f"- exited non-zero: {', '.join(failed)} (log.txt)")
    lines += ["", "## JSON per stage", ""]
    for name, data in stages.items():
        lines += [f"{name}:", "```json", json.dumps(key_numbers(name, data)), "```", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scratch", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--total", default="?")
    p.add_argument("--budget", default="?")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--not-selected", default="")
    args = p.parse_args(argv)
    stages = load_stages(args.scratch)
    rows_path = os.path.join(args.scratch, "rows.tsv")
    with open(rows_path) as f:
        rows = [line.split("\t") for line in f.read().splitlines() if line]
    with open(os.path.join(args.out, "stages.json"), "w") as f:
        json.dump(stages, f, indent=1)
    lines = render(rows, stages, args.total, args.budget, args.smoke, args.not_selected.split())
    results = os.path.join(args.scratch, "results.md")
    if os.path.exists(results):
        with open(results) as f:
            lines += ["## Markdown from the bench commands", "", f.read()]
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
