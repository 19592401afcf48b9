"""The sweep directory: its layout, its identity (sweep.json) and each run's state, from files.

    DIR/sweep.json          the resolved definition, its fingerprint, the base config, storage
    DIR/study.journal       the Optuna study (JournalStorage; absent with an RDB --storage)
    DIR/sweep.lock          the scheduling lock (see claims.py; not taken with a server database)
    DIR/trials/<trial>/     one training run each (<trial> = <point>-s<seed>): trial.json (design
                            point, seed and the run's full config, built once at registration)
                            plus the trainer's files (config.json, metrics.jsonl, result.json,
                            checkpoints/); failed or early-stopped runs get sweep_failed.json /
                            sweep_stopped.json, runs not worth training sweep_skipped.json
    DIR/claims/<trial>.claim  which live process runs a trial (with a server database: a display
                            copy of the claim, whose row in the database is the claim)
    DIR/workers/<host>-<pid>.json  each worker's start and last heartbeat (wall time, liveness)
    DIR/skipped.jsonl       design points not trained (constraints, invalid spec, duplicates)
    DIR/report/             results.csv, frontier.csv, figures, report.html

The files are the source of truth: status and report read only them (never Optuna), so they work
on a copy of the directory without the database.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path
from typing import Any

import ml_collections
import optuna
import sqlalchemy as sa
from optuna.storages.journal import JournalFileBackend, JournalStorage

from sqzexplore.config import flat_defaults
from sqzexplore.rundir import config_diffs, dumps, flat_diff, read_json, read_result, write_json
from sqzexplore.sweep import dbclaims
from sqzexplore.sweep.claims import HOST, sweep_lock
from sqzexplore.sweep.space import SweepDefinition, SweepError, config_json, fingerprint

FORMAT_VERSION = 2

# Run states derived from files (RUNNING / PENDING additionally need the claims).
COMPLETE, STOPPED, FAILED, SKIPPED, RUNNING, PENDING = (
    "complete",
    "stopped",
    "failed",
    "skipped",
    "running",
    "pending",
)
FINISHED_STATES = (COMPLETE, STOPPED, FAILED, SKIPPED)
# result.json statuses of a run ended by the sweep's on_eval callback (the trainer says 'pruned').
STOPPED_STATUSES = ("stopped", "pruned")

TRIAL_FILE = "trial.json"
FAILED_FILE = "sweep_failed.json"
STOPPED_FILE = "sweep_stopped.json"
SKIPPED_FILE = "sweep_skipped.json"
EXHAUSTED_FILE = "sampling_exhausted.json"


class SweepChangedError(RuntimeError):
    """The sweep directory was created from a different sweep definition."""


class SweepDirError(RuntimeError):
    """A directory that is not (yet) a sweep directory, or is unusable."""


class SweepDir:
    """Paths of one sweep directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()

    sweep_json = property(lambda self: self.root / "sweep.json")
    journal = property(lambda self: self.root / "study.journal")
    lock_path = property(lambda self: self.root / "sweep.lock")
    trials = property(lambda self: self.root / "trials")
    claims = property(lambda self: self.root / "claims")
    workers = property(lambda self: self.root / "workers")
    logs = property(lambda self: self.root / "logs")
    skipped = property(lambda self: self.root / "skipped.jsonl")
    exhausted = property(lambda self: self.root / EXHAUSTED_FILE)
    report = property(lambda self: self.root / "report")
    slurm = property(lambda self: self.root / "slurm")

    def trial_dir(self, trial_id: str) -> Path:
        return self.trials / trial_id

    def lock(self):
        return sweep_lock(self.lock_path)

    def exists(self) -> bool:
        return self.sweep_json.exists()

    def state(self) -> dict[str, Any]:
        """The contents of sweep.json."""
        state = read_json(self.sweep_json)
        if state is None:
            raise SweepDirError(
                f"{self.root} is not a sweep directory (no sweep.json); start one with "
                "`sqz sweep run SWEEP_FILE --workdir DIR`"
            )
        if state.get("format") != FORMAT_VERSION:
            raise SweepDirError(
                f"{self.root} was made by another version of sqzexplore (format "
                f"{state.get('format')}, this one reads {FORMAT_VERSION}): rerun "
                "`sqz sweep run SWEEP_FILE --new` to archive it and start over"
            )
        return state

    def definition(self) -> SweepDefinition:
        state = self.state()
        return SweepDefinition.from_dict(state["definition"], question=state.get("question", ""))

    def trial_ids(self) -> list[str]:
        if not self.trials.exists():
            return []
        return sorted(p.name for p in self.trials.iterdir() if (p / TRIAL_FILE).exists())


def run_state(trial_dir: Path) -> str | None:
    """COMPLETE / STOPPED / FAILED / SKIPPED from the run's files, None when unfinished."""
    result = read_result(trial_dir)
    if result is not None:
        return STOPPED if result.get("status") in STOPPED_STATUSES else COMPLETE
    for name, state in ((FAILED_FILE, FAILED), (STOPPED_FILE, STOPPED), (SKIPPED_FILE, SKIPPED)):
        if (trial_dir / name).exists():
            return state
    return None


