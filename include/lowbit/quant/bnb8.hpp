// bitsandbytes' blockwise 8-bit quantization (functional.quantize_blockwise / dequantize_blockwise) with the
// signed dynamic map or the linear map, optionally with nested (double-quantized) absmax. int8.md section 4.
//
// The weight (any rank; linear layers are [n, k]) is flattened row-major and cut into blocks of
// `block_size` consecutive elements; blocks run across row ends and the last one may be short. Per block
// b: a_b = max |w| (fp32), y = fl32(w * fl32(1 / a_b)), code = the map entry nearest y under the CUDA
// kernel's rule (bnb8_encode below: an exact midpoint goes to the EVEN code). Byte layout:
// docs/formats.md#bnb8.
//
// Components (names as bnb's QuantState and its 4-bit checkpoints use them):
//
//     codes             u8   shape of W    one code per element: w_hat = quant_map[code] * a_b
//     quant_map         f32  [256]         the map the codes index (always stored: readers use the stored
//                                          map, never a rebuilt one, since torch versions differ by an ulp)
//   not nested:
//     absmax            f32  [nb]          nb = ceil(numel / block_size); a_b exactly
//   nested (absmax quantized once more, with the same block size and the dynamic map):
//     absmax            u8   [nb]          codes of d_b = a_b - nested_offset
//     nested_absmax     f32  [ceil(nb / block_size)]
//     nested_quant_map  f32  [256]
//     nested_offset     f32  [1]           mean of the absmax
//     a_b = fl32(fl32(nested_quant_map[absmax[b]] * nested_absmax[b / block_size]) + nested_offset)
//
// The CUDA kernel (kQuantizeBlockwise) is the normative reference. It takes 1 / a_b with a fast-math
// reciprocal; we take the IEEE one, as the spec says, so a code can differ by one where w * (1 / a_b)
// lands within an ulp or two of a midpoint (measured on an H100, bnb 0.50.2: 3 to 8 codes in 2^24 for
// fp32 input, about 350 in 2^24 for fp16 input, whose values hit exact midpoints more often).
// Everything else, ties and all-zero blocks included, matches the kernel bit for bit
// (tests/quant/bnb8_test.cpp, vectors in tests/data/bnb8 made by the bitsandbytes package on CUDA).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "lowbit/core/config.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/quant/quantized_tensor.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::quant {

enum class Bnb8Map : std::uint8_t {
  Dynamic,  // create_dynamic_map(signed=True): bnb's default, 7 decades of magnitudes, +1.0, no -1.0
  Linear,   // create_linear_map(signed=True, total_bits=8, add_zero=True): ~k/127 plus an extra 0 at 127
};

struct Bnb8Config {
  std::int64_t block_size = 4096;  // >= 1 (bnb's default 4096; its CUDA kernels take 64, 128, ..., 4096)
  Bnb8Map map = Bnb8Map::Dynamic;
  bool nested = false;  // quantize_blockwise(nested=True): absmax -= mean, then 8-bit blockwise again
};

