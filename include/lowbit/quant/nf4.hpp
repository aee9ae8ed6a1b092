// NF4 and FP4: bitsandbytes' 4-bit blockwise quantization (QLoRA), with optional double quantization of
// the block scales, reproducing the bytes bitsandbytes' CUDA kernels write. Spec: shared/methods/nf4.md;
// byte layout: docs/formats.md#nf4; checkpoint keys: lowbit/io/formats/bnb.hpp.
//
// W (any shape; [n, k] for a linear layer) is read as ONE flat row-major vector w[0, numel). Blocks are
// `block_size` consecutive elements of that vector, not of a row: when k is not a multiple of block_size
// a block spans the end of one row and the start of the next, and the last block may be short. Per block
//
//     a_b = max |w|  (fp32)     x = fl32(w * fl32(1 / a_b))     code = nearest table entry to x
//     w_hat = fl32(T[code] * a_b)
//
// where "nearest" is decided by the CUDA kernel's thresholds (nf4_code, fp4_code below: strict ">", so a
// value exactly on a threshold takes the lower code; the thresholds are the kernel's decimal literals, not
// all exact midpoints). An all-zero block stores a_b = 0 and, like the CUDA kernel (1/0 = Inf, 0 * Inf =
// NaN), code 0 for every element: it dequantizes to +-0, or with double quantization to -a_hat_b for NF4
// (a_hat_b is then only near 0). fp32 subnormals count as 0, as in the kernels (built with
// --use_fast_math, which flushes them). One difference remains: the kernels' 1/a_b is the fast-math
// reciprocal (1 ulp off the IEEE one for 13% of inputs), ours is IEEE, so a value within an ulp of a
// threshold can take the neighbouring code (measured on an H100: 0 of 45M elements for NF4 fp16/bf16,
// 2 for fp32; 15 to 70 per million for FP4, whose thresholds lie near ratios fp16 values hit).
//
// Components (names mirror bitsandbytes' quant_state keys, so a checkpoint maps one to one):
//
//     codes             u8  [ceil(numel / 2)]  two codes per byte, element 2j in the HIGH nibble:
//                                                  bit 7         4 3          0
//                                                  |  code[2j]    | code[2j+1] |
//                                              (the opposite of GGUF Q4_0). Odd numel: the last low
//                                              nibble is the code of the padding value 0 (NF4 7, FP4 0;
//                                              0 when the last block is all zero)
//     absmax            f32 [nb]               nb = ceil(numel / block_size): a_b, exact
//                       u8  [nb]               with double_quant: 8-bit codes of a_b - nested_offset
//     quant_map         f32 [16]               the 4-bit table as bitsandbytes stores it (nf4_quant_map)
//   with double_quant only (QLoRA "DQ": the absmax vector is itself quantized, block 256):
//     nested_absmax     f32 [ceil(nb / 256)]   max |a_b - offset| over each run of 256 absmaxes
//     nested_quant_map  f32 [256]              the signed dynamic 8-bit map D (nf4_dynamic_map() when we
//                                              quantize; whatever a checkpoint holds when we read one)
//     nested_offset     f32 [1]                offset = mean(a_b)
//
//     a_hat_b = fl32( fl32(D[absmax[b]] * nested_absmax[b / 256]) + nested_offset )
//
// QuantizedTensor: method "nf4" or "fp4", params {bits = 4, block_size, double_quant, nested_block_size =
// 256 with double_quant else 0, variant = the method name}; dtype = the weight's (f16, bf16 or f32).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "lowbit/core/config.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/quant/bnb8.hpp"
#include "lowbit/quant/quantized_tensor.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::quant {

enum class Nf4Type : std::uint8_t {
  NF4,  // NormalFloat: 16 quantiles of N(0, 1) scaled to [-1, 1], exact zero, 8 positive / 7 negative
  FP4,  // a 1-sign, 2-exponent, 1-mantissa float: sign in bit 3, magnitude pattern in bits 2..0
};

