#!/usr/bin/env bash
# Makes .venv with the ecosystem's Python packages that the interoperability tests compare against.
#   scripts/setup-python.sh              numpy + safetensors (small)
#   scripts/setup-python.sh --reference  also torch, bitsandbytes, hqq, transformers, gptqmodel, autoawq
#                                        (~5 GB, a few minutes)
# Optional for users (those tests report "skipped" without it); .ci/run runs it with --reference.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/.venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# No wheel cache: torch and its CUDA wheels would otherwise take their ~4.5 GB twice on disk.
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir)
"${pip[@]}" -r "$root/tests/interop/requirements.txt"
if [ "${1:-}" = "--reference" ]; then
  "${pip[@]}" -r "$root/tests/interop/requirements-reference.txt"
  # AutoAWQ (archived) pins an old torch; its unpacking code runs on the torch above, so skip its pins.
  "${pip[@]}" --no-deps autoawq
fi
