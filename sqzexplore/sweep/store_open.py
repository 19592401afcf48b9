"""Which run store a sweep uses: the database store when its storage coordinates runs in a
server database, else the file store (the journal and claim files). Kept apart from store.py so
that the interface imports neither implementation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqzexplore.sweep import dbclaims
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.store import RunStore
from sqzexplore.sweep.store_db import DbStore
from sqzexplore.sweep.store_files import FileStore


def open_store(
    sweep_dir: sd.SweepDir, state: dict[str, Any], seeds: Sequence[int], stale_after_s: float
) -> RunStore:
    """The store of the sweep in `sweep_dir` (its storage is in `state`, sweep.json; `seeds`
    are its definition's)."""
    url = state.get("storage")
    if dbclaims.coordinates_in_db(url):
        return DbStore(sweep_dir, url, state["study_name"], stale_after_s)
    return FileStore(sweep_dir, state, seeds, stale_after_s)
