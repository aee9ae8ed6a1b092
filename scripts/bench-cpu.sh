#!/usr/bin/env bash
# CPU benchmarks of the quantizers beside their reference implementations, in one run on this machine:
# lowbit_bench (2 threads) then bench/*_reference.py (torch.set_num_threads(2)) on the same matrices.
#   scripts/bench-cpu.sh [OUT_DIR]      (default out/bench-cpu; needs scripts/setup-python.sh --reference
#                                        for the reference side, which is skipped, saying so, without it)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/out/bench-cpu}
mkdir -p "$out"
"$root/scripts/build.sh" >/dev/null || exit 1
python=${LOWBIT_PYTHON:-$root/.venv/bin/python}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" | tee "$out/machine.txt"
LOWBIT_NUM_THREADS=2 "$root/build/bin/lowbit_bench" \
  --benchmark_filter='Affine|Bnb8|Nf4|Fp4|Hqq|LlmInt8' --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_out="$out/lowbit.json" --benchmark_out_format=json \
  | tee "$out/lowbit.txt"
for ref in bnb8 nf4 hqq llm_int8; do
  echo "== reference: bench/${ref}_reference.py"
  if "$python" -c "import torch, bitsandbytes, hqq" 2>/dev/null; then
    "$python" "$root/bench/${ref}_reference.py" 2>&1 | tee "$out/${ref}_reference.txt"
  else
    echo "skipped: $python lacks torch/bitsandbytes/hqq (scripts/setup-python.sh --reference)"
  fi
done
