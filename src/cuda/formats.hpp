// The per-format halves of cuda/matmul.hpp: prepare(), plan_matmul() and matmul() dispatch on the method to
// these. Each format defines its three functions in its own src/cuda/<format>_*.cpp, beside its kernels in
// kernels/<format>_*.cu.
#pragma once

#include <string_view>

#include "lowbit/cuda/matmul.hpp"

namespace lowbit::cuda::detail {

// "affine": RTN, GPTQ (g_idx, v1/v2 zeros as read), AWQ; 2/3/4/8 bits.
PreparedWeight prepare_affine(const quant::QuantizedTensor& q, int device, Stream stream);
MatmulPlan plan_affine(const quant::QuantParams& params, std::int64_t m, std::int64_t n, std::int64_t k,
                       int sm_count);
void matmul_affine(const PreparedWeight& w, const MatmulPlan& plan, const Tensor& x, Tensor& y, Stream stream);

// "nf4" and "fp4", with or without double quantization.
PreparedWeight prepare_nf4(const quant::QuantizedTensor& q, int device, Stream stream);
MatmulPlan plan_nf4(const quant::QuantParams& params, std::int64_t m, std::int64_t n, std::int64_t k,
                    int sm_count);
void matmul_nf4(const PreparedWeight& w, const MatmulPlan& plan, const Tensor& x, Tensor& y, Stream stream);

// "hqq".
PreparedWeight prepare_hqq(const quant::QuantizedTensor& q, int device, Stream stream);
MatmulPlan plan_hqq(const quant::QuantParams& params, std::int64_t m, std::int64_t n, std::int64_t k,
                    int sm_count);
void matmul_hqq(const PreparedWeight& w, const MatmulPlan& plan, const Tensor& x, Tensor& y, Stream stream);

// "llm_int8".
PreparedWeight prepare_llm_int8(const quant::QuantizedTensor& q, int device, Stream stream);
MatmulPlan plan_llm_int8(const quant::QuantParams& params, std::int64_t m, std::int64_t n, std::int64_t k,
                         int sm_count);
void matmul_llm_int8(const PreparedWeight& w, const MatmulPlan& plan, const Tensor& x, Tensor& y,
                     Stream stream);

// Checks shared by every format's matmul(): x [m, k] F16|BF16 contiguous on w.device, y [m, n] of x's dtype.
void check_matmul_operands(const PreparedWeight& w, const Tensor& x, const Tensor& y);
// SMs of `device` (cached per device).
int sm_count(int device);

}  // namespace lowbit::cuda::detail
