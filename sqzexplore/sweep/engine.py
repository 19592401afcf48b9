"""The sweep engine: Optuna proposes design points; the sweep's run store hands out their runs.

The Optuna side (ask, register, tell) is points.py; where runs are claimed and finished is the
run store (store.py): the journal-file store (store_files.py: every decision under the sweep
directory's flock, claim files) or, with a server database, the database store (store_db.py:
rows claimed by conditional UPDATEs, no file lock). This module is written once against the
store's interface, so every operation below is the same on both: hand out the next run
(`next_run`), more seeds of a point (`claim_batch`, `claim_more_runs`), runs of other points
for a width-padded population (`claim_width_runs`), finish a run (`finish_run`) and tell its
point when all its runs ended. Either way the budget is exact and no run is handed out twice,
however many processes or machines share the sweep.

A run whose claim went stale (its worker died) is handed out again and resumes from its
checkpoints; a run found finished by its files when claimed (a kill came before its end was
recorded) is recorded then and not trained again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from sqzexplore.rundir import read_json
from sqzexplore.sweep import sweepdir as sd
from sqzexplore.sweep.points import ATTR_POINT, ATTR_SKIPPED, RUNNING, DesignPoints
from sqzexplore.sweep.store import Pending, RunClaim

WAIT = "wait"  # nothing to hand out now, but other workers' runs are in flight
DONE = "done"  # the sweep is finished (or its budget fully handed out and finished)


@dataclasses.dataclass
class RunTicket:
    """One run handed to a worker."""

    trial_id: str
    point: str
    number: int  # the Optuna trial number of the design point
    seed: int
    claim: RunClaim
    workdir: Path

    def record(self) -> dict[str, Any]:
        return read_json(self.workdir / sd.TRIAL_FILE)  # design point, seed and full config


@dataclasses.dataclass
class RunOutcome:
    kind: str  # complete | stopped | failed | interrupted
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


class SweepEngine(DesignPoints):
    """The scheduling side of a sweep, used by every worker process."""

    def __init__(
        self,
        sweep_dir: sd.SweepDir,
        *,
        worker: str,
        stale_after_s: float = 300.0,
        max_consecutive_skips: int = 100,
    ):
        super().__init__(
            sweep_dir, stale_after_s=stale_after_s, max_consecutive_skips=max_consecutive_skips
        )
        self.worker = worker
        self._mine: set[str] = set()  # run ids this engine has claimed and not yet finished
        self._spent = False  # the budget was seen fully handed out (it stays so)

    # -------------------------------------------------------------------------- handing out
    def next_run(self, prefer: Sequence[str] = ()) -> RunTicket | str:
        """Claim the next run, sharing compiles: a pending run of a point in `prefer` (points
        whose compiled programs this worker holds), else of a point no other worker is running
        (so that no point compiles twice at once), else a run of a new point, else a pending
        run of a point another worker is running. Returns a RunTicket, WAIT (only runs in flight
        elsewhere remain) or DONE.

        Registered runs are claimed under the store's decision lock only (none with a
        database); only when there is none does it take the proposal lock to repair, propose
        and register. Once the budget is spent, a worker whose only work left is in flight
        elsewhere waits without taking the proposal lock."""
        with self.store.decisions():
            _ = self.study  # opens the storage
            ticket, in_flight = self._claim_pending(prefer, elsewhere_too=self._spent)
            if ticket is not None:
                return ticket
            if not self._spent:
                # Read without the proposal lock: a spent budget stays spent (see below).
                self._spent = not self._budget_left(self._trials())
                if self._spent:  # now the last resort: runs of points other workers run
                    ticket, in_flight = self._claim_pending(prefer, elsewhere_too=True)
                    if ticket is not None:
                        return ticket
            if self._spent:
                if in_flight:
                    return WAIT
                if not self._any(self._trials(), "RUNNING"):
                    return DONE  # every point told, and none can be added
            with self.store.proposals():
                self._repair(self._trials())
                # Another worker may have registered points while this one waited for the lock.
                ticket, _ = self._claim_pending(prefer, elsewhere_too=False)
                if ticket is None:
                    ticket = self._propose_and_register(self._trials())
                if ticket is not None:
                    return ticket
                trials = self._trials()
                # Monotone: no worker proposes after the budget is seen spent under this lock.
                self._spent = not self._budget_left(trials)
            ticket, _ = self._claim_pending(prefer, elsewhere_too=True)
            if ticket is not None:
                return ticket
            return WAIT if self._any(trials, "RUNNING") else DONE

    def _propose_and_register(self, trials) -> RunTicket | None:
        """Under the proposal lock: new design points until one has a run to claim (claimed),
        the budget is spent, or too many proposals in a row were skipped."""
        skips = 0
        while self._budget_left(trials) and skips < self.max_consecutive_skips:
            number = self._propose(trials)
            if number is None:
                break
            key = self._register(number)
            if key is not None:
                # In a grown sweep (sweepdir.grow) earlier seeds may have finished, or all of
                # them, and then the point is told now.
                ticket = next(iter(self.claim_batch(key, 1)), None)
                if ticket is not None:
                    return ticket
                self._finalize(number, key)
            trials = self._trials()
            # A point of a grown sweep whose runs all finished before is no rejection.
            skips += ATTR_SKIPPED in self._frozen(number).user_attrs
        if skips >= self.max_consecutive_skips:
            self._note_exhausted(skips)
        return None

    def _claim_pending(self, prefer: Sequence[str], *, elsewhere_too: bool):
        """Claim a pending run, in next_run's order of preference. Returns (the ticket or None,
        whether other workers hold live claims)."""
        scan = self.store.scan(self._registered_points, self._mine)
        rank = {p: k for k, p in enumerate(prefer)}
        free = sorted(
            (r for r in scan.pending if r.point not in scan.elsewhere),
            key=lambda r: rank.get(r.point, len(rank)),  # stable: trial order otherwise
        )
        if elsewhere_too:
            free += [r for r in scan.pending if r.point in scan.elsewhere]
        for run in free:
            ticket = self._try_claim(run)
            if ticket is not None:
                return ticket, bool(scan.elsewhere)
        return None, bool(scan.elsewhere)

    def _try_claim(self, run: Pending) -> RunTicket | None:
        claim = self.store.try_claim(run, self.worker)
        if claim is None:
            return None
        workdir = self.dir.trial_dir(run.run_id)
        state = sd.run_state(workdir)
        if state is not None:  # finished by its files; a kill came before the store knew
            self.store.finish(claim, state, self._run_values(workdir, state))
            self._finalize(run.number, run.point)
            return None
        self._mine.add(run.run_id)
        return RunTicket(run.run_id, run.point, run.number, run.seed, claim, workdir)

    def claim_batch(self, point: str, n: int) -> list[RunTicket]:
        """Claim up to `n` unclaimed runs of the registered design point `point` (seed order)."""
        tickets: list[RunTicket] = []
        with self.store.decisions():
            _ = self.study
            for run in self.store.scan(self._registered_points, self._mine).pending:
                if len(tickets) < n and run.point == point:
                    ticket = self._try_claim(run)
                    if ticket is not None:
                        tickets.append(ticket)
        return tickets

    def claim_more_runs(self, ticket: RunTicket, limit: int) -> list[RunTicket]:
        """Claim up to `limit` more pending runs of `ticket`'s point (its other seeds), for a
        worker that trains them with it as one population (train/population.py)."""
        return self.claim_batch(ticket.point, limit) if limit >= 1 else []

    def claim_width_runs(
        self, ticket: RunTicket, limit: int, accept: Callable[[dict[str, Any]], bool]
    ) -> list[RunTicket]:
        """Claim up to `limit` pending runs of other points whose trial record (trial.json)
        `accept`s, for a worker that trains them with `ticket`'s as one width-padded population
        (train/padding.py, sweep/grouping.py). While fewer are pending it registers up to
        `limit` new points (under the proposal lock); one that `accept` refuses stays pending
        for any worker. Points other workers are running are left to them (their programs are
        compiled there)."""
        claimed: list[RunTicket] = []
        proposed = 0
        with self.store.decisions(), self.store.proposals():
            while limit > len(claimed):
                scan = self.store.scan(self._registered_points, self._mine)
                for run in scan.pending:
                    if len(claimed) >= limit or run.point in (ticket.point, *scan.elsewhere):
                        continue
                    record = read_json(self.dir.trial_dir(run.run_id) / sd.TRIAL_FILE)
                    if record is not None and accept(record):
                        more = self._try_claim(run)
                        if more is not None:
                            claimed.append(more)
                trials = self._trials()
                if len(claimed) >= limit or proposed >= limit or not self._budget_left(trials):
                    break
                number = self._propose(trials)
                if number is None:
                    break
                self._register(number)
                proposed += 1
        return claimed

    def has_free_runs(self, point: str) -> bool:
        """Whether `point` has unfinished runs that nobody has claimed."""
        with self.store.decisions():
            _ = self.study
            pending = self.store.scan(self._registered_points, self._mine).pending
            return any(r.point == point for r in pending)

    # -------------------------------------------------------------------------- finishing
    def finish_run(self, ticket: RunTicket, outcome: RunOutcome) -> None:
        """Record a run's end, release its claim and tell Optuna when its point is done."""
        with self.store.decisions():
            workdir = ticket.workdir
            # A run taken over by another worker is no longer ours to mark.
            ours = outcome.kind == "interrupted" or ticket.claim.still_mine()
            if outcome.kind == "failed" and ours:
                sd.mark(workdir, sd.FAILED_FILE, **outcome.detail)
            elif outcome.kind == "stopped" and ours and sd.run_state(workdir) is None:
                sd.mark(workdir, sd.STOPPED_FILE, **outcome.detail)
            self._mine.discard(ticket.trial_id)
            state = None if outcome.kind == "interrupted" else sd.run_state(workdir)
            self.store.finish(ticket.claim, state, self._run_values(workdir, state))
            self._finalize(ticket.number, ticket.point)

    def _finalize(self, number: int, point: str) -> None:
        """Tell Optuna a registered point's outcome once all its runs have finished, under the
        store's hold of its runs: one worker tells it, once."""
        with self.store.settle(number, point, self.defn.seeds, self._run_values) as settled:
            if settled is None:
                return  # runs left to train: nothing to tell yet (and no need to ask Optuna)
            frozen = self._frozen(number)  # read under the hold: told by another worker?
            if frozen.state != RUNNING or not self._registered(frozen):
                return
            if sd.STOPPED in settled.states:
                # Seeds of a point stopped early that have not started are not worth training.
                settled.skip_unstarted("another seed of the point stopped early")
            if any(s is None for s in settled.states):
                return
            self._tell_outcome(number, settled.names, settled.states, settled.values)

    def _repair(self, trials) -> None:
        """Register RUNNING trials a killed process left unregistered, finish telling those it
        left half-skipped, and tell points whose runs all ended."""
        registered = []
        for t in sorted(trials, key=lambda t: t.number):
            if t.state != RUNNING:
                continue
            if ATTR_POINT not in t.user_attrs:
                key = self._register(t.number)
                if key is not None:
                    registered.append((t.number, key))
            elif ATTR_SKIPPED in t.user_attrs:  # killed between the reason and the tell
                self._tell(t.number, state=optuna.trial.TrialState.FAIL)
            else:
                registered.append((t.number, t.user_attrs[ATTR_POINT]))
        for number, point in self.store.repair(registered, self.defn.seeds):
            self._finalize(number, point)
