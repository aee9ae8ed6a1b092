// Reference forward throughput on stories15M (../shared/data or $LOWBIT_SHARED_DATA): prefill of 256 tokens and
// one-token decoding through the KV cache, in tokens/s, at 1 and 2 threads; and the GEMM of its lm_head (256 x 32000 x
// 288). bench/model_reference.py times transformers' forward on the same model and CPU for comparison:
//
//   lowbit_bench --benchmark_filter='Model|ModelGemm'
//   /tmp/venv-ref/bin/python bench/model_reference.py
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <vector>

#include "lowbit/core/parallel.hpp"
#include "lowbit/model/gemm.hpp"
#include "lowbit/model/llama.hpp"

namespace {

using lowbit::model::LlamaModel;

// ../shared/data beside the project root (found from this file's path), or $LOWBIT_SHARED_DATA.
std::filesystem::path shared_data() {
  if (const char* env = std::getenv("LOWBIT_SHARED_DATA")) return env;
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "shared" / "data";
}
const std::filesystem::path kStories15M = shared_data() / "stories15M";

// Loaded once for every benchmark; null (and the benchmarks skip) where ../shared/data is absent.
const LlamaModel* stories15m() {
  static const std::unique_ptr<LlamaModel> model = []() -> std::unique_ptr<LlamaModel> {
    if (!std::filesystem::exists(kStories15M / "model.safetensors")) return nullptr;
    return std::make_unique<LlamaModel>(LlamaModel::load(kStories15M));
  }();
  return model.get();
}

std::vector<std::int32_t> tokens(std::int64_t count, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> dist(3, 31999);
  std::vector<std::int32_t> out(static_cast<std::size_t>(count));
  for (auto& t : out) t = dist(rng);
  out[0] = 1;  // BOS
  return out;
}

// Threads restored after each benchmark, so that the order of benchmarks does not matter.
struct ThreadScope {
  explicit ThreadScope(int n) : saved(lowbit::num_threads()) { lowbit::set_num_threads(n); }
  ~ThreadScope() { lowbit::set_num_threads(saved); }
  int saved;
};

void BM_ModelPrefill256(benchmark::State& state) {
  const LlamaModel* model = stories15m();
  if (model == nullptr) return state.SkipWithError("no stories15M in ../shared/data");
  const ThreadScope threads(static_cast<int>(state.range(0)));
  const std::vector<std::int32_t> ids = tokens(256, 1);
  for (auto _ : state) benchmark::DoNotOptimize(model->forward(ids));
  state.counters["tokens/s"] =
      benchmark::Counter(256.0 * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_ModelPrefill256)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

// 128 tokens decoded one at a time after a 10-token prompt (positions 10..137), as generation runs.
void BM_ModelDecode128(benchmark::State& state) {
  const LlamaModel* model = stories15m();
  if (model == nullptr) return state.SkipWithError("no stories15M in ../shared/data");
  const ThreadScope threads(static_cast<int>(state.range(0)));
  const std::vector<std::int32_t> ids = tokens(138, 2);
  lowbit::model::KvCache cache = model->make_cache(138);
  for (auto _ : state) {
    state.PauseTiming();
    cache.clear();
    model->forward(std::span(ids).first(10), &cache);
    state.ResumeTiming();
    for (std::size_t i = 10; i < ids.size(); ++i)
      benchmark::DoNotOptimize(model->forward(std::span(ids).subspan(i, 1), &cache));
  }
  state.counters["tokens/s"] =
      benchmark::Counter(128.0 * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_ModelDecode128)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

// The lm_head product of a 256-token prefill, per kernel this CPU runs (range(0) indexes
// available_cpu_kernels(): 0 generic, then avx2, avx512), on all threads.
void BM_ModelGemmLmHead(benchmark::State& state) {
  const auto kernels = lowbit::model::available_cpu_kernels();
  if (state.range(0) >= static_cast<std::int64_t>(kernels.size())) return state.SkipWithError("kernel not available");
  const auto kernel = kernels[static_cast<std::size_t>(state.range(0))];
  state.SetLabel(std::string(lowbit::model::to_string(kernel)));
  const std::int64_t m = 256, n = 32000, k = 288;
  std::vector<float> x(static_cast<std::size_t>(m * k), 0.5f), w(static_cast<std::size_t>(n * k), 0.25f);
  std::vector<float> y(static_cast<std::size_t>(m * n));
  const auto packed = lowbit::model::PackedMatrix::pack(w.data(), n, k, k, kernel);
  for (auto _ : state) {
    lowbit::model::gemm(x.data(), m, k, packed, y.data(), n);
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * m * n * k * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_ModelGemmLmHead)->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
