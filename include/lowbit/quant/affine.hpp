// Affine (zero-point) and absmax quantization of a weight matrix, per tensor, per row or per group: the
// round-to-nearest (RTN) baseline that GPTQ and AWQ are compared with, and the grid they quantize onto.
//
// W is [n, k]: n output features, k input features. A group is `group_size` consecutive elements of one
// row; where k is not a multiple of group_size the last group of each row is shorter (k - (groups-1) * G
// elements), as the GPTQ reference allows. Byte layout: docs/formats.md#affine.
//
// Components (every bit width, every grid):
//
//     codes   u8       [n, k]        one code per byte, 0 <= code <= 2^bits - 1 (unpacked; kernels repack)
//     scales  f16|f32  [n, groups]   groups = ceil(k / group_size); 1 per row; [1, 1] for one per tensor
//     zeros   u8       [n, groups]   integer zero point, 0 <= zero <= 2^bits - 1; same shape as scales
//
//     g_idx   i32      [k]           optional: the group of each column, 0 <= g_idx[c] < groups, where
//                                    GPTQ's act-order left a column's group out of order (gptq.md 2.5)
//
//     w_hat[r, c] = scales[r, g] * (codes[r, c] - zeros[r, g]),   g = c / group_size  (or g_idx[c])
//
//     codes byte:  | bit 7 ............................ bit 0 |
//                  |    0 ... 0     |  code (bits 0..bits-1) |
//
// Zeros are stored as their own integer tensor, not folded into a bias, because GPTQ and AWQ checkpoints
// keep integer zeros and we read and write those files bit-exactly; symmetric grids store 2^(bits-1)
// there as data, so one decode serves every grid.
//
// Three grids (AffineMode):
//   Asymmetric  GPTQ quant.py, sym=False: range [min(w, 0), max(w, 0)], scale = range / (2^bits - 1),
//               zero = RNE(-min / scale); code = clamp(RNE(w / scale) + zero, 0, 2^bits - 1).
//   Symmetric   GPTQ quant.py, sym=True: zero = 2^(bits-1), scale = 2 max|w| / (2^bits - 1); a group with
//               no negative value keeps min = 0 (the reference's quirk, gptq.md section 6.2).
//   Absmax      bitsandbytes int8_vectorwise_quant (int8.md section 2.1) generalised to k bits:
//               qmax = 2^(bits-1) - 1, code = RNE(fl32(w * fl32(qmax / absmax))) + 2^(bits-1), so codes
//               lie in [1, 2^bits - 1]; scale = fl32(absmax / qmax). For 8 bits, codes - 128 are exactly
//               bnb's int8 CB bytes.
// All arithmetic is fp32 in the reference's order; rounding is half to even (torch.round, rint).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string_view>

#include "lowbit/core/config.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/quant/quantized_tensor.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::quant {

enum class AffineMode : std::uint8_t {
  Asymmetric,  // GPTQ zero-point grid (the "rtn" default)
  Symmetric,   // GPTQ symmetric grid: zero fixed at 2^(bits-1), scale from max|w| over 2^bits - 1 steps
  Absmax,      // bitsandbytes absmax grid: codes zero +- (2^(bits-1) - 1), scale = absmax / (2^(bits-1) - 1)
};

inline constexpr int kAffineBits[] = {2, 3, 4, 8};

struct AffineConfig {
  int bits = 4;                   // 2, 3, 4 or 8
  std::int64_t group_size = 128;  // >= 1 elements of a row per group; -1 one group per row; 0 per tensor
  AffineMode mode = AffineMode::Asymmetric;  // the grid: Asymmetric, Symmetric or Absmax (above)
  float clip_ratio = 1.0f;  // in (0, 1]: [xmin, xmax] (or absmax) is multiplied by it before the
                            // scale is derived, as GPTQ's MSE grid search scales its candidates
  // Optional per-group clipping, as AWQ's clip search produces it: f32 [n, groups] ([1, 1] per tensor),
  // finite and >= 0. Each group of W is clamped to [-clip_max, clip_max] before its range is taken and
  // before rounding (AWQ's apply_clip), then quantized as usual. Undefined: no clipping.
  Tensor clip_max;
  DType scale_dtype = DType::F16;  // F16 (what GPTQ/AWQ checkpoints and kernels hold) or F32. Codes and
                                   // zeros are always derived from the fp32 scale, as GPTQ does before it
                                   // stores fp16 scales.
};

