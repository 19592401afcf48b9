#!/usr/bin/env bash
# Issue 16's GPU measurements in one prepared run of at most 8 minutes: a stage starts only if
# its limit fits in GPU_CHECK_BUDGET=460 s from the script's start (install and environment
# check included), and a stopped stage gets 10 s more to exit.
#
# For a session with a GPU machine (one H200: Python 3.12, jax 0.11.2 CUDA 13, flax, optax,
# torch, torchvision, scikit-learn preinstalled, no TensorFlow, no network). Run from the
# repository root, with the wheels of benchmarks/fetch_gpu_wheels.sh in .whl/ (name `.whl` in
# the device run's carry):
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh
#     STAGES="compile sweep" OUT=/some/dir bash benchmarks/gpu_check.sh   # only some stages
#     GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh    # the script itself, tiny sizes, any machine
#
# Stages, in order of importance; each runs under its own `timeout` sized with its compiles
# included (20-45 s per program on an H200), and a stage starts only if its limit still fits in
# the budget, so the script ends in time whatever the stages take:
#   compile     a digits trial's programs (init, step, eval; benchmarks/compile_time.py): cold
#               (fresh persistent cache) and again from that cache, in fresh processes; targets
#               <= 10 s cold, <= 1 s cached. Cache hits and writes are counted, not timed.
#   e2e         `sqz bench e2e` on digits at batch 64: loop img/s / step img/s (target >= 0.9)
#   population  `sqz bench population --members 1,2,4,8`: img/s per member count (target >= 2x
#               at 8)
#   sweep       the README main job, `sqz sweep run sweeps/squeeze_ratio.py --workers 2`, with a
#               fresh HOME (cold ~/.cache/sqzexplore/xla), wall time (target <= 45 s)
#   variants    compile of another design point (sr=0.25) into the cache the cold run filled
#               (what XLA's per-fusion autotune cache saves a sweep's next point), and a cold
#               compile at config.xla_gpu_autotune_level=0 (autotuning's share, and its step ms)
#   torch       `sqz bench torch --preset v1.1 --batch 256`, short windows
#   parallel    a cold compile with XLA_FLAGS=--xla_gpu_enable_llvm_module_compilation_parallelism
#   sweep_warm  the same sweep again into a new directory, its compiles from the warm cache
#   widths      `sqz bench population --widths 0.125,0.5,1.0` on digits: three squeeze ratios as
#               one width-padded program vs one program per point, cold compiles, trials/h
#               (issue 19; last, so that it never starves the stages above)
# TensorFlow is never imported (digits and synthetic data only).
#
# $OUT gets at most 8 files (what a device run brings back): env.txt, log.txt, summary.md (the
# per-stage table, the targets and the markdown the bench commands wrote), compile.json,
# e2e.json, population.json, sweep.json, torch.json.

set -u
OUT=${OUT:-benchmarks/out}
SMOKE=${GPU_CHECK_SMOKE:-}
STAGES=${STAGES:-compile e2e population sweep variants torch parallel sweep_warm widths}
BUDGET=${GPU_CHECK_BUDGET:-460}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SCRATCH=$(mktemp -d /tmp/sqz-gpu-check.XXXXXX)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 WANDB_MODE=disabled
unset JAX_COMPILATION_CACHE_DIR
LOG=$OUT/log.txt
SUMMARY_ROWS=$SCRATCH/rows.tsv
: >"$LOG"
: >"$SUMMARY_ROWS"

