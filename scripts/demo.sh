#!/usr/bin/env bash
# The main job, on a fresh machine: set-up, build, then quantize a model with every available method at 4 bits
# (and the 8-bit ones) and print one table: bits per weight, size on disk, perplexity, delta to full
# precision, time taken.
#   scripts/demo.sh [MODEL]   (default: ../shared/data/stories15M, the real Llama model beside the project)
# MODEL: a Hugging Face Llama-family folder (config.json, *.safetensors, tokenizer.model). Other models are
# evaluated on WikiText-2 (the papers' windows of 2048 tokens, first 32768 tokens on this CPU path) and
# calibrated on the C4 sample; see scripts/ppl-table.sh for the knobs.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model=${1:-$root/../shared/data/stories15M}
if [ ! -f "$model/config.json" ]; then
  echo "demo.sh: no model folder at '$model'." >&2
  echo "Point it at a Hugging Face Llama folder (config.json, *.safetensors, tokenizer.model):" >&2
  echo "  scripts/demo.sh /path/to/Llama-2-7b-hf" >&2
  exit 2
fi
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
"$root/build/bin/lowbit" inspect "$model" | tail -3
echo
"$root/scripts/ppl-table.sh" "$model"
