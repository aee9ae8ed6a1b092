#!/usr/bin/env bash
# Remakes docs/quality.md: every data-free method and setting on the linear weights of a real checkpoint.
#   scripts/quality.sh [CHECKPOINT]    (default ../shared/data/stories15M)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model=${1:-$root/../shared/data/stories15M}
"$root/scripts/setup.sh"
"$root/scripts/build.sh" >/dev/null
out=$root/docs/quality.md
tmp=$(mktemp)
{
  echo "# Quality of the data-free methods"
  echo
  echo "Made by \`scripts/quality.sh\` (which runs \`lowbit quality $(basename "$model")\`) on $(date -u +%Y-%m-%d)."
  echo "Relative error is ||W - W_hat||_F / ||W||_F over all linear weights together; SNR = -20 log10 of it."
  echo "Bits per weight count everything stored (codes, scales, zeros, absmax, maps, nested statistics);"
  echo "affine keeps one code per byte until a kernel repacks it, and is counted at \`bits\` per code, as every"
  echo "packed format stores it. Quantize time is the CPU time of all weights on this machine ($(nproc) cores)."
  echo
  "$root/build/bin/lowbit" quality "$model"
} > "$tmp"
mv "$tmp" "$out"
echo "wrote $out"
