// LLM.int8() (bitsandbytes Int8Params / Linear8bitLt): row-wise int8 weights, and the reference matmul that
// quantizes activations per row at run time and sends outlier input columns through a 16-bit product.
//
// W is [n, k]: n output features, k input features (PyTorch Linear layout). Components, exactly as
// bitsandbytes keeps them (checkpoint keys in io/formats/bnb_int8.hpp; bytes in docs/formats.md#llm-int8):
//
//     "CB"   int8 [n, k]  row-major codes in [-127, 127]: CB[o, j] = RNE(fl32(W16[o, j] * s[o])),
//                         s[o] = fl32(fl32(1 / SCB[o]) * 127) (llm_int8_scale)
//     "SCB"  f32  [n]     SCB[o] = max_j |W16[o, j]|, the absmax of the row after rounding W to fp16
//
// W16 is the weight rounded to fp16 first (bitsandbytes quantizes only fp16; bf16/fp32 weights pass through
// fp16). One code per byte, two's complement:
//
//     bit 7     bit 0
//     | s | value |     code c stands for c * SCB[o] / 127     (-128 is never written)
//
// Dequantization multiplies by the fp32 constant 1/127 (bits 3c010204), it does not divide:
// w_hat = fl32(fl32(c * SCB[o]) * 0x1.020408p-7).
//
// Matmul (spec /work/shared/methods/llm-int8.md section 4, bitsandbytes >= 0.45 MatMul8bitLt): x is
// rounded to fp16; input columns holding any |x16| >= threshold are "outlier columns"; the other
// elements are quantized per row (int8_vectorwise_quant), multiplied with CB in exact int32 and
// dequantized to fp16; the outlier columns are multiplied in x's own dtype with the weight columns
// dequantized from CB, and added. No per-weight outlier data is stored: the columns are found per call.
// The threshold (transformers' llm_int8_threshold, 6.0 by default) is therefore a run-time parameter,
// kept in QuantParams.threshold.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>
#include <vector>

#include "lowbit/core/config.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/quant/quantized_tensor.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::quant {

// ---- constants and decode math shared with the CUDA kernels ----------------------------------------------

// Codes span [-127, 127]: 127, not 128, so negation never overflows (kInt8VectorQuant).
inline constexpr int kLlmInt8MaxCode = 127;
// fp32(1/127) = 7.874015718698502e-3, the constant of bitsandbytes' int8_vectorwise_dequant (_ops.py).
inline constexpr float kLlmInt8InvMaxCode = bits_float(0x3c010204u);
// fp32(1/127^2) = 6.200012e-05f, MM_DEQUANT_CONST of csrc/kernels.cu (bits 38820610).
inline constexpr float kLlmInt8MmDequant = bits_float(0x38820610u);
// 6.200124e-05, the constant bitsandbytes' PyTorch backend uses instead (a typo: +1.8e-5 relative).
inline constexpr float kLlmInt8MmDequantTorch = 6.200124e-05f;
// The largest k whose int32 accumulation cannot overflow: k * 128 * 128 <= 2^31 - 1.
inline constexpr std::int64_t kLlmInt8MaxK = 131071;

// The per-row scale 127 / absmax as bitsandbytes computes it: fl32(fl32(1 / absmax) * 127). The PyTorch
// backend writes `127.0 / row_stats`, which PyTorch evaluates as `row_stats.reciprocal() * 127.0` (two
// roundings, not an IEEE division: the results differ for about a quarter of all fp16 absmax values, and
// a code differs where the product lands next to a .5); the CUDA kernel's __fdividef(127, a) is PTX
// div.approx.f32, defined as a * (1/b) with an approximate reciprocal. Inf for absmax 0.
LOWBIT_HOST_DEVICE constexpr float llm_int8_scale(float absmax) noexcept {
  const float reciprocal = 1.0f / absmax;
  return reciprocal * static_cast<float>(kLlmInt8MaxCode);
}

