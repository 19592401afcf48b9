"""A `sqz bench` run's record: the machine, the JSON results, and the markdown for RESULTS.md.

`--json PATH` is rewritten after every row (a killed run keeps what it measured); `--results
PATH` appends a markdown block naming the machine, the versions, the date and the exact command,
with a table per benchmark in which every row names the machine again. This module only renders:
each benchmark declares its own sections (title, columns, cells; `benchmarks.common.Section`),
and the caller hands them in, in the order the tables appear.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import jaxlib
import optax
from tabulate import tabulate

from benchmarks.common import Section, num
from sqzexplore import rundir


def machine_info() -> dict:
    """What ran the benchmark: devices, host CPU, versions, load, compile-cache setting."""
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
    """Results of one invocation, one list of rows per section; rewritten to --json after
    every row."""

    def __init__(
        self,
        command: str,
        json_path: str | None,
        sections: Sequence[Section],
        machine: dict | None = None,
    ):
        self.json_path = json_path
        self.sections = {s.name: s for s in sections}
        self.data: dict[str, Any] = {
            "command": command,
            "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine or machine_info(),
            **{name: [] for name in self.sections},
            "notes": [],
            "complete": False,
        }
        self.flush()

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)
        print(f"[{section}] {self.sections[section].one_line(row)}", flush=True)
        self.flush()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        print(f"note: {text}", flush=True)
        self.flush()

    def has_rows(self) -> bool:
        return any(self.data[name] for name in self.sections)

    def flush(self) -> None:
        if not self.json_path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.json_path)), exist_ok=True)
        rundir.write_json(self.json_path, self.data)


def render_markdown(data: dict, sections: Sequence[Section]) -> str:
    """The markdown block `--results` appends: a header naming the machine and command, then a
    table per section that has rows (every row names the machine again)."""
    m = data["machine"]
    name = m["machine"]
    lines = [
        f"### {data['started']} · {name}",
        "",
        f"Command: `{data['command']}`  ",
        f"Devices: {m['device_count']}x {m['device_kind']} ({m['platform']}); host "
        f"{m['host_cpu']}, {m['host_cores']} cores; 1-min load average "
        f"{num(m['load_average_1min'], 2)} at start, "
        f"{num(m.get('load_average_1min_end'), 2)} at the end  ",
        f"Versions: python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']}, "
        f"optax {m['optax']}; persistent compile cache: {m['compilation_cache_dir'] or 'off'}",
    ]
    if not data.get("complete"):
        lines.append("**Incomplete run** (stopped before the end; rows below are what finished).")
    lines.append("")
    for section in sections:
        rows = data.get(section.name) or []
        if rows:
            table = tabulate(
                [[name, *section.cells(r)] for r in rows],
                headers=["machine", *section.columns],
                tablefmt="github",
                disable_numparse=True,  # the cells are formatted already
            )
            lines += [section.title, "", table, ""]
        if section.after is not None:
            lines += section.after(rows)
    lines += [f"- {note}" for note in data["notes"]]
    if data["notes"]:
        lines.append("")
    return "\n".join(lines) + "\n"


def append_results(path: str, data: dict, sections: Sequence[Section]) -> None:
    """Append a run's markdown block to `path` (created with a title if missing)."""
    block = render_markdown(data, sections)
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        if new:
            f.write("# Benchmark results\n\n")
        f.write("\n" + block)