def mark(trial_dir: Path, name: str, **detail: Any) -> None:
    """Write one of the sweep's outcome files (sweep_failed.json, ...) into a run directory."""
    write_json(trial_dir / name, {"time": time.time(), **detail})


# ------------------------------------------------------------------------------ create / check
def init_sweep_dir(
    root: str | os.PathLike,
    defn: SweepDefinition,
    base_config: ml_collections.ConfigDict,
    *,
    sweep_file: str | None,
    arg: str | None,
    storage: str | None,
    new: bool = False,
) -> tuple[SweepDir, dict[str, Any]]:
    """Create the sweep directory, or check that an existing one holds the same sweep.

    An existing directory made from a different definition (or base config) is refused with a
    clear message, unless `new`, which archives it to `<root>.archived-<time>` first.
    With a server database no file lock is taken: sweep.json appears atomically (linked into
    place, which fails when another process made it first; that one's is then checked).
    """
    sweep_dir = SweepDir(root)
    if sweep_dir.root.exists() and not sweep_dir.root.is_dir():
        raise SweepDirError(f"--workdir {sweep_dir.root} is a file, not a directory")
    if new and sweep_dir.root.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        archived = sweep_dir.root.with_name(f"{sweep_dir.root.name}.archived-{stamp}")
        os.rename(sweep_dir.root, archived)
        print(f"archived the previous sweep directory to {archived}", flush=True)
    sweep_dir.root.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(defn, base_config)
    stored = read_json(sweep_dir.sweep_json) or {}
    in_db = dbclaims.coordinates_in_db(storage or stored.get("storage"))
    with contextlib.nullcontext() if in_db else sweep_dir.lock():
        if sweep_dir.exists():
            state = sweep_dir.state()
            if state.get("fingerprint") != fp and _same_computation(state, defn, base_config):
                # Written by an earlier sqzexplore whose base config lacked keys added since,
                # at their defaults: the same sweep, recorded under today's fingerprint.
                state = {**state, "fingerprint": fp, "base_config": config_json(base_config)}
                write_json(sweep_dir.sweep_json, state)
            if state.get("fingerprint") != fp:
                grown = grow(sweep_dir, state, defn, base_config, fp)
                if grown is None:
                    raise SweepChangedError(_changed_message(sweep_dir, state, defn, base_config))
                state = grown
            if storage is not None and storage != state.get("storage"):
                raise SweepDirError(
                    f"{sweep_dir.root} uses storage {state.get('storage') or 'journal file'}, "
                    f"not {storage}; drop --storage to use the stored one"
                )
            return sweep_dir, state
        for d in (sweep_dir.trials, sweep_dir.claims, sweep_dir.workers):
            d.mkdir(exist_ok=True)
        state = {
            "format": FORMAT_VERSION,
            "name": defn.name,
            "fingerprint": fp,
            "study_name": f"{defn.name}-{fp[:8]}",
            "definition": defn.to_dict(),
            "question": defn.question,
            "base_config": config_json(base_config),
            "source": {
                "sweep_file": os.path.abspath(sweep_file) if sweep_file else None,
                "arg": arg,
            },
            "storage": storage,
            "created": time.time(),
            "created_on": HOST,
        }
        if in_db and not _create_once(sweep_dir.sweep_json, state):
            return init_sweep_dir(
                root, defn, base_config, sweep_file=sweep_file, arg=arg, storage=storage
            )
        if not in_db:
            write_json(sweep_dir.sweep_json, state)
    return sweep_dir, state


def _same_computation(
    state: dict[str, Any], defn: SweepDefinition, base_config: ml_collections.ConfigDict
) -> bool:
    """The stored sweep has this definition, and its base config differs from `base_config`
    in nothing a run computes (keys added since it was written hold their defaults)."""
    if state.get("definition") != defn.to_dict() or not isinstance(state.get("base_config"), dict):
        return False
    return not config_diffs(state["base_config"], config_json(base_config), flat_defaults())


