"""Presets over experiment and sweep arguments: a value the user typed wins.

Experiment and sweep files take one argument string ('runlocal,seeds=2'). A preset such as
`runlocal` shrinks several values at once (fewer seeds, fewer epochs); `preset` lays its values
over the parsed arguments only for the keys the user did not type, so `runlocal,seeds=2` is a
smoke run with two seeds, never silently one.
"""

from __future__ import annotations

from typing import Any


def typed_keys(arg: str | None) -> set[str]:
    """The argument keys written in `arg` ('runlocal,seeds=2' -> {'runlocal', 'seeds'})."""
    return {item.partition("=")[0].strip() for item in (arg or "").split(",") if item.strip()}


def preset(parsed: Any, arg: str | None, on: bool, **values: Any) -> Any:
    """Set `values` on `parsed` (the result of `config.parse_arg`) when the preset is `on`,
    except for keys typed in `arg`; returns `parsed`."""
    if on:
        typed = typed_keys(arg)
        for key, value in values.items():
            if key not in typed:
                parsed[key] = value
    return parsed
