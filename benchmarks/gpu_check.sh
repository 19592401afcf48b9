#!/usr/bin/env bash
# The GPU measurements of issues 16 and 25 in one prepared run of at most 8 minutes, run as the GPU
# image runs it: the interpreter's own python (no virtualenv), the project's dependencies on
# PYTHONPATH (the carried wheels installed into a target directory), the checkout first.
#
# For a session with a GPU machine (one H100 or H200: Python 3.12, jax CUDA, flax, optax, torch,
# torchvision, scikit-learn preinstalled, no TensorFlow, no network). Run from the repository
# root, with the wheels of benchmarks/fetch_gpu_wheels.sh in .whl/ (name `.whl` in the device
# run's carry):
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh
#     STAGES="compile_cold sweep" OUT=/some/dir bash benchmarks/gpu_check.sh  # only some stages
#     GPU_CHECK_PLAN=1 bash benchmarks/gpu_check.sh     # the plan: stages, limits, budget; no run
#     GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh    # the script itself, tiny sizes, any machine
#
# Stages, in order of value (the targets they check in brackets). Each runs under its own
# `timeout`, its limit sized with its compiles on the slowest GPU measured so far (one H200:
# 15-45 s per program, the README sweep 110 s cold; docs/gpu.md). The first five
# are the core: their limits plus ENV_S add up to at most the budget, so they always run. The
# others start only if their limit still fits what is left, and the summary names those that did
# not (rerun them in a later device call with STAGES=...):
#   compile_cold       a digits trial's programs (init, step, eval; benchmarks/compile_time.py),
#                      cold, in a fresh process  [cold digits programs <= 10 s]
#   sweep              the README main job, `sqz sweep run sweeps/squeeze_ratio.py --workers 2`,
#                      fresh HOME (every cache cold)  [README sweep <= 30 s at >= 0.8 efficiency]
#   population         `sqz bench population --members 8`  [8 members >= 2x one member's img/s]
#   e2e                `sqz bench e2e` on digits at batch 64  [loop/step >= 0.9]
#   sweep_warm         the sweep again (same HOME): every program from the persistent cache
#   compile_cached     compile_cold's programs again, from its cache (hits counted)
#   compile_next_point another design point (sr=0.25) into that cache: what XLA's per-fusion
#                      autotune cache saves a sweep's next point
#   compile_autotune0  a cold compile at config.xla_gpu_autotune_level=0, and its step ms
#   torch              `sqz bench torch --preset v1.1 --batch 256`, short windows
#   compile_parallel   a cold compile with parallel LLVM module compilation
#   widths             `sqz bench population --widths 0.125,0.5,1.0` (issue 19): three squeeze
#                      ratios as one width-padded program vs one program per point
# TensorFlow is never imported (digits and synthetic data only).
#
# $OUT gets 4 files (a device run brings back at most 8): env.txt, log.txt, summary.md (the stage
# table, the targets with their measured values, what did not fit, one JSON block per stage and
# the markdown the bench commands wrote: ready to paste into benchmarks/RESULTS.md) and
# stages.json (every stage's full JSON). The summary is benchmarks/gpu_check_summary.py.

{  # bash reads the whole group before running it: editing this file mid-run cannot break it
set -u
OUT=${OUT:-benchmarks/out}
SMOKE=${GPU_CHECK_SMOKE:-}
BUDGET=${GPU_CHECK_BUDGET:-470}  # seconds from the script's start; 8 minutes less a margin
ENV_S=20                          # reserved for installing the wheels and the environment check
PY=${PYTHON:-python3}

# name:limit in order of value; CORE's limits + ENV_S must fit BUDGET (checked below).
CORE="compile_cold:75 sweep:150 population:100 e2e:80 sweep_warm:45"
EXTRA="compile_cached:30 compile_next_point:60 compile_autotune0:75 torch:75 compile_parallel:75
       widths:180"
ALL=$(for s in $CORE $EXTRA; do printf '%s ' "${s%%:*}"; done)
STAGES=${STAGES:-$ALL}
STAGES=" $(echo $STAGES | sed -e 's/\bcompile\b/compile_cold compile_cached/' \
  -e 's/\bvariants\b/compile_next_point compile_autotune0/' -e 's/\bparallel\b/compile_parallel/') "
for s in $STAGES; do
  case " $ALL " in *" $s "*) ;; *) echo "STAGES: unknown stage '$s'; stages: $ALL" >&2; exit 2 ;; esac
