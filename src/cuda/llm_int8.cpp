// cuda/llm_int8.hpp and the "llm_int8" entries of formats.hpp: prepare (copy CB and SCB), the plan, and the
// per-call pipeline around cuBLASLt's int8 GEMM (kernels/llm_int8.cu holds the kernels).
#include "lowbit/cuda/llm_int8.hpp"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "check.hpp"
#include "formats.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/quant/llm_int8.hpp"

namespace lowbit::cuda {
namespace {

constexpr std::size_t kAlign = 256;

std::size_t align_up(std::size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

#define LOWBIT_CUBLASLT_CHECK(call)                                                                      \
  do {                                                                                                   \
    const cublasStatus_t lowbit_status_ = (call);                                                        \
    LOWBIT_CHECK(lowbit_status_ == CUBLAS_STATUS_SUCCESS, ErrorCode::Cuda, "{} failed at {}:{}: {}", #call, \
                 __FILE__, __LINE__, cublasLtGetStatusString(lowbit_status_));                           \
  } while (false)

// Makes `device` current for the scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    LOWBIT_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device != previous_) LOWBIT_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// One cuBLASLt handle per device and one GEMM setup (descriptors + the heuristic's algorithm) per
// (device, m, n, k), made on first use and kept for the life of the process (never destroyed: static
// destructors run after the CUDA runtime may be gone). The heuristic costs tens of microseconds of host
// time, more than a decode-sized GEMM takes on the device.
struct GemmSetup {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

std::mutex& cache_mutex() {
  static std::mutex mutex;
  return mutex;
}

cublasLtHandle_t handle_for(int device) {
  static std::array<cublasLtHandle_t, 64> handles{};
  LOWBIT_CHECK(device >= 0 && device < static_cast<int>(handles.size()), ErrorCode::InvalidArgument,
               "llm_int8: device ordinal {}", device);
  if (handles[device] == nullptr) LOWBIT_CUBLASLT_CHECK(cublasLtCreate(&handles[device]));
  return handles[device];
}

// C [m, n] i32 (row-major) = CA [m, k] i8 (row-major) x CB [n, k]^T. In cuBLASLt's column-major terms:
// D [n, m] (ld n) = op(A) B with A = CB seen as [k, n] (ld k) transposed, B = CA seen as [k, m] (ld k): the
// "TN" int8 case it runs on tensor cores with plain column-major layouts.
const GemmSetup& gemm_setup(int device, std::int64_t m, std::int64_t n, std::int64_t k) {
  static auto* setups = new std::map<std::tuple<int, std::int64_t, std::int64_t, std::int64_t>, GemmSetup>();
  const auto key = std::make_tuple(device, m, n, k);
  if (const auto it = setups->find(key); it != setups->end()) return it->second;
  cublasLtHandle_t handle = handle_for(device);
  GemmSetup s;
  LOWBIT_CUBLASLT_CHECK(cublasLtMatmulDescCreate(&s.desc, CUBLAS_COMPUTE_32I, CUDA_R_32I));
  const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
  LOWBIT_CUBLASLT_CHECK(
      cublasLtMatmulDescSetAttribute(s.desc, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof(transa)));
  LOWBIT_CUBLASLT_CHECK(
      cublasLtMatmulDescSetAttribute(s.desc, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof(transb)));
  LOWBIT_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&s.a, CUDA_R_8I, static_cast<std::uint64_t>(k),
                                                   static_cast<std::uint64_t>(n), k));
  LOWBIT_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&s.b, CUDA_R_8I, static_cast<std::uint64_t>(k),
                                                   static_cast<std::uint64_t>(m), k));
  LOWBIT_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&s.c, CUDA_R_32I, static_cast<std::uint64_t>(n),
                                                   static_cast<std::uint64_t>(m), n));
  cublasLtMatmulPreference_t preference = nullptr;
  LOWBIT_CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  const std::size_t workspace = kLlmInt8WorkspaceBytes;
  LOWBIT_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                             &workspace, sizeof(workspace)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(handle, s.desc, s.a, s.b, s.c, s.c, preference, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(preference);
  LOWBIT_CHECK(status == CUBLAS_STATUS_SUCCESS && found > 0, ErrorCode::Unsupported,
               "llm_int8: cuBLASLt has no int8 GEMM for m = {}, n = {}, k = {} on cuda:{} ({})", m, n, k, device,
               cublasLtGetStatusString(status));
  s.algo = result.algo;
  return setups->emplace(key, s).first->second;
}

}  // namespace

