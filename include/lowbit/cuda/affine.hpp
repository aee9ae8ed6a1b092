// The affine family's CUDA side (RTN, GPTQ with or without act-order, AWQ; 2/3/4/8 bits): the repacked
// layout the kernels read, its CPU decode, the bit tricks the kernels use to decode it, and the table of
// compiled kernels. prepare()/matmul() in cuda/matmul.hpp are the way in; this header is what they, the
// tests and the benchmark share. Plain C++: no CUDA syntax.
//
// Repacked layout (docs/kernels.md#affine). The affine QuantizedTensor (quant/affine.hpp) keeps one code a
// byte; prepare() turns it into
//
//     qweight  u32      [n, k_pad / 32 * bits]   k_pad = round_up(k, 64); row r's "pack" p (columns
//                                                 32p .. 32p + 31, after act-order's sort) is the `bits`
//                                                 words at qweight[r, p * bits ..]; padded columns hold 0
//     scales   f16|f32  [n, groups]              the QuantizedTensor's dtype, per-tensor expanded to rows
//     zeros    u8       [n, groups]
//     perm     i32      [k]                      act-order only: sorted column j is original column perm[j]
//
// with groups = ceil(k / group) for the effective group size `group` (a multiple of 32: the QuantParams'
// group_size, k for per-row and per-tensor, or after act-order's sort the length of its equal runs).
// Bits streamed per weight at m = 1: bits + (16 or 32 + 8) / group, e.g. 4-bit g128 f16: 4.1875.
//
// Inside a pack the 32 codes sit so that one shift + one mask + one OR (a single LOP3) yields two 16-bit
// floats at once, magic + code for magic = 1024 (fp16 0x6400) or 128 (bf16 0x4300), for codes at pair
// positions (2i, 2i + 1):
//
//   4-bit  word w = i / 4 holds columns 8w .. 8w+7: column 8w + 2j at bits 4j .. 4j+3, column 8w + 2j + 1 at
//          bits 16 + 4j .. 16 + 4j + 3 (j < 4); pair i: (word >> 4 (i % 4)) & 0x000f000f
//   2-bit  word w = i / 8 holds columns 16w .. 16w+15: column 16w + 2j at bits 2j, + 1 at bits 16 + 2j
//   3-bit  words 0, 1, 2 hold columns 0..9, 10..19, 20..29 as 2-bit does with 3-bit fields (pair j of the
//          word at bits 3j and 16 + 3j, j < 5); columns 30 and 31 are spread over bits 15 (column 30) and 31
//          (column 31) of the three words, word b holding the code's bit b
//   8-bit  word w holds columns 4w .. 4w+3, byte j = column 4w + j (plain order); a PRMT with 0x64 gives the
//          fp16 pairs, for bf16 a PRMT with 0x4B gives fp32 2^23 + code
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "lowbit/core/config.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/cuda/matmul.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::cuda {

// ---- the compiled kernels (STYLE 5) ------------------------------------------------------------------
//
// One entry per template instance. The group size is a run-time value (a multiply-high division per
// pack), so it is not part of the table. `tile`: Gemv kM (the largest m the instance takes: m is rounded
// up to 1, 2, 4 or 8), TensorCore kBM (rows of x per block: 16 for m <= 16, else 64), Dequantize 0.
// Regimes (detail::plan_weight_only): 4/8 bits Gemv m <= 2, TensorCore 3..64, Dequantize above;
// 2- and 3-bit weights have no tensor-core instance: Gemv m <= 8, Dequantize above.
struct AffineKernel {
  int bits = 0;
  DType dtype = DType::F16;
  Regime regime = Regime::Gemv;
  int tile = 0;
  friend constexpr bool operator==(const AffineKernel&, const AffineKernel&) = default;
};