done
core_sum=$ENV_S
for s in $CORE; do core_sum=$((core_sum + ${s##*:})); done
if [ "$core_sum" -gt "$BUDGET" ]; then
  echo "the core stages' limits ($core_sum s with ${ENV_S} s for the environment) exceed the" \
    "${BUDGET} s budget: shorten them" >&2
  exit 2
fi
if [ -n "${GPU_CHECK_PLAN:-}" ]; then
  echo "budget ${BUDGET}s; core ${core_sum}s (environment ${ENV_S}s)"
  for s in $CORE; do echo "core ${s%%:*} ${s##*:}"; done
  for s in $EXTRA; do echo "extra ${s%%:*} ${s##*:}"; done
  exit 0
fi
limit_of() { for s in $CORE $EXTRA; do [ "${s%%:*}" = "$1" ] && echo "${s##*:}"; done; }

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
# The checkout first; every child process (compile_time's too) keeps the rest of the path.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SQZ="$PY -m sqzexplore.cli"

# Sizes: the issue's, or tiny ones that check the script on a CPU in minutes (no time limits).
if [ -n "$SMOKE" ]; then
  DIGITS=tests/data/tiny_digits.py
  NEXT_POINT=$DIGITS:batch_norm=true  # another program of the same net
  BENCH_SMOKE=--smoke  # runs experiments/digits/squeezenet.py with its `runlocal` argument
  MEMBERS=2
  WIDTHS=0.5,1.0
  SWEEP_ARG="--arg runlocal"
  TORCH_ARGS="--smoke"
  BUDGET=100000
else
  DIGITS=experiments/digits/squeezenet.py
  NEXT_POINT=$DIGITS:sr=0.25  # the README sweep's second design point
  BENCH_SMOKE=
  MEMBERS=8
  WIDTHS=0.125,0.5,1.0
  SWEEP_ARG=
  TORCH_ARGS="--preset v1.1 --batch 256 --steps 20 --windows 2"
fi
BENCH_DIGITS=experiments/digits/squeezenet.py  # the bench commands' --smoke needs `runlocal`
export PY SQZ SCRATCH SWEEP_ARG  # the stage functions run in a child shell (under timeout)

{
  date -u
  echo "smoke: ${SMOKE:-no}; stages:$STAGES; budget ${BUDGET}s"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
    || echo "nvidia-smi: none"
  nproc
  echo "PYTHONPATH=$PYTHONPATH"
  # Versions from the installed metadata (importing TensorFlow or torch here would cost seconds).
  $PY - <<'PYEOF'
import importlib.metadata as md, sys
print("python", sys.version.split()[0], sys.executable, "venv" if sys.prefix != sys.base_prefix else "no venv")
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml_collections", "optuna",
             "sqlalchemy", "tabulate", "scikit-learn", "torch", "torchvision", "tensorflow"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
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

# run NAME COMMAND...: one stage under `timeout` (its limit from CORE/EXTRA), its output in
# log.txt, a row (name, limit, seconds, exit status) in the summary; not started if it is not in
# STAGES or its limit no longer fits the budget.
run() {
  local name=$1 limit
  limit=$(limit_of "$name")
  shift
  case "$STAGES" in *" $name "*) ;; *) return 0 ;; esac
  if [ -z "$SMOKE" ] && [ $((SECONDS + limit)) -gt "$BUDGET" ]; then
    echo "=== $name not started: its ${limit}s limit does not fit (${SECONDS}s of ${BUDGET}s used)" \
      | tee -a "$LOG"
    printf '%s\t%s\t-\tnot run (budget)\n' "$name" "$limit" >>"$SUMMARY_ROWS"
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

compile_time() {  # compile_time NAME ARGS...: one fresh-process run of benchmarks.compile_time
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

# The stage table, the targets, what did not fit and one JSON block per stage; also when the
# script itself is stopped (a device call's limit), so that what was measured comes back.
summarize() {
  trap - TERM INT
  $PY -m benchmarks.gpu_check_summary --scratch "$SCRATCH" --out "$OUT" --total "$SECONDS" \
    --budget "$BUDGET" ${SMOKE:+--smoke} --not-selected "$(for s in $ALL; do
      case "$STAGES" in *" $s "*) ;; *) printf '%s ' "$s" ;; esac; done)"
  echo "total ${SECONDS}s; results in $OUT (summary.md, stages.json)" | tee -a "$LOG"
  rm -rf "$SCRATCH"
}
trap 'echo "=== stopped by a signal" | tee -a "$LOG"; summarize; exit 143' TERM INT

mkdir -p "$SCRATCH/home"
run compile_cold compile_time compile_cold --config "$DIGITS" --cache "$SCRATCH/cache"
run sweep timed_sweep sweep "$SCRATCH/home"  # a fresh HOME: a first sweep on a new machine
# The bench stages share compile_cold's cache, as a user's machine has after a first run (JAX's
# own variables: the bench commands set config.compilation_cache_dir='').
export JAX_COMPILATION_CACHE_DIR=$SCRATCH/cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
run population $SQZ bench population --members "$MEMBERS" --config "$BENCH_DIGITS" \
  $BENCH_SMOKE --json "$SCRATCH/population.json" --results "$SCRATCH/results.md"
run e2e $SQZ bench e2e --preset digits --batch 64 --dtype float32 $BENCH_SMOKE \
  --json "$SCRATCH/e2e.json" --results "$SCRATCH/results.md"
unset JAX_COMPILATION_CACHE_DIR JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS
run sweep_warm timed_sweep sweep_warm "$SCRATCH/home"  # the same HOME: every program cached
run compile_cached compile_time compile_cached --config "$DIGITS" --cache "$SCRATCH/cache"
run compile_next_point compile_time compile_next_point --config "$NEXT_POINT" \
  --cache "$SCRATCH/cache"
run compile_autotune0 compile_time compile_autotune0 --config "$DIGITS" --autotune-level 0 \
  --cache "$SCRATCH/cache_autotune0"
run torch $SQZ bench torch $TORCH_ARGS --json "$SCRATCH/torch.json" \
  --results "$SCRATCH/results.md"
run compile_parallel env \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_llvm_module_compilation_parallelism=true" \
  $PY -m benchmarks.compile_time --runs 1 --json "$SCRATCH/compile_compile_parallel.json" \
  --config "$DIGITS" --cache "$SCRATCH/cache_parallel"
# Cold compiles (no persistent cache): what a new sweep pays.
run widths $SQZ bench population --widths "$WIDTHS" --config "$BENCH_DIGITS" $BENCH_SMOKE \
  --json "$SCRATCH/widths.json" --results "$SCRATCH/results.md"

summarize
exit 0
}
