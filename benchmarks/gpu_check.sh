#!/usr/bin/env bash
# The Performance issue's GPU measurements, and compile-ahead (trials-per-hour issue), in one
# prepared run of under 10 minutes (the stage limits below add up to 590 s; typical runs take
# less).
#
# For a session that has a GPU machine (H100/H200 with jax CUDA, flax, optax, orbax, torch and
# torchvision preinstalled, no TensorFlow, no network). Run from the repository root (sqz bench
# finds benchmarks/ from the working directory):
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh
#     STAGES="1 3" OUT=/some/dir bash benchmarks/gpu_check.sh     # only some stages
#     SMOKE=1 STAGES="2 3" bash benchmarks/gpu_check.sh     # the script itself, on any machine
#
# SMOKE=1 runs each stage's command with --smoke (tiny nets, a few steps, the platform's plan)
# and no time limit below 600 s: minutes on a CPU, to check the script before spending GPU time.
#
# The GPU image lacks ml-collections (pure Python). Carry it as a wheel in .whl/ (already in
# .git/info/exclude), made on a machine with pip and network:
#     python3 -m pip download --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0
# and name `.whl` in the run's `carry`. This script installs any .whl/*.whl into /tmp/site.
#
# Stages, most important first, each under its own time limit so one slow stage cannot take
# the others' results with it (a stopped stage still writes the rows it finished):
#   1. v1.0 / v1.1 bf16 steps at batch 256, 224px (profiled) and torchvision eager AMP
#      channels-last / torch.compile on the same GPU and batch: the >= 1.5x / >= 1.0x targets
#   2. end to end: CIFAR-shaped (synthetic 32x32, 50k images, batch 512, bf16) and digits
#      (batch 64) through train_and_evaluate against the step: the "within 10%" target
#   3. compile-ahead: three 32x32 runs (squeeze ratio 0.125, 0.25, 0.5; batch 512 bf16, 1000
#      steps each) compiled one after another vs the next compiled in a background thread while
#      the current one trains; both wall times
#   4. the remaining step rows: fp32 v1.0/v1.1, the 32x32 net at batch 512 in bf16 and fp32
#   5. the largest v1.0 batch that fits at 224px (bf16)
#   6. cold compile of the digits trial's programs (init, step, eval; the flat optimiser update
#      and fused-kernel count) on the GPU: python -m benchmarks.compile_time, 2 runs
# TensorFlow is never imported (digits and synthetic data only; tests/test_bench.py checks it).
#
# Results: $OUT/RESULTS.md (the markdown blocks to paste into benchmarks/RESULTS.md),
# $OUT/stage*.json, $OUT/log.txt, $OUT/env.txt.

set -u
OUT=${OUT:-benchmarks/out}
STAGES=${STAGES:-1 2 3 4 5 6}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 WANDB_MODE=disabled
PY=${PYTHON:-python3}

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  $PY - <<'PYEOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "ml_collections", "sklearn",
             "torch", "torchvision", "tensorflow"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as e:
        print(name, "MISSING:", type(e).__name__, e)
import jax
print("devices", jax.devices())
PYEOF
} 2>&1 | tee "$OUT/env.txt"
if ! $PY -c "import ml_collections, flax, optax, orbax.checkpoint, sklearn" 2>/dev/null; then
  echo "missing packages (see $OUT/env.txt): carry them as wheels in .whl/ (header)" \
    | tee -a "$OUT/log.txt"
  exit 2
fi

bench() {  # bench SECONDS STAGE COMMAND ARGS...: one `sqz bench` invocation under a time limit
  local limit=$1 stage=$2
  shift 2
  case " $STAGES " in *" ${stage%b} "*) ;; *) return 0 ;; esac
  if [ -n "${SMOKE:-}" ]; then
    set -- "$1" --smoke
    limit=600
  fi
  echo "=== stage $stage (limit ${limit}s): sqz bench $*" | tee -a "$OUT/log.txt"
  local t0=$SECONDS
  timeout -k 20 "$limit" $PY -m sqzexplore.cli bench "$@" \
    --json "$OUT/stage$stage.json" --results "$OUT/RESULTS.md" 2>&1 | tee -a "$OUT/log.txt"
  echo "=== stage $stage took $((SECONDS - t0))s (exit ${PIPESTATUS[0]})" | tee -a "$OUT/log.txt"
}

bench 140 1 torch --preset v1.0 --preset v1.1 --batch 256 --profile
bench 100 2 e2e
bench 130 3 compile-ahead --preset cifar --batch 512 --dtype bfloat16 --run-steps 1000
bench 60 4 step --preset v1.0 --preset v1.1 --batch 256 --dtype float32
bench 60 4b step --preset cifar --batch 512 --dtype bfloat16 --dtype float32 --profile
bench 60 5 maxbatch --preset v1.0 --batch 256 --dtype bfloat16

case " $STAGES " in *" 6 "*)
  echo "=== stage 6 (limit 40s): python -m benchmarks.compile_time --runs 2" | tee -a "$OUT/log.txt"
  timeout -k 10 40 $PY -m benchmarks.compile_time --runs 2 2>&1 | tee -a "$OUT/log.txt" ;;
esac

echo "total ${SECONDS}s; results in $OUT/RESULTS.md" | tee -a "$OUT/log.txt"
