"""Text forms of a sweep's numbers: accuracies with their spread, intervals, durations, tables.

Shared by the terminal output (`sqz sweep status`, `sqz sweep report`) and the HTML page, so a
number reads the same everywhere: '97.80 ± 0.45 (n=3)', never a ± from a single seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from tabulate import tabulate

from sqzexplore.sweep.metric_table import ACCURACY, metric


def accuracy_text(row: dict[str, Any], name: str = ACCURACY) -> str:
    """'97.80 ± 0.45 (n=3)', or '97.80 (n=1)': never a ± from a single seed."""
    m = metric(name)
    mean, std = row.get(f"{name}.mean"), row.get(f"{name}.std")
    n = row.get(f"{name}.n", row.get("seeds_complete", 0))
    if mean is None:
        return "-"
    spread = f" ± {m.format(std)}" if std is not None else ""
    return f"{m.format(mean)}{spread} (n={n})"


def interval_text(row: dict[str, Any], name: str = ACCURACY) -> str:
    """The 95% interval of the mean, '[96.71, 98.89]', or '-' below two seeds."""
    mean, half = row.get(f"{name}.mean"), row.get(f"{name}.ci95")
    if mean is None or half is None:
        return "-"
    m = metric(name)
    # Accuracies are fractions: an interval past 0 or 1 says only that n is small.
    return f"[{m.format(max(0.0, mean - half))}, {m.format(min(1.0, mean + half))}]"


def format_duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, Callable[[dict], str]]]
) -> str:
    """A plain aligned text table (tabulate's "simple" layout, every cell right-aligned as
    given): `columns` are (header, row -> cell)."""
    return tabulate(
        [[fn(row) for _, fn in columns] for row in rows],
        headers=[header for header, _ in columns],
        tablefmt="simple",
        stralign="right",
        disable_numparse=True,
    )
