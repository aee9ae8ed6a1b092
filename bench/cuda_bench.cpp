// GPU benchmark of every fused dequantize-matmul format beside cuBLAS fp16, in one process, on the same
// shapes (docs/kernels.md#benchmarks-harness; the method: /work/shared/methods/kernels.md section 5).
//
//     lowbit_cuda_bench                                          # everything (~5 min on an H100)
//     lowbit_cuda_bench --benchmark_filter='llm_int8/8192x8192'  # a subset
//     lowbit_cuda_bench --benchmark_out=bench.json --benchmark_out_format=json --lowbit_summary=summary.txt
//     lowbit_cuda_bench --lowbit_graphs     # also time CUDA graph replays: counters graph_us, graph_speedup_vs_cublas
//
// Cases: formats {cublas_fp16, affine_int4_g128, affine_int4_g128_actorder, affine_int8_perchannel,
// nf4_dq_b64, hqq4_g64, llm_int8} x shapes K x N (below) x M in {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024}.
// Benchmark name: "<format>/<K>x<N>/M=<M>".
//
// Each case: weights rotated over enough device copies to exceed 2x the L2 (queried at run time), x and y
// fixed; 3 warm-up calls, then each call timed alone between two CUDA events; the reported time is the
// median of 100 calls (fewer, at least 20, where one call takes over 2 ms). Host launch overhead between
// the events counts: these are per-call times without CUDA graphs.
// Counters (Google Benchmark, manual time = the median):
//   time_us              median time of one call
//   cublas_us            cuBLAS fp16 on the same shape and M (measured in this process)
//   speedup_vs_cublas    cublas_us / time_us (> 1: faster than cuBLAS fp16)
//   bytes                weight_bytes() + M*K*2 (x in) + M*N*2 (y out): kernels.md section 1's floor
//   frac_copy_bw         bytes / time / copy bandwidth (device-to-device copy, bytes read + written)
//   M, K, N, weight_bytes, copies (weight copies rotated), launches (calls timed)
// cuBLAS fp16: cublasGemmEx, fp16 A/B/C, CUBLAS_COMPUTE_32F (fp32 accumulation, what PyTorch uses for
// fp16 Linear), CUBLAS_GEMM_DEFAULT, y = x W^T with W [N, K] row-major.
//
// Weights: uniform random in [-0.05, 0.05] (generated on all threads), quantized on the CPU once per shape
// and format with the library's quantizers: quantize_affine (int4 g128 asymmetric; int8 per-channel
// symmetric), the same int4 with a random act-order g_idx (a column permutation's groups, as GPTQ
// desc_act writes), quantize_nf4 (block 64, double quant), quantize_hqq (4-bit g64, axis 1, optimize =
// false: round to nearest with min-max scale and zero; the solver changes values, not the layout or the
// kernel's time, and would take ~20 s per large shape), quantize_llm_int8 (threshold 6). x: uniform in
// [-1, 1] with 0.1% outlier columns (every 1000th column holds 8.0 in row 0) for LLM.int8().
// A format whose prepare() or matmul() throws (not built yet, unsupported parameters) is reported with
// SkipWithError naming the error; the other cases still run.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "lowbit/core/half.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/cuda/device.hpp"
#include "lowbit/cuda/matmul.hpp"
#include "lowbit/quant/affine.hpp"
#include "lowbit/quant/hqq.hpp"
#include "lowbit/quant/llm_int8.hpp"
#include "lowbit/quant/nf4.hpp"

