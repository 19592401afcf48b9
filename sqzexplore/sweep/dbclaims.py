"""Who runs what, decided by the sweep's database: claims, heartbeats and proposals as rows.

With a server database (`--storage postgresql://...`, or any SQLAlchemy URL Optuna accepts other
than SQLite) no file lock is taken: every scheduling decision is a database transaction, so two
workers never run the same run whatever the shared filesystem's locking (Lustre `localflock`,
NFS `local_lock=flock`, or none at all). Two tables of our own live next to Optuna's in the same
database:

    sqz_sweeps(study_name)               one row per sweep; its row lock serialises proposals
    sqz_runs(study_name, run_id, ...)    one row per run: pending | claimed | done, the owner,
                                         its heartbeat, and once done the outcome and the run's
                                         objective values

- Claim: one conditional UPDATE (`pending -> claimed`, or a stale claim's exact (token, beat) ->
  ours). The database applies concurrent UPDATEs of one row one after the other and re-checks
  the condition for the later ones, so exactly one worker wins.
- Heartbeat: the owner bumps `beat` and sets `heartbeat = now()`, the database's clock, so clock
  skew between hosts does not matter; when no row is updated the run was taken over (lost).
- Stale: the owner is on this host and its process is gone (pid and start time), or its last
  heartbeat is older than `stale_after_s` by the database's clock (any host).
- Done: the outcome and the per-seed objective values go into the row; a design point's Optuna
  trial is told from its rows under `point_lock` (`SELECT ... FOR UPDATE` of the point's rows),
  so two workers finishing its last seeds at once tell it once, and never from files another
  host wrote (a shared filesystem's caches may not show them yet).
- Proposals (ask Optuna for a new design point, register its runs) hold `SELECT ... FOR UPDATE`
  on the sweep's row: one at a time, so the budget is exact and the grid order deterministic.
  Claiming already registered runs needs no such lock. A SIGKILLed holder's connection is closed
  by its kernel and the server rolls its transaction back, releasing the lock.
- Schema: Optuna's tables and ours are created under a server-wide advisory lock
  (`pg_advisory_lock`, MySQL `GET_LOCK`), so many workers starting at once on a fresh database do
  not race to create them (PostgreSQL fails such a race with "duplicate key ... pg_type");
  once they exist, opening the storage takes no lock.

Why rows of our own rather than Optuna's trial heartbeats (`heartbeat_interval`,
`failed_trial_callback`): one Optuna trial is one design point, whose seeds are separate runs that
different workers train, possibly at once; Optuna's heartbeat belongs to the process that asked
the trial (it is documented for `Study.optimize`, not ask-and-tell), and a stale trial is failed
as a whole, where the sweep must hand out just the dead worker's run again and resume it from its
checkpoint. Optuna's transactions still make every study write atomic.

A claim also writes `<sweep>/claims/<run>.claim` (touched by the heartbeat, removed at the end):
a display copy for `sqz sweep status`, which reads only files; the row is the claim.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sqzexplore.rundir import write_json
from sqzexplore.sweep.claims import HOST, owner_record, process_alive

PENDING, CLAIMED, DONE = "pending", "claimed", "done"
# A fixed key of the schema lock (pg_advisory_lock takes a bigint): "sqzschem" in ASCII.
SCHEMA_LOCK_KEY = 0x73717A7363686D65 % (2**63)

metadata = sa.MetaData()
SWEEPS = sa.Table(
    "sqz_sweeps",
    metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
)
RUNS = sa.Table(
    "sqz_runs",
    metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("run_id", sa.String(255), primary_key=True),
    sa.Column("number", sa.Integer, nullable=False),  # the design point's Optuna trial number
    sa.Column("point", sa.String(255), nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | claimed | done
    sa.Column("outcome", sa.String(16)),  # complete | stopped | failed | skipped (when done)
    sa.Column("run_values", sa.Text),  # JSON: the run's objective values (complete runs)
    sa.Column("token", sa.String(64)),  # the claim's owner
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("pid_start_ticks", sa.BigInteger),
    sa.Column("worker", sa.String(255)),
    sa.Column("heartbeat", sa.DateTime(timezone=True)),
    sa.Column("beat", sa.Integer, nullable=False, default=0),
    sa.Column("handed_out", sa.Integer, nullable=False, default=0),
)
sa.Index("sqz_runs_point", RUNS.c.study_name, RUNS.c.number)


def coordinates_in_db(url: str | None) -> bool:
    """Whether a sweep with storage `url` is coordinated by its database (a server database),
    rather than by the sweep directory's flock (the journal file, and SQLite: one machine)."""
    return bool(url) and sa.engine.make_url(url).get_backend_name() != "sqlite"


