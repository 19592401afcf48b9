"""The trainer's progress bar: tqdm over steps (images/s, last loss, ETA), only on a terminal."""

from __future__ import annotations

import sys
from typing import Any

from sqzexplore.config import tristate


class Progress:
    """A tqdm bar over steps; silent when not on a terminal (`config.progress` "auto") or off."""

    def __init__(self, mode: Any, total: int, initial: int, is_main: bool):
        wanted = tristate(mode, "progress")
        enabled = is_main and (wanted is True or (wanted is None and sys.stderr.isatty()))
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(
                {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in postfix.items()},
                refresh=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
