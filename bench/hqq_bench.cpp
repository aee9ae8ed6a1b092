// HQQ on the CPU: quantize (min-max init + the legacy proximal solver + packing) and dequantize, 4-bit
// group 64 axis 1 (BaseQuantizeConfig's defaults) on fp16 weights of Llama-7B shapes. Bytes processed =
// the fp16 weight's bytes, so the GB/s compare with bench/hqq_reference.py (hqq's Quantizer on the same
// matrices and CPU, torch.set_num_threads(2)). GB/s are from wall-clock time; the "CPU" column is the
// whole process's CPU time (all threads), which a busy shared machine inflates less.
//
//     LOWBIT_NUM_THREADS=2 build/bin/lowbit_bench --benchmark_filter=Hqq
#include <benchmark/benchmark.h>

#include "bench_util.hpp"
#include "lowbit/quant/hqq.hpp"

namespace {

// N(0, 0.02), seed 7: the matrices bench/hqq_reference.py draws.
lowbit::Tensor random_f16(std::int64_t n, std::int64_t k) { return lowbit::bench::random_f16(n, k, 0.02f, 7); }

void BM_HqqQuantize(benchmark::State& state) {
  const lowbit::Tensor w = random_f16(state.range(0), state.range(1));
  lowbit::quant::HqqConfig config;  // 4 bit, group 64, axis 1, round_zero, solver f32 (hqq's CPU path)
  lowbit::quant::HqqSolverTrace trace;
  for (auto _ : state) {
    benchmark::DoNotOptimize(lowbit::quant::quantize_hqq(w, config, &trace).components.size());
  }
  state.counters["iterations"] = static_cast<double>(trace.objective.size());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}
BENCHMARK(BM_HqqQuantize)->Args({4096, 4096})->Args({11008, 4096})->Unit(benchmark::kMillisecond)->MeasureProcessCPUTime()->UseRealTime();

// dequantize_hqq: hqq's own arithmetic in fp16 (what HQQLinear.dequantize computes), multi-threaded.
void BM_HqqDequantize(benchmark::State& state) {
  const lowbit::quant::QuantizedTensor q =
      lowbit::quant::quantize_hqq(random_f16(state.range(0), state.range(1)), lowbit::quant::HqqConfig{});
  for (auto _ : state) benchmark::DoNotOptimize(lowbit::quant::dequantize_hqq(q).raw_data());
  state.SetBytesProcessed(state.iterations() * state.range(0) * state.range(1) * 2);
}
BENCHMARK(BM_HqqDequantize)->Args({4096, 4096})->Args({11008, 4096})->Unit(benchmark::kMillisecond)->MeasureProcessCPUTime()->UseRealTime();

// dequantize_hqq_reference: the plain-loop fp32 ground truth (single-threaded by design).
void BM_HqqDequantizeReference(benchmark::State& state) {
  const lowbit::quant::QuantizedTensor q =
      lowbit::quant::quantize_hqq(random_f16(state.range(0), state.range(1)), lowbit::quant::HqqConfig{});
  for (auto _ : state) benchmark::DoNotOptimize(lowbit::quant::dequantize_hqq_reference(q).raw_data());
  state.SetBytesProcessed(state.iterations() * state.range(0) * state.range(1) * 2);
}
BENCHMARK(BM_HqqDequantizeReference)->Args({4096, 4096})->Unit(benchmark::kMillisecond)->MeasureProcessCPUTime()->UseRealTime();

}  // namespace