@contextlib.contextmanager
def schema_lock(engine: sa.Engine) -> Iterator[None]:
    """Hold a server-wide lock while creating tables (PostgreSQL, MySQL); elsewhere nothing."""
    backend = engine.url.get_backend_name()
    if backend not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    with engine.connect() as conn:
        if backend == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
        else:
            conn.execute(sa.text("SELECT GET_LOCK('sqz_schema', 600)"))
        conn.commit()
        try:
            yield
        finally:
            if backend == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK_KEY})
            else:
                conn.execute(sa.text("SELECT RELEASE_LOCK('sqz_schema')"))
            conn.commit()


def tables_exist(engine: sa.Engine) -> bool:
    """Whether Optuna's tables (with its version stamp) and ours are all there."""
    inspector = sa.inspect(engine)
    return all(inspector.has_table(t) for t in ("alembic_version", "version_info", "sqz_runs"))


# The connection pool of the Optuna storage (sweepdir.open_storage): the worker's calls into
# Optuna come from its main thread. With `make_engine`'s, a worker holds at most 8 connections,
# typically 2-3 (measured: 16 workers at once stay inside PostgreSQL's default 100).
POOL = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True}


def make_engine(url: str) -> sa.Engine:
    # A small pool: the worker's main thread, its heartbeat thread and a held proposal lock.
    return sa.create_engine(url, pool_size=3, max_overflow=1, pool_pre_ping=True)


@dataclasses.dataclass
class DbClaim:
    """A claimed run; `path` is its display copy under claims/ (the row is the claim)."""

    trial_id: str
    path: Path
    record: dict[str, Any]
    runs: DbRuns

    def beat(self) -> bool:
        """Renew the claim; False when it is no longer ours (taken over)."""
        return self.runs.beat(self)

    def still_mine(self) -> bool:
        return self.runs.owner_token(self.trial_id) == self.record["token"]


