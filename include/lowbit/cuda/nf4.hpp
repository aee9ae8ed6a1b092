// NF4 / FP4 (bitsandbytes 4-bit, with or without double quantization) on a CUDA device: the layout
// prepare() repacks a QuantizedTensor into, the decode math the kernels run (host and device, so the CPU
// tests run the kernels' own arithmetic over every code), the table of built kernels and the launch entry.
//
// Plain C++ (no CUDA syntax outside LOWBIT_HOST_DEVICE bodies), safe to include from any .cpp.
//
// Repacked layout (PreparedWeight::buffers; W is [n, k], n and k multiples of 8, read as the flat
// row-major vector the quantizer blocked, lowbit/quant/nf4.hpp):
//
//   "codes"             u32 [n, k_pad / 8]  k_pad = round_up(k, 64) (the tensor-core kernel's k-step). Word
//                                      c of row r holds the codes of the 8 elements W[r, 8c .. 8c+8),
//                                      element j in bits [4j, 4j+4):
//                                          bit 31                                   bit 0
//                                          | e7 | e6 | e5 | e4 | e3 | e2 | e1 | e0 |
//                                      (bitsandbytes' bytes hold e0 in the HIGH nibble of byte 0, i.e. e_j
//                                      at nibble j ^ 1 of the little-endian word; prepare swaps the two
//                                      nibbles of every byte). Four words are one "pack" of 32 columns
//                                      (kernels/weight_only.cuh). Words c >= k/8 are zero padding.
//   "absmax"            f32 [nb]       a_b, unchanged (no double quantization), or
//                       u8  [nb]       its 8-bit code, unchanged (double quantization): the kernel rebuilds
//                                      a_b per pack, so the weight stream stays ~4.13 bits per weight
//   "nested_absmax"     f32 [ceil(nb / nested_block_size)]   double quantization only, unchanged
//   "nested_quant_map"  f32 [256]                            double quantization only, unchanged
//   "nested_offset"     f32 [1]                              double quantization only, unchanged
//
// The 16 table values (nf4_type_value of the method's type; FP4 code 8 is -0.0 as the reference decodes
// it) travel in the kernel arguments as the bytes of 16 fp16 or bf16 numbers, so one kernel serves both
// types. Blocks run over the flat order: k and block_size are multiples of 8, so the 8 elements of a word
// never straddle a block, and word (r, c) belongs to block b = (r*k + 8c) >> log2(block_size) (a block may
// span the end of one row and the start of the next; a 32-column pack may span two blocks). Per element,
// exactly as dequantize_nf4_reference:
//
//     w_hat = fl32(T[code] * a_b),   a_b = absmax[b]  or  fl32(fl32(D[absmax[b]] * A2[b >> log2(nbs)]) + offset)
//
// The kernels form fl(fl(T[code]) * fl(a_b)) in the activation's 16-bit type instead (as bitsandbytes'
// gemv_4bit does), i.e. within 1.5 units in the last place of that type of w_hat.
//
// prepare() accepts block sizes and nested block sizes that are powers of two >= 8 (every size
// bitsandbytes writes: 32 .. 4096, nested 256); others are an Error naming the value.
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/core/config.hpp"
#include "lowbit/core/dtype.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/cuda/matmul.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::cuda {

// ---- decode math shared by the kernels and the CPU decode (tests run it over every code) --------------

// Code of element j (0..7) of a repacked word: bits [4j, 4j+4).
LOWBIT_HOST_DEVICE constexpr unsigned nf4_packed_code(std::uint32_t word, int j) noexcept {
  return (word >> (4 * j)) & 0xfu;
}

// The repacked word of 4 QuantizedTensor bytes b0..b3 (b0 first in memory) read as a little-endian u32:
// swap the two nibbles of every byte, so element j (the high nibble of byte j/2 for even j) lands at j.
LOWBIT_HOST_DEVICE constexpr std::uint32_t nf4_repack_word(std::uint32_t bnb_word) noexcept {
  return ((bnb_word >> 4) & 0x0f0f0f0fu) | ((bnb_word << 4) & 0xf0f0f0f0u);
}

// a_b rebuilt from its 8-bit code with double quantization: fl32(fl32(d * a2) + offset), both roundings
// explicit so that no compiler contracts them into one FMA (which rounds once and can differ from
// bitsandbytes and the reference in the last bit).
LOWBIT_HOST_DEVICE inline float nf4_dq_absmax(float map_value, float nested_absmax, float offset) noexcept {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(map_value, nested_absmax), offset);
#else
  const volatile float scaled = map_value * nested_absmax;
  return scaled + offset;
#endif
}

// w_hat of one element in fp32: fl32(value * a_b).
LOWBIT_HOST_DEVICE constexpr float nf4_dequant_value(float table_value, float absmax) noexcept {
  return table_value * absmax;
}