inline constexpr AffineKernel kAffineBuilt[] = {
    // GEMV: bits {4, 8} x {f16, bf16} x kM {1, 2} (m <= 2; the tensor-core kernel is faster above);
    // bits {2, 3} x {f16, bf16} x kM {1, 2, 4, 8} (m <= 8; no tensor-core instance)
    {4, DType::F16, Regime::Gemv, 1},  {4, DType::F16, Regime::Gemv, 2},  {4, DType::BF16, Regime::Gemv, 1},
    {4, DType::BF16, Regime::Gemv, 2}, {8, DType::F16, Regime::Gemv, 1},  {8, DType::F16, Regime::Gemv, 2},
    {8, DType::BF16, Regime::Gemv, 1}, {8, DType::BF16, Regime::Gemv, 2}, {3, DType::F16, Regime::Gemv, 1},
    {3, DType::F16, Regime::Gemv, 2},  {3, DType::F16, Regime::Gemv, 4},  {3, DType::F16, Regime::Gemv, 8},
    {3, DType::BF16, Regime::Gemv, 1}, {3, DType::BF16, Regime::Gemv, 2}, {3, DType::BF16, Regime::Gemv, 4},
    {3, DType::BF16, Regime::Gemv, 8}, {2, DType::F16, Regime::Gemv, 1},  {2, DType::F16, Regime::Gemv, 2},
    {2, DType::F16, Regime::Gemv, 4},  {2, DType::F16, Regime::Gemv, 8},  {2, DType::BF16, Regime::Gemv, 1},
    {2, DType::BF16, Regime::Gemv, 2}, {2, DType::BF16, Regime::Gemv, 4}, {2, DType::BF16, Regime::Gemv, 8},
    // tensor cores, 3 <= m <= 64: bits {4, 8} x {f16, bf16} x kBM {16, 64}
    {4, DType::F16, Regime::TensorCore, 16},  {4, DType::F16, Regime::TensorCore, 64},
    {4, DType::BF16, Regime::TensorCore, 16}, {4, DType::BF16, Regime::TensorCore, 64},
    {8, DType::F16, Regime::TensorCore, 16},  {8, DType::F16, Regime::TensorCore, 64},
    {8, DType::BF16, Regime::TensorCore, 16}, {8, DType::BF16, Regime::TensorCore, 64},
    // dequantize + cuBLAS, m > 64 (and m > 8 at 2 and 3 bits): bits {2, 3, 4, 8} x {f16, bf16}
    {2, DType::F16, Regime::Dequantize, 0}, {2, DType::BF16, Regime::Dequantize, 0},
    {3, DType::F16, Regime::Dequantize, 0}, {3, DType::BF16, Regime::Dequantize, 0},
    {4, DType::F16, Regime::Dequantize, 0}, {4, DType::BF16, Regime::Dequantize, 0},
    {8, DType::F16, Regime::Dequantize, 0}, {8, DType::BF16, Regime::Dequantize, 0},
};
inline constexpr int kAffineBuiltCount = static_cast<int>(sizeof(kAffineBuilt) / sizeof(kAffineBuilt[0]));

// The table entry matmul() launches for `plan` (from plan_matmul("affine", ...)), as an index into
// kAffineBuilt, or -1 when none is built. The kernels' dispatch uses the same function.
constexpr int affine_kernel_index(int bits, DType dtype, const MatmulPlan& plan) {
  const int tile = plan.regime == Regime::Dequantize ? 0 : plan.m_tile;
  for (int i = 0; i < kAffineBuiltCount; ++i) {
    const AffineKernel& e = kAffineBuilt[i];
    if (e.bits == bits && e.dtype == dtype && e.regime == plan.regime && e.tile == tile) return i;
  }
  return -1;
}
// "gemv: 4-bit f16 m<=1, ..." for error messages.
std::string describe_affine_built();

// ---- decode tricks shared by the kernels and the CPU tests -------------------------------------------

// n / d for 0 <= n < 2^31 and 1 <= d < 2^31 by one multiply-high, add and shift (the group of a column
// without a division in the inner loop): q = (umulhi(n, mul) + n) >> shift.
struct FastDivU32 {
  std::uint32_t mul = 0;
  std::uint32_t shift = 0;
  static FastDivU32 make(std::uint32_t d) {
    std::uint32_t l = 0;
    while (l < 32 && (std::uint64_t{1} << l) < d) ++l;
    FastDivU32 f;
    f.shift = l;
    f.mul = static_cast<std::uint32_t>(((std::uint64_t{1} << 32) * ((std::uint64_t{1} << l) - d)) / d + 1);
    return f;
  }
  LOWBIT_HOST_DEVICE std::uint32_t operator()(std::uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const std::uint32_t hi = __umulhi(n, mul);
#else
    const std::uint32_t hi = static_cast<std::uint32_t>((static_cast<std::uint64_t>(n) * mul) >> 32);
#endif
    return (hi + n) >> shift;
  }
};

