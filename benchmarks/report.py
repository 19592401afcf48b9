"""A `sqz bench` run's record: the machine, the JSON results, and the markdown for RESULTS.md.

`--json PATH` is rewritten after every row (a killed run keeps what it measured); `--results
PATH` appends a markdown block naming the machine, the versions, the date and the exact command,
with a table per benchmark in which every row names the machine again.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

import jax

from benchmarks import population
from benchmarks.e2e import TARGET_LOOP_VS_STEP
from benchmarks.torch_compare import TARGET_VS_TORCH_COMPILE, TARGET_VS_TORCH_EAGER
from sqzexplore import rundir

SECTIONS = ("step", "e2e", "torch", "torch_ratio", "maxbatch", "compile_ahead", "population")


def machine_info() -> dict:
    """What ran the benchmark: devices, host CPU, versions, load, compile-cache setting."""
    import flax
    import jaxlib
    import optax

    devices = jax.devices()
    cpu_model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        short = f"{cpu_model} ({cores} cores, CPU)"
    else:
        short = f"{len(devices)}x {kind}"
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "machine": short,
        "platform": devices[0].platform,
        "device_kind": kind,
        "device_count": len(devices),
        "host_cpu": cpu_model,
        "host_cores": cores,
        "load_average_1min": load,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
    }


def devices_line(m: dict) -> str:
    """The devices a run uses, printed when it starts: platform, kind and count."""
    return f"devices: {m['device_count']}x {m['device_kind']} (platform {m['platform']})"


class Report:
    """Results of one invocation; rewritten to --json after every row."""

    def __init__(self, command: str, json_path: str | None, machine: dict | None = None):
        self.json_path = json_path
        self.data: dict[str, Any] = {
            "command": command,
            "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine or machine_info(),
            **{section: [] for section in SECTIONS},
            "notes": [],
            "complete": False,
        }
        self.flush()

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)
        print(f"[{section}] {one_line(section, row)}", flush=True)
        self.flush()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        print(f"note: {text}", flush=True)
        self.flush()

    def has_rows(self) -> bool:
        return any(self.data[s] for s in SECTIONS)

    def flush(self) -> None:
        if not self.json_path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.json_path)), exist_ok=True)
        rundir.write_json(self.json_path, self.data)


def one_line(section: str, r: dict) -> str:
    """A row as the line printed when it is measured."""
    if section == "step":
        return (
            f"{r['preset']} {r['image_size']}px b{r['batch']} {r['dtype']} ({r['data']}): "
            f"{r['img_s']:,.0f} img/s, compile {r['compile_s']:.1f}s"
        )
    if section == "e2e":
        ratio = r.get("loop_vs_step")
        return (
            f"{r['experiment']}/{r['source']} ({r['pipeline']}) b{r['batch']}: loop "
            f"{_num(r.get('loop_img_s'))} img/s vs step {_num(r['step_img_s'])}"
            + (f" = {ratio:.2f}" if ratio else "")
        )
    if section == "maxbatch":
        return (
            f"{r['preset']} {r['dtype']}: max batch {r['max_batch']} "
            f"(failed at {r['first_failed']})"
        )
    if section == "compile_ahead":
        return (
            f"{r['preset']} b{r['batch']} {r['dtype']}, {len(r['squeeze_ratios'])} runs of "
            f"{r['steps_per_run']} steps: sequential {r['sequential_wall_s']:.1f}s, ahead "
            f"{r['ahead_wall_s']:.1f}s (x{r['speedup']:.2f})"
        )
    if section == "population":
        return population.one_line(r)
    return json.dumps({k: v for k, v in r.items() if not isinstance(v, (list, dict))})[:200]


def _num(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _bytes(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x / 2**20:,.0f} MiB" if x < 2**30 else f"{x / 2**30:,.2f} GiB"


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    """A titled markdown table (the first column, the machine, is added by the caller)."""
    return [
        title,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cells) + " |" for cells in rows),
        "",
    ]


def _step_cells(r: dict) -> list[str]:
    gflop = _num(r["flops"] / 1e9 if r["flops"] else None, 1)
    gb = _num(r["bytes_accessed"] / 1e9 if r["bytes_accessed"] else None, 2)
    tflops = _num(r["achieved_flop_s"] / 1e12 if r["achieved_flop_s"] else None, 2)
    gbs = _num(r["achieved_bytes_s"] / 1e9 if r["achieved_bytes_s"] else None, 0)
    if r.get("pct_peak_bandwidth") is not None:
        gbs += f" ({r['pct_peak_bandwidth']:.0f}% of peak BW)"
    windows = r["img_s_windows"]
    return [
        f"{r['preset']}{' +BN' if r['batch_norm'] else ''}", str(r["image_size"]),
        str(r["batch"]), r["dtype"], r["data"], f"{r['lower_s']:.2f} + {r['compile_s']:.2f}",
        f"{r['img_s']:,.0f} (windows {min(windows):,.0f}-{max(windows):,.0f})",
        f"{r['ms_per_step']:.2f}", _bytes(r["step_bytes"]), _bytes(r["device_peak_bytes"]),
        f"{gflop} / {gb}", f"{tflops}, {gbs}",
    ]  # fmt: skip


def _e2e_cells(r: dict) -> list[str]:
    return [
        r["experiment"], r["source"], r["pipeline"], str(r["batch"]), r["dtype"], str(r["steps"]),
        _num(r["step_img_s"]), _num(r.get("device_step_img_s")), _num(r.get("loop_img_s")),
        _num(r.get("loop_vs_step"), 2), _mark(r.get("meets_target")), f"{r['compile_s']:.1f}",
        f"{r['wall_time_s']:.1f}", f"{r['train_fraction_of_wall']:.2f}",
    ]  # fmt: skip


def _torch_cells(r: dict) -> list[str]:
    head = [r["model"], r["mode"], str(r["image_size"]), str(r["batch"])]
    if "error" in r:
        return [*head, f"failed: {r['error'][:120]}", "", "", "", r.get("torch", "")]
    return [*head, f"{r['img_s']:,.0f}", f"{r['ms_per_step']:.2f}", f"{r['first_step_s']:.1f}",
            _bytes(r.get("peak_bytes")), r["torch"]]  # fmt: skip


def _ratio_cells(r: dict) -> list[str]:
    return [
        r["preset"], str(r["batch"]), str(r["image_size"]), _num(r["jax_img_s"]),
        _num(r["torch_eager_img_s"]), _num(r["vs_eager"], 2), _mark(r["vs_eager_meets_target"]),
        _num(r["torch_compile_img_s"]), _num(r["vs_compile"], 2),
        _mark(r["vs_compile_meets_target"]),
    ]  # fmt: skip


def _maxbatch_cells(r: dict) -> list[str]:
    return [
        r["preset"], str(r["image_size"]), r["dtype"], _num(r["max_batch"]),
        _num(r["max_power_of_two"]), _num(r["predicted_from_footprint"]),
        _num(r["first_failed"]), _bytes(r["step_bytes_at_max"]), _num(r["img_s_at_max"]),
        _bytes(r["bytes_limit"]),
    ]  # fmt: skip


def _ahead_cells(r: dict) -> list[str]:
    seq, ahead = r["sequential"]["runs"], r["ahead"]["runs"]
    per_run = lambda runs, key: " / ".join(f"{x[key]:.1f}" for x in runs)
    return [
        r["preset"], str(r["image_size"]), str(r["batch"]), r["dtype"],
        ", ".join(f"{x:g}" for x in r["squeeze_ratios"]), str(r["steps_per_run"]),
        f"{r['sequential_wall_s']:.1f}", f"{r['ahead_wall_s']:.1f}", f"{r['speedup']:.2f}",
        per_run(seq, "compile_s"), per_run(ahead, "compile_s"), per_run(seq, "train_s"),
        per_run(ahead, "train_s"), per_run(ahead, "waited_s"),
    ]  # fmt: skip


# Per section: the table's title (a function of the targets), its columns, and a row's cells.
_TABLES = {
    "step": (
        "Train step (the trainer's jitted step; synthetic batch resident on the devices; "
        "median of timed windows, one host sync per window):",
        ["preset", "image", "batch", "dtype", "data", "lower + compile s", "img/s", "ms/step",
         "step memory", "device peak", "XLA GFLOP / GB per step", "achieved TFLOP/s, GB/s"],
        _step_cells,
    ),
    "e2e": (
        "End to end (`train_and_evaluate`, the experiment's recipe and eval/checkpoint "
        "cadence; loop img/s = steps x batch / train_time_s; target loop/step >= "
        f"{TARGET_LOOP_VS_STEP}):",
        ["experiment", "data", "pipeline", "batch", "dtype", "steps",
         "step img/s (fixed batch)", "step img/s (device data)", "loop img/s", "loop/step",
         "target", "compile s", "wall s", "train/wall"],
        _e2e_cells,
    ),
    "torch": (
        "torchvision (bf16 autocast, channels-last, same optimiser, same device and batch):",
        ["model", "mode", "image", "batch", "img/s", "ms/step", "first step s", "peak memory",
         "torch"],
        _torch_cells,
    ),
    "torch_ratio": (
        f"JAX bf16 step / torchvision (targets: >= {TARGET_VS_TORCH_EAGER}x eager AMP, "
        f">= {TARGET_VS_TORCH_COMPILE}x torch.compile):",
        ["preset", "batch", "image", "JAX img/s", "eager img/s", "JAX/eager", "target",
         "compile img/s", "JAX/compile", "target"],
        _ratio_cells,
    ),
    "maxbatch": (
        "Largest batch that fits (one device; predicted from the compiled footprint at two "
        "sizes, then run to confirm):",
        ["preset", "image", "dtype", "max batch", "largest power of two", "predicted",
         "first failed", "step memory at max", "img/s at max", "allocator limit"],
        _maxbatch_cells,
    ),
    "compile_ahead": (
        "Compile-ahead (runs of one preset at several squeeze ratios, each compiling its train "
        "and eval steps, training, evaluating once; ahead: the next run compiles in a "
        "background thread while this one trains; per-run values in run order):",
        ["preset", "image", "batch", "dtype", "squeeze ratios", "steps/run",
         "sequential wall s", "ahead wall s", "speedup", "compile s (sequential)",
         "compile s (ahead, background)", "train s (sequential)", "train s (ahead)",
         "waited s (ahead)"],
        _ahead_cells,
    ),
    "population": (population.TITLE, population.COLUMNS, population.cells),
}  # fmt: skip


def render_markdown(data: dict) -> str:
    """The markdown block `--results` appends: a header naming the machine and command, then a
    table per benchmark kind (every row names the machine again)."""
    m = data["machine"]
    name = m["machine"]
    lines = [
        f"### {data['started']} · {name}",
        "",
        f"Command: `{data['command']}`  ",
        f"Devices: {m['device_count']}x {m['device_kind']} ({m['platform']}); host "
        f"{m['host_cpu']}, {m['host_cores']} cores; 1-min load average "
        f"{_num(m['load_average_1min'], 2)} at start, "
        f"{_num(m.get('load_average_1min_end'), 2)} at the end  ",
        f"Versions: python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']}, "
        f"optax {m['optax']}; persistent compile cache: {m['compilation_cache_dir'] or 'off'}",
    ]
    if not data.get("complete"):
        lines.append("**Incomplete run** (stopped before the end; rows below are what finished).")
    lines.append("")
    for section, (title, columns, cells) in _TABLES.items():
        rows = data.get(section) or []
        if rows:
            lines += _table(title, ["machine", *columns], [[name, *cells(r)] for r in rows])
        lines += _profiles(section, rows)
    lines += [f"- {note}" for note in data["notes"]]
    if data["notes"]:
        lines.append("")
    return "\n".join(lines) + "\n"


def _profiles(section: str, rows: list[dict]) -> list[str]:
    """The profile paragraphs under a table: step rows', and e2e rows' two reference steps."""
    lines: list[str] = []
    for r in rows:
        if section == "step" and r.get("profile"):
            title = f"{r['preset']} b{r['batch']} {r['dtype']} step ({r['data']} data)"
            lines += _profile_lines(title, r["profile"])
        if section == "e2e":
            for key, kind in (("step_profile", "fixed"), ("device_step_profile", "device")):
                if r.get(key):
                    title = f"{r['experiment']} b{r['batch']} {r['dtype']} step ({kind} data)"
                    lines += _profile_lines(title, r[key])
    return lines


def _profile_lines(title: str, p: dict) -> list[str]:
    """A profile as markdown: categories on one line, then the top ops."""
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


def append_results(path: str, data: dict) -> None:
    """Append a run's markdown block to `path` (created with a title if missing)."""
    block = render_markdown(data)
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        if new:
            f.write("# Benchmark results\n\n")
        f.write("\n" + block)