LlmInt8ScratchLayout llm_int8_scratch_layout(std::int64_t m, std::int64_t n, std::int64_t k) {
  LOWBIT_CHECK(m > 0 && n > 0 && k > 0, ErrorCode::InvalidArgument,
               "llm_int8_scratch_layout: m = {}, n = {}, k = {} must be positive", m, n, k);
  const auto um = static_cast<std::size_t>(m), un = static_cast<std::size_t>(n), uk = static_cast<std::size_t>(k);
  const auto panel = static_cast<std::size_t>(kLlmInt8PanelCols);
  LlmInt8ScratchLayout s;
  std::size_t at = 0;
  auto take = [&](std::size_t bytes) {
    const std::size_t offset = at;
    at = align_up(at + bytes);
    return offset;
  };
  s.mask = take((uk + 31) / 32 * sizeof(std::uint32_t));
  s.ncols = take(sizeof(std::int32_t));
  s.cols = take(uk * sizeof(std::int32_t));
  s.sca = take(um * sizeof(float));
  s.ca = take(um * uk);
  s.c = take(um * un * sizeof(std::int32_t));
  s.sub_a = take(um * panel * sizeof(float));
  s.sub_b = take(panel * un * sizeof(float));
  s.workspace = take(kLlmInt8WorkspaceBytes);
  s.total = at;
  return s;
}

float llm_int8_threshold16(double threshold) {
  LOWBIT_CHECK(std::isfinite(threshold) && threshold >= 0.0, ErrorCode::InvalidArgument,
               "llm_int8: threshold = {} is not allowed; use a finite value >= 0", threshold);
  return f16_bits_to_f32(f32_to_f16_bits(static_cast<float>(threshold)));
}

