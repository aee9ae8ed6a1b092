// CPU throughput of the core: 16-bit float conversion and safetensors loading.
//
//     build/bin/lowbit_bench --benchmark_filter=Convert
#include <benchmark/benchmark.h>

#include <filesystem>
#include <random>

#include "lowbit/core/parallel.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/io/safetensors.hpp"

namespace {

lowbit::Tensor random_f32(std::int64_t n, std::int64_t k) {
  lowbit::Tensor t = lowbit::Tensor::empty({n, k}, lowbit::DType::F32);
  std::mt19937 rng(7);
  std::normal_distribution<float> dist;
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return t;
}

// Bytes per second count the fp32 side of the conversion.
void BM_ConvertF32To(benchmark::State& state, lowbit::DType to) {
  const lowbit::Tensor w = random_f32(4096, 4096);
  for (auto _ : state) benchmark::DoNotOptimize(w.to(to).raw_data());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.nbytes()));
}
BENCHMARK_CAPTURE(BM_ConvertF32To, f16, lowbit::DType::F16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_ConvertF32To, bf16, lowbit::DType::BF16)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_ConvertToF32(benchmark::State& state, lowbit::DType from) {
  const lowbit::Tensor w = random_f32(4096, 4096).to(from);
  for (auto _ : state) benchmark::DoNotOptimize(w.to(lowbit::DType::F32).raw_data());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(w.numel()) * 4);
}
BENCHMARK_CAPTURE(BM_ConvertToF32, f16, lowbit::DType::F16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_ConvertToF32, bf16, lowbit::DType::BF16)->Unit(benchmark::kMillisecond)->UseRealTime();

// Open + validate a 4096x11008 fp16 file and read every byte through the zero-copy view.
void BM_SafetensorsOpenAndRead(benchmark::State& state) {
  const auto path = std::filesystem::temp_directory_path() / "lowbit_bench_load.safetensors";
  lowbit::io::save_safetensors(path, {{"w", random_f32(4096, 11008).to(lowbit::DType::F16)}});
  for (auto _ : state) {
    const auto file = lowbit::io::SafetensorsFile::open(path);
    const auto bytes = file.bytes("w");
    std::uint64_t sum = 0;
    for (std::size_t i = 0; i < bytes.size(); i += 64) sum += static_cast<std::uint8_t>(bytes[i]);
    benchmark::DoNotOptimize(sum);
  }
  state.SetBytesProcessed(state.iterations() * 4096LL * 11008LL * 2);
  std::filesystem::remove(path);
}
BENCHMARK(BM_SafetensorsOpenAndRead)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
