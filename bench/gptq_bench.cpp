// GPTQ on the CPU: one layer's solve (dead columns, damping, the fp64 factor of H^-1, the column sweep with
// lazy-batch updates, the output tensor), W [n, k] fp16 with k = 4096 (Llama-7B's q/k/v/o and gate/up
// shapes), 4-bit asymmetric, group 128 and per row, act-order on and off, the factor in fp64 (default) and
// fp32 (the reference's precision). H is fixed: the covariance of
// random correlated inputs (bench_hessian below). Counters: `loss` (the reference's sum of Losses) and
// `proxy` (tr((W - W_hat) H (W - W_hat)^T), fp64, computed once outside the timed loop).
//
//     LOWBIT_NUM_THREADS=2 build/bin/lowbit_bench --benchmark_filter=Gptq
//
// bench/gptq_reference.py times the reference algorithm (torch, CPU, 2 threads) on the same W and H: run
// this bench once with LOWBIT_GPTQ_BENCH_DUMP=<folder> and it writes gptq_<n>x<k>.safetensors (W, H) there
// for the script to read.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/io/safetensors.hpp"
#include "lowbit/quant/affine.hpp"
#include "lowbit/quant/gptq.hpp"

namespace {

struct Layer {
  lowbit::Tensor w;  // f16 [n, k]
  lowbit::Tensor h;  // f64 [k, k]
};

// The covariance H = 2 D (I + B B^T) D of random correlated inputs x = D (z + B f): independent noise z plus
// 32 shared latent factors f with N(0, 0.25) loadings B, every 509th channel x20 (8 outliers for k = 4096)
// and the others scaled by a random factor in [0.5, 2]. Full rank, a spiked spectrum, no band structure.
lowbit::Tensor bench_hessian(std::int64_t k) {
  constexpr int kFactors = 32;
  std::mt19937 rng(11);
  std::normal_distribution<double> loading(0.0, 0.5);
  std::uniform_real_distribution<double> scale(0.5, 2.0);
  std::vector<double> b(static_cast<std::size_t>(k * kFactors)), d(static_cast<std::size_t>(k));
  for (auto& v : b) v = loading(rng);
  for (std::int64_t c = 0; c < k; ++c) d[static_cast<std::size_t>(c)] = (c % 509 == 7) ? 20.0 : scale(rng);
  lowbit::Tensor h = lowbit::Tensor::empty({k, k}, lowbit::DType::F64);
  double* p = h.data<double>();
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t j = 0; j <= i; ++j) {
      double s = i == j ? 1.0 : 0.0;
      for (int f = 0; f < kFactors; ++f)
        s += b[static_cast<std::size_t>(i * kFactors + f)] * b[static_cast<std::size_t>(j * kFactors + f)];
      p[i * k + j] = p[j * k + i] = 2.0 * d[static_cast<std::size_t>(i)] * d[static_cast<std::size_t>(j)] * s;
    }
  }
  return h;
}

const Layer& layer(std::int64_t n, std::int64_t k) {
  static std::map<std::pair<std::int64_t, std::int64_t>, Layer> cache;
  static std::map<std::int64_t, lowbit::Tensor> hessians;
  auto it = cache.find({n, k});
  if (it != cache.end()) return it->second;
  if (!hessians.count(k)) hessians[k] = bench_hessian(k);
  Layer l;
  l.h = hessians[k];
  lowbit::Tensor w = lowbit::Tensor::empty({n, k}, lowbit::DType::F32);
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  for (std::int64_t i = 0; i < n * k; ++i) w.data<float>()[i] = dist(rng);
  l.w = w.to(lowbit::DType::F16);
  if (const char* dump = std::getenv("LOWBIT_GPTQ_BENCH_DUMP"); dump != nullptr && *dump != '\0') {
    const auto path = std::filesystem::path(dump) / fmt::format("gptq_{}x{}.safetensors", n, k);
    lowbit::io::save_safetensors(path, {{"W", l.w}, {"H", l.h.to(lowbit::DType::F32)}});
  }
  return cache.emplace(std::make_pair(n, k), std::move(l)).first->second;
}

void BM_GptqSolve(benchmark::State& state) {
  const Layer& l = layer(state.range(0), state.range(1));
  lowbit::quant::GptqConfig config;  // 4 bit, asymmetric, damp 0.01, blocks of 128 (the reference's defaults)
  config.group_size = state.range(2);
  config.act_order = state.range(3) != 0;
  config.factor_dtype = state.range(4) != 0 ? lowbit::DType::F64 : lowbit::DType::F32;
  lowbit::quant::GptqResult result;
  for (auto _ : state) {
    result = lowbit::quant::quantize_gptq(l.w, l.h, config);
    benchmark::DoNotOptimize(result.q.components.size());
  }
  state.counters["loss"] = result.loss;
  state.counters["proxy"] =
      lowbit::quant::gptq_proxy_loss(l.w, l.h, lowbit::quant::dequantize_affine_reference(result.q));
  state.counters["fallback"] = result.fallback ? 1 : 0;
}
BENCHMARK(BM_GptqSolve)
    ->ArgNames({"n", "k", "group", "act", "f64"})
    ->Args({4096, 4096, 128, 0, 1})
    ->Args({4096, 4096, -1, 0, 1})
    ->Args({4096, 4096, 128, 1, 1})
    ->Args({11008, 4096, 128, 0, 1})
    ->Args({11008, 4096, 128, 1, 1})
    ->Args({4096, 4096, 128, 0, 0})
    ->Args({11008, 4096, 128, 0, 0})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Iterations(2);

}  // namespace
