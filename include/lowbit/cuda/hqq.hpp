// HQQ 4-bit on a CUDA device: the layout prepare() repacks an "hqq" QuantizedTensor into, the decode math
// the kernels run (host and device, so the CPU tests run the kernels' own arithmetic), the table of built
// kernel variants and the launch entry points.
//
// Plain C++ (no CUDA syntax outside LOWBIT_HOST_DEVICE bodies), safe to include from any .cpp.
//
// Supported: bits 4, axis 1 (a group is g consecutive elements of W's flat row-major order, hqq's and
// transformers' default), g a power of two >= 8 (hqq uses 32, 64, 128; group_size -1 when k is a power of
// two), scale and zero stored as f16 or bf16 (HQQLinear's compute dtype). Anything else is an Error naming
// the parameter and listing these.
//
// Repacked layout (PreparedWeight::buffers; W [n, k], n and k multiples of 8):
//
//   "codes"  u32 [n, k_pad / 8]   k_pad = round_up(k, 64). Word c of row r holds the codes of the 8 elements
//                                 W[r, 8c .. 8c+8), pairs interleaved so that one mask gives two 16-bit
//                                 floats at once: element 2q in bits [4q, 4q+4), element 2q+1 in bits
//                                 [16+4q, 20+4q), q = 0..3:
//                                     bit 31                                  bit 0
//                                     | e7 | e5 | e3 | e1 | e6 | e4 | e2 | e0 |
//                                 Four words are one "pack" of 32 columns (kernels/weight_only.cuh); words
//                                 c >= k/8 are zero padding. hqq's own W_q puts the codes of rows half a
//                                 tensor apart into one byte; prepare unpacks that and packs along k.
//   "meta"   f16|bf16 [groups, 2] (scale, zero) of each group side by side, the QuantizedTensor's dtype and
//                                 bits unchanged: one 4-byte load fetches both (scale in bits 0..15).
//
// Word (r, c) belongs to group (r*k + 8c) >> log2(g) (g % 8 == 0, so a word never straddles a group; when
// k % g != 0 a group spans two rows, as hqq's reshape makes it). Per element, as dequantize_hqq_reference:
//
//     w_hat = (code - zero) * scale     in fp32, scale and zero widened exactly from 16 bits
//
// The kernels form fl(code * fl(scale) + fl(-zero * scale)) in the activation's 16-bit type instead (one
// HFMA2 per pair after the magic-number conversion of the codes).
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/core/config.hpp"
#include "lowbit/core/dtype.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/cuda/matmul.hpp"
#include "lowbit/cuda/nf4.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::cuda {

// ---- decode math shared by the kernels and the CPU decode ------------------------------------------------

// A 16-bit scale or zero widened to fp32 (exact): bf16 is the top half of an fp32, f16 converts.
LOWBIT_HOST_DEVICE constexpr float hqq_meta_value(std::uint16_t bits, bool bf16) noexcept {
  return bf16 ? bf16_bits_to_f32(bits) : f16_bits_to_f32(bits);
}

// w_hat = (code - zero) * scale: a subtraction then a product, each rounded (nothing to contract).
LOWBIT_HOST_DEVICE constexpr float hqq_packed_value(unsigned code, float zero, float scale) noexcept {
  return (static_cast<float>(code) - zero) * scale;
}

// Code of element j (0..7) of a repacked word (the interleaved order above).
LOWBIT_HOST_DEVICE constexpr unsigned hqq_packed_code(std::uint32_t word, int j) noexcept {
  return (word >> (4 * (j / 2) + 16 * (j % 2))) & 0xfu;
}

// The word of 8 codes (each < 16) in the interleaved order.
LOWBIT_HOST_DEVICE constexpr std::uint32_t hqq_pack_word(const std::uint8_t (&codes)[8]) noexcept {
  std::uint32_t word = 0;
  for (int j = 0; j < 8; ++j) word |= static_cast<std::uint32_t>(codes[j] & 0xfu) << (4 * (j / 2) + 16 * (j % 2));
  return word;
}

inline constexpr std::uint32_t kHqqMagicF16x2 = 0x64006400u;   // fp16 pair (1024, 1024): 1024 + c exact
inline constexpr std::uint32_t kHqqMagicBF16x2 = 0x43004300u;  // bf16 pair (128, 128): 128 + c exact (c < 128)

