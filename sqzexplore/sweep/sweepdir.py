"""The sweep directory: its layout, its identity (sweep.json) and each run's state, from files.

    DIR/sweep.json          the resolved definition, its fingerprint, the base config, storage
    DIR/study.journal       the Optuna study (JournalStorage; absent with an RDB --storage)
    DIR/sweep.lock          the scheduling lock (see claims.py)
    DIR/trials/<trial>/     one training run each (<trial> = <point>-s<seed>): sweep_trial.json
                            (design point, seed) plus the trainer's files (config.json,
                            metrics.jsonl, result.json, checkpoints/); failed or pruned runs get
                            sweep_failed.json / sweep_pruned.json, skipped ones sweep_skipped.json
    DIR/claims/<trial>.claim  which live process runs a trial
    DIR/workers/<host>-<pid>.json  each worker's start and last heartbeat (wall time, liveness)
    DIR/skipped.jsonl       design points not trained (constraints, invalid spec, duplicates)
    DIR/report/             results.csv, frontier.csv, figures, report.html

The files are the source of truth: status and report read only them (never Optuna), so they work
on a copy of the directory without the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from sqzexplore.sweep.claims import HOST, SweepLock
from sqzexplore.sweep.space import SweepDefinition, config_json, fingerprint, parse_sweep

FORMAT_VERSION = 1

# Run states derived from files (RUNNING / PENDING additionally need the claims).
COMPLETE, PRUNED, FAILED, SKIPPED, RUNNING, PENDING = (
    "complete",
    "pruned",
    "failed",
    "skipped",
    "running",
    "pending",
)
FINISHED_STATES = (COMPLETE, PRUNED, FAILED, SKIPPED)

TRIAL_FILE = "sweep_trial.json"
FAILED_FILE = "sweep_failed.json"
PRUNED_FILE = "sweep_pruned.json"
SKIPPED_FILE = "sweep_skipped.json"


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
    report = property(lambda self: self.root / "report")
    slurm = property(lambda self: self.root / "slurm")

    def trial_dir(self, trial_id: str) -> Path:
        return self.trials / trial_id

    def lock(self) -> SweepLock:
        return SweepLock(self.lock_path)

    def exists(self) -> bool:
        return self.sweep_json.exists()

    def state(self) -> dict[str, Any]:
        """The contents of sweep.json."""
        if not self.sweep_json.exists():
            raise SweepDirError(
                f"{self.root} is not a sweep directory (no sweep.json); start one with "
                "`sqz sweep run SWEEP_FILE --workdir DIR`"
            )
        return json.loads(self.sweep_json.read_text())

    def definition(self) -> SweepDefinition:
        state = self.state()
        return parse_sweep(state["definition"], question=state.get("question", ""))

    def trial_ids(self) -> list[str]:
        if not self.trials.exists():
            return []
        return sorted(p.name for p in self.trials.iterdir() if (p / TRIAL_FILE).exists())


# ------------------------------------------------------------------------------ small file helpers
def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None


def append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(dict(record), sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a line torn by a kill is skipped."""
    out = []
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def run_state(trial_dir: Path) -> str | None:
    """COMPLETE / PRUNED / FAILED / SKIPPED from the run's files, None when unfinished."""
    result = read_json(trial_dir / "result.json")
    if result is not None:
        return PRUNED if result.get("status") == "pruned" else COMPLETE
    if (trial_dir / FAILED_FILE).exists():
        return FAILED
    if (trial_dir / PRUNED_FILE).exists():
        return PRUNED
    if (trial_dir / SKIPPED_FILE).exists():
        return SKIPPED
    return None


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
    """
    sweep_dir = SweepDir(root)
    if new and sweep_dir.root.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        archived = sweep_dir.root.with_name(f"{sweep_dir.root.name}.archived-{stamp}")
        os.rename(sweep_dir.root, archived)
        print(f"archived the previous sweep directory to {archived}", flush=True)
    sweep_dir.root.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(defn, base_config)
    with sweep_dir.lock():
        if sweep_dir.exists():
            state = sweep_dir.state()
            if state.get("fingerprint") != fp:
                raise SweepChangedError(_changed_message(sweep_dir, state, defn, base_config))
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
        write_json(sweep_dir.sweep_json, state)
    return sweep_dir, state


def _changed_message(
    sweep_dir: SweepDir,
    state: dict[str, Any],
    defn: SweepDefinition,
    base_config: ml_collections.ConfigDict,
) -> str:
    old = {"sweep": state.get("definition", {}), "base_config": state.get("base_config", {})}
    new = {"sweep": json.loads(json.dumps(defn.to_dict())), "base_config": config_json(base_config)}
    diffs = flat_diff(old, new)
    shown = ", ".join(diffs[:12]) + (f" (+{len(diffs) - 12} more)" if len(diffs) > 12 else "")
    return (
        f"the sweep definition changed since {sweep_dir.root} was created (it differs in: "
        f"{shown or 'the fingerprint'}). Refusing to mix trials of two different sweeps: rerun "
        f"with --new to archive the old directory and start over, or choose a new --workdir."
    )


def flat_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths at which two JSON trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += flat_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
