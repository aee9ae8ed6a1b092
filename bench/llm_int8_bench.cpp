// CPU throughput of LLM.int8(): weight quantization (Int8Params._quantize), the reference dequantization,
// the int8 GEMM and the whole reference matmul at decode-sized m. Compare the quantize numbers with
// bench/llm_int8_reference.py (bitsandbytes' int8_vectorwise_quant on the same matrices, 2 threads).
//
//     LOWBIT_NUM_THREADS=2 build/bin/lowbit_bench --benchmark_filter=LlmInt8
#include <benchmark/benchmark.h>

#include "bench_util.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/quant/llm_int8.hpp"

namespace {

using lowbit::bench::random_f16;

// Bytes per second count the fp16 weight (2 bytes per element).
void BM_LlmInt8Quantize(benchmark::State& state) {
  const lowbit::Tensor w = random_f16(state.range(0), state.range(1), 0.02f, 1);
  for (auto _ : state) benchmark::DoNotOptimize(lowbit::quant::quantize_llm_int8(w).components.size());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}
BENCHMARK(BM_LlmInt8Quantize)->Args({4096, 4096})->Args({11008, 4096})->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_LlmInt8DequantizeReference(benchmark::State& state) {
  const lowbit::Tensor w = random_f16(state.range(0), state.range(1), 0.02f, 2);
  const auto q = lowbit::quant::quantize_llm_int8(w);
  for (auto _ : state) benchmark::DoNotOptimize(lowbit::quant::dequantize_llm_int8_reference(q).raw_data());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}
BENCHMARK(BM_LlmInt8DequantizeReference)
    ->Args({4096, 4096})
    ->Args({11008, 4096})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// C = CA CB^T alone, m = 16 activation rows; items = multiply-adds.
void BM_LlmInt8Gemm(benchmark::State& state) {
  const std::int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const auto q = lowbit::quant::quantize_llm_int8(random_f16(n, k, 0.02f, 3));
  const auto a = lowbit::quant::quantize_llm_int8_activations(random_f16(m, k, 1.0f, 4), 6.0);
  for (auto _ : state) benchmark::DoNotOptimize(lowbit::quant::llm_int8_gemm(a.ca, q.component("CB")).raw_data());
  state.SetItemsProcessed(state.iterations() * m * n * k);
}
BENCHMARK(BM_LlmInt8Gemm)
    ->Args({16, 4096, 4096})
    ->Args({16, 11008, 4096})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The whole reference matmul (fp16 x with ~1% outlier columns, threshold 6), for information.
void BM_LlmInt8MatmulReference(benchmark::State& state) {
  const std::int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const auto q = lowbit::quant::quantize_llm_int8(random_f16(n, k, 0.02f, 5));
  lowbit::Tensor x = random_f16(m, k, 1.0f, 6);
  for (std::int64_t j = 0; j < k; j += 97) x.set({j % m, j}, 8.0);
  for (auto _ : state) benchmark::DoNotOptimize(lowbit::quant::matmul_llm_int8_reference(q, x).raw_data());
  state.SetItemsProcessed(state.iterations() * m * n * k);
}
BENCHMARK(BM_LlmInt8MatmulReference)->Args({16, 4096, 4096})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