namespace {

using lowbit::DType;
using lowbit::Tensor;
namespace cuda = lowbit::cuda;
namespace quant = lowbit::quant;

struct Shape {
  std::int64_t k, n;
};
constexpr Shape kShapes[] = {{4096, 4096},  {4096, 11008}, {11008, 4096}, {4096, 14336}, {14336, 4096},
                             {8192, 8192},  {8192, 28672}, {28672, 8192}, {7392, 8192}};
constexpr std::int64_t kMs[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024};
constexpr std::int64_t kMaxM = 1024;
const char* const kFormats[] = {"affine_int4_g128", "affine_int4_g128_actorder", "affine_int8_perchannel",
                                "nf4_dq_b64",       "hqq4_g64",                  "llm_int8"};
constexpr const char* kCublas = "cublas_fp16";
// Summary rows: these M.
constexpr std::int64_t kSummaryMs[] = {1, 16, 64, 1024};

#define BENCH_CUDA(call)                                                                                 \
  do {                                                                                                   \
    const cudaError_t status_ = (call);                                                                  \
    if (status_ != cudaSuccess) {                                                                        \
      throw std::runtime_error(fmt::format("{} failed: {}", #call, cudaGetErrorString(status_)));        \
    }                                                                                                    \
  } while (false)

#define BENCH_CUBLAS(call)                                                                               \
  do {                                                                                                   \
    const cublasStatus_t status_ = (call);                                                               \
    if (status_ != CUBLAS_STATUS_SUCCESS) {                                                              \
      throw std::runtime_error(fmt::format("{} failed: {}", #call, cublasGetStatusString(status_)));     \
    }                                                                                                    \
  } while (false)

// ---- process-wide state ------------------------------------------------------------------------------------

struct Globals {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  std::size_t l2_bytes = 0;
  int sm_count = 0;
  double copy_bytes_per_s = 0.0;
  std::vector<cudaEvent_t> events;  // 2 per timed call
  std::string summary_path;
  bool graphs = false;  // --lowbit_graphs: also time each case as CUDA graph replays
};
Globals g;

// Deterministic uniform in [lo, hi) from (seed, index): splitmix64, so every thread can fill its own range.
inline float uniform_at(std::uint64_t seed, std::uint64_t i, float lo, float hi) {
  std::uint64_t z = seed * 0x9e3779b97f4a7c15ull + i + 0x632be59bd9b4e019ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  const float u = static_cast<float>(z >> 40) * 0x1p-24f;
  return lo + (hi - lo) * u;
}

Tensor random_f32(std::int64_t rows, std::int64_t cols, std::uint64_t seed, float lo, float hi) {
  Tensor t = Tensor::empty({rows, cols}, DType::F32);
  float* p = t.data<float>();
  lowbit::parallel_for(rows * cols, 1 << 16, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) p[i] = uniform_at(seed, static_cast<std::uint64_t>(i), lo, hi);
  });
  return t;
}

Tensor to_f16_parallel(const Tensor& f32) {
  Tensor t = Tensor::empty(f32.shape(), DType::F16);
  const float* src = f32.data<float>();
  auto* dst = static_cast<std::uint16_t*>(t.raw_data());
  lowbit::parallel_for(f32.numel(), 1 << 16, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) dst[i] = lowbit::f32_to_f16_bits(src[i]);
  });
  return t;
}

Tensor device_clone(const Tensor& t) {
  if (!t.defined() || !t.device().is_cuda() || !t.is_contiguous()) {
    return t.device().is_cuda() ? cuda::to_device(cuda::to_host(t.contiguous()), t.device().index) : t;
  }
  Tensor c = cuda::empty(t.shape(), t.dtype(), t.device().index);
  if (t.nbytes() > 0) {
    BENCH_CUDA(cudaMemcpyAsync(c.raw_data(), t.raw_data(), t.nbytes(), cudaMemcpyDeviceToDevice, g.stream));
  }
  return c;
}

// Enough copies that one pass over them is more than twice the L2.
int copies_for(std::uint64_t bytes) {
  const double needed = 2.0 * static_cast<double>(g.l2_bytes) / static_cast<double>(std::max<std::uint64_t>(bytes, 1));
  return std::max(2, static_cast<int>(std::ceil(needed)) + 1);
}

// ---- timing ------------------------------------------------------------------------------------------------

struct Timing {
  double median_us = 0.0;
  int launches = 0;
};

// launch(copy) enqueues one call on g.stream using weight copy `copy`.
Timing time_calls(const std::function<void(int)>& launch, int copies) {
  // Warm-up (module load, handle and scratch creation, cuBLAS heuristics), and an estimate.
  cudaEvent_t a = g.events[0], b = g.events[1];
  for (int r = 0; r < 2; ++r) launch(r % copies);
  BENCH_CUDA(cudaEventRecord(a, g.stream));
  launch(2 % copies);
  BENCH_CUDA(cudaEventRecord(b, g.stream));
  BENCH_CUDA(cudaEventSynchronize(b));
  float estimate_ms = 0.0f;
  BENCH_CUDA(cudaEventElapsedTime(&estimate_ms, a, b));
  const int max_runs = static_cast<int>(g.events.size() / 2);
  int runs = max_runs;  // 100
  if (estimate_ms > 2.0f) runs = std::clamp(static_cast<int>(300.0f / estimate_ms), 20, max_runs);
  for (int r = 0; r < runs; ++r) {
    BENCH_CUDA(cudaEventRecord(g.events[2 * r], g.stream));
    launch(r % copies);
    BENCH_CUDA(cudaEventRecord(g.events[2 * r + 1], g.stream));
  }
  BENCH_CUDA(cudaStreamSynchronize(g.stream));
  std::vector<float> ms(static_cast<std::size_t>(runs));
  for (int r = 0; r < runs; ++r) BENCH_CUDA(cudaEventElapsedTime(&ms[r], g.events[2 * r], g.events[2 * r + 1]));
  std::sort(ms.begin(), ms.end());
  const double median = runs % 2 ? ms[runs / 2] : 0.5 * (ms[runs / 2 - 1] + ms[runs / 2]);
  return {median * 1000.0, runs};
}

// With --lowbit_graphs: each weight copy's call captured once into a CUDA graph, then timed as graph
// replays (the same events and median), which removes host launch gaps between a call's kernels. A call
// that cannot be captured (an allocation or a synchronisation inside it) gives nullopt and the reason.
std::optional<double> time_graphs(const std::function<void(int)>& launch, int copies, std::string* why) {
  std::vector<cudaGraphExec_t> execs;
  auto destroy = [&] {
    for (cudaGraphExec_t e : execs) cudaGraphExecDestroy(e);
    execs.clear();
  };
  for (int c = 0; c < copies; ++c) {
    cudaGraph_t graph = nullptr;
    cudaError_t status = cudaStreamBeginCapture(g.stream, cudaStreamCaptureModeThreadLocal);
    if (status != cudaSuccess) {
      *why = fmt::format("begin capture: {}", cudaGetErrorString(status));
      (void)cudaGetLastError();
      destroy();
      return std::nullopt;
    }
    std::string error;
    try {
      launch(c);
    } catch (const std::exception& e) {
      error = e.what();
    }
    status = cudaStreamEndCapture(g.stream, &graph);
    if (!error.empty() || status != cudaSuccess || graph == nullptr) {
      *why = !error.empty() ? error : fmt::format("end capture: {}", cudaGetErrorString(status));
      (void)cudaGetLastError();
      if (graph != nullptr) cudaGraphDestroy(graph);
      destroy();
      return std::nullopt;
    }
    cudaGraphExec_t exec = nullptr;
    status = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (status != cudaSuccess) {
      *why = fmt::format("instantiate: {}", cudaGetErrorString(status));
      (void)cudaGetLastError();
      destroy();
      return std::nullopt;
    }
    execs.push_back(exec);
  }
  try {
    const Timing t =
        time_calls([&](int c) { BENCH_CUDA(cudaGraphLaunch(execs[static_cast<std::size_t>(c)], g.stream)); }, copies);
    destroy();
    return t.median_us;
  } catch (const std::exception& e) {
    *why = e.what();
    destroy();
    return std::nullopt;
  }
}

double measure_copy_bandwidth() {
  const std::size_t bytes = std::size_t{512} << 20;
  void* src = nullptr;
  void* dst = nullptr;
  BENCH_CUDA(cudaMalloc(&src, bytes));
  BENCH_CUDA(cudaMalloc(&dst, bytes));
  BENCH_CUDA(cudaMemsetAsync(src, 1, bytes, g.stream));
  const Timing t = time_calls(
      [&](int) { BENCH_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g.stream)); }, 1);
  BENCH_CUDA(cudaFree(src));
  BENCH_CUDA(cudaFree(dst));
  return 2.0 * static_cast<double>(bytes) / (t.median_us * 1e-6);
}

