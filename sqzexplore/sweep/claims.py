"""Who is running what: the sweep lock, per-run claim files with heartbeats, liveness checks.

Every scheduling decision (ask Optuna for a point, register its runs, claim a run, tell Optuna a
result) happens under one exclusive lock on `<sweep>/sweep.lock`, so two `sqz sweep run`
processes, or SLURM array tasks on several machines, never hand out the same run. The lock is
`filelock.UnixFileLock`: a `flock` on a file that stays in place, released by the kernel when its
holder dies, even by SIGKILL, so a lock is never left stale; the same kind of lock guards Optuna's
journal file. Its fallback to a "soft" marker-file lock on filesystems without flock is turned
off: a marker left by a SIGKILLed process on another host would block the sweep until someone
deletes it, so such a filesystem is an error instead. On a shared filesystem flock must work
across machines (NFSv4, NFSv3 with lockd, Lustre mounted with `-o flock`; not `localflock`).

A claim `<sweep>/claims/<trial_id>.claim` says which process runs a trial: host, pid, the pid's
start time (so a recycled pid is not mistaken for the owner) and a token. On Linux the start
time compared is the kernel's, in clock ticks since boot: the wall-clock creation time psutil
derives from it moves when the clock is stepped (seen after a VM snapshot), which made a live
worker look dead and its run be taken over. It appears
atomically, complete (written to a temporary file, then hard-linked into place, which fails if a
claim exists), so a kill never leaves a torn claim. Its owner touches it every `heartbeat_s`. A
claim is stale, and its trial is handed out again (resuming from the trial's own checkpoints),
when its process is gone (same host) or its heartbeat is older than `stale_after_s` (another
host; keep this well above clock skew and NFS attribute caching).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import filelock
import psutil

HOST = socket.gethostname()


class LockUnsupportedError(RuntimeError):
    """The sweep directory's filesystem has no working flock."""


def sweep_lock(path: str | os.PathLike) -> filelock.UnixFileLock:
    """An exclusive flock on `path`, reentrant within the object; usable as a context manager
    and as Optuna's journal lock (`acquire()`, `release()`)."""
    return _CheckedLock(str(path), fallback_to_soft=False, poll_interval=0.01)


class _CheckedLock(filelock.UnixFileLock):
    def acquire(self, *args, **kwargs):
        try:
            return super().acquire(*args, **kwargs)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            raise LockUnsupportedError(
                f"the filesystem of {self.lock_file} does not support flock, which sweeps need "
                "to share work safely: use a local disk, or mount the shared filesystem with "
                "flock support (Lustre: -o flock)"
            ) from None


# ------------------------------------------------------------------------------ processes
def process_created(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), None if unknown."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux), None if unknown: unlike a
    wall-clock time it does not move when the system clock is stepped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # Fields after the command name (which may hold spaces and parentheses); starttime is
        # field 22 of the file, the 20th after the name.
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int, created: float | None, start_ticks: int | None = None) -> bool:
    """Whether `pid` is running and is the same process (not a recycled pid, not a zombie):
    judged by `start_ticks` where both it and /proc are there, else by `created`."""
    try:
        proc = psutil.Process(pid)
        ticks = process_start_ticks(pid) if start_ticks is not None else None
        if ticks is not None:
            if ticks != start_ticks:
                return False
        elif created is not None and abs(proc.create_time() - created) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def owner_record(worker: str) -> dict[str, Any]:
    """Identity of this process, written into claims and worker files."""
    pid = os.getpid()
    return {
        "host": HOST,
        "pid": pid,
        "pid_created": process_created(pid),
        "pid_start_ticks": process_start_ticks(pid),
        "worker": worker,
        "token": uuid.uuid4().hex,
        "started": time.time(),
    }


def record_is_live(record: dict[str, Any], mtime: float, stale_after_s: float) -> bool:
    """Liveness of the owner of a claim or worker file."""
    if record.get("host") == HOST and isinstance(record.get("pid"), int):
        ticks = record.get("pid_start_ticks")
        return process_alive(record["pid"], record.get("pid_created"), ticks)
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
            # Unreadable (e.g. torn by a power loss): judge it by its age alone.
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
        # Written whole to a private file, then linked into place: the claim appears complete or
        # not at all, and the link fails if another worker's claim got there first.
        tmp = path.with_name(f".{path.name}.{record['token'][:8]}.tmp")
        tmp.write_text(json.dumps(record))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        finally:
            tmp.unlink()
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
