"""A throwaway local PostgreSQL server for tests (no tests here).

Uses the server binaries of Debian's `postgresql` package (`initdb`, `pg_ctl`, found on PATH or
under /usr/lib/postgresql/<version>/bin). The server refuses to run as root, so as root it runs
as the `postgres` user (`runuser`) on a data directory that user owns. It listens on a free port
of 127.0.0.1 with trust authentication, its socket in the data directory, fsync off (a test
database needs no durability across power loss; crash safety of the sweep is about processes).
docs/postgres.md shows the same start as one command line for people.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


def server_bin_dir() -> Path | None:
    """The directory of `initdb` and `pg_ctl`, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(f"{d}/initdb") and os.path.exists(f"{d}/pg_ctl"):
            return Path(d)
    return None


def missing_reason() -> str | None:
    """Why a server cannot be started here, or None when it can."""
    if server_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if not shutil.which("runuser"):
            return "running as root without `runuser` to start the server as 'postgres'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yield its base URL (postgresql://postgres@127.0.0.1:PORT); stop it."""
    bindir = server_bin_dir()
    assert bindir is not None, missing_reason()
    as_user: list[str] = []
    # Not under pytest's tmp_path: its parents are private to the user running pytest.
    root = Path(tempfile.mkdtemp(prefix="sqz-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    data, port = root / "data", free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    try:
        run(f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        # Many test databases, each with a worker's pools: more connections than the default.
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += " -c max_connections=300"
        run(f"{bindir}/pg_ctl", "-D", str(data), "-o", options, "-l", f"{root}/log", "-w", "start")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}"
        finally:
            run(f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def required_server() -> Iterator[str]:
    """`postgres_server()` for a test fixture, with tests/required_service.py's rule where the
    server cannot start here: skip, saying why, and under CI=true fail."""
    import pytest
    from required_service import require

    missing = missing_reason()
    if missing is not None:
        require(missing)
        pytest.skip(missing)
    with postgres_server() as url:
        yield url


_templates: set[str] = set()  # servers whose template database holds the tables


def new_database(base_url: str) -> str:
    """A new database with a fresh name (one a sweep, whose study name may repeat), holding
    Optuna's tables and the sweep's: copied from a template database made once per server, as
    creating Optuna's tables takes seconds and copying them none."""
    if base_url not in _templates:
        import optuna
        import sqlalchemy as sa

        from sqzexplore.sweep import dbclaims

        url = create_database(base_url, "sqz_template")
        optuna.storages.RDBStorage(url).engine.dispose()  # creates and stamps Optuna's tables
        engine = sa.create_engine(url)
        dbclaims.metadata.create_all(engine)
        engine.dispose()
        _templates.add(base_url)
    return create_database(base_url, f"sqz_{uuid.uuid4().hex[:16]}", template="sqz_template")


def create_database(base_url: str, name: str, template: str | None = None) -> str:
    """A new database on the server (empty, or a copy of `template`); its URL."""
    import psycopg  # the driver SQLAlchemy 2.1 (and so Optuna) uses for postgresql:// URLs

    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(f"{base_url}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    return f"{base_url}/{name}"
