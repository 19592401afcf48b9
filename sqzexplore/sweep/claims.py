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

All of this is the journal-file (and SQLite) design, for one machine or a filesystem whose flock
every node shares. Before its first lock a process checks that flock excludes at all here (two
open file descriptions of one file must not both get it: a filesystem that lets them, or a
no-op flock, is refused), and the engine refuses a filesystem whose mount options make flock
node-local (Lustre `localflock`, NFS `local_lock=flock|all` or `nolock`) once the sweep is used
from a second host. With a server database the database decides instead (dbclaims.py).

The host name in claims is `socket.gethostname()`, or `$SQZ_SWEEP_HOST` where set: containers
on different machines can share one host name, which would make a remote worker's pid look
local (and its claim stale when that pid is not running here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
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

HOST = os.environ.get("SQZ_SWEEP_HOST") or socket.gethostname()
# What to use instead of a filesystem whose flock does not serve (said in every refusal).
ALTERNATIVE = (
    "keep the sweep's workers on one machine with a local disk, or coordinate through a "
    "database: --storage postgresql://... (docs/postgres.md), which takes no file lock"
)


class LockUnsupportedError(RuntimeError):
    """The sweep directory's filesystem has no working (or no shared) flock."""


_probed: set[str] = set()


def check_flock_excludes(directory: str | os.PathLike) -> None:
    """Refuse a filesystem on which flock does not exclude at all: two open file descriptions
    of one file must not both hold LOCK_EX (they do with a no-op flock, which some FUSE and
    network filesystems give). Checked once per directory and process."""
    directory = os.path.abspath(directory)
    if directory in _probed:
        return
    probe = os.path.join(directory, f".flock-probe-{HOST}-{os.getpid()}")
    first = os.open(probe, os.O_RDWR | os.O_CREAT, 0o644)
    second = os.open(probe, os.O_RDWR)
    try:
        try:
            fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno == errno.ENOSYS:
                return  # no flock at all: the lock itself says so (_CheckedLock)
            raise
        try:
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _probed.add(directory)
            return
        raise LockUnsupportedError(
            f"flock on the filesystem of {directory} does not exclude: two opens of one file "
            f"both got the exclusive lock, so two workers could run the same trial; "
            f"{ALTERNATIVE}"
        )
    finally:
        os.close(first)
        os.close(second)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def node_local_flock(path: str | os.PathLike, mounts: str = "/proc/self/mounts") -> str | None:
    """Why flock on the filesystem of `path` is local to this machine (from its mount
    options in `mounts`), or None when nothing says so."""
    target = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    try:
        with open(mounts) as f:
            for line in f:
                fields = line.split()
                if len(fields) < 4:
                    continue
                mount, fstype, options = fields[1].replace("\\040", " "), fields[2], fields[3]
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and (best is None or len(mount) > len(best[0])):
                    best = (mount, fstype, options)
    except OSError:
        return None
    if best is None:
        return None
    mount, fstype, options = best
    opts = set(options.split(","))
    if fstype == "lustre" and "localflock" in opts:
        return f"{mount} is Lustre mounted with localflock"
    if fstype.startswith("nfs"):
        for o in ("local_lock=flock", "local_lock=all", "nolock"):
            if o in opts:
                return f"{mount} is NFS mounted with {o}"
    return None


def sweep_lock(path: str | os.PathLike) -> filelock.UnixFileLock:
    """An exclusive flock on `path`, reentrant within the object; usable as a context manager
    and as Optuna's journal lock (`acquire()`, `release()`)."""
    return _CheckedLock(str(path), fallback_to_soft=False, poll_interval=0.01)


class _CheckedLock(filelock.UnixFileLock):
    def acquire(self, *args, **kwargs):
        check_flock_excludes(os.path.dirname(os.path.abspath(self.lock_file)))
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

    def beat(self) -> bool:
        """Touch the claim; False when it is no longer ours (another host took it over)."""
        if not self.still_mine():
            return False
        with contextlib.suppress(OSError):
            os.utime(self.path)
        return True


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
    """A daemon thread renewing claims (the running trial's, the one claimed ahead) and touching
    plain files (the worker file) every `interval_s`; Python threads keep running while JAX
    computes (it releases the GIL).

    A claim is renewed through its `beat()`: a claim file is touched only while it still holds
    our token, a database claim's row only while it is ours. When another worker took it over
    (our heartbeats stalled past `stale_after_s`), `lost(claim.path)` turns True and the run
    stops."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._items: dict[Path, Any] = {}  # path -> the claim to renew, or None: touch the file
        self._lost: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-heartbeat", daemon=True)
        self._thread.start()

    def add(self, path: Path) -> None:
        """Touch the plain file `path` every interval."""
        self._add(Path(path), None)

    def add_claim(self, claim: Any) -> None:
        """Renew `claim` (a Claim or a dbclaims.DbClaim) every interval, keyed by its path."""
        self._add(Path(claim.path), claim)

    def _add(self, path: Path, claim: Any) -> None:
        with self._lock:
            self._items[path] = claim
            self._lost.discard(path)
        self._beat(path, claim)

    def discard(self, path: Path) -> None:
        with self._lock:
            self._items.pop(Path(path), None)

    def lost(self, path: Path) -> bool:
        with self._lock:
            return Path(path) in self._lost

    def _beat(self, path: Path, claim: Any) -> None:
        if claim is None:
            with contextlib.suppress(OSError):
                os.utime(path)
            return
        try:
            mine = claim.beat()
        except Exception:  # a database hiccup: try again next interval (stale_after_s >> it)
            return
        if not mine:
            with self._lock:
                self._lost.add(path)
                self._items.pop(path, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                items = list(self._items.items())
            for path, claim in items:
                self._beat(path, claim)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