// int8.md section 4.3: the signed dynamic map as torch 1.13's create_dynamic_map() made it, fp32 bit
// patterns in code order (ascending). Current torch builds a map that differs in 42 entries by one ulp;
// this is the table we write.
// clang-format off
inline constexpr std::uint32_t kBnbDynamicMapBits[256] = {
    0xbf7e3333, 0xbf7a9999, 0xbf770000, 0xbf736666, 0xbf6fcccc, 0xbf6c3333, 0xbf68999a, 0xbf650000,  // 0
    0xbf616666, 0xbf5dcccc, 0xbf5a3333, 0xbf569999, 0xbf530000, 0xbf4f6666, 0xbf4bcccc, 0xbf483333,  // 8
    0xbf44999a, 0xbf410000, 0xbf3d6667, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6667,  // 16
    0xbf27cccd, 0xbf243333, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,  // 24
    0xbf0b0000, 0xbf076666, 0xbf03cccd, 0xbf003333, 0xbef93334, 0xbef20000, 0xbeeacccc, 0xbee3999a,  // 32
    0xbedc6666, 0xbed53332, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13332, 0xbeaa0000,  // 40
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d999a, 0xbe6f3334, 0xbe60cccd,  // 48
    0xbe526666, 0xbe440000, 0xbe359999, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,  // 56
    0xbdc9eb85, 0xbdc428f5, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c28, 0xbda1999a,  // 64
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147a, 0xbd728f5d, 0xbd670a3d,  // 72
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae147,  // 80
    0xbcfeb852, 0xbce7ae13, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5c, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,  // 88
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,  // 96
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,  // 104
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,  // 112
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,  // 120
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,  // 128
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,  // 136
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,  // 144
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,  // 152
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5c, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae13, 0x3cfeb852, 0x3d0ae147,  // 160
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,  // 168
    0x3d728f5d, 0x3d7e147a, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,  // 176
    0x3da75c28, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f5, 0x3dc9eb85, 0x3ddb3334,  // 184
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e359999, 0x3e440000, 0x3e526666, 0x3e60cccd,  // 192
    0x3e6f3334, 0x3e7d999a, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,  // 200
    0x3eb13332, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53332, 0x3edc6666, 0x3ee3999a,  // 208
    0x3eeacccc, 0x3ef20000, 0x3ef93334, 0x3f003333, 0x3f03cccd, 0x3f076666, 0x3f0b0000, 0x3f0e999a,  // 216
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243333, 0x3f27cccd, 0x3f2b6667,  // 224
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6667, 0x3f410000, 0x3f44999a, 0x3f483333,  // 232
    0x3f4bcccc, 0x3f4f6666, 0x3f530000, 0x3f569999, 0x3f5a3333, 0x3f5dcccc, 0x3f616666, 0x3f650000,  // 240
    0x3f68999a, 0x3f6c3333, 0x3f6fcccc, 0x3f736666, 0x3f770000, 0x3f7a9999, 0x3f7e3333, 0x3f800000,  // 248
};
// clang-format on