// ---- per-shape data (one shape resident at a time; benchmarks run shape by shape) ------------------------

struct FormatData {
  std::string error;  // non-empty: prepare() failed
  std::vector<cuda::PreparedWeight> copies;
};

struct ShapeData {
  Shape shape{0, 0};
  Tensor w32;                         // host f32 [N, K]
  std::vector<Tensor> w16;            // device fp16 copies [N, K] for cuBLAS
  Tensor x;                           // device fp16 [kMaxM, K]
  Tensor y;                           // device fp16 [kMaxM, N]
  std::map<std::string, FormatData> formats;
};
std::unique_ptr<ShapeData> current;
std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t>, double> cublas_us;  // (K, N, M)
std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t>, double> cublas_graph_us;  // with --lowbit_graphs

ShapeData& shape_data(const Shape& s) {
  if (current && current->shape.k == s.k && current->shape.n == s.n) return *current;
  current.reset();  // free the previous shape's device memory first
  BENCH_CUDA(cudaDeviceSynchronize());
  auto d = std::make_unique<ShapeData>();
  d->shape = s;
  const std::uint64_t seed = static_cast<std::uint64_t>(s.k * 1000003 + s.n);
  d->w32 = random_f32(s.n, s.k, seed, -0.05f, 0.05f);
  Tensor xh = random_f32(kMaxM, s.k, seed + 1, -1.0f, 1.0f);
  for (std::int64_t j = 500; j < s.k; j += 1000) xh.data<float>()[j] = 8.0f;  // row 0: outlier columns
  d->x = cuda::to_device(to_f16_parallel(xh));
  d->y = cuda::empty({kMaxM, s.n}, DType::F16);
  current = std::move(d);
  return *current;
}

