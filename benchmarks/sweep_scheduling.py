"""Scheduling decisions per second of the sweep engine: journal file + flock vs PostgreSQL.

    python -m benchmarks.sweep_scheduling [--workers 16] [--points 30] [--seeds 2]
                                          [--storage journal --storage postgres]
                                          [--postgres-url postgresql://user@host:port]

Starts `--workers` `sqz sweep worker` processes at once on a fresh grid sweep whose trials train
nothing (the tests' stand-in runner, tests/fake_runner.py, 2 steps of 0 s), so the sweep's time
is the engine's: claims, registrations, finishes and tells. A decision is a claim or a finish;
the rate is (claims + finishes) / (last run finished - first run started), so worker start-up is
left out. Without --postgres-url it starts a throwaway PostgreSQL server as tests do
(tests/postgres_server.py). Both storages run on a local disk: the journal's flock is the
kernel's, as good as a shared filesystem's gets.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from postgres_server import create_database, postgres_server  # noqa: E402
from test_sweep_support import write_sweep  # noqa: E402

from sqzexplore.rundir import read_jsonl  # noqa: E402
from sqzexplore.sweep.dbclaims import RUNS  # noqa: E402
from sqzexplore.sweep.params import categorical  # noqa: E402
from sqzexplore.sweep.sweepdir import SweepDir, init_sweep_dir  # noqa: E402
from sqzexplore.sweep.sweepfile import load_base_config, load_sweep  # noqa: E402

SR = (0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.4375, 0.5, 0.5625, 0.625, 0.6875, 0.75)
PCT = (0.125, 0.25, 0.5, 0.75, 0.875)


def measure(storage: str | None, workers: int, points: int, seeds: int, root: Path) -> dict:
    """Run the sweep once; the rate and its parts."""
    space = {
        "model.squeeze_ratio": categorical(*SR[: points // len(PCT)]),
        "model.pct_3x3": categorical(*PCT),
    }
    path = write_sweep(
        root / "bench.py", name="bench", space=space, seeds=seeds, fixed={"num_steps": 2}
    )
    defn = load_sweep(str(path), None)
    sweep_dir, _ = init_sweep_dir(
        root / "w", defn, load_base_config(defn), sweep_file=str(path), arg=None, storage=storage
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "SQZ_FAKE_STEP_S": "0",
    }
    cmd = [sys.executable, "-m", "sqzexplore.sweep.cli", "worker", str(sweep_dir.root)]
    cmd += ["--runner", "fake_runner:run_fake_trial", "--poll-s", "0.2", "--heartbeat-s", "2"]
    t0 = time.time()
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(workers)
    ]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"a worker failed ({p.returncode}): {err.decode()[-2000:]}")
    wall = time.time() - t0
    return summarize(sweep_dir, storage, wall)


def summarize(sweep_dir: SweepDir, storage: str | None, wall: float) -> dict:
    starts, ends = [], []
    for tid in sweep_dir.trial_ids():
        d = sweep_dir.trial_dir(tid)
        starts += [a["time"] for a in read_jsonl(d / "fake_attempts.jsonl")]
        ends.append((d / "result.json").stat().st_mtime)
    runs = len(ends)
    claims = runs
    if storage:
        engine = sa.create_engine(storage)
        with engine.connect() as conn:
            claims = sum(conn.execute(sa.select(RUNS.c.handed_out)).scalars())
        engine.dispose()
    span = max(ends) - min(starts)
    return {
        "runs": runs,
        "claims": claims,
        "span_s": span,
        "wall_s": wall,
        "decisions_per_s": (claims + runs) / span,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--points", type=int, default=30, help="grid points, a multiple of 5")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--storage", action="append", choices=("journal", "postgres"), default=None)
    p.add_argument("--postgres-url", default=None, help="server URL without the database")
    args = p.parse_args(argv)
    if args.points % len(PCT) or not 1 <= args.points // len(PCT) <= len(SR):
        p.error(f"--points must be a multiple of {len(PCT)} up to {len(SR) * len(PCT)}")
    kinds = args.storage or ["journal", "postgres"]
    rows = []
    with contextlib.ExitStack() as stack:
        server = None
        if "postgres" in kinds:
            server = args.postgres_url or stack.enter_context(postgres_server())
        for kind in kinds:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sqz-sched-")))
            url = None
            if kind == "postgres":
                url = create_database(server, f"sched_{os.getpid()}_{int(time.time())}")
            r = measure(url, args.workers, args.points, args.seeds, root)
            rows.append((kind, r))
            print(
                f"{kind}: {args.workers} workers, {r['runs']} runs ({args.points} points x "
                f"{args.seeds} seeds), {r['claims']} claims: {r['decisions_per_s']:.1f} "
                f"decisions/s (first run start to last finish {r['span_s']:.1f} s; "
                f"wall with start-up {r['wall_s']:.1f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
