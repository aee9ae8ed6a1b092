#!/usr/bin/env bash
# Quantizes a model with every available method at 4 bits (and the 8-bit ones), measures the perplexity of
# each on the evaluation text, and prints one markdown table. Needs a built tree (scripts/build.sh).
#   scripts/ppl-table.sh [MODEL]     (default ../shared/data/stories15M)
# Environment:
#   PPL_TEXT       evaluation text (default: tinystories-eval.txt for stories15M, else wikitext2-raw-test.txt)
#   PPL_CALIB      calibration text for calibration-based methods (default: tinystories-calib.txt for
#                  stories15M, else c4-sample.txt)
#   PPL_ARGS       perplexity options (default: per-story for stories15M; else windows of 2048 over the
#                  joined WikiText rows, first 32768 tokens: a CPU-sized sample of the papers' protocol)
#   PPL_SET        methods (default): every method at 4 bits and the 8-bit ones; gptq: RTN and GPTQ at
#                  w4 g32/g128/per-channel, w3 g32, w2 g32, with and without act-order; awq: RTN, GPTQ and
#                  AWQ with both scale formulas at w4/w3 g32 and g128
#   PPL_METHODS    space-separated subset of the rows' methods (default: all available)
#   PPL_OUT        folder for the quantized models (default: out/ppl-table; each is removed after use)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=$root/../shared/data
model=${1:-$data/stories15M}
lowbit=$root/build/bin/lowbit
[ -x "$lowbit" ] || { echo "ppl-table.sh: $lowbit is missing; run scripts/build.sh first" >&2; exit 2; }
[ -f "$model/config.json" ] || { echo "ppl-table.sh: '$model' is not a model folder (config.json)" >&2; exit 2; }

if [ "$(basename "$model")" = stories15M ]; then
  text=${PPL_TEXT:-$data/text/tinystories-eval.txt}
  calib=${PPL_CALIB:-$data/text/tinystories-calib.txt}
  ppl_args=${PPL_ARGS:---protocol per-story}
  calib_args="--nsamples 128 --seqlen 256"
else
  text=${PPL_TEXT:-$data/text/wikitext2-raw-test.txt}
  calib=${PPL_CALIB:-$data/text/c4-sample.txt}
  ppl_args=${PPL_ARGS:---protocol windows --join-rows --seqlen 2048 --max-tokens 32768}
  calib_args="--nsamples 128 --seqlen 2048"
fi
for f in "$text" "$calib"; do [ -f "$f" ] || { echo "ppl-table.sh: no text at '$f' (set PPL_TEXT / PPL_CALIB)" >&2; exit 2; }; done
out=${PPL_OUT:-$root/out/ppl-table}
mkdir -p "$out"

# name | quantize arguments | "calib" and any calibration arguments, for calibration-based methods
case "${PPL_SET:-methods}" in
  methods)  # every method at 4 bits, then the 8-bit ones
    rows=(
      "RTN w4 g128|--method rtn --bits 4 --group-size 128|"
      "RTN w4 g32|--method rtn --bits 4 --group-size 32|"
      "GPTQ w4 g128|--method gptq --bits 4 --group-size 128|calib"
      "GPTQ w4 g32|--method gptq --bits 4 --group-size 32|calib"
      "AWQ w4 g128|--method awq --bits 4 --group-size 128|calib --calib-split documents"
      "AWQ w4 g32|--method awq --bits 4 --group-size 32|calib --calib-split documents"
      "AWQ w4 g32 duo scaling|--method awq --bits 4 --group-size 32 --duo-scaling|calib --calib-split documents"
      "HQQ w4 g64|--method hqq --bits 4 --group-size 64|"
      "NF4 b64|--method nf4|"
      "NF4 b64 + double quant|--method nf4 --double-quant|"
      "FP4 b64|--method fp4|"
      "int8 per row|--method int8|"
      "LLM.int8()|--method llm-int8|"
      "bnb 8-bit blockwise|--method bnb8|"
    )
    ;;
  gptq)  # GPTQ against RTN on the same grid (asymmetric, the reference's default), with and without act-order
    rows=()
    for setting in "w4 g32|--bits 4 --group-size 32" "w4 g128|--bits 4 --group-size 128" \
                   "w4 per-channel|--bits 4 --group-size -1" "w3 g32|--bits 3 --group-size 32" \
                   "w2 g32|--bits 2 --group-size 32"; do
      IFS='|' read -r label flags <<<"$setting"
      rows+=("RTN $label|--method rtn --asym $flags|"
             "GPTQ $label|--method gptq --asym $flags|calib"
             "GPTQ $label act-order|--method gptq --asym --act-order $flags|calib")
    done
    ;;
  awq)  # AWQ with both scale formulas against RTN and GPTQ on AWQ's grid (zero point, asymmetric)
    rows=()
    for setting in "w4 g32|--bits 4 --group-size 32" "w3 g32|--bits 3 --group-size 32" \
                   "w4 g128|--bits 4 --group-size 128" "w3 g128|--bits 3 --group-size 128"; do
      IFS='|' read -r label flags <<<"$setting"
      rows+=("RTN $label|--method rtn --asym $flags|"
             "GPTQ $label|--method gptq --asym $flags|calib"
             "AWQ $label (llm-awq scales)|--method awq $flags|calib --calib-split documents"
             "AWQ $label (duo scaling)|--method awq --duo-scaling $flags|calib --calib-split documents")
    done
    ;;
  *) echo "ppl-table.sh: PPL_SET='$PPL_SET' is not one of: methods, gptq, awq" >&2; exit 2 ;;
