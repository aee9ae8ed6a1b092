// HQQ, Half-Quadratic Quantization (mobiusml/hqq, hqq/core/quantize.py + optimize.py + bitpack.py):
// calibration-free asymmetric k-bit quantization whose per-group zero points are refined by a
// half-quadratic / proximal solver, stored exactly as hqq's Quantizer and HQQLinear store them, so a
// QuantizedTensor of method "hqq" maps 1:1 onto an HQQLinear state_dict (io/formats/hqq.hpp).
//
// Grouping (spec section 2; the part most easily got wrong). W [n, k] is flattened row-major and
// reshaped to the code matrix G [R, C]:
//   axis = 1:  G = reshape(W, [n*k/g, g]); a group is a ROW of G: g consecutive elements of W's flat
//              order (a run inside one weight row when k % g == 0). scale, zero: [R, 1].
//   axis = 0:  G = reshape(W, [g, n*k/g]); a group is a COLUMN c of G: the flat elements
//              {c, c + C, ..., c + (g-1)C}, a strided set, a column of W only when g == n. scale, zero:
//              [1, C].
// group_size = -1 (hqq's None) is one group per row of W (axis 1, g = k) or per column (axis 0, g = n).
//
// Quantizer, with s the INVERSE scale (codes per unit) and z the zero in code units (a real number):
//     code = clamp(round_half_even(w * s + z), 0, qmax),   qmax = 2^bits - 1
//     w_hat = (code - z) * scale,                          scale = 1 / s (stored)
// s = qmax / (max - min) per group (s = 1 where max - min <= 1e-4, then min(s, 2e4)); z = -min * s,
// optionally rounded; the solver then updates z only (never s), see HqqConfig.
//
// Components (hqq's own names, which are also the state_dict keys):
//   W_q    packed codes of G, split along dim 0 into equal slabs; slab j sits at a fixed bit position:
//            8bit_u8  (bits 8, 6, 5)  u8  [R, C]            the code itself
//            4bit_u8  (bits 4)        u8  [R/2, C]          bits 7..4: G[r, c], bits 3..0: G[r + R/2, c]
//            3bit_32  (bits 3)        i32 [ceil(R/10), C]   rows padded with zeros to R' = 10*ceil(R/10);
//                                                           bits 29-3j..27-3j: G[r + j*R'/10, c], j = 0..9;
//                                                           bits 31..30 zero
//            2bit_u8  (bits 2)        u8  [R/4, C]          bits 7-2j..6-2j: G[r + j*R/4, c], j = 0..3
//            1bit_u8  (bits 1)        u8  [R/8, C]          bit 7-j: G[r + j*R/8, c], j = 0..7
//          i.e. one word holds codes from rows a slab apart (HALF A TENSOR away for 4 bit), never
//          neighbours:
//              4bit_u8 byte:   | G[r, c] (7..4) | G[r + R/2, c] (3..0) |
//              3bit_32 word:   | 0 0 | j=0 (29..27) | j=1 (26..24) | ... | j=9 (2..0) |
//   scale  compute dtype (f16 by default, as HQQLinear; f32 or bf16), [R, 1] (axis 1) / [1, C] (axis 0)
//   zero   compute dtype, same shape; a real number in code units (not rounded unless round_zero)
// Byte layout and checkpoint keys: docs/formats.md#hqq. R must be a multiple of 2 / 4 / 8 for 4 / 2 /
// 1 bits (hqq does not check and fails or silently writes an empty tensor; we refuse).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "lowbit/core/config.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/quant/quantized_tensor.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::quant {

// ---- packing: decode math shared with kernels -----------------------------------------------------------

enum class HqqPacking : std::uint8_t { Bit8U8, Bit4U8, Bit3I32, Bit2U8, Bit1U8 };

inline constexpr HqqPacking kAllHqqPackings[] = {HqqPacking::Bit8U8, HqqPacking::Bit4U8, HqqPacking::Bit3I32,
                                                 HqqPacking::Bit2U8, HqqPacking::Bit1U8};

// Bits one code occupies in a packed word: 8, 4, 3, 2, 1.
LOWBIT_HOST_DEVICE constexpr int hqq_packing_bits(HqqPacking p) noexcept {
  switch (p) {
    case HqqPacking::Bit8U8: return 8;
    case HqqPacking::Bit4U8: return 4;
    case HqqPacking::Bit3I32: return 3;
    case HqqPacking::Bit2U8: return 2;
    case HqqPacking::Bit1U8: return 1;
  }
  return 0;
}

