#include "lowbit/quant/common.hpp"

#include <Eigen/Core>
#include <limits>

#include "lowbit/core/parallel.hpp"

namespace lowbit::quant {

Tensor float_weight(const Tensor& weight, std::string_view operation) {
  LOWBIT_CHECK(weight.defined(), ErrorCode::InvalidArgument, "{}: the weight is undefined", operation);
  LOWBIT_CHECK(weight.dtype() == DType::F32 || weight.dtype() == DType::F16 || weight.dtype() == DType::BF16 ||
                   weight.dtype() == DType::F64,
               ErrorCode::DTypeMismatch, "{}: weight is {}; expected f32, f16, bf16 or f64", operation,
               weight.describe());
  Tensor w = weight.to(DType::F32);  // contiguous; a copy unless already contiguous f32
  const float* p = w.data<float>();
  const std::int64_t n = w.numel();
  const std::int64_t cols = w.rank() >= 1 ? w.size(-1) : 1;
  for (std::int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(p[i])) [[unlikely]] {
      LOWBIT_THROW(ErrorCode::Numerical, "{}: weight {} has {} at element {} (row {}, column {})", operation,
                   weight.describe(), p[i], i, cols ? i / cols : 0, cols ? i % cols : 0);
    }
  }
  return w;
}

Tensor float_matrix(const Tensor& weight, std::string_view operation) {
  LOWBIT_CHECK(weight.defined() && weight.rank() == 2, ErrorCode::ShapeMismatch,
               "{}: expected a 2-D weight [n, k], got {}", operation, weight.describe());
  return float_weight(weight, operation);
}

Tensor matmul_reference(const Tensor& x, const Tensor& w_hat) {
  LOWBIT_CHECK(x.rank() == 2 && w_hat.rank() == 2 && x.size(1) == w_hat.size(1), ErrorCode::ShapeMismatch,
               "matmul_reference: x {} and W_hat {} do not agree (need x [m, k], W_hat [n, k])", x.describe(),
               w_hat.describe());
  const Tensor xf = x.to(DType::F32);
  const Tensor wf = w_hat.to(DType::F32);
  const std::int64_t m = x.size(0), n = w_hat.size(0), k = x.size(1);
  Tensor y = Tensor::empty({m, n}, DType::F32);
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const RowMajor> X(xf.data<float>(), m, k);
  const Eigen::Map<const RowMajor> W(wf.data<float>(), n, k);
  Eigen::Map<RowMajor> Y(y.data<float>(), m, n);
  // Columns of y in parallel: each output element is one dot product, so the result does not depend on
  // the thread count.
  parallel_for(n, 64, [&](std::int64_t b, std::int64_t e) {
    Y.middleCols(b, e - b).noalias() = X * W.middleRows(b, e - b).transpose();
  });
  return y;
}

ErrorStats error_stats(const Tensor& a, const Tensor& b) {
  LOWBIT_CHECK(a.shape() == b.shape(), ErrorCode::ShapeMismatch, "error_stats: {} vs {}", a.describe(), b.describe());
  const Tensor af = a.to(DType::F32);
  const Tensor bf = b.to(DType::F32);
  const float* pa = af.data<float>();
  const float* pb = bf.data<float>();
  double signal = 0, noise = 0, max_abs = 0;
  for (std::int64_t i = 0; i < af.numel(); ++i) {
    const double d = static_cast<double>(pa[i]) - static_cast<double>(pb[i]);
    signal += static_cast<double>(pa[i]) * pa[i];
    noise += d * d;
    max_abs = std::max(max_abs, std::fabs(d));
  }
  ErrorStats s;
  s.relative_frobenius = signal > 0 ? std::sqrt(noise / signal) : (noise > 0 ? std::numeric_limits<double>::infinity() : 0);
  s.snr_db = noise > 0 ? 10.0 * std::log10(signal / noise) : std::numeric_limits<double>::infinity();
  s.max_abs = max_abs;
  return s;
}

}  // namespace lowbit::quant
