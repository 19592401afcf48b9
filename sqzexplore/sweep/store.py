"""The one interface between the sweep engine and the place its runs are coordinated.

A sweep's runs live in one of two stores, chosen by its storage (`store_open.open_store`):

- `FileStore` (store_files.py): the journal file, or SQLite. Every decision holds the sweep
  directory's flock; a run is claimed by a claim file (claims.py). One machine, or a filesystem
  whose flock every node shares.
- `DbStore` (store_db.py): a server database (`--storage postgresql://...`). Runs are rows
  claimed by conditional UPDATEs; no file lock is taken (dbclaims.py).

The engine (engine.py) is written once against `RunStore`: it asks the store which runs are
pending and which points other workers are running (`scan`), claims one (`try_claim`, which also
takes over a stale claim), records its end (`finish`), and asks whether a design point's runs
have all ended (`settle`) before telling Optuna. Heartbeats go through the claim itself
(`RunClaim.beat`), for either store.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

# A registered design point: (Optuna trial number, point key).
Point = tuple[int, str]
# (trial directory, run state or None) -> the run's objective values (None: not complete).
ValuesOf = Callable[[Path, str | None], list | None]


class RunClaim(Protocol):
    """A claimed run: its display file `path`, renewed by `beat` (False once another worker
    took it over), checked by `still_mine`."""

    trial_id: str
    path: Path

    def beat(self) -> bool: ...

    def still_mine(self) -> bool: ...


@dataclasses.dataclass
class Pending:
    """A run nobody holds a live claim on (unclaimed, or its claim is stale)."""

    number: int  # the design point's Optuna trial number
    point: str
    seed: int
    run_id: str
    handle: Any = None  # what the store needs to claim it (a database row and its time)


@dataclasses.dataclass
class Scan:
    """The claimable runs, in trial and seed order, and the points whose runs other workers
    hold live claims on (their programs compile there)."""

    pending: list[Pending]
    elsewhere: set[str]


@dataclasses.dataclass
class Settled:
    """The runs of a design point with nothing left to train, or one seed stopped early:
    `states[k]` is run `names[k]`'s end (None: not ended), `values[k]` its objective values."""

    names: list[str]
    states: list[str | None]
    values: list[list | None]
    # Mark the runs nobody holds SKIPPED (another seed stopped early); updates `states`.
    skip_unstarted: Callable[[str], None]


class RunStore(Protocol):
    """Where a sweep's runs are claimed and finished. Implemented by FileStore and DbStore."""

    def decisions(self) -> contextlib.AbstractContextManager:
        """The lock every scheduling decision holds (the sweep flock, or none)."""

    def proposals(self) -> contextlib.AbstractContextManager:
        """The lock a proposal (ask Optuna + register a point) holds: one proposer at a time."""

    def open(self) -> None:
        """Called once the Optuna study exists (the database adds the sweep's row)."""

    def add_runs(self, number: int, point: str, seeds: Sequence[int]) -> None:
        """Record the runs of a point being registered (idempotent)."""

    def scan(self, registered: Callable[[], list[Point]], mine: set[str]) -> Scan:
        """The pending runs and the points other workers run; `registered()` lists the
        registered, untold points (trial order), `mine` this worker's claimed run ids."""

    def try_claim(self, run: Pending, worker: str) -> RunClaim | None:
        """Claim `run` unless another worker got it first (a stale claim is taken over)."""

    def finish(self, claim: RunClaim, state: str | None, values: list | None) -> None:
        """Record the run's end `state` with its objective values, or (None) hand it back."""

    def repair(self, points: list[Point], seeds: Sequence[int]) -> list[Point]:
        """After a kill: restore what a registration left unrecorded; the points of `points`
        that may now be told (their runs ended, or one stopped early)."""

    def settle(
        self, number: int, point: str, seeds: Sequence[int], values_of: ValuesOf
    ) -> contextlib.AbstractContextManager[Settled | None]:
        """Hold the point's runs still while it is told: yields its Settled, or None while
        runs are left to train and none stopped early."""

    def close(self) -> None:
        """Release connections."""