// RNE(fl32(v * scale)) as an integer, as CUDA's __float2int_rn(v * scale) and torch.round give it.
// |v * scale| must stay below 2^22 (always true for codes: |v| <= absmax). A NaN product (0 * Inf from an
// all-zero row, where scale = 127 / 0) gives 0, as __float2int_rn does and bitsandbytes' CPU path writes.
LOWBIT_HOST_DEVICE constexpr int llm_int8_quantize_value(float v, float scale) noexcept {
  const float p = v * scale;
  if (!(p == p)) return 0;
  // 1.5 * 2^23: adding it pushes the fraction bits out in the current rounding mode (nearest, ties to
  // even), exactly the RNE of p for |p| < 2^22; subtracting it back is exact.
  constexpr float kMagic = 12582912.0f;
  return static_cast<int>((p + kMagic) - kMagic);
}

// w_hat = fl32(fl32(code * absmax) * fl32(1/127)): int8_vectorwise_dequant's two fp32 products.
LOWBIT_HOST_DEVICE constexpr float llm_int8_dequantize_value(int code, float absmax) noexcept {
  const float p = static_cast<float>(code) * absmax;
  return p * kLlmInt8InvMaxCode;
}

// The CUDA epilogue kdequant_mm_int32_fp16 before its fp16 rounding:
// fmaf(fl32(fl32(float(c) * sca) * scb), 1/16129, bias), float(c) rounding to nearest even.
LOWBIT_HOST_DEVICE inline float llm_int8_dequantize_mm(std::int32_t c, float sca, float scb, float bias) noexcept {
  const float p = static_cast<float>(c) * sca * scb;
#if defined(__CUDA_ARCH__)
  return fmaf(p, kLlmInt8MmDequant, bias);
#else
  return std::fma(p, kLlmInt8MmDequant, bias);
#endif
}

// The PyTorch backend's epilogue (backends/default/ops.py int8_mm_dequant), all fp32, no bias:
// fl32(fl32(float(c) * fl32(sca * scb)) * 6.200124e-05).
LOWBIT_HOST_DEVICE constexpr float llm_int8_dequantize_mm_torch(std::int32_t c, float sca, float scb) noexcept {
  const float stats = sca * scb;
  const float p = static_cast<float>(c) * stats;
  return p * kLlmInt8MmDequantTorch;
}

// ---- weight quantization -----------------------------------------------------------------------------------

struct LlmInt8Config {
  // Activation outlier threshold used at matmul time: a column is an outlier when any |x16| >= threshold.
  // >= 0 and finite; 0 disables the decomposition (pure int8). 6.0 is transformers' llm_int8_threshold
  // default (bitsandbytes' own Linear8bitLt defaults to 0.0). Quantizing the weight does not use it.
  double threshold = 6.0;
};

// Int8Params._quantize: W (f32/f16/bf16/f64, [n, k]) rounded to fp16, then per row absmax int8, on all
// threads (deterministic: rows are independent). An all-zero row gets SCB 0 and codes 0.
// Throws ShapeMismatch (not 2-D), DTypeMismatch (not a float dtype), InvalidArgument (threshold < 0 or not
// finite), Numerical naming the first NaN/Inf element, or an element beyond the fp16 range (|w| > 65504
// rounds to Inf, which bitsandbytes would store as SCB = Inf and NaN codes).
QuantizedTensor quantize_llm_int8(const Tensor& weight, const LlmInt8Config& config = {});

// fp32 [n, k] w_hat = llm_int8_dequantize_value(CB, SCB), plain loops: the ground truth for the kernels.
// Throws InvalidArgument for another method, Corrupt for components of the wrong dtype or shape.
Tensor dequantize_llm_int8_reference(const QuantizedTensor& q);

// Throws InvalidArgument unless q.method is "llm_int8", Corrupt unless q.shape is [n, k], "CB" is I8 [n, k]
// and "SCB" is F32 [n]. `operation` labels the message. Every function taking a QuantizedTensor calls it.
void check_llm_int8(const QuantizedTensor& q, std::string_view operation);

// ---- activations, int8 GEMM and the reference matmul --------------------------------------------------------

// Per-row quantization of fp16 activations with outlier extraction (int8_vectorwise_quant(A, threshold)).
struct LlmInt8Activations {
  std::vector<std::int64_t> outlier_cols;  // ascending; empty when threshold is 0 or nothing reaches it
  Tensor ca;                               // I8 [m, k]: 0 at outlier elements, and (m > 1) in whole outlier columns
  Tensor sca;                              // F32 [m]: absmax of each row over its non-outlier elements
};

