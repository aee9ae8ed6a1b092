#!/usr/bin/env bash
# The calibration-based solvers beside their reference algorithms run with PyTorch, same CPU, same threads:
# GPTQ (bench/gptq_bench.cpp vs bench/gptq_reference.py, the IST-DASLab fasterquant) and AWQ
# (bench/awq_bench.cpp vs bench/awq_reference.py, llm-awq's search), on identical inputs dumped by the C++
# side. Prints both sides' times and errors; docs/benchmarks.md quotes them.
#   scripts/bench-solvers.sh [OUT_DIR]        (default out/bench-solvers)
# Environment: SOLVERS (default "gptq awq"), THREADS (default 2; both sides), BUILD (default build; build-gpu on the GPU machine, which
# has torch), LOWBIT_PYTHON (default .venv/bin/python, else python3). Pin the run to idle cores where the
# machine is shared: `taskset -c 8,9 scripts/bench-solvers.sh`.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/out/bench-solvers}
threads=${THREADS:-2}
build=$root/${BUILD:-build}
bench=$build/bin/lowbit_bench
mkdir -p "$out/data"
[ -x "$bench" ] || { echo "bench-solvers.sh: $bench is missing; build the lowbit_bench target" >&2; exit 2; }
python=${LOWBIT_PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
status=0
echo "machine: $(nproc) cores ($threads used), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" \
  | tee "$out/machine.txt"
if ! "$python" -c "import torch, safetensors" 2>/dev/null; then
  echo "skipped the references: $python lacks torch/safetensors (scripts/setup-python.sh --reference)"
  have_torch=0
else
  have_torch=1
fi

want() { [[ " ${SOLVERS:-gptq awq} " == *" $1 "* ]]; }
if want gptq; then
echo "== GPTQ (lowbit)"
LOWBIT_NUM_THREADS=$threads LOWBIT_GPTQ_BENCH_DUMP=$out/data "$bench" --benchmark_filter=Gptq \
  --benchmark_out="$out/gptq.json" --benchmark_out_format=json 2>&1 | tee "$out/gptq.txt" || status=1
if [ "$have_torch" = 1 ]; then
  echo "== GPTQ (reference)"
  "$python" "$root/bench/gptq_reference.py" --data "$out/data" --threads "$threads" 2>&1 \
    | tee "$out/gptq_reference.txt" || status=1
fi
fi

if want awq; then
echo "== AWQ (lowbit)"
LOWBIT_NUM_THREADS=$threads LOWBIT_AWQ_BENCH_DUMP=$out/data "$bench" --benchmark_filter=AwqLayer \
  --benchmark_repetitions="${REPEATS:-3}" --benchmark_out="$out/awq.json" --benchmark_out_format=json 2>&1 \
  | tee "$out/awq.txt" || status=1
if [ "$have_torch" = 1 ]; then
  # llm-awq's own clip search ("broadcast"), then the same search as one batched matmul, a faster torch form
  for clip in broadcast matmul; do
    echo "== AWQ (reference, clip $clip)"
    "$python" "$root/bench/awq_reference.py" --data "$out/data" --threads "$threads" --clip "$clip" \
      --repeats "${REF_REPEATS:-1}" 2>&1 | tee "$out/awq_reference_$clip.txt" || status=1
  done
fi
fi
exit $status
