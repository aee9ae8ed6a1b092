// CPU throughput of NF4/FP4 quantization (bitsandbytes' 4-bit, block 64) on fp16 weights of Llama-7B
// shapes; bench/nf4_reference.py times bitsandbytes' own CPU quantize_4bit / dequantize_4bit on the same
// matrices. Bytes processed = the fp16 weight's bytes, for quantize and dequantize alike. BM_Nf4Dequantize
// times the fp32 reference; BM_Nf4DequantizeF16 the fp16 output that bitsandbytes' dequantize_4bit returns.
//
//     LOWBIT_NUM_THREADS=2 build/bin/lowbit_bench --benchmark_filter=Nf4
//     python3 bench/nf4_reference.py
#include <benchmark/benchmark.h>

#include "lowbit/core/tensor.hpp"
#include "lowbit/quant/nf4.hpp"
#include "bench_util.hpp"

namespace {

using lowbit::DType;
using lowbit::Tensor;
using lowbit::bench::weight;
using namespace lowbit::quant;

void BM_Nf4Quantize(benchmark::State& state, std::int64_t n, std::int64_t k, Nf4Type type, bool double_quant) {
  const Tensor& w = weight(n, k);
  const Nf4Config config{type, 64, double_quant};
  for (auto _ : state) benchmark::DoNotOptimize(quantize_nf4(w, config).components.size());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}

void BM_Nf4Dequantize(benchmark::State& state, std::int64_t n, std::int64_t k, Nf4Type type, bool double_quant) {
  const Tensor& w = weight(n, k);
  const QuantizedTensor q = quantize_nf4(w, {type, 64, double_quant});
  for (auto _ : state) benchmark::DoNotOptimize(dequantize_nf4_reference(q).raw_data());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}

// dequantize_nf4 into fp16: what bitsandbytes' dequantize_4bit returns for an fp16 weight.
void BM_Nf4DequantizeF16(benchmark::State& state, std::int64_t n, std::int64_t k, Nf4Type type, bool double_quant) {
  const Tensor& w = weight(n, k);
  const QuantizedTensor q = quantize_nf4(w, {type, 64, double_quant});
  for (auto _ : state) benchmark::DoNotOptimize(dequantize_nf4(q, DType::F16).raw_data());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}

#define LOWBIT_NF4_BENCH(fn, shape, n, k)                                                                      \
  BENCHMARK_CAPTURE(fn, nf4_##shape, n, k, Nf4Type::NF4, false)->Unit(benchmark::kMillisecond)->UseRealTime(); \
  BENCHMARK_CAPTURE(fn, nf4_dq_##shape, n, k, Nf4Type::NF4, true)->Unit(benchmark::kMillisecond)->UseRealTime(); \
  BENCHMARK_CAPTURE(fn, fp4_##shape, n, k, Nf4Type::FP4, false)->Unit(benchmark::kMillisecond)->UseRealTime()

LOWBIT_NF4_BENCH(BM_Nf4Quantize, 4096x4096, 4096, 4096);
LOWBIT_NF4_BENCH(BM_Nf4Quantize, 11008x4096, 11008, 4096);
LOWBIT_NF4_BENCH(BM_Nf4Dequantize, 4096x4096, 4096, 4096);
LOWBIT_NF4_BENCH(BM_Nf4Dequantize, 11008x4096, 11008, 4096);
LOWBIT_NF4_BENCH(BM_Nf4DequantizeF16, 4096x4096, 4096, 4096);
LOWBIT_NF4_BENCH(BM_Nf4DequantizeF16, 11008x4096, 11008, 4096);

}  // namespace
