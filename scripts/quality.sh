#!/usr/bin/env bash
# Remakes docs/quality.md: perplexity of every method at 4 bits (scripts/ppl-table.sh), then every data-free
# method and setting on the linear weights of a real checkpoint.
#   scripts/quality.sh [CHECKPOINT]    (default ../shared/data/stories15M)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model=${1:-$root/../shared/data/stories15M}
"$root/scripts/setup.sh"
"$root/scripts/build.sh" >/dev/null
out=$root/docs/quality.md
tmp=$(mktemp)
{
  echo "# Quality"
  echo
  echo "Made by \`scripts/quality.sh\` on $(date -u +%Y-%m-%d), on this machine ($(nproc) cores)."
  echo
  echo "## Perplexity of every method on $(basename "$model")"
  echo
  "$root/scripts/ppl-table.sh" "$model"
  echo
  echo "## GPTQ against RTN on the same grid"
  echo
  PPL_SET=gptq "$root/scripts/ppl-table.sh" "$model"
  echo
  echo "## AWQ (both scale formulas) against RTN and GPTQ on AWQ's grid"
  echo
  PPL_SET=awq "$root/scripts/ppl-table.sh" "$model"
  echo
  echo "## Weight error of the data-free methods"
  echo
  echo "Made by \`lowbit quality $(basename "$model")\`."
  echo "Relative error is ||W - W_hat||_F / ||W||_F over all linear weights together; SNR = -20 log10 of it."
  echo "Bits per weight count everything stored (codes, scales, zeros, absmax, maps, nested statistics);"
  echo "affine keeps one code per byte until a kernel repacks it, and is counted at \`bits\` per code, as every"
  echo "packed format stores it. Quantize time is the CPU time of all weights on this machine ($(nproc) cores)."
  echo
  "$root/build/bin/lowbit" quality "$model"
  cat <<'NOTE'

What the settings did with K = 288 (every projection but `down_proj`), which 64 and 128 do not divide:
- RTN g128: each row has groups of 128, 128 and a last group of 32 (the GPTQ reference's rule); formats
  that need whole groups (packed kernels, GPTQ/AWQ checkpoints) refuse such a tensor with an error naming
  K and the group size (`affine_require_whole_groups`).
- HQQ g64 (axis 1): HQQ groups the flattened weight, so 288 x 768 / 64 groups of 64 are formed and some
  groups span two rows, exactly as the hqq package does; no padding.
- NF4/FP4/bnb8: blocks run over the flattened tensor, so K plays no part (the last block may be short).
- Per-row settings (int8, LLM.int8()) are unaffected.
NOTE
} > "$tmp"
mv "$tmp" "$out"
echo "wrote $out"
