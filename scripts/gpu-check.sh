#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build for it, run the GPU tests, compute-sanitizer over them, the
# benchmarks, and print a short summary last. Outputs (logs, bench.json) go to $OUT (default: out/).
#   scripts/gpu-check.sh                    # architecture 90a (H100/H200)
#   LOWBIT_CUDA_ARCHS=89 scripts/gpu-check.sh
# On the device machine: source .device/env.sh first; make .device here once with
#   EXTRA_DEBS=libgmock-dev bash ../shared/device/prepare.sh
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/out}
build=$root/build-gpu
mkdir -p "$out"
cd "$root"
status=0
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$out/device.txt"

step "build"
generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
if ! { cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DLOWBIT_CUDA=ON \
         -DCMAKE_CUDA_ARCHITECTURES="${LOWBIT_CUDA_ARCHS:-90a}" -DLOWBIT_BUILD_CLI=ON &&
       cmake --build "$build" -j "$(nproc)"; } > "$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log"
  echo "build failed; log in $out/build.log"
  exit 1
fi
grep -E "warning" "$out/build.log" | head -n 20

step "tests (all, GPU ones included)"
ctest --test-dir "$build" --output-on-failure -j 4 > "$out/ctest.log" 2>&1 || status=1
tail -n 25 "$out/ctest.log"

step "compute-sanitizer"
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
  "$sanitizer" --tool "$tool" --error-exitcode 3 "$build/bin/lowbit_cuda_tests" --gtest_brief=1 \
    > "$out/sanitizer-$tool.log" 2>&1 && echo "$tool: clean" || { echo "$tool: FAILED"; status=1; }
  tail -n 5 "$out/sanitizer-$tool.log"
done

step "benchmarks"
if [ -x "$build/bin/lowbit_cuda_bench" ]; then
  "$build/bin/lowbit_cuda_bench" --benchmark_out="$out/bench.json" --benchmark_out_format=json \
    > "$out/bench.log" 2>&1 || status=1
  tail -n 40 "$out/bench.log"
else
  echo "no CUDA benchmark binary yet"
fi

step "summary"
grep -E "tests passed|tests failed" "$out/ctest.log"
for tool in memcheck racecheck; do echo "$tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer-$tool.log" | tail -n 1)"; done
exit $status