// Index of the flat block (or hqq group) holding word t (0..3) of the pack whose first column has flat index
// e0 = row * k + k0 (k0 a multiple of 32), block size 2^log2_block, clamped to the last block `last`: the
// padded columns past k of the last row have no block of their own (their x is 0, any finite decode does).
// The kernels' load_meta and the CPU decode both call it.
LOWBIT_HOST_DEVICE constexpr std::int64_t pack_word_block(std::int64_t e0, int t, int log2_block,
                                                          std::int64_t last) noexcept {
  const std::int64_t b = (e0 + 8 * t) >> log2_block;
  return b < last ? b : last;
}

// Words per repacked row: k_pad / 8 with k_pad = round_up(k, 64).
LOWBIT_HOST_DEVICE constexpr std::int64_t packed_row_words(std::int64_t k) noexcept { return (k + 63) / 64 * 8; }

// PTX prmt in its default mode (what the kernels execute): result byte j is byte (s_j & 7) of the 8 bytes
// {y, x} (x = bytes 0..3), or, when bit 3 of selector nibble s_j is set, that byte's sign bit replicated.
LOWBIT_HOST_DEVICE inline std::uint32_t prmt(std::uint32_t x, std::uint32_t y, std::uint32_t s) noexcept {
#if defined(__CUDA_ARCH__)
  std::uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(x), "r"(y), "r"(s));
  return r;
#else
  const std::uint64_t both = (static_cast<std::uint64_t>(y) << 32) | x;
  std::uint32_t r = 0;
  for (int j = 0; j < 4; ++j) {
    const unsigned sel = (s >> (4 * j)) & 0xfu;
    std::uint32_t byte = static_cast<std::uint32_t>((both >> (8 * (sel & 7u))) & 0xffu);
    if (sel & 8u) byte = (byte & 0x80u) ? 0xffu : 0x00u;
    r |= byte << (8 * j);
  }
  return r;
#endif
}

// The 16-entry table in registers: lo[i] holds the low bytes of entries 4i .. 4i+3, hi[i] their high bytes,
// of the 16-bit (fp16 or bf16) table values.
struct Nf4Lut {
  std::uint32_t lo[4] = {};
  std::uint32_t hi[4] = {};
};

// Host: the Nf4Lut of 16 fp32 table values rounded to fp16 (bf16 = false) or bf16.
Nf4Lut make_nf4_lut(const float (&table)[16], bool bf16);

// Table lookup of 4 codes at once, no memory access: the codes are the nibbles of bits 0..15 of v (bits 16..31
// ignored); out01 = the 16-bit table values of codes 0 and 1 (code 0 in the low half), out23 of codes 2, 3.
// 11 instructions: one mask, four prmt (low / high bytes of entries 0..7 and 8..15, each indexed by the
// code's low 3 bits), a selector from each code's bit 3, two prmt picking the half of the table, two prmt
// pairing low and high bytes into 16-bit numbers.
LOWBIT_HOST_DEVICE inline void nf4_lut4(std::uint32_t v, const Nf4Lut& t, std::uint32_t& out01,
                                        std::uint32_t& out23) noexcept {
  const std::uint32_t s = v & 0x7777u;                        // low 3 bits of each code; sign mode off
  const std::uint32_t lo_a = prmt(t.lo[0], t.lo[1], s);       // low bytes, codes & 7 in entries 0..7
  const std::uint32_t lo_b = prmt(t.lo[2], t.lo[3], s);       //            entries 8..15
  const std::uint32_t hi_a = prmt(t.hi[0], t.hi[1], s);
  const std::uint32_t hi_b = prmt(t.hi[2], t.hi[3], s);
  const std::uint32_t pick = ((v >> 1) & 0x4444u) | 0x3210u;  // byte j of lo_a, or of lo_b when code_j >= 8
  const std::uint32_t lo = prmt(lo_a, lo_b, pick);
  const std::uint32_t hi = prmt(hi_a, hi_b, pick);
  out01 = prmt(lo, hi, 0x5140u);  // | hi1 | lo1 | hi0 | lo0 |
  out23 = prmt(lo, hi, 0x7362u);
}

// The 32 codes of a pack (4 repacked words) as 16 pairs of 16-bit table values, in the order the kernel
// templates want (kernels/weight_only.cuh): pairs[i] = (T[code of column 2i], T[code of column 2i + 1]),
// column 2i in the low half; word t holds columns 8t .. 8t+7, so pairs 4t .. 4t+3 come from word t.
LOWBIT_HOST_DEVICE inline void nf4_pack_pairs(const std::uint32_t (&words)[4], const Nf4Lut& t,
                                              std::uint32_t (&pairs)[16]) noexcept {
  for (int w = 0; w < 4; ++w) {
    nf4_lut4(words[w], t, pairs[4 * w], pairs[4 * w + 1]);
    nf4_lut4(words[w] >> 16, t, pairs[4 * w + 2], pairs[4 * w + 3]);
  }
}

// ---- host: repack and decode (CPU-tested) ---------------------------------------------------------------