// x16: F16 [m, k] (contiguous or not). threshold: as LlmInt8Config. Outliers are the elements with
// |x16| >= fp16(threshold), the comparison PyTorch makes between an fp16 tensor and a Python float.
// Row stats include inlier elements that sit in outlier columns (those are zeroed only afterwards).
// Throws DTypeMismatch (not F16), ShapeMismatch (not 2-D), InvalidArgument (bad threshold), Numerical for
// a NaN, or an Inf that is not an outlier (threshold 0: the reference would give a NaN row).
LlmInt8Activations quantize_llm_int8_activations(const Tensor& x16, double threshold);

// C = A B^T with exact int32 accumulation: a I8 [m, k], b I8 [n, k] -> I32 [m, n], on all threads.
// Throws DTypeMismatch, ShapeMismatch, or InvalidArgument for k > kLlmInt8MaxK (int32 could overflow).
Tensor llm_int8_gemm(const Tensor& a, const Tensor& b);

// Whose dequantization arithmetic the reference matmul reproduces (spec section 4, last paragraph).
enum class LlmInt8Backend : std::uint8_t {
  // bitsandbytes' CUDA kernels, the reference: int8 part = fp16(fmaf((C * SCA) * SCB, 1/16129, bias16)),
  // a non-fp16 bias added to that fp16 result in fp32 and rounded to fp16 again, then cast to x's dtype.
  Cuda,
  // bitsandbytes' PyTorch backend (what runs on a CPU, bnb >= 0.45): int8 part =
  // (C * (SCA * SCB)) * 6.200124e-05 + bias in fp32, cast straight to x's dtype (no fp16 step). Used to
  // check our pipeline bit for bit against outputs bitsandbytes produced on a CPU.
  Torch,
};

struct LlmInt8MatmulOptions {
  LlmInt8Backend backend = LlmInt8Backend::Cuda;
  // Optional [n] bias of any float dtype. As Linear8bitLt.forward does, it is first cast to x's dtype.
  Tensor bias;
};

// Every intermediate of one reference matmul, for tests and for checking kernels step by step.
struct LlmInt8MatmulTrace {
  Tensor x16;                      // F16 [m, k]: x flattened to 2-D and rounded to fp16
  LlmInt8Activations activations;  // outlier columns, CA, SCA from x16
  Tensor c;                        // I32 [m, n]: CA CB^T
  Tensor int8_out;                 // [m, n] in x's dtype: the dequantized int8 part, bias included
  Tensor sub_a;                    // [m, |cols|] in x's dtype: x's outlier columns, unrounded
  Tensor sub_b;                    // [n, |cols|] in x's dtype: dequantize(CB)[:, cols] cast to it
  Tensor y;                        // [m, n] in x's dtype: int8_out + sub_a sub_b^T
};

// x: F16, BF16 or F32 of rank 1..4 with last dimension k; leading dimensions are flattened to m rows.
// Steps (spec section 4): x16 = fp16(x); activations = quantize_llm_int8_activations(x16, q.params.threshold);
// c = llm_int8_gemm(CA, CB); int8_out per `options.backend`; if outlier columns exist,
// y = round_to_x_dtype(fl32(sum_j sub_a[i, j] sub_b[o, j] + int8_out[i, o])), the one rounding of an
// addmm, the sum in fp32 in ascending j (Cuda: each product rounded, as cuBLAS did; Torch: fused
// multiply-adds, as MKL did), else y = int8_out. A result beyond the fp16 range becomes Inf, as in the
// reference. Throws DTypeMismatch, ShapeMismatch (k or bias disagree), Numerical (NaN/Inf in x, or an
// element that overflows fp16 with threshold 0), and what the components' checks throw.
LlmInt8MatmulTrace trace_llm_int8_matmul(const QuantizedTensor& q, const Tensor& x,
                                         const LlmInt8MatmulOptions& options = {});

// y = trace_llm_int8_matmul(q, x, options).y as F32 (exact: every value is one of x's dtype), shape
// x.shape[:-1] + [n].
Tensor matmul_llm_int8_reference(const QuantizedTensor& q, const Tensor& x, const LlmInt8MatmulOptions& options = {});

// Registry entry "llm_int8": defaults bits 8, group_size -1 (one scale per row), symmetric, threshold 6.0;
// quantize accepts QuantParams with bits 8 (or 0), group_size -1 (or 0) and a threshold >= 0.
MethodInfo llm_int8_method_info();

}  // namespace lowbit::quant