class DbRuns:
    """The runs of one sweep in its database."""

    def __init__(self, url: str, study_name: str, claims_dir: Path, stale_after_s: float):
        self.engine = make_engine(url)
        self.study = study_name
        self.claims_dir = Path(claims_dir)
        self.stale_after_s = stale_after_s

    def create(self) -> None:
        """The sweep's row (idempotent; the tables are made when the storage is opened)."""
        with contextlib.suppress(sa.exc.IntegrityError), self.engine.begin() as conn:
            found = conn.execute(sa.select(SWEEPS).where(SWEEPS.c.study_name == self.study))
            if found.first() is None:
                conn.execute(SWEEPS.insert().values(study_name=self.study))

    def _mine(self, run_id: str):
        return sa.and_(RUNS.c.study_name == self.study, RUNS.c.run_id == run_id)

    # ------------------------------------------------------------------------------ reading
    def snapshot(self) -> tuple[list[Any], datetime.datetime]:
        """Every run row of the sweep (number, seed order) and the database's time."""
        with self.engine.connect() as conn:
            now = conn.execute(sa.select(sa.func.now())).scalar_one()
            rows = conn.execute(
                sa.select(RUNS)
                .where(RUNS.c.study_name == self.study)
                .order_by(RUNS.c.number, RUNS.c.seed)
            ).all()
        return rows, now

    def is_stale(self, row: Any, now: datetime.datetime) -> bool:
        """A claimed row whose owner is gone (this host) or silent for `stale_after_s`."""
        local = row.host == HOST and row.pid is not None
        if local and not process_alive(row.pid, None, row.pid_start_ticks):
            return True
        return (now - row.heartbeat).total_seconds() > self.stale_after_s

    def claimable(self, row: Any, now: datetime.datetime) -> bool:
        return row.state == PENDING or (row.state == CLAIMED and self.is_stale(row, now))

    def owner_token(self, run_id: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(RUNS.c.token, RUNS.c.state).where(self._mine(run_id))
            ).first()
        return row.token if row is not None and row.state == CLAIMED else None

    # ------------------------------------------------------------------------------ writing
    def add_runs(self, number: int, point: str, seeds: Sequence[int], run_ids: Sequence[str]):
        """Insert the pending rows of a registered point (those not there yet)."""
        with self.engine.begin() as conn:
            have = set(
                conn.execute(
                    sa.select(RUNS.c.run_id).where(
                        RUNS.c.study_name == self.study, RUNS.c.number == number
                    )
                ).scalars()
            )
            new = [
                dict(study_name=self.study, run_id=r, number=number, point=point, seed=s)
                for s, r in zip(seeds, run_ids, strict=True)
                if r not in have
            ]
            if new:
                conn.execute(RUNS.insert(), [{**n, "state": PENDING, "beat": 0} for n in new])

    def try_claim(self, row: Any, worker: str, now: datetime.datetime) -> DbClaim | None:
        """Claim `row` if it is still what we saw: pending, or the same stale claim."""
        record = owner_record(worker)
        if row.state == PENDING:
            condition = RUNS.c.state == PENDING
        elif row.state == CLAIMED and self.is_stale(row, now):
            condition = sa.and_(
                RUNS.c.state == CLAIMED, RUNS.c.token == row.token, RUNS.c.beat == row.beat
            )
        else:
            return None
        with self.engine.begin() as conn:
            done = conn.execute(
                RUNS.update()
                .where(self._mine(row.run_id), condition)
                .values(
                    state=CLAIMED,
                    token=record["token"],
                    host=record["host"],
                    pid=record["pid"],
                    pid_start_ticks=record["pid_start_ticks"],
                    worker=worker,
                    heartbeat=sa.func.now(),
                    beat=0,
                    handed_out=RUNS.c.handed_out + 1,
                )
            ).rowcount
        if done != 1:
            return None
        claim = DbClaim(row.run_id, self.claims_dir / f"{row.run_id}.claim", record, self)
        with contextlib.suppress(OSError):  # the display copy only
            write_json(claim.path, record)
        return claim

    def _update_owned(self, claim: DbClaim):
        """An UPDATE of our claimed run's row that matches only while the claim is still ours."""
        return RUNS.update().where(
            self._mine(claim.trial_id),
            RUNS.c.state == CLAIMED,
            RUNS.c.token == claim.record["token"],
        )

    def beat(self, claim: DbClaim) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(
                self._update_owned(claim).values(heartbeat=sa.func.now(), beat=RUNS.c.beat + 1)
            ).rowcount
        if done == 1:
            with contextlib.suppress(OSError):
                os.utime(claim.path)
        return done == 1

    def finish(self, claim: DbClaim, outcome: str | None, values: list | None = None) -> bool:
        """Mark our claimed run done with `outcome`, or pending again when None (interrupted);
        False (and nothing changed) when it is no longer ours."""
        if outcome is None:
            change = dict(state=PENDING, token=None)
        else:
            change = dict(state=DONE, outcome=outcome, run_values=json.dumps(values), token=None)
        with self.engine.begin() as conn:
            done = conn.execute(self._update_owned(claim).values(**change)).rowcount
        self._drop_display_copy(claim)
        return done == 1

    def _drop_display_copy(self, claim: DbClaim) -> None:
        try:
            if json.loads(claim.path.read_text()).get("token") == claim.record["token"]:
                claim.path.unlink()
        except (OSError, ValueError):
            pass

    # ------------------------------------------------------------------------------ locks
    @contextlib.contextmanager
    def proposal_lock(self) -> Iterator[None]:
        """Hold the sweep row's lock (one proposer at a time) for the block."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.select(SWEEPS).where(SWEEPS.c.study_name == self.study).with_for_update()
            ).first()
            yield

    @contextlib.contextmanager
    def point_lock(self, number: int) -> Iterator[tuple[sa.Connection, list[Any], Any]]:
        """Lock the rows of design point `number` for the block; yields (connection, its rows
        in seed order, the database's time). Writes through the connection commit at the end."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(RUNS)
                .where(RUNS.c.study_name == self.study, RUNS.c.number == number)
                .order_by(RUNS.c.run_id)
                .with_for_update()
            ).all()
            now = conn.execute(sa.select(sa.func.now())).scalar_one()
            yield conn, sorted(rows, key=lambda r: r.seed), now

    def mark_done(self, conn: sa.Connection, row: Any, outcome: str, values=None) -> None:
        """Inside `point_lock`: record a run done that nobody holds (found finished by its
        files, or skipped)."""
        conn.execute(
            RUNS.update()
            .where(self._mine(row.run_id))
            .values(state=DONE, outcome=outcome, run_values=json.dumps(values), token=None)
        )

    def close(self) -> None:
        self.engine.dispose()