// Block sizes bitsandbytes accepts (quantize_4bit / dequantize_4bit; 32 on CUDA since bnb 0.49.2).
inline constexpr int kNf4BlockSizes[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
// Absmaxes per block of the second level; bitsandbytes fixes it for 4-bit double quantization.
inline constexpr int kNf4NestedBlockSize = 256;

struct Nf4Config {
  // NF4 or FP4. (bnb's quantize_4bit and transformers default to FP4; the registry names pick the type.)
  Nf4Type type = Nf4Type::NF4;
  int block_size = 64;        // elements of the flattened weight per absmax: one of kNf4BlockSizes
  bool double_quant = false;  // quantize the absmaxes to 8 bits (bnb compress_statistics; transformers
                              // bnb_4bit_use_double_quant, default false; Linear4bit defaults to true)
};

// ---- decode and encode math shared with the CUDA kernels (exhaustively tested over every code) --------------

// fp32 bits of the NF4 table, ascending (bnb get_4bit_type("nf4") == kernels.cu nf4_dequantization_lut).
LOWBIT_HOST_DEVICE constexpr float nf4_value(unsigned code) noexcept {
  constexpr std::uint32_t kBits[16] = {0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f,
                                       0xbdba7871, 0x00000000, 0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a,
                                       0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000};
  return bits_float(kBits[code & 0xfu]);
}

// FP4 as the CUDA kernel decodes it (dDequantizeFP4Tree): magnitude by bits 2..0, raw
// {0, 0.0625, 8, 12, 4, 6, 2, 3} / 12, times -1 when bit 3 is set. Code 8 is therefore -0.0 here, while
// the quant_map bitsandbytes stores holds +0.0 at index 8 (its Python list writes `-0`, an integer).
LOWBIT_HOST_DEVICE constexpr float fp4_value(unsigned code) noexcept {
  constexpr std::uint32_t kMagnitudeBits[8] = {0x00000000, 0x3baaaaab, 0x3f2aaaab, 0x3f800000,
                                               0x3eaaaaab, 0x3f000000, 0x3e2aaaab, 0x3e800000};
  const float magnitude = bits_float(kMagnitudeBits[code & 0x7u]);
  return (code & 0x8u) ? -magnitude : magnitude;
}

LOWBIT_HOST_DEVICE constexpr float nf4_type_value(Nf4Type type, unsigned code) noexcept {
  return type == Nf4Type::NF4 ? nf4_value(code) : fp4_value(code);
}

// Code of flat element e in the packed bytes: even e in the high nibble, odd e in the low one.
LOWBIT_HOST_DEVICE constexpr unsigned nf4_code_at(const std::uint8_t* codes, std::int64_t e) noexcept {
  const unsigned byte = codes[e >> 1];
  return (e & 1) ? (byte & 0xfu) : (byte >> 4);
}

// NF4 code of a normalised value x: the number of thresholds t_i with x > t_i. The thresholds are the CUDA
// kernel's (dQuantizeNF4) decimal literals, correctly rounded to fp32 as nvcc (and any C++ compiler) does.
// Eleven of them equal the fp32 midpoints fl32((T[i] + T[i+1]) / 2) of neighbouring table entries; t0, t8,
// t12 and t14 are one ulp off (a double-rounded conversion, float(str) then fp32, would give the midpoints;
// the vectors bitsandbytes' CUDA kernels made confirm the literal rounding). A tie goes to the lower code;
// NaN gives 0, like the kernel.
LOWBIT_HOST_DEVICE constexpr unsigned nf4_code(float x) noexcept {
  constexpr std::uint32_t kThresholdBits[15] = {0xbf591cd9, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec,
                                                0xbe0d38bc, 0xbd3a7871, 0x3d22faff, 0x3df64863, 0x3e5067e0,
                                                0x3e9582d4, 0x3ec753f9, 0x3f006d03, 0x3f248daf, 0x3f5c89d9};
  unsigned code = 0;
  for (int i = 0; i < 15; ++i) code += x > bits_float(kThresholdBits[i]) ? 1u : 0u;
  return code;
}

// FP4 code of a normalised x as the CUDA kernel's dQuantizeFP4 gives it: sign bit 3 iff x < 0 (so -0.0 and
// NaN get sign 0), then the magnitude interval by strict ">" against the kernel's literals, which are NOT
// all exact midpoints (0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f).
LOWBIT_HOST_DEVICE constexpr unsigned fp4_code(float x) noexcept {
  constexpr std::uint32_t kThresholdBits[7] = {0x3b2aaab9, 0x3db00000, 0x3e555555, 0x3e955555,
                                               0x3ed55556, 0x3f155550, 0x3f555555};
  const unsigned sign = x < 0.0f ? 0x8u : 0u;
  const float u = x < 0.0f ? -x : x;
  unsigned rank = 0;
  for (int i = 0; i < 7; ++i) rank += u > bits_float(kThresholdBits[i]) ? 1u : 0u;
  // Magnitude patterns in ascending order of value (rank 0..7): 000 001 110 111 100 101 010 011, i.e. the
  // rank with bit 2 flipped where bit 1 is set (arithmetic rather than a table, so loops vectorize).
  return sign | (rank ^ ((rank & 2u) << 1));
}

LOWBIT_HOST_DEVICE constexpr unsigned nf4_type_code(Nf4Type type, float x) noexcept {
  return type == Nf4Type::NF4 ? nf4_code(x) : fp4_code(x);
}

// 8-bit code of y in a sorted 256-entry map (the nested absmax quantizer): the CUDA kernel's dQuantize<0>,
// shared with bitsandbytes' blockwise 8-bit (bnb8_encode in bnb8.hpp, where the rule is documented).
LOWBIT_HOST_DEVICE inline std::uint8_t quantize_dynamic8(const float* map, float y) noexcept {
  return bnb8_encode(map, y);
}

// ---- tables ----------------------------------------------------------------------------------------------

// The 16 floats bitsandbytes stores as `quant_map` (get_4bit_type): NF4 ascending; FP4 in code order, with
// +0.0 at index 8 (see fp4_value).
std::span<const float, 16> nf4_quant_map(Nf4Type type) noexcept;
// bnb's signed dynamic 8-bit map (create_dynamic_map(signed=True)) as torch 2.x builds it on the CPU: fp32
// torch.linspace means times fp32(10^(i-6)), sorted. torch 1.13 built a map that differs in 42 entries by
// 1-2 ulp (shared/methods/int8.md 4.3); readers use the map a checkpoint holds, so both load correctly.
std::span<const float, 256> nf4_dynamic_map() noexcept;

// ---- the three faces ---------------------------------------------------------------------------------------

// Quantizes W (f32, f16 or bf16; any shape with at least one element; any strides) on the CPU, multi-threaded
// and deterministic. Throws InvalidArgument for a block size outside kNf4BlockSizes (naming the valid ones)
// or an empty W, DTypeMismatch for other dtypes (bitsandbytes takes only these three), Unsupported for a
// device tensor, Numerical naming the first NaN/Inf element.
QuantizedTensor quantize_nf4(const Tensor& weight, const Nf4Config& config);

// Ground truth for every NF4/FP4 kernel: plain loops, fp32 out, shape q.shape. Per element
// fl32(T[code] * a_b) with a_b rebuilt as in the header comment when double quantized. Equals bitsandbytes'
// dequantize_4bit with an fp32 output (its kernels round this value once to the output dtype).
Tensor dequantize_nf4_reference(const QuantizedTensor& q);

// What bitsandbytes' dequantize_4bit returns: W_hat in `dtype` (f32, f16 or bf16), equal bit for bit to
// dequantize_nf4_reference(q).to(dtype). For 16-bit outputs it writes them directly (a block's 16 possible
// outputs rounded once, then one lookup per element) instead of an fp32 array and a conversion pass.
// Same validation and errors as the reference; InvalidArgument for another dtype.
Tensor dequantize_nf4(const QuantizedTensor& q, DType dtype);

// y = x W_hat^T in fp32 ([m, n]; q must be 2-D [n, k], x [m, k]). This is bitsandbytes' path for inputs of
// more than one row (dequantize, then a GEMM in the compute dtype, fp32 by default in transformers); its
// batch-1 kernel (gemv_4bit) instead forms T[code] * a_b in the activation's 16-bit type, so its results
// differ slightly.
Tensor matmul_nf4_reference(const QuantizedTensor& q, const Tensor& x);

// Registry entries "nf4" and "fp4". QuantParams read: bits (4, or 0 for the default), block_size (0 = 64),
// double_quant, nested_block_size (0 or 256), variant ("" or the method name); defaults: block_size 64, no
// double quantization (transformers' default).
MethodInfo nf4_method_info();
MethodInfo fp4_method_info();

// ---- pieces, public for the checkpoint reader, tests and the later CUDA path ------------------------------

// Checks that q is a well-formed nf4/fp4 QuantizedTensor (method, params, every component's dtype and
// element count against q.shape); throws InvalidArgument naming `operation` and the component otherwise.
void validate_nf4(const QuantizedTensor& q, std::string_view operation);

// The type q encodes ("nf4" -> NF4, "fp4" -> FP4); throws InvalidArgument for other methods.
Nf4Type nf4_type_of(const QuantizedTensor& q);

// The fp32 block absmaxes of q: the `absmax` component itself, or rebuilt from the nested components.
std::vector<float> nf4_block_absmax(const QuantizedTensor& q);

// Double quantization of a vector of block absmaxes, as bitsandbytes' quantize_4bit(compress_statistics=True)
// does after its 4-bit pass: d = fl32(a - offset); per nested block of `nested_block_size`, nested_absmax =
// max |d| and codes = quantize_dynamic8(map, fl32(d * fl32(1 / nested_absmax))). A nested block of equal
// absmaxes has nested_absmax 0 and codes 0 (the kernel's NaN path), and rebuilds them exactly.
struct Nf4NestedAbsmax {
  std::vector<std::uint8_t> codes;   // [nb]
  std::vector<float> nested_absmax;  // [ceil(nb / nested_block_size)]
  float offset = 0;
};
Nf4NestedAbsmax quantize_nf4_absmax(std::span<const float> absmax, float offset,
                                    std::span<const float, 256> map = nf4_dynamic_map(),
                                    int nested_block_size = kNf4NestedBlockSize);
// The offset lowbit uses: fl32(sum) * fl32(1 / nb), the sum taken in double and rounded once. bitsandbytes
// takes torch's mean on the device, which is an fp32 sum times that same fp32 factor; its sum's last bit
// depends on the GPU's reduction order, so for long absmax vectors the offsets can differ by an ulp (the
// offset is stored in the file, so readers never recompute it).
float nf4_absmax_offset(std::span<const float> absmax);

}  // namespace lowbit::quant