// PRMT: byte s_j (0..7) of the 8 bytes {y, x} (x = bytes 0..3) into result byte j, for j = 0..3.
LOWBIT_HOST_DEVICE inline std::uint32_t byte_perm(std::uint32_t x, std::uint32_t y, std::uint32_t s) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(x, y, s);
#else
  const std::uint64_t both = (static_cast<std::uint64_t>(y) << 32) | x;
  std::uint32_t r = 0;
  for (int j = 0; j < 4; ++j) r |= static_cast<std::uint32_t>((both >> (8 * ((s >> (4 * j)) & 7))) & 0xff) << (8 * j);
  return r;
#endif
}

inline constexpr std::uint32_t kMagicF16x2 = 0x64006400u;   // fp16 pair (1024, 1024)
inline constexpr std::uint32_t kMagicBF16x2 = 0x43004300u;  // bf16 pair (128, 128)

// Two 16-bit floats (magic + code[2i], magic + code[2i + 1]) (low half first) from a pack of `kBits`
// words, kBits in {2, 3, 4}; magic2 is kMagicF16x2 or kMagicBF16x2. One LOP3 (+ shifts) on the device.
template <int kBits>
LOWBIT_HOST_DEVICE inline std::uint32_t affine_pair_magic(const std::uint32_t* w, int i, std::uint32_t magic2) {
  if constexpr (kBits == 4) {
    return ((w[i / 4] >> (4 * (i % 4))) & 0x000f000fu) | magic2;
  } else if constexpr (kBits == 2) {
    return ((w[i / 8] >> (2 * (i % 8))) & 0x00030003u) | magic2;
  } else {
    static_assert(kBits == 3, "affine_pair_magic: 2, 3 or 4 bits");
    if (i < 15) return ((w[i / 5] >> (3 * (i % 5))) & 0x00070007u) | magic2;
    return ((w[0] >> 15) & 0x00010001u) | ((w[1] >> 14) & 0x00020002u) | ((w[2] >> 13) & 0x00040004u) | magic2;
  }
}
// 8-bit: fp16 pair (1024 + code[2i], 1024 + code[2i + 1]) from word i / 2 (one PRMT).
LOWBIT_HOST_DEVICE inline std::uint32_t affine_pair_magic8_f16(const std::uint32_t* w, int i) {
  return byte_perm(w[i / 2], 0x64u, (i % 2) == 0 ? 0x4140u : 0x4342u);
}
// 8-bit: the fp32 bits of 2^23 + code[j] (one PRMT); subtracting 2^23 + zero is exact.
LOWBIT_HOST_DEVICE inline std::uint32_t affine_code8_magic_f32(const std::uint32_t* w, int j) {
  return byte_perm(w[j / 4], 0x4B00u, 0x5440u | static_cast<std::uint32_t>(j % 4));
}

// Plain reads and writes of code j (0..31) of a pack: the definition the tricks above are tested against.
int affine_pack_code_at(const std::uint32_t* words, int bits, int j);
void affine_pack_set_code(std::uint32_t* words, int bits, int j, int code);

// ---- repacking (host) --------------------------------------------------------------------------------

struct AffineRepacked {
  int bits = 0;
  std::int64_t n = 0;
  std::int64_t k = 0;
  std::int64_t k_pad = 0;   // round_up(k, 64)
  std::int64_t group = 0;   // effective group size (multiple of 32, or k_pad for one group a row)
  std::int64_t groups = 0;  // per row
  Tensor qweight;           // u32 [n, k_pad / 32 * bits]
  Tensor scales;            // f16|f32 [n, groups]
  Tensor zeros;             // u8 [n, groups]
  Tensor perm;              // i32 [k], act-order only (undefined otherwise)
};

// Host tensors in the layout above. Validates q as dequantize_affine_reference() does (Corrupt naming the
// component), then throws Unsupported for bits outside {2, 3, 4, 8}, a group size that is not a multiple
// of 32 (nor -1 / 0), or an act-order g_idx whose sorted groups do not start at multiples of 32 columns.
AffineRepacked repack_affine(const quant::QuantizedTensor& q);

// W_hat [n, k] fp32 in the original column order, decoded from the repacked layout with the plain reads
// above: equal bit for bit to dequantize_affine_reference(q).
Tensor decode_affine_repacked(const AffineRepacked& r);

}  // namespace lowbit::cuda
