"""Who is running what: the sweep lock, per-run claim files with heartbeats, liveness checks.

Every scheduling decision (ask Optuna for a point, register its runs, claim a run, tell Optuna a
result) happens under one exclusive `SweepLock` on `<sweep>/sweep.lock`, so two `sqz sweep run`
processes, or SLURM array tasks on several machines, never hand out the same run. The lock is a
`fcntl.flock`, released by the kernel when its holder dies, even by SIGKILL; the same class locks
Optuna's journal file. On a shared filesystem flock must work across machines (local disks, NFSv4,
NFSv3 with lockd, Lustre mounted with `-o flock`; not Lustre `localflock`).

A claim `<sweep>/claims/<trial_id>.claim` (created with O_EXCL) says which process runs a trial:
host, pid, the pid's start time (so a recycled pid is not mistaken for the owner) and a token.
Its owner touches it every `heartbeat_s`. A claim is stale, and its trial is handed out again
(resuming from the trial's own checkpoints), when its process is gone (same host) or its
heartbeat is older than `stale_after_s` (another host; keep this well above clock skew and NFS
attribute caching).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HOST = socket.gethostname()


class SweepLock:
    """An exclusive, process-wide flock on a lock file; usable as a context manager and as
    Optuna's journal lock (`acquire() -> True`, `release()`). Reentrant within one object."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._fd: int | None = None
        self._depth = 0
        self._thread_lock = threading.RLock()

    def acquire(self) -> bool:
        self._thread_lock.acquire()
        if self._depth == 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                self._thread_lock.release()
                raise
            self._fd = fd
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self._thread_lock.release()

    def __enter__(self) -> SweepLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ------------------------------------------------------------------------------ processes
def process_start_ticks(pid: int) -> int | None:
    """The start time of a process in clock ticks since boot (Linux), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of stat(5), counting from 1
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start_ticks: int | None) -> bool:
    """Whether `pid` is running and is the same process (not a recycled pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start_ticks is not None:
        now_ticks = process_start_ticks(pid)
        if now_ticks is not None and now_ticks != start_ticks:
            return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rfind(")") + 2 :].split()[0] != "Z"
    except OSError:
        return True


def owner_record(worker: str) -> dict[str, Any]:
    """Identity of this process, written into claims and worker files."""
    pid = os.getpid()
    return {
        "host": HOST,
        "pid": pid,
        "pid_start_ticks": process_start_ticks(pid),
        "worker": worker,
        "token": uuid.uuid4().hex,
        "started": time.time(),
    }


def record_is_live(record: dict[str, Any], mtime: float, stale_after_s: float) -> bool:
    """Liveness of the owner of a claim or worker file."""
    if record.get("host") == HOST and isinstance(record.get("pid"), int):
        return process_alive(record["pid"], record.get("pid_start_ticks"))
    return time.time() - mtime < stale_after_s


# ------------------------------------------------------------------------------ claims
@dataclasses.dataclass
class Claim:
    trial_id: str
    path: Path
    record: dict[str, Any]

    def still_mine(self) -> bool:
        try:
            return json.loads(self.path.read_text()).get("token") == self.record["token"]
        except (OSError, ValueError):
            return False


class RunClaims:
    """Claim files of one sweep: claim, inspect, heartbeat and release runs."""

    def __init__(self, directory: str | os.PathLike, stale_after_s: float):
        self.directory = Path(directory)
        self.stale_after_s = stale_after_s
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, trial_id: str) -> Path:
        return self.directory / f"{trial_id}.claim"

    def read(self, trial_id: str) -> tuple[dict[str, Any], float] | None:
        """The claim record and its heartbeat time, or None when unclaimed."""
        path = self.path(trial_id)
        try:
            mtime = path.stat().st_mtime
            return json.loads(path.read_text()), mtime
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # A claim torn by a kill between create and write: judge it by its age alone.
            try:
                return {}, path.stat().st_mtime
            except OSError:
                return None

    def live_owner(self, trial_id: str) -> dict[str, Any] | None:
        """The record of the live process running `trial_id`, or None (unclaimed or stale)."""
        found = self.read(trial_id)
        if found is None:
            return None
        record, mtime = found
        return record if record_is_live(record, mtime, self.stale_after_s) else None

    def try_claim(self, trial_id: str, worker: str) -> Claim | None:
        """Claim `trial_id` unless a live process holds it (a stale claim is taken over)."""
        path = self.path(trial_id)
        if path.exists():
            if self.live_owner(trial_id) is not None:
                return None
            # Move the stale claim aside atomically; whoever loses this race backs off.
            aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                return None
            with contextlib.suppress(OSError):
                os.unlink(aside)
        record = owner_record(worker)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        return Claim(trial_id, path, record)

    def release(self, claim: Claim) -> None:
        if claim.still_mine():
            with contextlib.suppress(FileNotFoundError):
                claim.path.unlink()

    def live_claims(self) -> dict[str, dict[str, Any]]:
        """trial_id -> owner record of every live claim."""
        out = {}
        for path in self.directory.glob("*.claim"):
            trial = path.name[: -len(".claim")]
            owner = self.live_owner(trial)
            if owner is not None:
                out[trial] = owner
        return out


class Heartbeat:
    """A daemon thread touching files (the claim of the running trial, the worker file) every
    `interval_s`; Python threads keep running while JAX computes (it releases the GIL).

    A claim is touched only while it still holds our token: if another host took it over (our
    heartbeats stalled past `stale_after_s`), `lost(claim)` turns True and the run stops."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._files: dict[Path, str | None] = {}
        self._lost: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-heartbeat", daemon=True)
        self._thread.start()

    def add(self, path: Path, token: str | None = None) -> None:
        with self._lock:
            self._files[Path(path)] = token
            self._lost.discard(Path(path))
        self._beat(Path(path), token)

    def discard(self, path: Path) -> None:
        with self._lock:
            self._files.pop(Path(path), None)

    def lost(self, path: Path) -> bool:
        with self._lock:
            return Path(path) in self._lost

    def _beat(self, path: Path, token: str | None) -> None:
        if token is not None:
            try:
                mine = json.loads(path.read_text()).get("token") == token
            except (OSError, ValueError):
                mine = False
            if not mine:
                with self._lock:
                    self._lost.add(path)
                    self._files.pop(path, None)
                return
        with contextlib.suppress(OSError):
            os.utime(path)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                files = list(self._files.items())
            for path, token in files:
                self._beat(path, token)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
