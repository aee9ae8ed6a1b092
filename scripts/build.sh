#!/usr/bin/env bash
# Configures and builds lowbit into build/ (Release). Extra arguments go to cmake's configure step.
#   scripts/build.sh [-DLOWBIT_CUDA=OFF ...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${LOWBIT_BUILD_DIR:-$root/build}
python_args=()
if [ -x "$root/.venv/bin/python" ]; then python_args=(-DLOWBIT_PYTHON="$root/.venv/bin/python"); fi
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "${python_args[@]}" "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"