// create_linear_map() of bitsandbytes 0.50.2 under torch 2.11 and 2.15 (both give these bits): index
// 127 is the inserted 0 and index 128 linspace's own middle element, +3.7e-9 (torch 1.13 gave -3.7e-9
// there, which left the map unsorted; int8.md section 4.4). Other entries are k/127 within 3.1e-8.
// clang-format off
inline constexpr std::uint32_t kBnbLinearMapBits[256] = {
    0xbf800000, 0xbf7dfbf8, 0xbf7bf7f0, 0xbf79f3e8, 0xbf77efe0, 0xbf75ebd8, 0xbf73e7d0, 0xbf71e3c8,  // 0
    0xbf6fdfc0, 0xbf6ddbb7, 0xbf6bd7af, 0xbf69d3a7, 0xbf67cf9f, 0xbf65cb97, 0xbf63c78f, 0xbf61c387,  // 8
    0xbf5fbf7f, 0xbf5dbb77, 0xbf5bb76f, 0xbf59b367, 0xbf57af5f, 0xbf55ab57, 0xbf53a74f, 0xbf51a347,  // 16
    0xbf4f9f3e, 0xbf4d9b36, 0xbf4b972e, 0xbf499326, 0xbf478f1e, 0xbf458b16, 0xbf43870e, 0xbf418306,  // 24
    0xbf3f7efe, 0xbf3d7af6, 0xbf3b76ee, 0xbf3972e6, 0xbf376ede, 0xbf356ad6, 0xbf3366ce, 0xbf3162c6,  // 32
    0xbf2f5ebe, 0xbf2d5ab5, 0xbf2b56ad, 0xbf2952a5, 0xbf274e9d, 0xbf254a95, 0xbf23468d, 0xbf214285,  // 40
    0xbf1f3e7d, 0xbf1d3a75, 0xbf1b366d, 0xbf193265, 0xbf172e5d, 0xbf152a55, 0xbf13264d, 0xbf112245,  // 48
    0xbf0f1e3c, 0xbf0d1a34, 0xbf0b162c, 0xbf091224, 0xbf070e1c, 0xbf050a14, 0xbf03060c, 0xbf010204,  // 56
    0xbefdfbf8, 0xbef9f3e8, 0xbef5ebd8, 0xbef1e3c8, 0xbeeddbb8, 0xbee9d3a7, 0xbee5cb97, 0xbee1c387,  // 64
    0xbeddbb77, 0xbed9b367, 0xbed5ab57, 0xbed1a347, 0xbecd9b36, 0xbec99326, 0xbec58b16, 0xbec18306,  // 72
    0xbebd7af6, 0xbeb972e6, 0xbeb56ad6, 0xbeb162c6, 0xbead5ab6, 0xbea952a5, 0xbea54a95, 0xbea14285,  // 80
    0xbe9d3a75, 0xbe993265, 0xbe952a55, 0xbe912245, 0xbe8d1a34, 0xbe891224, 0xbe850a14, 0xbe810204,  // 88
    0xbe79f3e8, 0xbe71e3c8, 0xbe69d3a8, 0xbe61c387, 0xbe59b367, 0xbe51a347, 0xbe499326, 0xbe418306,  // 96
    0xbe3972e6, 0xbe3162c6, 0xbe2952a6, 0xbe214285, 0xbe193265, 0xbe112245, 0xbe091224, 0xbe010204,  // 104
    0xbdf1e3c8, 0xbde1c388, 0xbdd1a347, 0xbdc18306, 0xbdb162c6, 0xbda14286, 0xbd912245, 0xbd810204,  // 112
    0xbd61c388, 0xbd418307, 0xbd214286, 0xbd010205, 0xbcc18308, 0xbc810206, 0xbc010208, 0x00000000,  // 120
    0x31800000, 0x3c010208, 0x3c810206, 0x3cc18308, 0x3d010205, 0x3d214286, 0x3d418307, 0x3d61c388,  // 128
    0x3d810204, 0x3d912245, 0x3da14286, 0x3db162c6, 0x3dc18306, 0x3dd1a347, 0x3de1c388, 0x3df1e3c8,  // 136
    0x3e010204, 0x3e091224, 0x3e112245, 0x3e193265, 0x3e214285, 0x3e2952a6, 0x3e3162c6, 0x3e3972e6,  // 144
    0x3e418306, 0x3e499326, 0x3e51a347, 0x3e59b367, 0x3e61c387, 0x3e69d3a8, 0x3e71e3c8, 0x3e79f3e8,  // 152
    0x3e810204, 0x3e850a14, 0x3e891224, 0x3e8d1a34, 0x3e912245, 0x3e952a55, 0x3e993265, 0x3e9d3a75,  // 160
    0x3ea14285, 0x3ea54a95, 0x3ea952a5, 0x3ead5ab6, 0x3eb162c6, 0x3eb56ad6, 0x3eb972e6, 0x3ebd7af6,  // 168
    0x3ec18306, 0x3ec58b16, 0x3ec99326, 0x3ecd9b36, 0x3ed1a347, 0x3ed5ab57, 0x3ed9b367, 0x3eddbb77,  // 176
    0x3ee1c387, 0x3ee5cb97, 0x3ee9d3a7, 0x3eeddbb8, 0x3ef1e3c8, 0x3ef5ebd8, 0x3ef9f3e8, 0x3efdfbf8,  // 184
    0x3f010204, 0x3f03060c, 0x3f050a14, 0x3f070e1c, 0x3f091224, 0x3f0b162c, 0x3f0d1a34, 0x3f0f1e3c,  // 192
    0x3f112245, 0x3f13264d, 0x3f152a55, 0x3f172e5d, 0x3f193265, 0x3f1b366d, 0x3f1d3a75, 0x3f1f3e7d,  // 200
    0x3f214285, 0x3f23468d, 0x3f254a95, 0x3f274e9d, 0x3f2952a5, 0x3f2b56ad, 0x3f2d5ab5, 0x3f2f5ebe,  // 208
    0x3f3162c6, 0x3f3366ce, 0x3f356ad6, 0x3f376ede, 0x3f3972e6, 0x3f3b76ee, 0x3f3d7af6, 0x3f3f7efe,  // 216
    0x3f418306, 0x3f43870e, 0x3f458b16, 0x3f478f1e, 0x3f499326, 0x3f4b972e, 0x3f4d9b36, 0x3f4f9f3e,  // 224
    0x3f51a347, 0x3f53a74f, 0x3f55ab57, 0x3f57af5f, 0x3f59b367, 0x3f5bb76f, 0x3f5dbb77, 0x3f5fbf7f,  // 232
    0x3f61c387, 0x3f63c78f, 0x3f65cb97, 0x3f67cf9f, 0x3f69d3a7, 0x3f6bd7af, 0x3f6ddbb7, 0x3f6fdfc0,  // 240
    0x3f71e3c8, 0x3f73e7d0, 0x3f75ebd8, 0x3f77efe0, 0x3f79f3e8, 0x3f7bf7f0, 0x3f7dfbf8, 0x3f800000,  // 248
};
// clang-format on

