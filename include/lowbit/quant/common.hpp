// Helpers every quantizer shares: input checks, the reference matmul, rounding, statistics.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "lowbit/core/tensor.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::quant {

// W as a contiguous fp32 host tensor (converted from f16/bf16/f64 exactly or correctly rounded).
// Throws DTypeMismatch for non-float input, Numerical naming the first NaN/Inf element (row, column)
// and its value. `operation` labels messages ("quantize_nf4").
Tensor float_weight(const Tensor& weight, std::string_view operation);
// As float_weight, and W must be 2-D.
Tensor float_matrix(const Tensor& weight, std::string_view operation);

// Round half to even, as torch.round and CUDA's __float2int_rn do (independent of the FP environment).
inline float round_half_even(float v) noexcept { return std::nearbyint(v); }

// y[m, n] = x[m, k] * w_hat[n, k]^T in fp32: the CPU reference every method's matmul uses.
// x and w_hat: float tensors of any float dtype. Throws ShapeMismatch naming both shapes.
Tensor matmul_reference(const Tensor& x, const Tensor& w_hat);

// Error statistics of an approximation `b` of `a` (same shape, any float dtypes).
struct ErrorStats {
  double relative_frobenius = 0;  // ||a - b||_F / ||a||_F (0 when both are zero)
  double snr_db = 0;              // 10 log10(||a||^2 / ||a - b||^2); +inf when equal
  double max_abs = 0;             // max |a - b|
};
ErrorStats error_stats(const Tensor& a, const Tensor& b);

}  // namespace lowbit::quant
