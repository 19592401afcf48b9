"""The trainer's progress bar: tqdm over steps (images/s, last loss, eval top-1, ETA), only on a
terminal."""

from __future__ import annotations

import sys
from typing import Any

from sqzexplore.config import tristate


class Progress:
    """A tqdm bar over steps; silent when not on a terminal (`config.progress` "auto") or off.

    `update(step, **values)` merges `values` into what the bar shows, so the train loss and the
    last eval's top-1 (shown in %) stay side by side.
    """

    def __init__(self, mode: Any, total: int, initial: int, is_main: bool):
        wanted = tristate(mode, "progress")
        enabled = is_main and (wanted is True or (wanted is None and sys.stderr.isatty()))
        self._bar = None
        self._postfix: dict[str, Any] = {}
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, **postfix: Any) -> None:
        if self._bar is None:
            return
        for key, value in postfix.items():
            if key == "top1":
                self._postfix["eval top1"] = f"{100 * float(value):.2f}%"
            else:
                self._postfix[key] = f"{value:.4g}" if isinstance(value, float) else value
        self._bar.n = step
        self._bar.set_postfix(self._postfix, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