// The "int8" of the CLI: 8-bit, one absmax per row, fp32 scales (int8.md section 2.1).
AffineConfig affine_int8_config();
// The "rtn" of the CLI: AffineConfig's defaults (4-bit, group 128, asymmetric, fp16 scales).
AffineConfig affine_rtn_config();

// ---- group parameters and single values: shared with GPTQ, AWQ and the CUDA kernels -----------------------

// fp32 scales [n, groups] in the stored dtype (F32: as they are; F16: rounded), shared by RTN and GPTQ.
// Throws Numerical naming `operation`, the row and the group of a scale that overflows f16 or underflows
// it to 0 (use scale_dtype F32 for such weights).
Tensor affine_store_scales(const Tensor& scales32, DType dtype, std::string_view operation);

// One group's grid: w_hat = scale * (code - zero).
struct AffineGroupParams {
  float scale = 1.0f;       // step between neighbouring codes, > 0
  float multiplier = 0.0f;  // Absmax grids round w * multiplier (bnb's 127 / absmax); 0 for min-max grids,
                            // which round w / scale (GPTQ's x / scale). The two differ in the last bit.
  int zero = 0;             // 0 <= zero <= 2^bits - 1
};

// Round half to even, independent of the floating-point environment's mode on the device (rintf) and
// using the default mode on the host (nearbyint), as torch.round and __float2int_rn do.
LOWBIT_HOST_DEVICE inline float affine_round(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  return std::nearbyint(v);
#endif
}

// GPTQ quant.py Quantizer.find_params for one group, from the group's min and max (gptq.md section 2.2):
// the range is widened to contain 0; symmetric: xmax = max(|xmin|, xmax), xmin = -xmax only where
// xmin < 0; an all-zero group gets [-1, 1]; both ends are multiplied by `shrink` (1 = the reference;
// GPTQ's MSE search tries 1.00, 0.99, ...); scale = (xmax - xmin) / (2^bits - 1); zero = 2^(bits-1) if
// symmetric, else RNE(-xmin / scale). All fp32, in that order.
// One deviation: a group whose scale would be 0 or subnormal (range below 2^-126 (2^bits - 1), where
// the reference divides by zero) is treated as all-zero. The scale is +Inf only if xmax - xmin overflows
// fp32; quantize_affine reports that.
LOWBIT_HOST_DEVICE inline AffineGroupParams affine_params_minmax(float group_min, float group_max, int bits,
                                                                 bool symmetric, float shrink = 1.0f) {
  const float maxq = static_cast<float>((1 << bits) - 1);
  float xmin = fminf(group_min, 0.0f);
  float xmax = fmaxf(group_max, 0.0f);
  if (symmetric) {
    xmax = fmaxf(fabsf(xmin), xmax);
    if (xmin < 0.0f) xmin = -xmax;
  }
  if (xmin == 0.0f && xmax == 0.0f) {
    xmin = -1.0f;
    xmax = 1.0f;
  }
  xmin *= shrink;
  xmax *= shrink;
  float scale = (xmax - xmin) / maxq;
  if (!(scale >= FLT_MIN)) {  // 0 or subnormal: as an all-zero group
    xmin = -shrink;
    xmax = shrink;
    scale = (xmax - xmin) / maxq;
  }
  AffineGroupParams p;
  p.scale = scale;
  p.zero = symmetric ? (1 << (bits - 1)) : static_cast<int>(affine_round(-xmin / scale));
  return p;
}

// bitsandbytes' absmax grid for one group (int8.md section 2.1, any bits): a = absmax * shrink,
// multiplier = fl32(fl32(1 / a) * qmax), scale = fl32(a / qmax), zero = 2^(bits-1), qmax = 2^(bits-1) - 1.
// An all-zero group (or one so small that qmax / a overflows) gets a = 1: codes = zero, w_hat = 0, and
// the scale is never 0 (bnb itself stores absmax 0 there).
LOWBIT_HOST_DEVICE inline AffineGroupParams affine_params_absmax(float absmax, int bits, float shrink = 1.0f) {
  const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
  float a = fabsf(absmax) * shrink;
  // fl32(fl32(1 / a) * qmax), not qmax / a: bitsandbytes' `127.0 / row_stats` runs as reciprocal then
  // multiply, and the two differ for 8,273 fp16 absmax values (docs/methods/llm-int8.md).
  float multiplier = (1.0f / a) * qmax;
  if (!(a > 0.0f && multiplier <= FLT_MAX)) {  // a == 0, or tiny enough that qmax / a overflows
    a = 1.0f;
    multiplier = qmax;
  }
  AffineGroupParams p;
  p.scale = a / qmax;
  p.multiplier = multiplier;
  p.zero = 1 << (bits - 1);
  return p;
}