// The map's 256 fp32 values.
std::array<float, 256> bnb8_map(Bnb8Map map);

// ---- decode and encode math shared with the CUDA kernels ---------------------------------------------

// w_hat of one element: map[code] * absmax, one fp32 rounding (bnb's dequantize before its dtype cast).
LOWBIT_HOST_DEVICE constexpr float bnb8_decode(const float* map, std::uint8_t code, float absmax) {
  return map[code] * absmax;
}

// A nested block's absmax: fl32(fl32(nested_map[code] * nested_absmax) + offset), rounded twice as bnb's
// dequantize_blockwise does (its fused 4-bit GEMM kernels contract this to one FMA; we do not).
LOWBIT_HOST_DEVICE inline float bnb8_nested_absmax(const float* nested_map, std::uint8_t code, float nested_absmax,
                                                   float offset) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(nested_map[code], nested_absmax), offset);
#else
  const float scaled = nested_map[code] * nested_absmax;  // ISO C++ mode: no contraction into an FMA
  return scaled + offset;
#endif
}

// The CUDA kernel's nearest-code search for a 256-entry ascending map (dQuantize<0> of csrc/kernels.cu),
// step for step: a 7-step binary search from pivot 127, then one test against the fp32 midpoint
// fl32((map[p] + map[p +- 1]) * 0.5) on the side of y. The pivot is always even, so an exact midpoint
// goes to the even code; y <= map[0] gives 0, y >= map[255] gives 255, NaN gives 0.
LOWBIT_HOST_DEVICE inline std::uint8_t bnb8_encode(const float* map, float y) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = map[pivot];
  for (int step = 64; step > 0; step >>= 1) {
    if (y > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += step;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= step;
    }
    val = map[pivot];
  }
  if (upper_pivot == 255) upper = map[upper_pivot];
  if (lower_pivot == 0) lower = map[lower_pivot];
  if (y > val) {
    const float midpoint = (upper + val) * 0.5f;
    return static_cast<std::uint8_t>(y > midpoint ? upper_pivot : pivot);
  }
  const float midpoint = (lower + val) * 0.5f;
  return static_cast<std::uint8_t>(y < midpoint ? lower_pivot : pivot);
}

// bnb8_encode() for many values at once on the host, several times faster: for a strictly ascending
// map, code(y) = the number of boundaries k (0..254) that y passes, where boundary k is passed when
// y > mid_k, or y == mid_k and k + 1 is even. A 65536-entry table indexed by the top 16 bits of y
// gives the code at the bottom of y's bucket; at most `probes` thresholds then remain to test. Maps
// that are not strictly ascending, and non-finite y, go through bnb8_encode() itself. Equal to
// bnb8_encode() for every float (tests/quant/bnb8_test.cpp checks every threshold and its neighbours).
class Bnb8Encoder {
 public:
  explicit Bnb8Encoder(std::span<const float, 256> map);

