"""The database store of a sweep's runs: a server database (`--storage postgresql://...`)
decides, and no file lock is taken (dbclaims.py says why and how).

A run is a row: pending, claimed (by one worker, with a heartbeat) or done (with its outcome
and objective values). Claiming a registered run takes no sweep-wide lock (`decisions` is none);
proposals hold the sweep row's lock; a point is told under its rows' lock (`settle`), from its
rows, never from files another host wrote.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence

from sqzexplore.sweep import dbclaims
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.dbclaims import DbClaim, DbRuns
from sqzexplore.sweep.space import trial_id
from sqzexplore.sweep.store import Pending, Point, Scan, Settled, ValuesOf


class DbStore:
    """Run rows in the sweep's database (implements store.RunStore)."""

    def __init__(self, sweep_dir: sd.SweepDir, url: str, study_name: str, stale_after_s: float):
        self.dir = sweep_dir
        self.db = DbRuns(url, study_name, sweep_dir.claims, stale_after_s)

    def decisions(self):
        return contextlib.nullcontext()  # each claim is one conditional UPDATE

    def proposals(self):
        return self.db.proposal_lock()

    def open(self) -> None:
        self.db.create()

    def add_runs(self, number: int, point: str, seeds: Sequence[int]) -> None:
        seeds = list(seeds)
        self.db.add_runs(number, point, seeds, [trial_id(point, s) for s in seeds])

    def scan(self, registered: Callable[[], list[Point]], mine: set[str]) -> Scan:
        rows, now = self.db.snapshot()  # the rows are the registered runs: no need to ask
        elsewhere = {
            r.point
            for r in rows
            if r.state == dbclaims.CLAIMED and r.run_id not in mine and not self.db.is_stale(r, now)
        }
        pending = [
            Pending(r.number, r.point, r.seed, r.run_id, (r, now))
            for r in rows
            if self.db.claimable(r, now)
        ]
        return Scan(pending, elsewhere)

    def try_claim(self, run: Pending, worker: str) -> DbClaim | None:
        row, now = run.handle
        return self.db.try_claim(row, worker, now)

    def finish(self, claim: DbClaim, state: str | None, values: list | None) -> None:
        self.db.finish(claim, state, values)

    def repair(self, points: list[Point], seeds: Sequence[int]) -> list[Point]:
        rows: dict[int, list] = {}
        for row in self.db.snapshot()[0]:
            rows.setdefault(row.number, []).append(row)
        ready = []
        for number, point in points:
            mine = rows.get(number, [])
            if len(mine) < len(seeds):  # a kill kept them from being added
                self.add_runs(number, point, seeds)
                continue
            # Only points with nothing left to run, or a seed stopped early, can be told.
            done = [r.outcome for r in mine if r.state == dbclaims.DONE]
            if len(done) == len(mine) or sd.STOPPED in done:
                ready.append((number, point))
        return ready

    @contextlib.contextmanager
    def settle(
        self, number: int, point: str, seeds: Sequence[int], values_of: ValuesOf
    ) -> Iterator[Settled | None]:
        with self.db.point_lock(number) as (conn, rows, now):
            states = [r.outcome if r.state == dbclaims.DONE else None for r in rows]
            if len(rows) < len(seeds) or (None in states and sd.STOPPED not in states):
                yield None  # runs left to train: nothing to tell yet
                return

            def skip_unstarted(reason: str) -> None:
                for k, row in enumerate(rows):
                    if states[k] is None and self.db.claimable(row, now):
                        sd.mark(self.dir.trial_dir(row.run_id), sd.SKIPPED_FILE, reason=reason)
                        self.db.mark_done(conn, row, sd.SKIPPED)
                        states[k] = sd.SKIPPED

            values = [json.loads(r.run_values) if r.run_values else None for r in rows]
            yield Settled([r.run_id for r in rows], states, values, skip_unstarted)

    def close(self) -> None:
        self.db.close()
