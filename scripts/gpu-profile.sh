#!/usr/bin/env bash
# Nsight Compute on the kernels behind chosen benchmark cases: what limits each (bytes, latency,
# instructions), for docs/kernels.md. Builds like gpu-check.sh (build-gpu/), then for each case runs
# lowbit_cuda_bench on that one case under ncu, profiling one launch of our kernels after warm-up, with
# the clocks left as they are (--clock-control none). Reports (text) go to $OUT (default out/).
#   scripts/gpu-profile.sh                                  # the default cases below
#   PROFILE_CASES='affine_int4_g128/8192x8192/M=1' scripts/gpu-profile.sh
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/out}
build=${BUILD_DIR:-$root/build-gpu}
mkdir -p "$out"
cd "$root"
cases=${PROFILE_CASES:-"affine_int4_g128/8192x28672/M=1 affine_int4_g128/8192x8192/M=1 affine_int4_g128/8192x8192/M=16 affine_int4_g128/8192x8192/M=64 affine_int4_g128/8192x8192/M=1024 nf4_dq_b64/8192x8192/M=1"}
if [ ! -x "$build/bin/lowbit_cuda_bench" ]; then
  generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
  { cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DLOWBIT_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES="${LOWBIT_CUDA_ARCHS:-90a}" -DLOWBIT_BUILD_TESTS=OFF &&
    cmake --build "$build" --target lowbit_cuda_bench -j "$(nproc)"; } > "$out/profile-build.log" 2>&1 ||
    { tail -n 40 "$out/profile-build.log"; exit 1; }
fi
ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats
          --section WarpStateStats --section ComputeWorkloadAnalysis)
status=0
for c in $cases; do
  name=$(tr -c 'a-zA-Z0-9\n' '_' <<<"$c")
  # our kernels only (cuBLAS's are profiled by their vendor); skip the warm-up launches
  if "$ncu" --clock-control none --kernel-name-base demangled --kernel-name 'regex:gemv|mma|dequantize|llm_int8|reduce|permute' \
       --launch-skip 20 --launch-count 3 "${sections[@]}" \
       "$build/bin/lowbit_cuda_bench" --benchmark_filter="^$c/" > "$out/ncu-$name.txt" 2>&1; then
    echo "== $c"
  else
    echo "== $c: ncu FAILED"; status=1
  fi
  grep -E "^  [a-z_]+.*\(|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|Executed Ipc|L2 Hit|Dynamic Shared" "$out/ncu-$name.txt" | head -n 24
done
exit $status