// Codes per packed word (= slabs the code matrix is split into): 1, 2, 10, 4, 8.
LOWBIT_HOST_DEVICE constexpr int hqq_codes_per_word(HqqPacking p) noexcept {
  return p == HqqPacking::Bit3I32 ? 10 : 8 / hqq_packing_bits(p);
}

// Lowest bit of slab j's code inside a word: slab 0 sits highest, (S - 1 - j) * bits.
LOWBIT_HOST_DEVICE constexpr int hqq_code_shift(HqqPacking p, int j) noexcept {
  return (hqq_codes_per_word(p) - 1 - j) * hqq_packing_bits(p);
}

// The code of slab j in a packed word (a u8 byte widened, or the i32 word's bits).
LOWBIT_HOST_DEVICE constexpr int hqq_code_at(std::uint32_t word, HqqPacking p, int j) noexcept {
  return static_cast<int>((word >> hqq_code_shift(p, j)) & ((1u << hqq_packing_bits(p)) - 1u));
}

// w_hat = (code - zero) * scale, the dequantizer in fp32 (hqq computes it in the compute dtype).
LOWBIT_HOST_DEVICE constexpr float hqq_dequant_value(int code, float zero, float scale) noexcept {
  return (static_cast<float>(code) - zero) * scale;
}

// Packing hqq uses for `bits` (Quantizer.bit_to_packing). Bits must be one of kHqqBits.
constexpr HqqPacking hqq_packing_for_bits(int bits) noexcept {
  switch (bits) {
    case 4: return HqqPacking::Bit4U8;
    case 3: return HqqPacking::Bit3I32;
    case 2: return HqqPacking::Bit2U8;
    case 1: return HqqPacking::Bit1U8;
    default: return HqqPacking::Bit8U8;  // 8, 6, 5
  }
}

// The bit widths we quantize to (hqq's SUPPORTED_BITS but 1.58, which QuantParams cannot carry).
inline constexpr int kHqqBits[] = {8, 6, 5, 4, 3, 2, 1};

// "8bit_u8", "4bit_u8", "3bit_32", "2bit_u8", "1bit_u8": the `packing` string hqq stores.
std::string_view hqq_packing_name(HqqPacking p) noexcept;
std::optional<HqqPacking> hqq_packing_from_name(std::string_view name) noexcept;
// U8, or I32 for 3bit_32.
DType hqq_packing_dtype(HqqPacking p) noexcept;

// Packs a code matrix u8 [R, C] (values below 2^hqq_packing_bits) into hqq's layout (see above).
// Throws ShapeMismatch when R is not a multiple of the slab count (3 bit pads instead), InvalidArgument
// naming the first code that does not fit.
Tensor hqq_pack(const Tensor& codes, HqqPacking packing);
// The inverse: packed [P, C] -> u8 [rows, C], the first `rows` of the S*P unpacked rows (rows = -1: all,
// padding included, as hqq's unpackers return them).
Tensor hqq_unpack(const Tensor& packed, HqqPacking packing, std::int64_t rows = -1);

// ---- grouping ---------------------------------------------------------------------------------------------

struct HqqGrouping {
  std::int64_t group_size = 0;  // g, resolved (-1 replaced)
  int axis = 1;
  std::int64_t rows = 0;        // R of the code matrix G [R, C]
  std::int64_t cols = 0;        // C
  std::int64_t groups() const noexcept { return axis == 1 ? rows : cols; }
  // Shape of scale and zero: [R, 1] or [1, C].
  Shape meta_shape() const { return axis == 1 ? Shape{rows, 1} : Shape{1, cols}; }
};

// G's shape for a weight [n, k]. Throws InvalidArgument for axis not 0/1, group_size not > 0 or -1, or
// n*k not a multiple of group_size (naming the remainder). `operation` labels messages.
HqqGrouping hqq_grouping(const Shape& weight_shape, std::int64_t group_size, int axis, std::string_view operation);

// ---- quantize -----------------------------------------------------------------------------------------------

