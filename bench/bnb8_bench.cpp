// CPU throughput of bitsandbytes' blockwise 8-bit (dynamic map, block 4096, bnb's default) on fp16 weights
// of Llama-7B shapes; bench/bnb8_reference.py times bitsandbytes itself on the same matrices. Bytes
// processed = the fp16 weight's bytes, for quantize and dequantize alike. Dequantize: the fp32 reference,
// and dequantize_bnb8 into fp16 (what bitsandbytes returns for an fp16 weight).
//
//     LOWBIT_NUM_THREADS=2 build/bin/lowbit_bench --benchmark_filter=Bnb8
//     python3 bench/bnb8_reference.py
#include <benchmark/benchmark.h>

#include "lowbit/core/tensor.hpp"
#include "lowbit/quant/bnb8.hpp"
#include "bench_util.hpp"

namespace {

using lowbit::DType;
using lowbit::Tensor;
using lowbit::bench::weight;
using namespace lowbit::quant;

void BM_Bnb8Quantize(benchmark::State& state, std::int64_t n, std::int64_t k, bool nested) {
  const Tensor& w = weight(n, k);
  Bnb8Config config;
  config.nested = nested;
  for (auto _ : state) benchmark::DoNotOptimize(quantize_bnb8(w, config).components.size());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}

void BM_Bnb8Dequantize(benchmark::State& state, std::int64_t n, std::int64_t k) {
  const Tensor& w = weight(n, k);
  const QuantizedTensor q = quantize_bnb8(w, Bnb8Config{});
  for (auto _ : state) benchmark::DoNotOptimize(dequantize_bnb8_reference(q).raw_data());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}

// dequantize_bnb8 into fp16: what bitsandbytes' dequantize_blockwise returns for an fp16 weight.
void BM_Bnb8DequantizeF16(benchmark::State& state, std::int64_t n, std::int64_t k) {
  const Tensor& w = weight(n, k);
  const QuantizedTensor q = quantize_bnb8(w, Bnb8Config{});
  for (auto _ : state) benchmark::DoNotOptimize(dequantize_bnb8(q, DType::F16).raw_data());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}

BENCHMARK_CAPTURE(BM_Bnb8Quantize, b4096_4096x4096, 4096, 4096, false)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Bnb8Quantize, b4096_11008x4096, 11008, 4096, false)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Bnb8Quantize, b4096_nested_11008x4096, 11008, 4096, true)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Bnb8Dequantize, b4096_4096x4096, 4096, 4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Bnb8Dequantize, b4096_11008x4096, 11008, 4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Bnb8DequantizeF16, b4096_4096x4096, 4096, 4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Bnb8DequantizeF16, b4096_11008x4096, 11008, 4096)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