# The carried wheels are cp312 ones (the GPU image's Python): a smoke run elsewhere uses its own.
if ls .whl/*.whl >/dev/null 2>&1 && $PY -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'
then
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$LOG" 2>&1; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}  # before the image's packages
  else
    echo "installing .whl/*.whl failed (log.txt)" | tee -a "$LOG"
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SQZ="$PY -m sqzexplore.cli"

# Sizes: the issue's, or tiny ones that check the script on a CPU in minutes (no time limits).
if [ -n "$SMOKE" ]; then
  DIGITS=tests/data/tiny_digits.py
  NEXT_POINT=$DIGITS:batch_norm=true  # another program of the same net
  BENCH_SMOKE=--smoke
  MEMBERS=1,2
  SWEEP_ARG="--arg runlocal"
  TORCH_ARGS="--smoke"
  BUDGET=100000
else
  DIGITS=experiments/digits/squeezenet.py
  NEXT_POINT=$DIGITS:sr=0.25  # the README sweep's second design point
  BENCH_SMOKE=
  MEMBERS=1,2,4,8
  SWEEP_ARG=
  TORCH_ARGS="--preset v1.1 --batch 256 --steps 20 --windows 2"
fi
export PY SQZ SCRATCH SWEEP_ARG  # the stage functions run in a child shell (under timeout)

{
  date -u
  echo "smoke: ${SMOKE:-no}; stages: $STAGES; budget ${BUDGET}s"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
    || echo "nvidia-smi: none"
  nproc
  $PY - <<'PYEOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "ml_collections", "optuna",
             "sqlalchemy", "tabulate", "sklearn", "torch", "torchvision", "tensorflow"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as e:
        print(name, "MISSING:", type(e).__name__, e)
import jax
print("devices", jax.devices())
PYEOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if ! $PY -c "import ml_collections, flax, optax, orbax.checkpoint, sklearn, optuna, tabulate" \
    2>>"$LOG"; then
  echo "missing packages (see $OUT/env.txt): bash benchmarks/fetch_gpu_wheels.sh, carry .whl" \
    | tee -a "$LOG"
  exit 2
fi

wanted() { case " $STAGES " in *" $1 "*) return 0 ;; esac; return 1; }

# run NAME LIMIT COMMAND...: one measurement under `timeout LIMIT`, its output in log.txt, a row
# (name, limit, seconds, exit status) in the summary; skipped if LIMIT no longer fits the budget.
run() {
  local name=$1 limit=$2
  shift 2
  if [ -z "$SMOKE" ] && [ $((SECONDS + limit)) -gt "$BUDGET" ]; then
    echo "=== $name skipped: ${limit}s limit does not fit (${SECONDS}s of ${BUDGET}s used)" \
      | tee -a "$LOG"
    printf '%s\t%s\t-\tskipped (budget)\n' "$name" "$limit" >>"$SUMMARY_ROWS"
    return 0
  fi
  [ -n "$SMOKE" ] && limit=1800
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  if [ "$(type -t "$1")" = function ]; then  # timeout runs programs: give it a shell
    timeout -k 10 "$limit" bash -c "$(declare -f "$1" sweep_summary); \"\$@\"" _ "$@" \
      >>"$LOG" 2>&1
  else
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  fi
  local rc=$?
  local took=$((SECONDS - t0))
  local status=$rc
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && status="$rc (stopped at the ${limit}s limit)"
  echo "=== $name took ${took}s (exit $status)" | tee -a "$LOG"
  printf '%s\t%s\t%s\t%s\n' "$name" "$limit" "$took" "$status" >>"$SUMMARY_ROWS"
  return 0
}

compile_time() {  # compile_time JSON_NAME ARGS...: one fresh-process run of benchmarks.compile_time
  local name=$1
  shift
  $PY -m benchmarks.compile_time --runs 1 --json "$SCRATCH/compile_$name.json" "$@"
}

# Sweep: wall time and, from each trial's result.json, compile / train / wall seconds.
sweep_summary() {  # sweep_summary NAME DIR SECONDS
  $PY - "$1" "$2" "$3" "$SCRATCH/sweep_$1.json" <<'PYEOF'
import glob, json, os, sys
name, root, wall, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
trials = []
for path in sorted(glob.glob(os.path.join(root, "trials", "*", "result.json"))):
    r = json.load(open(path))
    trials.append({"trial": os.path.basename(os.path.dirname(path)),
                   **{k: r.get(k) for k in ("compile_time_s", "train_time_s", "wall_time_s",
                                            "images_per_s", "status")},
                   "top1": (r.get("final") or {}).get("top1")})
train = sum(t["train_time_s"] or 0 for t in trials)
json.dump({"name": name, "wall_s": wall, "trials": trials, "sum_train_s": train,
           "efficiency": train / wall if wall else None}, open(out, "w"), indent=1)
print(f"{name}: {len(trials)} trials in {wall:.1f} s, sum of train time {train:.1f} s")
PYEOF
}

timed_sweep() {  # timed_sweep NAME HOME_DIR: the README main job, wall time measured here
  local name=$1 home=$2 dir=$SCRATCH/$1
  local t0 rc ms
  t0=$(date +%s%N)
  HOME=$home $SQZ sweep run sweeps/squeeze_ratio.py $SWEEP_ARG --workers 2 --workdir "$dir"
  rc=$?
  ms=$((($(date +%s%N) - t0) / 1000000))
  sweep_summary "$name" "$dir" "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
  return $rc
}

mkdir -p "$SCRATCH/home"
if wanted compile; then
  run compile_cold 60 compile_time cold --config "$DIGITS" --cache "$SCRATCH/cache"
  run compile_cached 30 compile_time cached --config "$DIGITS" --cache "$SCRATCH/cache"
fi
# The stages below that compile share one warm cache, as a user's machine has after the first
# run (JAX's own variables: the bench commands set config.compilation_cache_dir='').
export JAX_COMPILATION_CACHE_DIR=$SCRATCH/cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
if wanted e2e; then
  run e2e 90 $SQZ bench e2e --preset digits --batch 64 --dtype float32 $BENCH_SMOKE \
    --json "$OUT/e2e.json" --results "$SCRATCH/results.md"
fi
if wanted population; then  # `sqz bench population` comes with populations (branch pop)
  # (its --smoke runs the experiment with its `runlocal` argument, which tiny_digits lacks)
  run population 90 $SQZ bench population --members "$MEMBERS" \
    --config experiments/digits/squeezenet.py $BENCH_SMOKE \
    --json "$OUT/population.json" --results "$SCRATCH/results.md"
fi
unset JAX_COMPILATION_CACHE_DIR JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS
if wanted sweep; then  # a fresh HOME: a first sweep on a new machine, every cache cold
  run sweep 90 timed_sweep sweep "$SCRATCH/home"
fi
if wanted variants; then
  run compile_next_point 45 compile_time next_point --config "$NEXT_POINT" \
    --cache "$SCRATCH/cache"
  run compile_autotune0 45 compile_time autotune0 --config "$DIGITS" --autotune-level 0 \
    --cache "$SCRATCH/cache_autotune0"
fi
if wanted torch; then
  run torch 75 $SQZ bench torch $TORCH_ARGS --json "$OUT/torch.json" \
    --results "$SCRATCH/results.md"
fi
if wanted parallel; then
  run compile_parallel 45 env \
    XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_llvm_module_compilation_parallelism=true" \
    $PY -m benchmarks.compile_time --runs 1 --json "$SCRATCH/compile_parallel.json" \
    --config "$DIGITS" --cache "$SCRATCH/cache_parallel"
fi
if wanted sweep_warm; then  # the same HOME: every program of the first sweep is cached
  run sweep_warm 60 timed_sweep sweep_warm "$SCRATCH/home"
fi
if wanted widths; then  # cold compiles (no persistent cache): what a new sweep pays
  run widths 150 $SQZ bench population --widths 0.125,0.5,1.0 --config "$DIGITS" $BENCH_SMOKE \
    --json "$SCRATCH/widths.json" --results "$SCRATCH/results.md"
fi

# One file per stage group (a device run brings back 8 files), then the summary.
$PY - "$SCRATCH" "$OUT" "$SUMMARY_ROWS" "$SECONDS" "${SMOKE:-}" <<'PYEOF'
import glob, json, os, sys
scratch, out, rows_path, total, smoke = sys.argv[1:6]
def merged(pattern, key):
    found = {}
    for path in sorted(glob.glob(os.path.join(scratch, pattern))):
        with open(path) as f:
            found[os.path.basename(path)[len(key) + 1 : -len(".json")]] = json.load(f)
    return found
compile_runs, sweeps = merged("compile_*.json", "compile"), merged("sweep_*.json", "sweep")
for name, data in (("compile", compile_runs), ("sweep", sweeps)):
    if data:
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(data, f, indent=1)
lines = [f"# gpu_check.sh{' (SMOKE: tiny sizes, not a measurement)' if smoke else ''}", "",
         f"total {total} s", "", "| stage | limit s | took s | exit |", "|---|---|---|---|"]
for row in open(rows_path).read().splitlines():
    lines.append("| " + " | ".join(row.split("\t")) + " |")
lines += ["", "## compile (s; cache hits / writes; step ms)", "",
          "| run | init | step | eval | all | hits | writes | autotune files | step ms |",
          "|---|---|---|---|---|---|---|---|---|"]
for name, data in compile_runs.items():
    r = data["runs"]["this"][0]
    lines.append(
        f"| {name} | {r['init']:.2f} | {r['step']:.2f} | {r['eval']:.2f} | {r['all']:.2f} | "
        f"{r.get('hits', '-')} | {r.get('writes', '-')} | {r.get('autotune_cache_files', '-')} | "
        f"{r['step_ms']:.2f} |")
lines.append("")
for name, data in compile_runs.items():
    lines.append(f"- {name} settings: {data['runs']['this'][0].get('settings', '?')}")
lines += ["", "## sweeps", ""]
for name, s in sweeps.items():
    compiles = [t["compile_time_s"] for t in s["trials"] if t["compile_time_s"] is not None]
    lines.append(f"- {name}: {len(s['trials'])} trials, wall {s['wall_s']:.1f} s, efficiency "
                 f"{s['efficiency'] or float('nan'):.2f} (sum of train time / wall), compile "
                 f"per trial {min(compiles, default=0):.1f}-{max(compiles, default=0):.1f} s")
lines += ["", "Targets (issue 16): compile cold <= 10 s, cached <= 1 s; e2e loop/step >= 0.9; "
          "population of 8 >= 2x one member's img/s; README sweep <= 45 s."]
results = os.path.join(scratch, "results.md")
if os.path.exists(results):
    lines += ["", "## markdown from the bench commands", "", open(results).read()]
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
echo "total ${SECONDS}s; results in $OUT (summary.md)" | tee -a "$LOG"
rm -rf "$SCRATCH"
