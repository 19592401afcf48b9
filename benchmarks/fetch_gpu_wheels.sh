#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_check.sh installs on the GPU machine, into .whl/.
#
# The GPU machine's image (Python 3.12, jax 0.11.2 CUDA 13, flax, optax, torch, torchvision,
# scikit-learn, matplotlib, tqdm, psutil, filelock, pyyaml, tabulate, ...) has no network, and
# lacks what this project needs beyond it: ml_collections, optuna and its dependencies
# (sqlalchemy, alembic, mako, colorlog), and our orbax-checkpoint pin (the image's is newer).
# Run this on a machine with pip and network, from the repository root:
#
#     bash benchmarks/fetch_gpu_wheels.sh            # then name `.whl` in the device run's carry
#
# .whl/ is ignored by git (.gitignore). The versions are the ones this project is tested with
# (requirements.txt ranges; the CPU venv's versions); one version of each, since two copies of
# a package stop the install there. Every wheel is a cp312 / pure-Python manylinux x86_64 one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${DEST:-.whl}
mkdir -p "$DEST"

# name==version, and why each is needed (Requires-Dist of the packages above, minus what the
# image already has). No greenlet: SQLAlchemy 2.1 needs it only for its asyncio extra.
WHEELS=(
  ml_collections==1.1.0        # configs (every command)
  orbax-checkpoint==0.12.8     # checkpoints: our pin (the image's newer one changed the API)
  optuna==5.1.0                # sweeps
  alembic==1.20.1              # optuna's RDB storage
  sqlalchemy==2.1.9            # optuna's RDB storage (cp312 binary wheel)
  mako==1.4.3                  # alembic
  colorlog==6.12.0             # optuna's logging
  tabulate==0.10.0             # every text table (the image has one; ours pins the range)
)
PLATFORMS=(manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_27_x86_64
           manylinux_2_28_x86_64 manylinux_2_34_x86_64)

args=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
      --abi abi3 --abi none -d "$DEST")
for p in "${PLATFORMS[@]}"; do args+=(--platform "$p"); done
for w in "${WHEELS[@]}"; do
  "$PY" -m pip download -q "${args[@]}" "$w"
done

# What each wheel asks for that is neither carried nor in the GPU image (KINDS.md lists the
# image): printed for a human to check, since --no-deps fetches none of them.
carried=$(for w in "${WHEELS[@]}"; do echo "${w%%==*}" | tr 'A-Z_' 'a-z-'; done)
echo "downloaded into $DEST:"
ls -1 "$DEST"
echo "their requirements (none marked 'extra' are needed at run time):"
for f in "$DEST"/*.whl; do
  unzip -p "$f" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
    | sed "s|^|  $(basename "$f" | cut -d- -f1): |"
done
echo "carried: $(echo $carried)"
du -sh "$DEST"