// Mirrors hqq's BaseQuantizeConfig (weight_quant_params) and the defaults of the default solver,
// optimize_weights_proximal_legacy, of hqq 0.2.8.post1 (main).
struct HqqConfig {
  int bits = 4;                   // nbits: 8, 6, 5, 4, 3, 2 or 1 (hqq's 1.58 is not supported)
  std::int64_t group_size = 64;   // g > 0 dividing n*k, or -1 (hqq's None): one group per row (axis 1)
                                  // or per column (axis 0). BaseQuantizeConfig also wants g % 8 == 0;
                                  // Quantizer.quantize does not, and neither do we.
  int axis = 1;                   // 0 or 1 (BaseQuantizeConfig's default; Quantizer.quantize's is 0)
  bool optimize = true;           // run the solver; false: round to nearest with the min-max s and z
  std::optional<bool> round_zero; // round the initial zero half to even; unset: bits == 4, as
                                  // BaseQuantizeConfig does

  // The solver (optimize_weights_proximal_legacy). Each iteration, with z the current zero:
  //   codes = clamp(round(W s + z)), W_r = (codes - z) / s, err = mean |W - W_r| over the WHOLE tensor,
  //   W_e = shrink_p(W - W_r, beta) = sign * max(0, |x| - |x|^(p-1) / beta),
  //   z <- group mean of (codes - (W - W_e) s);
  //   early stop: if err is not below the best so far, stop (z has already been updated once more).
  double lp_norm = 0.7;           // p, in (0, 1]
  double beta = 10.0;             // > 0
  double kappa = 1.01;            // > 1; multiplies beta after each iteration only with beta_schedule
  int iters = 20;                 // >= 1
  bool early_stop = true;         // the reference always stops early; false runs all `iters`
  bool beta_schedule = false;     // hqq <= 0.2.6 multiplied beta by kappa every iteration; 0.2.7+
                                  // (commit a566c78) does not
  // Precision the solver runs in, as the reference picks it by device: F32 is its CPU path (the
  // golden vectors), F16 its CUDA path (transformers checkpoints), each op rounded to fp16 here.
  DType solver_dtype = DType::F32;
  // dtype of the stored scale and zero: HQQLinear's compute_dtype (F16 default; F32 keeps the solver's
  // values exactly, as Quantizer.quantize returns them; BF16).
  DType compute_dtype = DType::F16;
};

// What the solver did, for tests and diagnostics.
struct HqqSolverTrace {
  // err = mean |W - W_r| at the start of each iteration (the value the reference's verbose prints and
  // its early stop compares), in the solver dtype, widened to fp32. Entry 0 is the min-max zero's error.
  std::vector<float> objective;
  bool stopped_early = false;     // the last entry was not below the best before it
  // The same error for the zero finally returned (one update past the last measured one; the reference
  // never measures it; with optimize off, the min-max zero's), in fp32 arithmetic.
  float final_objective = 0;
};

// Throws InvalidArgument for a bad config (naming the field, the value and the valid ones), for n*k not
// a multiple of group_size, or for a code matrix whose R the packing cannot split (4/2/1 bit);
// DTypeMismatch / ShapeMismatch for a non-float or non-2-D weight; Numerical naming the first NaN/Inf.
// Constant (e.g. all-zero) groups get s = 1, z = -min: codes 0, exact reconstruction, no NaN.
// Deterministic: the result does not depend on the thread count.
QuantizedTensor quantize_hqq(const Tensor& weight, const HqqConfig& config);
QuantizedTensor quantize_hqq(const Tensor& weight, const HqqConfig& config, HqqSolverTrace* trace);

// The code matrix G [R, C] (u8, padding rows dropped) of a QuantizedTensor of method "hqq".
Tensor hqq_codes(const QuantizedTensor& q);

// Ground truth for every HQQ kernel: plain loops, w_hat = (code - zero) * scale in fp32, fp32 [n, k] out.
// Throws InvalidArgument / ShapeMismatch / DTypeMismatch naming the component that contradicts params.
Tensor dequantize_hqq_reference(const QuantizedTensor& q);
// hqq's own Quantizer.dequantize arithmetic: (code - zero) and (. * scale) each rounded to the compute
// dtype (scale's dtype), result [n, k] in that dtype: bit-identical to hqq on CPU. Multi-threaded.
Tensor dequantize_hqq(const QuantizedTensor& q);
// y = x W_hat^T (fp32 [m, n]) with W_hat from dequantize_hqq_reference.
Tensor matmul_hqq_reference(const QuantizedTensor& q, const Tensor& x);

// Registry entry "hqq": defaults bits 4, group_size 64, axis 1 (params.axis and params.group_size = -1
// map onto the config; other QuantParams fields must keep their defaults).
MethodInfo hqq_method_info();

}  // namespace lowbit::quant