esac
available=$("$lowbit" quantize --help | sed -n 's/^ \{20,\}\([a-z0-9_-]*\) .*/\1/p')

ppl_of() {  # model folder -> "PPL seconds"
  local t0 t1 ppl
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  ppl=$("$lowbit" perplexity "$1" --text "$text" $ppl_args --dequantize 2>/dev/null | sed -n 's/^PPL: //p')
  t1=$(date +%s.%N)
  echo "$ppl $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')"
}
weights_bytes() { find "$1" -name '*.safetensors' -printf '%s\n' | awk '{s += $1} END {print s}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.2f MiB", b / 1048576}'; }

read -r base_ppl _ < <(ppl_of "$model")
base_bytes=$(weights_bytes "$model")
echo "Model \`$(basename "$model")\`; perplexity: \`lowbit perplexity MODEL --text $(basename "$text") $ppl_args\`;"
echo "calibration-based methods on \`$(basename "$calib")\` ($calib_args; GPTQ in random windows, AWQ one sample per"
echo "document as each reference's loader does); $(nproc) threads."
echo
echo "| method | bits/weight | size on disk | PPL | delta | quantize time |"
echo "|---|---:|---:|---:|---:|---:|"
dtype=$(sed -n 's/.*"torch_dtype": *"\([a-z0-9]*\)".*/\1/p' "$model/config.json")
case "${dtype:-float32}" in float16|bfloat16) dense_bits=16 ;; *) dense_bits=32 ;; esac
printf '| full precision (%s) | %s | %s | %.4f | | |\n' "${dtype:-float32}" "$dense_bits" "$(mib "$base_bytes")" "$base_ppl"
for row in "${rows[@]}"; do
  IFS='|' read -r name args calibrated <<<"$row"
  method=$(sed -n 's/.*--method \([a-z0-9_-]*\).*/\1/p' <<<"$args")
  if ! grep -qx -- "$method" <<<"$available"; then continue; fi
  if [ -n "${PPL_METHODS:-}" ] && ! grep -qw -- "$method" <<<"$PPL_METHODS"; then continue; fi
  dest=$out/$(tr -c 'a-zA-Z0-9\n' '_' <<<"$name")
  extra=""
  [ -n "$calibrated" ] && extra="--calib $calib $calib_args ${calibrated#calib}"
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  if ! log=$("$lowbit" quantize $args $extra "$model" "$dest" 2>&1); then
    echo "| $name | failed: $(tail -1 <<<"$log") | | | | |"
    continue
  fi
  t1=$(date +%s.%N)
  bits=$(sed -n 's/.*; \([0-9.]*\) packed).*/\1/p' <<<"$log")
  read -r ppl _ < <(ppl_of "$dest")
  printf '| %s | %s | %s | %.4f | %+.4f | %.1f s |\n' "$name" "$bits" "$(mib "$(weights_bytes "$dest")")" "$ppl" \
    "$(awk -v a="$base_ppl" -v b="$ppl" 'BEGIN {printf "%.6f", b - a}')" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')"
  rm -rf "$dest"
done
echo
echo "bits/weight: everything stored (scales, zeros, absmax, maps) with codes counted at their bit width, as a"
echo "packed format holds them; size on disk: the safetensors files as written (lowbit's layout keeps affine"
echo "codes one per byte), which includes the layers left in full precision (embeddings, norms)."