// Elements 2q and 2q+1 of a word as the two 16-bit floats (magic + code) (element 2q in the low half): one
// shift and one LOP3 on the device; subtracting the magic pair (HSUB2) then gives the codes exactly.
LOWBIT_HOST_DEVICE constexpr std::uint32_t hqq_pair_magic(std::uint32_t word, int q, std::uint32_t magic2) noexcept {
  return ((word >> (4 * q)) & 0x000f000fu) | magic2;
}

// ---- host: repack and decode (CPU-tested) ---------------------------------------------------------------

// The buffers prepare() would copy to the device, on the host (PreparedWeight::device = -1). Throws
// Unsupported naming the parameter for bits != 4, axis 0, a group size that is not a power of two >= 8,
// or scale/zero of another dtype than f16/bf16; InvalidArgument for a malformed q; ShapeMismatch when q is
// not [n, k] with n, k multiples of 8.
PreparedWeight repack_hqq(const quant::QuantizedTensor& q);

// w_hat [n, k] f32 decoded from repack_hqq()'s host buffers with the decode functions above. Equals
// dequantize_hqq_reference(q) bit for bit.
Tensor decode_hqq_repacked(const PreparedWeight& w);

// ---- kernels: the built table and the launch entry ------------------------------------------------------

struct HqqKernel {
  DType dtype = DType::F16;  // of x and y; the scale/zero dtype (f16 or bf16) is data, read per group
  Regime regime = Regime::Gemv;
  int tile = 0;              // Gemv: kM; TensorCore: kBM; Dequantize: 0
  friend constexpr bool operator==(const HqqKernel&, const HqqKernel&) = default;
};

// Every kernel compiled in kernels/hqq_matmul.cu. The kernel test runs every entry; a CPU test checks that
// plan_matmul() only ever picks entries of this table.
inline constexpr HqqKernel kHqqBuilt[] = {
    // Gemv m <= 2, TensorCore 3 <= m <= 64, Dequantize m > 64 (detail::plan_weight_only)
    {DType::F16, Regime::Gemv, 1},        {DType::F16, Regime::Gemv, 2},
    {DType::BF16, Regime::Gemv, 1},       {DType::BF16, Regime::Gemv, 2},
    {DType::F16, Regime::TensorCore, 16}, {DType::F16, Regime::TensorCore, 64},
    {DType::BF16, Regime::TensorCore, 16}, {DType::BF16, Regime::TensorCore, 64},
    {DType::F16, Regime::Dequantize, 0},  {DType::BF16, Regime::Dequantize, 0},
};
inline constexpr int kHqqBuiltCount = static_cast<int>(sizeof(kHqqBuilt) / sizeof(kHqqBuilt[0]));

// Index into kHqqBuilt of the kernel for (dtype, plan), or -1 when none is built.
constexpr int hqq_kernel_index(DType dtype, const MatmulPlan& plan) {
  const int tile = plan.regime == Regime::Dequantize ? 0 : plan.m_tile;
  for (int i = 0; i < kHqqBuiltCount; ++i) {
    const HqqKernel& e = kHqqBuilt[i];
    if (e.dtype == dtype && e.regime == plan.regime && e.tile == tile) return i;
  }
  return -1;
}

std::string describe_hqq_built();

// Device pointers and sizes one launch needs (on the current device).
struct HqqLaunch {
  DType dtype = DType::F16;              // of x and y
  const std::uint32_t* codes = nullptr;  // [n, packed_row_words(k)]
  const std::uint32_t* meta = nullptr;   // [groups]
  bool meta_bf16 = false;
  std::int64_t groups = 0;
  int log2_group = 0;
  const void* x = nullptr;  // [m, k]
  void* y = nullptr;        // [m, n]
  std::int64_t m = 0, n = 0, k = 0;
  int device = 0;
};

// Runs plan's kernel (the Dequantize regime dequantizes into `w_hat`, [n, k] of dtype, then calls cuBLAS).
// Throws Unsupported listing kHqqBuilt when the plan's entry is not built.
void launch_hqq(const HqqLaunch& a, const MatmulPlan& plan, void* w_hat, Stream stream);

}  // namespace lowbit::cuda