// The code of one value: clamp(RNE(w / scale) + zero, 0, 2^bits - 1) (GPTQ quant.py quantize) for min-max
// grids, clamp(RNE(w * multiplier) + zero, ...) for absmax grids. The clamp happens in fp32, so any
// finite w is safe.
LOWBIT_HOST_DEVICE inline int affine_quantize_value(float w, const AffineGroupParams& p, int bits) {
  const float maxq = static_cast<float>((1 << bits) - 1);
  const float t = p.multiplier != 0.0f ? w * p.multiplier : w / p.scale;
  const float c = affine_round(t) + static_cast<float>(p.zero);
  return static_cast<int>(fminf(fmaxf(c, 0.0f), maxq));
}

// w_hat = scale * (code - zero), the difference taken exactly in fp32 first (GPTQ's scale * (q - zero)).
LOWBIT_HOST_DEVICE constexpr float affine_dequantize_value(int code, float scale, int zero) {
  return scale * static_cast<float>(code - zero);
}

// Groups per row: ceil(k / group_size) for group_size >= 1, 1 for -1 (per row) and 0 (per tensor).
LOWBIT_HOST_DEVICE constexpr std::int64_t affine_groups_per_row(std::int64_t k, std::int64_t group_size) {
  return group_size >= 1 ? (k + group_size - 1) / group_size : 1;
}
// Elements of group g of a row (the last group may be shorter).
LOWBIT_HOST_DEVICE constexpr std::int64_t affine_group_length(std::int64_t k, std::int64_t group_size, std::int64_t g) {
  if (group_size < 1) return k;
  const std::int64_t begin = g * group_size;
  return (k - begin < group_size) ? k - begin : group_size;
}

// ---- the method's three faces ------------------------------------------------------------------------

// Round-to-nearest per group. W: f32/f16/bf16/f64 [n, k], any strides. Deterministic and independent of
// the thread count. Throws InvalidArgument naming the value and the valid set for bad bits, group_size,
// clip_ratio or scale_dtype, ShapeMismatch/InvalidArgument for a bad clip_max, DTypeMismatch for a
// non-float weight, Numerical naming the first NaN/Inf element (row, column), and Numerical when a scale
// does not fit the chosen scale dtype (fp16 overflow or underflow to 0; use scale_dtype F32).
QuantizedTensor quantize_affine(const Tensor& weight, const AffineConfig& config);

// Ground truth for every affine kernel: plain loops, fp32 [n, k] out. Validates the components (names,
// dtypes, shapes against bits and group_size, codes and zeros <= 2^bits - 1) and throws Corrupt naming
// the first that is wrong.
Tensor dequantize_affine_reference(const QuantizedTensor& q);

// W_hat in `dtype` (f32, f16 or bf16), equal bit for bit to dequantize_affine_reference(q).to(dtype):
// the fast path for writing a dense checkpoint (a table of the 2^bits outputs per group). Same validation
// and errors as the reference.
Tensor dequantize_affine(const QuantizedTensor& q, DType dtype);

// y = x W_hat^T in fp32, [m, n]; x is [m, k] of any float dtype.
Tensor matmul_affine_reference(const QuantizedTensor& q, const Tensor& x);

// For writers of formats that cannot hold a shorter last group (packed GPTQ/AWQ layouts): throws
// Unsupported "<format>: '<what>' has k = 4100, not a multiple of group_size = 128 (...)" unless every
// group is whole. Per-row and per-tensor tensors always pass.
void affine_require_whole_groups(const QuantizedTensor& q, std::string_view format);

// QuantParams <-> AffineConfig. params.variant is "<grid>:<scale dtype>" with grid "minmax" (Asymmetric
// or Symmetric by params.symmetric) or "absmax" (needs symmetric = true) and scale dtype "f16" or "f32";
// "" means "minmax:f16", and a grid alone takes its default dtype ("minmax" f16, "absmax" f32).
// clip_ratio and clip_max are not part of the params (they change how the grid was chosen, not how it is
// read) and come back as their defaults. Throws InvalidArgument for an unknown variant.
AffineConfig affine_config_from_params(const QuantParams& params);
QuantParams affine_params_from_config(const AffineConfig& config);

// Registry entry "affine".
MethodInfo affine_method_info();

}  // namespace lowbit::quant