std::vector<Tensor>& cublas_weights(ShapeData& d) {
  if (d.w16.empty()) {
    const Tensor first = cuda::to_device(to_f16_parallel(d.w32));
    const int copies = copies_for(first.nbytes());
    d.w16.push_back(first);
    for (int c = 1; c < copies; ++c) d.w16.push_back(device_clone(first));
    BENCH_CUDA(cudaStreamSynchronize(g.stream));
  }
  return d.w16;
}

quant::QuantizedTensor quantize_format(const std::string& format, const Tensor& w32) {
  if (format == "affine_int4_g128" || format == "affine_int4_g128_actorder") {
    quant::AffineConfig c;
    c.bits = 4;
    c.group_size = 128;
    c.mode = quant::AffineMode::Asymmetric;
    quant::QuantizedTensor q = quant::quantize_affine(w32, c);
    if (format == "affine_int4_g128_actorder") {
      // A random column order, grouped by position in it: g_idx[c] = rank(c) / 128 (GPTQ desc_act).
      const std::int64_t k = w32.size(1);
      std::vector<std::int32_t> order(static_cast<std::size_t>(k));
      std::iota(order.begin(), order.end(), 0);
      std::mt19937 rng(static_cast<std::uint32_t>(k));
      std::shuffle(order.begin(), order.end(), rng);
      Tensor g_idx = Tensor::empty({k}, DType::I32);
      for (std::int64_t p = 0; p < k; ++p) g_idx.data<std::int32_t>()[order[static_cast<std::size_t>(p)]] =
          static_cast<std::int32_t>(p / 128);
      q.components.insert_or_assign("g_idx", g_idx);
    }
    return q;
  }
  if (format == "affine_int8_perchannel") {
    quant::AffineConfig c;
    c.bits = 8;
    c.group_size = -1;
    c.mode = quant::AffineMode::Symmetric;
    return quant::quantize_affine(w32, c);
  }
  if (format == "nf4_dq_b64") {
    quant::Nf4Config c;
    c.block_size = 64;
    c.double_quant = true;
    return quant::quantize_nf4(w32, c);
  }
  if (format == "hqq4_g64") {
    quant::HqqConfig c;
    c.bits = 4;
    c.group_size = 64;
    c.axis = 1;
    c.optimize = false;
    return quant::quantize_hqq(w32, c);
  }
  if (format == "llm_int8") {
    quant::LlmInt8Config c;
    c.threshold = 6.0;
    return quant::quantize_llm_int8(w32, c);
  }
  throw std::runtime_error("unknown format " + format);
}