def grow(
    sweep_dir: SweepDir,
    state: dict[str, Any],
    defn: SweepDefinition,
    base_config: ml_collections.ConfigDict,
    fp: str,
) -> dict[str, Any] | None:
    """Grow a sweep in place when the new definition only adds to the old one: more seeds (the
    old ones kept), more values of a categorical grid field, a larger trial budget. Returns the
    new sweep.json state, or None when anything else changed (base config, fixed overrides,
    objectives, ranges, sampler...: that is a different sweep and needs --new).

    The finished trials stay where they are, under the same trial ids (<point>-s<seed>). The
    grown sweep gets a fresh Optuna study (Optuna cannot widen a categorical parameter of a
    study); its sampler proposes the old points again in the same seeded order, the engine finds
    their runs finished in their directories (the files are the truth) and trains only the new
    runs. Points rejected before training are judged again (their old records are kept aside).
    Called under the sweep lock."""
    old, new = state.get("definition") or {}, defn.to_dict()
    if state.get("base_config") != config_json(base_config):
        return None
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "seeds" and set(a) <= set(b):
            changes.append(f"seeds {a} -> {b}")
        elif key == "n_trials" and (b == 0 and old["sampler"] == "grid" or 0 < a <= b):
            changes.append(f"budget {a or 'all'} -> {b or 'all'} points")
        elif key == "space" and old["sampler"] == "grid" and set(a) == set(b):
            for field in sorted(a):
                was, now = a[field], b[field]
                if was == now:
                    continue
                if not (was["type"] == now["type"] == "categorical"):
                    return None
                if any(v not in now["values"] for v in was["values"]):
                    return None
                added = [v for v in now["values"] if v not in was["values"]]
                changes.append(f"{field} + {added}")
        else:
            return None
    archive = f"{state['study_name']}.skipped.jsonl"
    if sweep_dir.skipped.exists():
        os.replace(sweep_dir.skipped, sweep_dir.root / archive)
    if sweep_dir.exhausted.exists():
        os.remove(sweep_dir.exhausted)
    grown = {
        **state,
        "fingerprint": fp,
        "study_name": f"{defn.name}-{fp[:8]}",
        "definition": new,
        "question": defn.question,
        "grown": [
            *state.get("grown", []),
            {"time": time.time(), "from": state["fingerprint"], "changes": changes},
        ],
    }
    write_json(sweep_dir.sweep_json, grown)
    print(
        f"growing the sweep in {sweep_dir.root} ({'; '.join(changes)}): only the new trials "
        f"run, the {len(sweep_dir.trial_ids())} registered ones are kept",
        flush=True,
    )
    return grown


def _create_once(path: Path, obj: Any) -> bool:
    """Write `path` whole unless it exists (atomic, lock-free); False when another was first."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp")
    tmp.write_text(dumps(obj) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def _changed_message(
    sweep_dir: SweepDir,
    state: dict[str, Any],
    defn: SweepDefinition,
    base_config: ml_collections.ConfigDict,
) -> str:
    old = {"sweep": state.get("definition", {}), "base_config": state.get("base_config", {})}
    new = {"sweep": defn.to_dict(), "base_config": config_json(base_config)}
    diffs = flat_diff(old, new)
    shown = ", ".join(diffs[:12]) + (f" (+{len(diffs) - 12} more)" if len(diffs) > 12 else "")
    return (
        f"the sweep definition changed since {sweep_dir.root} was created (it differs in: "
        f"{shown or 'the fingerprint'}). Refusing to mix trials of two different sweeps: rerun "
        f"with --new to archive the old directory and start over, or choose a new --workdir "
        "(more seeds, more grid values or a larger budget grow a sweep in place)."
    )


_server_storages: dict[str, Any] = {}  # url -> the process's RDBStorage of a server database


def open_storage(url: str | None, sweep_dir: SweepDir | None):
    """The sweep's Optuna storage: an RDB at `url`, else the journal file in the sweep dir.

    Optuna creates its tables when it first opens a database; on a server database that happens
    under a server-wide lock (dbclaims.schema_lock), so many workers starting at once on a fresh
    database do not race to create them; for SQLite (one machine) a flock on `<db file>.lock`
    does the same.
    Raises SweepError naming --storage when `url` cannot be opened."""
    if not url:
        journal = str(sweep_dir.journal)
        return JournalStorage(JournalFileBackend(journal, lock_obj=sweep_lock(journal + ".lock")))
    try:
        if dbclaims.coordinates_in_db(url):
            if url in _server_storages:
                return _server_storages[url]
            engine = dbclaims.make_engine(url)
            try:
                if not dbclaims.tables_exist(engine):  # else (the usual case) no lock
                    with dbclaims.schema_lock(engine):
                        if not dbclaims.tables_exist(engine):  # made while we waited?
                            storage = optuna.storages.RDBStorage(url)  # creates, stamps tables
                            storage.engine.dispose()
                            dbclaims.metadata.create_all(engine)
                # One storage (one small connection pool) per database and process: dozens of
                # workers must stay well inside a server's max_connections (PostgreSQL: 100).
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=dbclaims.POOL, skip_table_creation=True
                )
                _server_storages[url] = storage
                return storage
            finally:
                engine.dispose()
        database = sa.engine.make_url(url).database
        if not database or database == ":memory:":
            return optuna.storages.RDBStorage(url)
        # SQLite: one file on one machine; a flock beside it serialises table creation.
        with sweep_lock(os.path.abspath(database) + ".lock"):
            return optuna.storages.RDBStorage(url)
    except Exception as e:  # sqlalchemy raises many kinds: the user's URL is the cause
        raise SweepError(
            f"--storage {url}: cannot open it ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "give a database URL such as postgresql://user@host/db, mysql://user@host/db or "
            "sqlite:///path/study.db"
        ) from None
