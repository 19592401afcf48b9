"""System services some test modules need (a PostgreSQL server, a headless Chromium): where one
is missing the module skips, saying why, on a developer's machine, and FAILS under CI (`CI=true`),
where .ci/run installs them, so that a CI run cannot pass green with those tests silently skipped
(no tests here)."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """Whether this is a CI run (CI=true, as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require(missing: str | None) -> list[pytest.MarkDecorator]:
    """The `pytestmark` of a module that needs a service: none when it is there (`missing` is
    None), a skip naming `missing` outside CI, and under CI a collection error naming it."""
    if missing is None:
        return []
    if in_ci():
        pytest.fail(
            f"CI=true but a required service is missing: {missing} (.ci/run installs it; "
            "outside CI these tests skip)",
            pytrace=False,
        )
    return [pytest.mark.skip(reason=missing)]


def import_or_require(module: str, missing: str):
    """`import module`, with `require`'s treatment when it cannot be imported."""
    try:
        return __import__(module)
    except ImportError:
        require(missing)
        pytest.skip(missing, allow_module_level=True)