  std::uint8_t operator()(float y) const {
    if (!fast_ || (float_bits(y) & 0x7f800000u) == 0x7f800000u) return bnb8_encode(map_.data(), y);
    int code = start_[float_bits(y) >> 16];
    const float* t = thresholds_.data() + code;
    for (int j = 0; j < kMaxProbes; ++j) code += y >= t[j] ? 1 : 0;
    return static_cast<std::uint8_t>(code);
  }
  // out[i] = code of x[i] * scale, the product rounded to fp32 first (bnb's y = fl32(w * (1 / absmax))).
  void encode_scaled(const float* x, std::int64_t count, float scale, std::uint8_t* out) const;

  bool fast() const noexcept { return fast_; }
  const std::array<float, 256>& map() const noexcept { return map_; }

  static constexpr int kMaxProbes = 3;  // the dynamic map needs 2, the linear map 1

 private:
  std::array<float, 256> map_{};
  // thresholds_[k]: y passes boundary k iff y >= thresholds_[k]; +Inf beyond 254 so probes past the
  // last boundary never count.
  std::array<float, 255 + kMaxProbes> thresholds_{};
  std::vector<std::uint8_t> start_;  // [65536]
  int probes_ = kMaxProbes;          // thresholds a bucket can hold, at most kMaxProbes
  bool fast_ = false;
};

// bnb's quantize_blockwise on a plain fp32 array (no nesting): absmax[b] = max |x| of block b, codes by
// the CUDA rule; an all-zero block gets absmax 0 and codes 0 (the kernel's 0 * (1/0) = NaN -> code 0).
// Shared with NF4's double quantization. x must be finite; codes.size() == x.size(),
// absmax.size() == ceil(x.size() / block_size). Multi-threaded, deterministic.
void bnb8_quantize_blocks(std::span<const float> x, std::int64_t block_size, const Bnb8Encoder& encoder,
                          std::span<std::uint8_t> codes, std::span<float> absmax);

// ---- the method's three faces ------------------------------------------------------------------------

// W: f32/f16/bf16/f64 of rank 1 to 4, any strides. Throws InvalidArgument for block_size < 1, DTypeMismatch
// for a non-float weight, Numerical naming the first NaN/Inf element (bnb's CUDA kernel would skip a NaN
// in the max and give it code 0; its PyTorch backend would poison the block: we refuse both).
QuantizedTensor quantize_bnb8(const Tensor& weight, const Bnb8Config& config);

// Ground truth: fp32 of the original shape, w_hat = quant_map[code] * a_b with a_b as above. bnb then
// rounds once to the weight's dtype: dequantize_bnb8_reference(q).to(q.dtype) equals its output bit for
// bit. Validates every component (dtype, shape against block_size) and throws Corrupt naming the first
// that is wrong.
Tensor dequantize_bnb8_reference(const QuantizedTensor& q);

// What bitsandbytes' dequantize_blockwise returns: W_hat in `dtype` (f32, f16 or bf16), equal bit for bit to
// dequantize_bnb8_reference(q).to(dtype), several times faster for 16-bit outputs (a 256-entry table of
// outputs per block). Same validation and errors as the reference.
Tensor dequantize_bnb8(const QuantizedTensor& q, DType dtype);

// y = x W_hat^T in fp32, [m, n]; W must be 2-D [n, k] and x [m, k].
Tensor matmul_bnb8_reference(const QuantizedTensor& q, const Tensor& x);

// params: bits 8 (or 0), block_size >= 1, double_quant = nested (nested_block_size 0 or = block_size),
// variant "dynamic" (or "") or "linear". Throws InvalidArgument otherwise.
Bnb8Config bnb8_config_from_params(const QuantParams& params);
QuantParams bnb8_params_from_config(const Bnb8Config& config);

// Registry entry "bnb8".
MethodInfo bnb8_method_info();

}  // namespace lowbit::quant