namespace detail {

PreparedWeight prepare_llm_int8(const quant::QuantizedTensor& q, int device, Stream stream) {
  quant::check_llm_int8(q, "cuda::prepare");
  const std::int64_t n = q.shape[0], k = q.shape[1];
  LOWBIT_CHECK(k <= quant::kLlmInt8MaxK, ErrorCode::Unsupported,
               "cuda::prepare: llm_int8 weight [{}, {}]: k above {} could overflow the int32 accumulator", n, k,
               quant::kLlmInt8MaxK);
  (void)llm_int8_threshold16(q.params.threshold);
  PreparedWeight w;
  w.method = q.method;
  w.params = q.params;
  w.n = n;
  w.k = k;
  w.device = device;
  w.buffers.emplace("CB", to_device(q.component("CB"), device, stream));
  w.buffers.emplace("SCB", to_device(q.component("SCB"), device, stream));
  return w;
}

MatmulPlan plan_llm_int8(const quant::QuantParams& params, std::int64_t m, std::int64_t n, std::int64_t k,
                         int sm_count) {
  (void)n;
  (void)sm_count;
  (void)llm_int8_threshold16(params.threshold);
  LOWBIT_CHECK(k <= quant::kLlmInt8MaxK, ErrorCode::Unsupported,
               "cuda::plan_matmul: llm_int8 with k = {} above {} could overflow the int32 accumulator", k,
               quant::kLlmInt8MaxK);
  MatmulPlan plan;
  plan.threads = kLlmInt8EpilogueThreads;
  plan.k_splits = 1;
  if (m <= kLlmInt8GemvMaxM) {
    plan.regime = Regime::Gemv;
    plan.threads = kLlmInt8GemvThreads;
    plan.rows_per_block = kLlmInt8GemvRowsPerBlock;
    plan.m_tile = llm_int8_gemv_bucket(m);
  } else {
    plan.regime = Regime::TensorCore;
    plan.rows_per_block = kLlmInt8EpilogueCols;
    plan.m_tile = kLlmInt8EpilogueRows;
  }
  return plan;
}

void matmul_llm_int8(const PreparedWeight& w, const MatmulPlan& plan, const Tensor& x, Tensor& y, Stream stream) {
  const std::int64_t m = x.shape()[0], n = w.n, k = w.k;
  LOWBIT_CHECK(reinterpret_cast<std::uintptr_t>(x.raw_data()) % 16 == 0, ErrorCode::InvalidArgument,
               "cuda::matmul: llm_int8 reads x in 16-byte vectors; x {} starts at an address that is not "
               "16-byte aligned",
               x.describe());
  // The epilogue's grid has ceil(m / 16) rows of blocks; CUDA allows 65535.
  LOWBIT_CHECK(m <= std::int64_t{65535} * kLlmInt8EpilogueRows, ErrorCode::Unsupported,
               "cuda::matmul: llm_int8 with m = {} rows; at most {} per call (split the batch)", m,
               std::int64_t{65535} * kLlmInt8EpilogueRows);
  const auto cb_it = w.buffers.find("CB");
  const auto scb_it = w.buffers.find("SCB");
  LOWBIT_CHECK(cb_it != w.buffers.end() && scb_it != w.buffers.end(), ErrorCode::InvalidArgument,
               "cuda::matmul: llm_int8 weight lacks its CB/SCB buffers (not made by cuda::prepare)");

  DeviceGuard guard(w.device);
  const LlmInt8ScratchLayout layout = llm_int8_scratch_layout(m, n, k);
  LOWBIT_CHECK(w.scratch != nullptr, ErrorCode::InvalidArgument,
               "cuda::matmul: llm_int8 weight has no scratch holder (PreparedWeight::scratch is null)");
  Tensor& scratch = *w.scratch;
  if (!scratch.defined() || scratch.nbytes() < layout.total || !scratch.device().is_cuda() ||
      scratch.device().index != w.device) {
    scratch = Tensor();  // free the old buffer first
    scratch = empty({static_cast<std::int64_t>(layout.total)}, DType::U8, w.device);
  }
  auto* base = static_cast<std::uint8_t*>(scratch.raw_data());

  LlmInt8Pointers p;
  p.x = x.raw_data();
  p.cb = static_cast<const std::int8_t*>(cb_it->second.raw_data());
  p.scb = static_cast<const float*>(scb_it->second.raw_data());
  p.mask = reinterpret_cast<std::uint32_t*>(base + layout.mask);
  p.ncols = reinterpret_cast<std::int32_t*>(base + layout.ncols);
  p.cols = reinterpret_cast<std::int32_t*>(base + layout.cols);
  p.sca = reinterpret_cast<float*>(base + layout.sca);
  p.ca = reinterpret_cast<std::int8_t*>(base + layout.ca);
  p.c = reinterpret_cast<const std::int32_t*>(base + layout.c);
  p.sub_a = reinterpret_cast<float*>(base + layout.sub_a);
  p.sub_b = reinterpret_cast<float*>(base + layout.sub_b);
  p.y = y.raw_data();
  p.m = m;
  p.n = n;
  p.k = k;
  p.act = x.dtype();
  p.threshold16 = llm_int8_threshold16(w.params.threshold);
  p.decompose = w.params.threshold > 0.0;
  p.sm_count = sm_count(w.device);

  if (plan.regime == Regime::Gemv) {
    LOWBIT_CHECK(m <= kLlmInt8GemvMaxM, ErrorCode::InvalidArgument,
                 "cuda::matmul: llm_int8 Gemv plan for m = {}; it serves m <= {}", m, kLlmInt8GemvMaxM);
    launch_llm_int8_gemv(p, stream);
    return;
  }
  launch_llm_int8_prepare_x(p, stream);
  {
    std::lock_guard lock(cache_mutex());
    const GemmSetup& g = gemm_setup(w.device, m, n, k);
    const std::int32_t alpha = 1, beta = 0;
    auto* c = reinterpret_cast<std::int32_t*>(base + layout.c);
    LOWBIT_CUBLASLT_CHECK(cublasLtMatmul(handle_for(w.device), g.desc, &alpha, p.cb, g.a, p.ca, g.b, &beta, c, g.c,
                                         c, g.c, &g.algo, base + layout.workspace, kLlmInt8WorkspaceBytes,
                                         stream));
  }
  launch_llm_int8_epilogue(p, stream);
}

}  // namespace detail
}  // namespace lowbit::cuda
