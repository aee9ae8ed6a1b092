// CPU throughput of affine quantization (RTN 4-bit g128 and INT8 absmax per row) on fp16 weights of
// Llama-7B shapes. Bytes processed = the fp16 weight's bytes, for quantize and dequantize alike, so both
// print GB/s of weight. Dequantize: the fp32 reference, and dequantize_affine into fp16. A fresh output
// tensor each time, so first-touch page faults are part of the cost. Threads: LOWBIT_NUM_THREADS
// (default: every core).
//
//     LOWBIT_NUM_THREADS=2 build/bin/lowbit_bench --benchmark_filter=Affine
#include <benchmark/benchmark.h>

#include "lowbit/core/tensor.hpp"
#include "lowbit/quant/affine.hpp"
#include "bench_util.hpp"

namespace {

using lowbit::DType;
using lowbit::Tensor;
using lowbit::bench::weight;
using namespace lowbit::quant;

AffineConfig rtn4_g128() { return affine_rtn_config(); }

void BM_AffineQuantize(benchmark::State& state, AffineConfig (*make)(), std::int64_t n, std::int64_t k) {
  const Tensor& w = weight(n, k);
  const AffineConfig config = make();
  for (auto _ : state) benchmark::DoNotOptimize(quantize_affine(w, config).components.size());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}

void BM_AffineDequantize(benchmark::State& state, AffineConfig (*make)(), std::int64_t n, std::int64_t k) {
  const Tensor& w = weight(n, k);
  const QuantizedTensor q = quantize_affine(w, make());
  for (auto _ : state) benchmark::DoNotOptimize(dequantize_affine_reference(q).raw_data());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}

// dequantize_affine into fp16: what writing a dense fp16 checkpoint costs.
void BM_AffineDequantizeF16(benchmark::State& state, AffineConfig (*make)(), std::int64_t n, std::int64_t k) {
  const Tensor& w = weight(n, k);
  const QuantizedTensor q = quantize_affine(w, make());
  for (auto _ : state) benchmark::DoNotOptimize(dequantize_affine(q, DType::F16).raw_data());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}

#define LOWBIT_AFFINE_CASE(fn, name, make, n, k) \
  BENCHMARK_CAPTURE(fn, name, make, n, k)->Unit(benchmark::kMillisecond)->UseRealTime()
// Both configs on both shapes, config-major (the order the output lists them in).
#define LOWBIT_AFFINE_BENCH(fn)                                                  \
  LOWBIT_AFFINE_CASE(fn, rtn4_g128_4096x4096, rtn4_g128, 4096, 4096);            \
  LOWBIT_AFFINE_CASE(fn, rtn4_g128_11008x4096, rtn4_g128, 11008, 4096);          \
  LOWBIT_AFFINE_CASE(fn, int8_row_4096x4096, affine_int8_config, 4096, 4096);    \
  LOWBIT_AFFINE_CASE(fn, int8_row_11008x4096, affine_int8_config, 11008, 4096)

LOWBIT_AFFINE_BENCH(BM_AffineQuantize);
LOWBIT_AFFINE_BENCH(BM_AffineDequantize);
LOWBIT_AFFINE_BENCH(BM_AffineDequantizeF16);

}  // namespace