// The buffers prepare() would copy to the device, on the host (PreparedWeight::device = -1). Throws
// InvalidArgument for a malformed q (validate_nf4), Unsupported naming the block size or nested block
// size when it is not a power of two >= 8, ShapeMismatch when q is not [n, k] with n, k multiples of 8.
PreparedWeight repack_nf4(const quant::QuantizedTensor& q);

// w_hat [n, k] f32 decoded from repack_nf4()'s host buffers with the decode functions above. Equals
// dequantize_nf4_reference(q) bit for bit.
Tensor decode_nf4_repacked(const PreparedWeight& w);

// ---- kernels: the built table and the launch entry ------------------------------------------------------

struct Nf4Kernel {
  bool double_quant = false;  // absmax as u8 codes rebuilt in the kernel (true) or f32 (false)
  DType dtype = DType::F16;   // of x and y
  Regime regime = Regime::Gemv;
  int tile = 0;               // Gemv: kM (m <= kM); TensorCore: kBM (x rows a block); Dequantize: 0
  friend constexpr bool operator==(const Nf4Kernel&, const Nf4Kernel&) = default;
};

// Every kernel compiled in kernels/nf4_matmul.cu. NF4 vs FP4, block size and nested block size are data
// (kernel arguments), not template parameters. The kernel test runs every entry; a CPU test checks that
// plan_matmul() only ever picks entries of this table.
inline constexpr Nf4Kernel kNf4Built[] = {
    {false, DType::F16, Regime::Gemv, 1},        {false, DType::F16, Regime::Gemv, 2},
    {false, DType::BF16, Regime::Gemv, 1},       {false, DType::BF16, Regime::Gemv, 2},
    {true, DType::F16, Regime::Gemv, 1},         {true, DType::F16, Regime::Gemv, 2},
    {true, DType::BF16, Regime::Gemv, 1},        {true, DType::BF16, Regime::Gemv, 2},
    {false, DType::F16, Regime::TensorCore, 16}, {false, DType::F16, Regime::TensorCore, 64},
    {false, DType::BF16, Regime::TensorCore, 16}, {false, DType::BF16, Regime::TensorCore, 64},
    {true, DType::F16, Regime::TensorCore, 16},  {true, DType::F16, Regime::TensorCore, 64},
    {true, DType::BF16, Regime::TensorCore, 16}, {true, DType::BF16, Regime::TensorCore, 64},
    {false, DType::F16, Regime::Dequantize, 0},  {false, DType::BF16, Regime::Dequantize, 0},
    {true, DType::F16, Regime::Dequantize, 0},   {true, DType::BF16, Regime::Dequantize, 0},
};
inline constexpr int kNf4BuiltCount = static_cast<int>(sizeof(kNf4Built) / sizeof(kNf4Built[0]));

// Index into kNf4Built of the kernel for (double_quant, dtype, plan), or -1 when none is built.
constexpr int nf4_kernel_index(bool double_quant, DType dtype, const MatmulPlan& plan) {
  const int tile = plan.regime == Regime::Dequantize ? 0 : plan.m_tile;
  for (int i = 0; i < kNf4BuiltCount; ++i) {
    const Nf4Kernel& e = kNf4Built[i];
    if (e.double_quant == double_quant && e.dtype == dtype && e.regime == plan.regime && e.tile == tile) return i;
  }
  return -1;
}

// "gemv dq=0 f16 m<=1, ..." for error messages.
std::string describe_nf4_built();

// Device pointers and sizes one launch needs (on the current device).
struct Nf4Launch {
  DType dtype = DType::F16;              // of x and y
  bool double_quant = false;
  const std::uint32_t* codes = nullptr;  // [n, packed_row_words(k)]
  const void* absmax = nullptr;          // f32 [nb] or u8 [nb]
  const float* nested_absmax = nullptr;  // double quantization only
  const float* nested_map = nullptr;     // [256], double quantization only
  const float* nested_offset = nullptr;  // [1], double quantization only
  Nf4Lut lut;                            // the table in dtype
  std::int64_t blocks = 0;               // nb
  int log2_block = 0;
  int log2_nested_block = 0;
  const void* x = nullptr;  // [m, k]
  void* y = nullptr;        // [m, n]
  std::int64_t m = 0, n = 0, k = 0;
  int device = 0;
};

// Runs plan's kernel (every regime: the Dequantize regime dequantizes into `w_hat`, an [n, k] buffer of
// dtype, then calls cuBLAS). Throws Unsupported listing kNf4Built when the plan's entry is not built.
void launch_nf4(const Nf4Launch& a, const MatmulPlan& plan, void* w_hat, Stream stream);

// ---- a piece the nf4 and hqq host code share (src/cuda/nf4.cpp) --------------------------------------------
namespace detail {

// w.scratch as an [n, k] device tensor of `dtype` on w.device, (re)allocated when missing or different.
void* dequantize_scratch(const PreparedWeight& w, DType dtype);

}  // namespace detail
}  // namespace lowbit::cuda