FormatData& format_data(ShapeData& d, const std::string& format) {
  if (auto it = d.formats.find(format); it != d.formats.end()) return it->second;
  FormatData f;
  try {
    const quant::QuantizedTensor q = quantize_format(format, d.w32);
    cuda::PreparedWeight first = cuda::prepare(q, 0, g.stream);
    const int copies = copies_for(first.weight_bytes());
    f.copies.push_back(first);
    for (int c = 1; c < copies; ++c) {
      cuda::PreparedWeight w = first;  // shares scratch: one call at a time on one stream
      for (auto& [name, t] : w.buffers) t = device_clone(t);
      f.copies.push_back(std::move(w));
    }
    BENCH_CUDA(cudaStreamSynchronize(g.stream));
  } catch (const std::exception& e) {
    f.copies.clear();
    f.error = e.what();
    if (f.error.empty()) f.error = "prepare failed";
  }
  return d.formats.emplace(format, std::move(f)).first->second;
}

double cublas_time_us(ShapeData& d, std::int64_t m, int* copies_out = nullptr) {
  const auto key = std::make_tuple(d.shape.k, d.shape.n, m);
  std::vector<Tensor>& w = cublas_weights(d);
  if (copies_out) *copies_out = static_cast<int>(w.size());
  if (auto it = cublas_us.find(key); it != cublas_us.end()) return it->second;
  const float alpha = 1.0f, beta = 0.0f;
  const int n = static_cast<int>(d.shape.n), k = static_cast<int>(d.shape.k), mm = static_cast<int>(m);
  const std::function<void(int)> launch = [&](int c) {
    // Column-major view: y^T [N, M] = W [K, N]^T x^T [K, M].
    BENCH_CUBLAS(cublasGemmEx(g.cublas, CUBLAS_OP_T, CUBLAS_OP_N, n, mm, k, &alpha, w[c].raw_data(), CUDA_R_16F, k,
                              d.x.raw_data(), CUDA_R_16F, k, &beta, d.y.raw_data(), CUDA_R_16F, n,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  const Timing t = time_calls(launch, static_cast<int>(w.size()));
  if (g.graphs) {
    std::string why;
    if (const auto graph = time_graphs(launch, static_cast<int>(w.size()), &why)) cublas_graph_us[key] = *graph;
  }
  cublas_us[key] = t.median_us;
  return t.median_us;
}

// ---- results for the summary table ---------------------------------------------------------------------------

struct Row {
  double us = 0, speedup = 0, frac = 0;
  std::string note;
};
std::map<std::tuple<std::string, std::int64_t, std::int64_t, std::int64_t>, Row> results;  // (format, K, N, M)

void report(benchmark::State& state, const std::string& format, const Shape& s, std::int64_t m, double us,
            double base_us, std::uint64_t weight_bytes, int copies, int launches, const std::string& label) {
  const double bytes = static_cast<double>(weight_bytes) + static_cast<double>(m * s.k * 2 + m * s.n * 2);
  const double frac = bytes / (us * 1e-6) / g.copy_bytes_per_s;
  state.counters["time_us"] = us;
  state.counters["cublas_us"] = base_us;
  state.counters["speedup_vs_cublas"] = base_us / us;
  state.counters["bytes"] = bytes;
  state.counters["frac_copy_bw"] = frac;
  state.counters["M"] = static_cast<double>(m);
  state.counters["K"] = static_cast<double>(s.k);
  state.counters["N"] = static_cast<double>(s.n);
  state.counters["weight_bytes"] = static_cast<double>(weight_bytes);
  state.counters["copies"] = copies;
  state.counters["launches"] = launches;
  state.SetLabel(label);
  results[{format, s.k, s.n, m}] = {us, base_us / us, frac, ""};
}

void run_cublas(benchmark::State& state, Shape s, std::int64_t m) {
  try {
    ShapeData& d = shape_data(s);
    int copies = 0;
    const double us = cublas_time_us(d, m, &copies);
    if (const auto it = cublas_graph_us.find({s.k, s.n, m}); it != cublas_graph_us.end()) {
      state.counters["graph_us"] = it->second;
      state.counters["graph_speedup_vs_cublas"] = 1.0;
    }
    for (auto _ : state) state.SetIterationTime(us * 1e-6);
    report(state, kCublas, s, m, us, us, static_cast<std::uint64_t>(2 * s.n * s.k), copies,
           static_cast<int>(g.events.size() / 2), "cublasGemmEx fp16, COMPUTE_32F");
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    results[{kCublas, s.k, s.n, m}] = {0, 0, 0, e.what()};
  }
}

void run_format(benchmark::State& state, std::string format, Shape s, std::int64_t m) {
  std::string error;
  try {
    ShapeData& d = shape_data(s);
    const double base = cublas_time_us(d, m);
    FormatData& f = format_data(d, format);
    if (!f.error.empty()) {
      error = "prepare: " + f.error;
    } else {
      const Tensor x = d.x.slice(0, 0, m);
      Tensor y = d.y.slice(0, 0, m);
      const cuda::PreparedWeight& w0 = f.copies.front();
      const cuda::MatmulPlan plan = cuda::plan_matmul(w0.method, w0.params, m, w0.n, w0.k, g.sm_count);
      const Timing t = time_calls([&](int c) { cuda::matmul(f.copies[static_cast<std::size_t>(c)], x, y, g.stream); },
                                  static_cast<int>(f.copies.size()));
      std::string label = plan.describe();
      if (g.graphs) {
        std::string why;
        const auto graph = time_graphs(
            [&](int c) { cuda::matmul(f.copies[static_cast<std::size_t>(c)], x, y, g.stream); },
            static_cast<int>(f.copies.size()), &why);
        const auto base_graph = cublas_graph_us.find({s.k, s.n, m});
        if (graph) {
          state.counters["graph_us"] = *graph;
          if (base_graph != cublas_graph_us.end()) state.counters["graph_speedup_vs_cublas"] = base_graph->second / *graph;
        } else {
          label += "; graph capture failed: " + why.substr(0, 120);
        }
      }
      for (auto _ : state) state.SetIterationTime(t.median_us * 1e-6);
      report(state, format, s, m, t.median_us, base, w0.weight_bytes(), static_cast<int>(f.copies.size()),
             t.launches, label);
      return;
    }
  } catch (const std::exception& e) {
    error = e.what();
  }
  // A sticky CUDA error would fail every later case; clear what can be cleared.
  (void)cudaGetLastError();
  state.SkipWithError(error.c_str());
  results[{format, s.k, s.n, m}] = {0, 0, 0, error};
}

void write_summary() {
  std::string out;
  out += fmt::format("SUMMARY TABLE (copy bandwidth {:.0f} GB/s; speedup = cuBLAS fp16 time / time; frac = "
                     "bytes / time / copy bandwidth)\n",
                     g.copy_bytes_per_s / 1e9);
  out += fmt::format("{:<26} {:>11}", "format", "K x N");
  for (const std::int64_t m : kSummaryMs) out += fmt::format(" | M={:<4} {:>8} {:>5} {:>4}", m, "us", "spdup", "frac");
  out += "\n";
  std::vector<std::string> formats = {kCublas};
  formats.insert(formats.end(), std::begin(kFormats), std::end(kFormats));
  for (const std::string& format : formats) {
    for (const Shape& s : kShapes) {
      bool any = false;
      std::string line = fmt::format("{:<26} {:>11}", format, fmt::format("{}x{}", s.k, s.n));
      std::string note;
      for (const std::int64_t m : kSummaryMs) {
        const auto it = results.find({format, s.k, s.n, m});
        if (it == results.end()) {
          line += fmt::format(" | {:>6} {:>8} {:>5} {:>4}", "", "-", "-", "-");
          continue;
        }
        any = true;
        const Row& r = it->second;
        if (!r.note.empty()) {
          line += fmt::format(" | {:>6} {:>8} {:>5} {:>4}", "", "skip", "-", "-");
          note = r.note;
        } else {
          line += fmt::format(" | {:>6} {:>8.1f} {:>5.2f} {:>4.2f}", "", r.us, r.speedup, r.frac);
        }
      }
      if (!any) continue;
      out += line + "\n";
      if (!note.empty()) out += fmt::format("    skipped: {}\n", note.substr(0, 160));
    }
  }
  std::fputs(out.c_str(), stdout);
  if (!g.summary_path.empty()) {
    if (std::FILE* f = std::fopen(g.summary_path.c_str(), "w")) {
      std::fputs(out.c_str(), f);
      std::fclose(f);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Our own flag first (Google Benchmark rejects unknown --flags).
  std::vector<char*> args;
  bool listing = false;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    listing = listing || a.rfind("--benchmark_list_tests", 0) == 0;
    if (a.rfind("--lowbit_summary=", 0) == 0) {
      g.summary_path = a.substr(std::strlen("--lowbit_summary="));
    } else if (a == "--lowbit_graphs") {
      g.graphs = true;
    } else {
      args.push_back(argv[i]);
    }
  }
  int args_count = static_cast<int>(args.size());
  benchmark::Initialize(&args_count, args.data());
  if (benchmark::ReportUnrecognizedArguments(args_count, args.data())) return 1;
  for (const Shape& s : kShapes) {
    for (const std::int64_t m : kMs) {
      benchmark::RegisterBenchmark(fmt::format("{}/{}x{}/M={}", kCublas, s.k, s.n, m).c_str(),
                                   [s, m](benchmark::State& st) { run_cublas(st, s, m); })
          ->UseManualTime()
          ->Iterations(1)
          ->Unit(benchmark::kMicrosecond);
    }
    for (const char* format : kFormats) {
      for (const std::int64_t m : kMs) {
        const std::string name = format;
        benchmark::RegisterBenchmark(fmt::format("{}/{}x{}/M={}", format, s.k, s.n, m).c_str(),
                                     [name, s, m](benchmark::State& st) { run_format(st, name, s, m); })
            ->UseManualTime()
            ->Iterations(1)
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
  if (cuda::device_count() == 0) {
    if (listing) benchmark::RunSpecifiedBenchmarks();
    std::fprintf(stderr, "lowbit_cuda_bench: no CUDA device\n");
    return 0;
  }
  try {
    cudaDeviceProp prop{};
    BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
    g.l2_bytes = static_cast<std::size_t>(prop.l2CacheSize);
    g.sm_count = prop.multiProcessorCount;
    BENCH_CUDA(cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking));
    BENCH_CUBLAS(cublasCreate(&g.cublas));
    BENCH_CUBLAS(cublasSetStream(g.cublas, g.stream));
    g.events.resize(200);
    for (cudaEvent_t& e : g.events) BENCH_CUDA(cudaEventCreate(&e));
    g.copy_bytes_per_s = measure_copy_bandwidth();
    benchmark::AddCustomContext("device", cuda::describe_device(0));
    benchmark::AddCustomContext("l2_bytes", std::to_string(g.l2_bytes));
    benchmark::AddCustomContext("copy_bandwidth_GBps", fmt::format("{:.1f}", g.copy_bytes_per_s / 1e9));
    benchmark::AddCustomContext("cublas", "cublasGemmEx fp16 in/out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT");
    benchmark::AddCustomContext("timing", "median of per-call CUDA event pairs, weights rotated > 2x L2");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lowbit_cuda_bench: setup failed: %s\n", e.what());
    return 1;
  }

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  current.reset();
  write_summary();
  return 0;
}
