#!/usr/bin/env bash
# The main job, on a fresh machine: set-up, build, then inspect a checkpoint.
#   scripts/demo.sh [CHECKPOINT]   (default: ../shared/data/stories15M, the real Llama model beside the project)
# Later releases quantize and evaluate here too; for now it lists every tensor and the totals.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model=${1:-$root/../shared/data/stories15M}
if [ ! -e "$model" ]; then
  echo "demo.sh: no checkpoint at '$model'." >&2
  echo "Point it at a Hugging Face Llama folder (config.json + *.safetensors) or a .safetensors file:" >&2
  echo "  scripts/demo.sh /path/to/Llama-3.1-8B" >&2
  exit 2
fi
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
"$root/build/bin/lowbit" inspect "$model"
