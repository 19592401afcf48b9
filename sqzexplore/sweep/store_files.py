"""The file store of a sweep's runs: the journal file (and SQLite), for one machine or a
filesystem whose flock every node shares (claims.py says why and how).

Every decision holds the sweep directory's flock (`decisions`, `proposals`: the same reentrant
lock). A run is pending when its registered point is untold, its trial directory has no end
marker, and no live claim file names it; a claim is a claim file (a stale one is taken over);
a run's end is its trial directory's marker (sweepdir.run_state), so `finish` only releases
the claim and `settle` reads the markers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqzexplore.rundir import read_json
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.claims import (
    ALTERNATIVE,
    HOST,
    Claim,
    LockUnsupportedError,
    RunClaims,
    node_local_flock,
    record_is_live,
)
from sqzexplore.sweep.space import trial_id
from sqzexplore.sweep.store import Pending, Point, Scan, Settled, ValuesOf


class FileStore:
    """Claim files and the sweep flock (implements store.RunStore)."""

    def __init__(
        self,
        sweep_dir: sd.SweepDir,
        state: dict[str, Any],
        seeds: Sequence[int],
        stale_after_s: float,
    ):
        self.dir = sweep_dir
        self.seeds = list(seeds)
        self.stale_after_s = stale_after_s
        self.claims = RunClaims(sweep_dir.claims, stale_after_s)
        self.lock = sweep_dir.lock()
        self._check_flock_shared(state)

    def _check_flock_shared(self, state: dict[str, Any]) -> None:
        """Refuse a sweep used from several hosts on a filesystem whose flock is node-local."""
        reason = node_local_flock(self.dir.root)
        if reason is None:
            return
        hosts = {state.get("created_on"), HOST}
        for path in self.dir.workers.glob("*.json"):
            record = read_json(path) or {}
            with contextlib.suppress(OSError):
                if "finished" not in record and record_is_live(
                    record, path.stat().st_mtime, self.stale_after_s
                ):
                    hosts.add(record.get("host"))
        hosts.discard(None)
        if len(hosts) > 1:
            raise LockUnsupportedError(
                f"{reason}: its flock is local to each machine, and this sweep is used from "
                f"{', '.join(sorted(hosts))}, so workers on different machines could run the same "
                f"trial; {ALTERNATIVE}"
            )

    def decisions(self):
        return self.lock

    def proposals(self):
        return self.lock  # reentrant: held already by the decision around it

    def open(self) -> None:
        pass

    def add_runs(self, number: int, point: str, seeds: Sequence[int]) -> None:
        pass  # the trial directories are the runs

    def scan(self, registered: Callable[[], list[Point]], mine: set[str]) -> Scan:
        live = self.claims.live_claims()
        elsewhere = {tid.rsplit("-s", 1)[0] for tid in live if tid not in mine}
        pending = []
        for number, point in registered():
            for seed in self.seeds:
                tid = trial_id(point, seed)
                if tid not in live and sd.run_state(self.dir.trial_dir(tid)) is None:
                    pending.append(Pending(number, point, seed, tid))
        return Scan(pending, elsewhere)

    def try_claim(self, run: Pending, worker: str) -> Claim | None:
        if sd.run_state(self.dir.trial_dir(run.run_id)) is not None:
            return None
        return self.claims.try_claim(run.run_id, worker)

    def finish(self, claim: Claim, state: str | None, values: list | None) -> None:
        self.claims.release(claim)  # the end itself is the trial directory's marker

    def repair(self, points: list[Point], seeds: Sequence[int]) -> list[Point]:
        return points  # the markers are written before a claim is released: nothing to restore

    @contextlib.contextmanager
    def settle(
        self, number: int, point: str, seeds: Sequence[int], values_of: ValuesOf
    ) -> Iterator[Settled | None]:
        with self.lock:
            dirs = [self.dir.trial_dir(trial_id(point, s)) for s in seeds]
            states = [sd.run_state(p) for p in dirs]
            if None in states and sd.STOPPED not in states:
                yield None
                return

            def skip_unstarted(reason: str) -> None:
                for k, p in enumerate(dirs):
                    if states[k] is None and self.claims.live_owner(p.name) is None:
                        sd.mark(p, sd.SKIPPED_FILE, reason=reason)
                        states[k] = sd.run_state(p)

            values = [values_of(p, s) for p, s in zip(dirs, states, strict=True)]
            settled = Settled([p.name for p in dirs], states, values, skip_unstarted)
            yield settled

    def close(self) -> None:
        pass
