// cuda/matmul.hpp: the method switch in front of each format's prepare / plan / matmul (src/cuda/formats.hpp).
#include "lowbit/cuda/matmul.hpp"

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <array>
#include <mutex>

#include "check.hpp"
#include "formats.hpp"

namespace lowbit::cuda {

std::string_view name(Regime regime) noexcept {
  switch (regime) {
    case Regime::Gemv: return "gemv";
    case Regime::TensorCore: return "tensor-core";
    case Regime::Dequantize: return "dequantize+cublas";
  }
  return "?";
}

std::string MatmulPlan::describe() const {
  return fmt::format("{} threads={} rows_per_block={} m_tile={} k_splits={}", name(regime), threads,
                     rows_per_block, m_tile, k_splits);
}

std::uint64_t PreparedWeight::weight_bytes() const {
  std::uint64_t bytes = 0;
  for (const auto& [name, tensor] : buffers) bytes += tensor.nbytes();
  return bytes;
}

namespace {

enum class Family { Affine, Nf4, Hqq, LlmInt8 };

Family family_of(std::string_view method) {
  if (method == "affine") return Family::Affine;
  if (method == "nf4" || method == "fp4") return Family::Nf4;
  if (method == "hqq") return Family::Hqq;
  if (method == "llm_int8") return Family::LlmInt8;
  LOWBIT_THROW(ErrorCode::Unsupported,
               "cuda::matmul: no kernel for method '{}'; kernels exist for affine, nf4, fp4, hqq, llm_int8",
               method);
}

void check_shape(std::string_view method, std::int64_t n, std::int64_t k) {
  LOWBIT_CHECK(n > 0 && k > 0 && n % 8 == 0 && k % 8 == 0, ErrorCode::ShapeMismatch,
               "cuda::prepare: {} weight [{}, {}]: n and k must be positive multiples of 8", method, n, k);
}

}  // namespace

PreparedWeight prepare(const quant::QuantizedTensor& q, int device, Stream stream) {
  LOWBIT_CHECK(q.shape.rank() == 2, ErrorCode::ShapeMismatch,
               "cuda::prepare: {} weight of rank {}; kernels take a linear layer's [n, k]", q.method,
               q.shape.rank());
  const Family family = family_of(q.method);
  check_shape(q.method, q.shape[0], q.shape[1]);
  switch (family) {
    case Family::Affine: return detail::prepare_affine(q, device, stream);
    case Family::Nf4: return detail::prepare_nf4(q, device, stream);
    case Family::Hqq: return detail::prepare_hqq(q, device, stream);
    case Family::LlmInt8: return detail::prepare_llm_int8(q, device, stream);
  }
  LOWBIT_THROW(ErrorCode::Unsupported, "cuda::prepare: method '{}'", q.method);
}

MatmulPlan plan_matmul(std::string_view method, const quant::QuantParams& params, std::int64_t m,
                       std::int64_t n, std::int64_t k, int sm_count) {
  LOWBIT_CHECK(m > 0, ErrorCode::InvalidArgument, "cuda::plan_matmul: m = {}; need at least one row", m);
  LOWBIT_CHECK(sm_count > 0, ErrorCode::InvalidArgument, "cuda::plan_matmul: sm_count = {}", sm_count);
  check_shape(method, n, k);
  switch (family_of(method)) {
    case Family::Affine: return detail::plan_affine(params, m, n, k, sm_count);
    case Family::Nf4: return detail::plan_nf4(params, m, n, k, sm_count);
    case Family::Hqq: return detail::plan_hqq(params, m, n, k, sm_count);
    case Family::LlmInt8: return detail::plan_llm_int8(params, m, n, k, sm_count);
  }
  LOWBIT_THROW(ErrorCode::Unsupported, "cuda::plan_matmul: method '{}'", method);
}

void matmul(const PreparedWeight& w, const Tensor& x, Tensor& y, Stream stream) {
  detail::check_matmul_operands(w, x, y);
  const MatmulPlan plan = plan_matmul(w.method, w.params, x.shape()[0], w.n, w.k, detail::sm_count(w.device));
  switch (family_of(w.method)) {
    case Family::Affine: return detail::matmul_affine(w, plan, x, y, stream);
    case Family::Nf4: return detail::matmul_nf4(w, plan, x, y, stream);
    case Family::Hqq: return detail::matmul_hqq(w, plan, x, y, stream);
    case Family::LlmInt8: return detail::matmul_llm_int8(w, plan, x, y, stream);
  }
}

namespace detail {

void check_matmul_operands(const PreparedWeight& w, const Tensor& x, const Tensor& y) {
  LOWBIT_CHECK(x.dtype() == DType::F16 || x.dtype() == DType::BF16, ErrorCode::DTypeMismatch,
               "cuda::matmul: x is {}; the kernels take f16 or bf16 activations", dtype_name(x.dtype()));
  LOWBIT_CHECK(y.dtype() == x.dtype(), ErrorCode::DTypeMismatch, "cuda::matmul: y is {} but x is {}",
               dtype_name(y.dtype()), dtype_name(x.dtype()));
  LOWBIT_CHECK(x.rank() == 2 && x.shape()[1] == w.k && x.shape()[0] > 0, ErrorCode::ShapeMismatch,
               "cuda::matmul: x {} does not match the weight's k = {} (need [m, {}], m >= 1)",
               x.shape().to_string(), w.k, w.k);
  LOWBIT_CHECK(y.rank() == 2 && y.shape()[0] == x.shape()[0] && y.shape()[1] == w.n, ErrorCode::ShapeMismatch,
               "cuda::matmul: y {} must be [{}, {}]", y.shape().to_string(), x.shape()[0], w.n);
  LOWBIT_CHECK(x.is_contiguous() && y.is_contiguous(), ErrorCode::InvalidArgument,
               "cuda::matmul: x and y must be contiguous");
  LOWBIT_CHECK(x.device().is_cuda() && x.device().index == w.device && y.device().is_cuda() &&
                   y.device().index == w.device,
               ErrorCode::InvalidArgument, "cuda::matmul: x and y must be on the weight's device cuda:{}",
               w.device);
}

int sm_count(int device) {
  static std::mutex mutex;
  static std::array<int, 64> cache{};
  LOWBIT_CHECK(device >= 0 && device < static_cast<int>(cache.size()), ErrorCode::InvalidArgument,
               "cuda: device ordinal {}", device);
  std::lock_guard lock(mutex);
  if (cache[device] == 0) {
    LOWBIT_CUDA_CHECK(cudaDeviceGetAttribute(&cache[device], cudaDevAttrMultiProcessorCount, device));
  }
  return cache[device];
}

}  // namespace detail
}  // namespace lowbit::cuda
