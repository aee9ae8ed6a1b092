#include "lowbit/quant/nf4.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "lowbit/core/parallel.hpp"
#include "lowbit/quant/common.hpp"
#include "f16_batch.hpp"

// Every product and sum below must round on its own, as bitsandbytes' kernels do: lowbit builds in ISO C++
// mode (no GNU extensions), where GCC and Clang do not contract a * b + c into one fused multiply-add.

namespace lowbit::quant {
namespace {

template <std::size_t N>
constexpr std::array<float, N> floats_from_bits(const std::uint32_t (&bits)[N]) {
  std::array<float, N> out{};
  for (std::size_t i = 0; i < N; ++i) out[i] = bits_float(bits[i]);
  return out;
}

constexpr std::uint32_t kNf4QuantMapBits[16] = {0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d,
                                                0xbe3d353f, 0xbdba7871, 0x00000000, 0x3da2faff, 0x3e24cae3,
                                                0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3,
                                                0x3f800000};
// bnb get_4bit_type("fp4"): [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, ...] / 12 in fp32; `-0` is a Python
// integer, so index 8 holds +0.0.
constexpr std::uint32_t kFp4QuantMapBits[16] = {0x00000000, 0x3baaaaab, 0x3f2aaaab, 0x3f800000, 0x3eaaaaab,
                                                0x3f000000, 0x3e2aaaab, 0x3e800000, 0x00000000, 0xbbaaaaab,
                                                0xbf2aaaab, 0xbf800000, 0xbeaaaaab, 0xbf000000, 0xbe2aaaab,
                                                0xbe800000};

// bitsandbytes 0.50.2 create_dynamic_map() under torch 2.15 (CPU), printed bit for bit.
// clang-format off
constexpr std::uint32_t kDynamicMapBits[256] = {
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,  // 0
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,  // 8
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,  // 16
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,  // 24
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,  // 32
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,  // 40
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,  // 48
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,  // 56
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,  // 64
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,  // 72
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,  // 80
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,  // 88
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,  // 96
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,  // 104
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,  // 112
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,  // 120
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,  // 128
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,  // 136
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,  // 144
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,  // 152
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,  // 160
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,  // 168
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,  // 176
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,  // 184
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,  // 192
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,  // 200
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,  // 208
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,  // 216
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,  // 224
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,  // 232
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,  // 240
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,  // 248
};
// clang-format on

constexpr auto kNf4QuantMap = floats_from_bits(kNf4QuantMapBits);
constexpr auto kFp4QuantMap = floats_from_bits(kFp4QuantMapBits);
constexpr auto kDynamicMap = floats_from_bits(kDynamicMapBits);

std::string block_size_list() {
  std::string out;
  for (int b : kNf4BlockSizes) out += (out.empty() ? "" : ", ") + std::to_string(b);
  return out;
}

bool valid_block_size(std::int64_t b) {
  return std::find(std::begin(kNf4BlockSizes), std::end(kNf4BlockSizes), b) != std::end(kNf4BlockSizes);
}

std::string_view type_name(Nf4Type type) { return type == Nf4Type::NF4 ? "nf4" : "fp4"; }

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// ---- loading one block as fp32 --------------------------------------------------------------------------
// Each input type: the magnitude bits (|x| orders like these unsigned integers for finite x, and NaN/Inf
// sort above every finite value), the first non-finite pattern, and an exact conversion to fp32 that the
// compiler can vectorize (no loops, no table).

struct LoadF32 {
  using Bits = std::uint32_t;
  static constexpr Bits kNonFinite = 0x7f800000u;
  static Bits magnitude(Bits b) { return b & 0x7fffffffu; }
  static float to_float(Bits b) { return bits_float(b); }
};
struct LoadF16 {
  using Bits = std::uint16_t;
  static constexpr Bits kNonFinite = 0x7c00u;
  static Bits magnitude(Bits b) { return static_cast<Bits>(b & 0x7fffu); }
  static float to_float(Bits h) {
    const std::uint32_t em = h & 0x7fffu;
    const std::uint32_t normal = (em << 13) + 0x38000000u;  // rebias the exponent by 127 - 15
    const std::uint32_t subnormal = float_bits(static_cast<float>(static_cast<int>(em)) * 0x1p-24f);  // exact
    const std::uint32_t is_subnormal = 0u - static_cast<std::uint32_t>(em < 0x400u);  // all ones or zero
    const std::uint32_t magnitude = (subnormal & is_subnormal) | (normal & ~is_subnormal);
    return bits_float(magnitude | (static_cast<std::uint32_t>(h & 0x8000u) << 16));
  }
};
struct LoadBF16 {
  using Bits = std::uint16_t;
  static constexpr Bits kNonFinite = 0x7f80u;
  static Bits magnitude(Bits b) { return static_cast<Bits>(b & 0x7fffu); }
  static float to_float(Bits b) { return bits_float(static_cast<std::uint32_t>(b) << 16); }
};

// +0 for |v| below the smallest normal fp32 (sign-preserving in the kernels; the sign of a zero changes no
// code: dQuantizeFP4 tests x < 0). NaN and Inf pass.
inline float flush_subnormal(float v) { return std::fabs(v) < 0x1p-126f ? 0.0f : v; }

[[noreturn]] void throw_non_finite(const Tensor& weight, std::int64_t index, float value) {
  const std::int64_t cols = weight.rank() >= 1 ? weight.size(-1) : 1;
  LOWBIT_THROW(ErrorCode::Numerical, "quantize_nf4: weight {} has {} at element {} (row {}, column {})",
               weight.describe(), value, index, cols ? index / cols : 0, cols ? index % cols : 0);
}

template <typename Load, Nf4Type kType>
void quantize_blocks(const Tensor& weight, const typename Load::Bits* w, std::int64_t n, int block_size,
                     std::int64_t first_block, std::int64_t end_block, std::uint8_t* codes, float* absmax) {
  using Bits = typename Load::Bits;
  alignas(64) float x[4096 + 2];
  alignas(64) std::uint32_t c[4096 + 2];  // 32-bit lanes: the compare masks add up without narrowing (2.7x)
  for (std::int64_t b = first_block; b < end_block; ++b) {
    const std::int64_t start = b * block_size;
    const int len = static_cast<int>(std::min<std::int64_t>(block_size, n - start));
    const Bits* src = w + start;

    Bits max_bits = 0;
    for (int j = 0; j < len; ++j) max_bits = std::max(max_bits, Load::magnitude(src[j]));
    if (max_bits >= Load::kNonFinite) [[unlikely]] {
      for (int j = 0; j < len; ++j) {
        if (Load::magnitude(src[j]) >= Load::kNonFinite) throw_non_finite(weight, start + j, Load::to_float(src[j]));
      }
    }
    // The kernels are built with --use_fast_math, which flushes fp32 subnormals (inputs and results) to
    // zero; we do the same, so an all-subnormal block stores absmax 0 like a zero block.
    const float a = flush_subnormal(Load::to_float(max_bits));
    absmax[b] = a;
    // IEEE reciprocal, then a multiply, as the kernel does (it uses the fast-math reciprocal, which differs
    // from the IEEE one by an ulp for 13% of inputs). a = 0 gives Inf, and 0 * Inf = NaN maps to code 0:
    // the kernel's output for an all-zero block.
    const float r = 1.0f / a;

    for (int j = 0; j < len; ++j) x[j] = flush_subnormal(flush_subnormal(Load::to_float(src[j])) * r);
    const int even_len = len + (len & 1);
    if (len & 1) x[len] = 0.0f * r;  // the padding element of an odd numel is a loaded 0
    for (int j = 0; j < even_len; ++j) {
      c[j] = kType == Nf4Type::NF4 ? nf4_code(x[j]) : fp4_code(x[j]);
    }
    std::uint8_t* out = codes + start / 2;
    for (int j = 0; j < even_len / 2; ++j) out[j] = static_cast<std::uint8_t>((c[2 * j] << 4) | c[2 * j + 1]);
  }
}

template <typename Load>
void quantize_all(const Tensor& weight, const Tensor& contiguous, Nf4Type type, int block_size,
                  std::uint8_t* codes, float* absmax) {
  const auto* w = static_cast<const typename Load::Bits*>(contiguous.raw_data());
  const std::int64_t n = contiguous.numel();
  const std::int64_t nb = ceil_div(n, block_size);
  const std::int64_t grain = std::max<std::int64_t>(1, 65536 / block_size);
  parallel_for(nb, grain, [&](std::int64_t b0, std::int64_t b1) {
    if (type == Nf4Type::NF4) {
      quantize_blocks<Load, Nf4Type::NF4>(weight, w, n, block_size, b0, b1, codes, absmax);
    } else {
      quantize_blocks<Load, Nf4Type::FP4>(weight, w, n, block_size, b0, b1, codes, absmax);
    }
  });
}

Tensor float_tensor(std::span<const float> values) {
  Tensor t = Tensor::empty({static_cast<std::int64_t>(values.size())}, DType::F32);
  std::copy(values.begin(), values.end(), t.data<float>());
  return t;
}

void check_component(const QuantizedTensor& q, std::string_view operation, std::string_view name, DType dtype,
                     std::int64_t numel) {
  const Tensor& t = q.component(name);
  LOWBIT_CHECK(t.dtype() == dtype && t.numel() == numel && t.device().is_cpu(), ErrorCode::InvalidArgument,
               "{}: {} component '{}' is {}; expected {} with {} elements on the host", operation, q.method, name,
               t.describe(), dtype_name(dtype), numel);
}

QuantizedTensor quantize_with_params(Nf4Type type, const Tensor& weight, const QuantParams& params) {
  const std::string_view method = type_name(type);
  LOWBIT_CHECK(params.bits == 0 || params.bits == 4, ErrorCode::InvalidArgument,
               "{}: bits = {}; this method stores 4-bit codes only (bits 4, or 0 for the default)", method,
               params.bits);
  LOWBIT_CHECK(params.group_size == 0, ErrorCode::InvalidArgument,
               "{}: group_size = {} is not a parameter of this method; its blocks run over the flattened "
               "weight, set block_size instead ({})",
               method, params.group_size, block_size_list());
  LOWBIT_CHECK(params.nested_block_size == 0 || params.nested_block_size == kNf4NestedBlockSize,
               ErrorCode::InvalidArgument,
               "{}: nested_block_size = {}; bitsandbytes fixes the double-quantization block at {} (or give 0)",
               method, params.nested_block_size, kNf4NestedBlockSize);
  LOWBIT_CHECK(params.variant.empty() || params.variant == method, ErrorCode::InvalidArgument,
               "{}: variant '{}' does not match the method; the 4-bit type is chosen by the method name, \"nf4\" "
               "or \"fp4\"",
               method, params.variant);
  Nf4Config config;
  config.type = type;
  LOWBIT_CHECK(params.block_size >= 0 && params.block_size <= 4096, ErrorCode::InvalidArgument,
               "{}: block_size = {}; valid: {} (or 0 for the default 64)", method, params.block_size,
               block_size_list());
  if (params.block_size != 0) config.block_size = static_cast<int>(params.block_size);
  config.double_quant = params.double_quant;
  return quantize_nf4(weight, config);
}

MethodInfo method_info(Nf4Type type) {
  MethodInfo info;
  info.name = std::string(type_name(type));
  info.summary = type == Nf4Type::NF4
                     ? "bitsandbytes NF4 (QLoRA NormalFloat 4-bit), blockwise absmax over the flattened weight, "
                       "optional double quantization"
                     : "bitsandbytes FP4 (1-2-1 float 4-bit), blockwise absmax over the flattened weight, optional "
                       "double quantization";
  info.defaults.bits = 4;
  info.defaults.block_size = 64;
  info.defaults.double_quant = false;
  info.defaults.variant = info.name;
  info.quantize = [type](const Tensor& weight, const QuantParams& params) {
    return quantize_with_params(type, weight, params);
  };
  info.dequantize = [](const QuantizedTensor& q) { return dequantize_nf4_reference(q); };
  info.matmul = [](const QuantizedTensor& q, const Tensor& x) { return matmul_nf4_reference(q, x); };
  return info;
}

}  // namespace

std::span<const float, 16> nf4_quant_map(Nf4Type type) noexcept {
  return type == Nf4Type::NF4 ? std::span<const float, 16>(kNf4QuantMap) : std::span<const float, 16>(kFp4QuantMap);
}

std::span<const float, 256> nf4_dynamic_map() noexcept { return std::span<const float, 256>(kDynamicMap); }

float nf4_absmax_offset(std::span<const float> absmax) {
  if (absmax.empty()) return 0.0f;
  double sum = 0;
  for (float a : absmax) sum += a;
  // torch's mean: an fp32 sum times the fp32 factor 1 / numel (MeanOps), not a division.
  const float factor = 1.0f / static_cast<float>(absmax.size());
  return static_cast<float>(sum) * factor;
}

Nf4NestedAbsmax quantize_nf4_absmax(std::span<const float> absmax, float offset, std::span<const float, 256> map,
                                    int nested_block_size) {
  LOWBIT_CHECK(nested_block_size > 0, ErrorCode::InvalidArgument,
               "quantize_nf4_absmax: nested_block_size = {}; must be positive (bitsandbytes uses {})",
               nested_block_size, kNf4NestedBlockSize);
  const std::int64_t nb = static_cast<std::int64_t>(absmax.size());
  Nf4NestedAbsmax out;
  out.offset = offset;
  out.codes.resize(static_cast<std::size_t>(nb));
  out.nested_absmax.resize(static_cast<std::size_t>(ceil_div(nb, nested_block_size)));
  std::vector<float> d(absmax.size());
  for (std::size_t i = 0; i < absmax.size(); ++i) d[i] = absmax[i] - offset;
  const auto nested_blocks = static_cast<std::int64_t>(out.nested_absmax.size());
  parallel_for(nested_blocks, 16, [&](std::int64_t j0, std::int64_t j1) {
    for (auto j = static_cast<std::size_t>(j0); j < static_cast<std::size_t>(j1); ++j) {
      const std::size_t begin = j * static_cast<std::size_t>(nested_block_size);
      const std::size_t end = std::min(d.size(), begin + static_cast<std::size_t>(nested_block_size));
      float a2 = 0.0f;
      for (std::size_t i = begin; i < end; ++i) a2 = std::max(a2, std::fabs(d[i]));
      out.nested_absmax[j] = a2;
      const float r = 1.0f / a2;  // 0 -> Inf -> NaN -> code 0, as the kernel
      for (std::size_t i = begin; i < end; ++i) out.codes[i] = quantize_dynamic8(map.data(), d[i] * r);
    }
  });
  return out;
}

Nf4Type nf4_type_of(const QuantizedTensor& q) {
  if (q.method == "nf4") return Nf4Type::NF4;
  if (q.method == "fp4") return Nf4Type::FP4;
  LOWBIT_THROW(ErrorCode::InvalidArgument, "nf4: quantized tensor has method '{}'; expected \"nf4\" or \"fp4\"",
               q.method);
}

void validate_nf4(const QuantizedTensor& q, std::string_view operation) {
  nf4_type_of(q);
  const QuantParams& p = q.params;
  LOWBIT_CHECK(p.bits == 4 && p.block_size > 0, ErrorCode::InvalidArgument,
               "{}: {} tensor has bits = {}, block_size = {}; expected bits 4 and a positive block_size", operation,
               q.method, p.bits, p.block_size);
  const std::int64_t n = q.shape.numel();
  LOWBIT_CHECK(n > 0, ErrorCode::InvalidArgument, "{}: {} tensor has shape {} with no elements", operation, q.method,
               q.shape.to_string());
  const std::int64_t nb = ceil_div(n, p.block_size);
  check_component(q, operation, "codes", DType::U8, ceil_div(n, 2));
  check_component(q, operation, "quant_map", DType::F32, 16);
  if (!p.double_quant) {
    check_component(q, operation, "absmax", DType::F32, nb);
    return;
  }
  LOWBIT_CHECK(p.nested_block_size > 0, ErrorCode::InvalidArgument,
               "{}: {} tensor is double quantized but has nested_block_size = {}", operation, q.method,
               p.nested_block_size);
  check_component(q, operation, "absmax", DType::U8, nb);
  check_component(q, operation, "nested_absmax", DType::F32, ceil_div(nb, p.nested_block_size));
  check_component(q, operation, "nested_quant_map", DType::F32, 256);
  check_component(q, operation, "nested_offset", DType::F32, 1);
}

std::vector<float> nf4_block_absmax(const QuantizedTensor& q) {
  validate_nf4(q, "nf4_block_absmax");
  const Tensor absmax = q.component("absmax").contiguous();
  const std::int64_t nb = absmax.numel();
  std::vector<float> out(static_cast<std::size_t>(nb));
  if (!q.params.double_quant) {
    std::copy_n(absmax.data<float>(), nb, out.begin());
    return out;
  }
  const std::uint8_t* codes = absmax.data<std::uint8_t>();
  const Tensor nested = q.component("nested_absmax").contiguous();
  const Tensor map = q.component("nested_quant_map").contiguous();
  const float* a2 = nested.data<float>();
  const float* d = map.data<float>();
  const float offset = q.component("nested_offset").contiguous().data<float>()[0];
  const std::int64_t nbs = q.params.nested_block_size;
  for (std::int64_t b = 0; b < nb; ++b) {
    const float scaled = d[codes[b]] * a2[b / nbs];  // dequantize_blockwise's fp32 result
    out[static_cast<std::size_t>(b)] = scaled + offset;  // then `absmax += offset`
  }
  return out;
}

QuantizedTensor quantize_nf4(const Tensor& weight, const Nf4Config& config) {
  const std::string_view method = type_name(config.type);
  LOWBIT_CHECK(config.type == Nf4Type::NF4 || config.type == Nf4Type::FP4, ErrorCode::InvalidArgument,
               "quantize_nf4: unknown type {}; expected NF4 or FP4", static_cast<int>(config.type));
  LOWBIT_CHECK(valid_block_size(config.block_size), ErrorCode::InvalidArgument,
               "quantize_nf4: block_size = {} is not one bitsandbytes accepts; valid: {}", config.block_size,
               block_size_list());
  LOWBIT_CHECK(weight.defined(), ErrorCode::InvalidArgument, "quantize_nf4: the weight is undefined");
  LOWBIT_CHECK(weight.dtype() == DType::F32 || weight.dtype() == DType::F16 || weight.dtype() == DType::BF16,
               ErrorCode::DTypeMismatch,
               "quantize_nf4: weight is {}; expected f32, f16 or bf16 (the dtypes bitsandbytes quantizes)",
               weight.describe());
  LOWBIT_CHECK(weight.device().is_cpu(), ErrorCode::Unsupported,
               "quantize_nf4: weight {} is on a device; quantize_nf4 runs on the host", weight.describe());
  const std::int64_t n = weight.numel();
  LOWBIT_CHECK(n > 0, ErrorCode::InvalidArgument, "quantize_nf4: weight {} has no elements", weight.describe());

  const Tensor w = weight.contiguous();
  const int block_size = config.block_size;
  const std::int64_t nb = ceil_div(n, block_size);
  Tensor codes = Tensor::empty({ceil_div(n, 2)}, DType::U8);
  Tensor absmax = Tensor::empty({nb}, DType::F32);
  std::uint8_t* codes_out = codes.data<std::uint8_t>();
  float* absmax_out = absmax.data<float>();
  switch (w.dtype()) {
    case DType::F32: quantize_all<LoadF32>(weight, w, config.type, block_size, codes_out, absmax_out); break;
    case DType::F16: quantize_all<LoadF16>(weight, w, config.type, block_size, codes_out, absmax_out); break;
    default: quantize_all<LoadBF16>(weight, w, config.type, block_size, codes_out, absmax_out); break;
  }

  QuantizedTensor q;
  q.method = std::string(method);
  q.shape = weight.shape();
  q.dtype = weight.dtype();
  q.params.bits = 4;
  q.params.block_size = block_size;
  q.params.variant = q.method;
  q.components.emplace("codes", std::move(codes));
  q.components.emplace("quant_map", float_tensor(nf4_quant_map(config.type)));
  if (!config.double_quant) {
    q.components.emplace("absmax", std::move(absmax));
    return q;
  }
  const std::span<const float> a(absmax_out, static_cast<std::size_t>(nb));
  const Nf4NestedAbsmax nested = quantize_nf4_absmax(a, nf4_absmax_offset(a));
  q.params.double_quant = true;
  q.params.nested_block_size = kNf4NestedBlockSize;
  Tensor absmax_codes = Tensor::empty({nb}, DType::U8);
  std::copy(nested.codes.begin(), nested.codes.end(), absmax_codes.data<std::uint8_t>());
  q.components.emplace("absmax", std::move(absmax_codes));
  q.components.emplace("nested_absmax", float_tensor(nested.nested_absmax));
  q.components.emplace("nested_quant_map", float_tensor(nf4_dynamic_map()));
  q.components.emplace("nested_offset", float_tensor(std::span<const float>(&nested.offset, 1)));
  return q;
}

namespace {

// What decoding a validated NF4/FP4 tensor needs: its blocks' absmax (nested ones decoded), its packed codes
// and the type's 16 values.
struct Nf4Decode {
  std::vector<float> absmax;
  Tensor codes_tensor;
  const std::uint8_t* codes = nullptr;
  std::int64_t n = 0;
  std::int64_t block_size = 0;
  float values[16] = {};
};

Nf4Decode open_nf4_decode(const QuantizedTensor& q, std::string_view op) {
  validate_nf4(q, op);
  Nf4Decode d;
  const Nf4Type type = nf4_type_of(q);
  d.absmax = nf4_block_absmax(q);
  d.codes_tensor = q.component("codes").contiguous();
  d.codes = d.codes_tensor.data<std::uint8_t>();
  d.n = q.shape.numel();
  d.block_size = q.params.block_size;
  for (unsigned c = 0; c < 16; ++c) d.values[c] = nf4_type_value(type, c);
  return d;
}

}  // namespace

Tensor dequantize_nf4_reference(const QuantizedTensor& q) {
  const Nf4Decode d = open_nf4_decode(q, "dequantize_nf4_reference");
  Tensor out = Tensor::empty(q.shape, DType::F32);
  float* w = out.data<float>();
  parallel_for(static_cast<std::int64_t>(d.absmax.size()), std::max<std::int64_t>(1, 65536 / d.block_size),
               [&](std::int64_t b0, std::int64_t b1) {
                 for (std::int64_t b = b0; b < b1; ++b) {
                   const float a = d.absmax[static_cast<std::size_t>(b)];
                   const std::int64_t end = std::min(d.n, (b + 1) * d.block_size);
                   std::int64_t e = b * d.block_size;  // even: blocks start on whole bytes
                   for (; e + 1 < end; e += 2) {
                     const std::uint8_t byte = d.codes[e / 2];
                     w[e] = d.values[byte >> 4] * a;
                     w[e + 1] = d.values[byte & 15] * a;
                   }
                   if (e < end) w[e] = d.values[nf4_code_at(d.codes, e)] * a;  // odd numel: the last element
                 }
               });
  return out;
}

namespace {

// out[2i], out[2i + 1] = table[codes[i] >> 4], table[codes[i] & 15] for i < bytes: the 16-bit outputs of
// `bytes` code bytes. SSSE3's PSHUFB looks up the low and the high bytes of the 16 table entries for 16
// codes at once; the portable loop does the rest and runs where the CPU lacks it.
void lookup_code_pairs_portable(const std::uint16_t (&table)[16], const std::uint8_t* codes, std::uint16_t* out,
                                std::int64_t bytes) {
  for (std::int64_t i = 0; i < bytes; ++i) {
    out[2 * i] = table[codes[i] >> 4];
    out[2 * i + 1] = table[codes[i] & 15];
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("ssse3"))) void lookup_code_pairs_ssse3(const std::uint16_t (&table)[16],
                                                             const std::uint8_t* codes, std::uint16_t* out,
                                                             std::int64_t bytes) {
  const __m128i t0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(table));
  const __m128i t1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(table + 8));
  const __m128i low_byte = _mm_set1_epi16(0x00ff);
  const __m128i lows = _mm_packus_epi16(_mm_and_si128(t0, low_byte), _mm_and_si128(t1, low_byte));
  const __m128i highs = _mm_packus_epi16(_mm_srli_epi16(t0, 8), _mm_srli_epi16(t1, 8));
  const __m128i nibble = _mm_set1_epi8(0x0f);
  std::int64_t i = 0;
  for (; i + 16 <= bytes; i += 16) {
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(c, 4), nibble);  // element 2i
    const __m128i lo = _mm_and_si128(c, nibble);                      // element 2i + 1
    const __m128i idx[2] = {_mm_unpacklo_epi8(hi, lo), _mm_unpackhi_epi8(hi, lo)};  // elements in order
    for (int h = 0; h < 2; ++h) {
      const __m128i l = _mm_shuffle_epi8(lows, idx[h]);
      const __m128i u = _mm_shuffle_epi8(highs, idx[h]);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i + 16 * h), _mm_unpacklo_epi8(l, u));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i + 16 * h + 8), _mm_unpackhi_epi8(l, u));
    }
  }
  lookup_code_pairs_portable(table, codes + i, out + 2 * i, bytes - i);
}
#endif

void lookup_code_pairs(const std::uint16_t (&table)[16], const std::uint8_t* codes, std::uint16_t* out,
                       std::int64_t bytes) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (detail::have_f16c()) return lookup_code_pairs_ssse3(table, codes, out, bytes);  // F16C implies SSSE3
#endif
  lookup_code_pairs_portable(table, codes, out, bytes);
}

}  // namespace

Tensor dequantize_nf4(const QuantizedTensor& q, DType dtype) {
  LOWBIT_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, ErrorCode::InvalidArgument,
               "dequantize_nf4: output dtype {} is not supported; valid: f32, f16, bf16", dtype_name(dtype));
  if (dtype == DType::F32) return dequantize_nf4_reference(q);
  const Nf4Decode d = open_nf4_decode(q, "dequantize_nf4");
  Tensor out = Tensor::empty(q.shape, dtype);
  auto* w = static_cast<std::uint16_t*>(out.raw_data());
  const bool f16 = dtype == DType::F16;
  parallel_for(static_cast<std::int64_t>(d.absmax.size()), std::max<std::int64_t>(1, 65536 / d.block_size),
               [&](std::int64_t b0, std::int64_t b1) {
                 float scaled[16];
                 std::uint16_t table[16];
                 for (std::int64_t b = b0; b < b1; ++b) {
                   // the block's 16 outputs: fl32(T[code] * a_b) rounded once, as the reference's .to(dtype)
                   const float a = d.absmax[static_cast<std::size_t>(b)];
                   for (unsigned c = 0; c < 16; ++c) scaled[c] = d.values[c] * a;
                   if (f16) {
                     detail::f32_to_f16_batch(scaled, table, 16);
                   } else {
                     for (unsigned c = 0; c < 16; ++c) table[c] = f32_to_bf16_bits(scaled[c]);
                   }
                   const std::int64_t first = b * d.block_size;  // even: blocks start on whole bytes
                   const std::int64_t end = std::min(d.n, first + d.block_size);
                   lookup_code_pairs(table, d.codes + first / 2, w + first, (end - first) / 2);
                   if ((end - first) % 2 != 0) w[end - 1] = table[nf4_code_at(d.codes, end - 1)];  // odd numel
                 }
               });
  return out;
}

Tensor matmul_nf4_reference(const QuantizedTensor& q, const Tensor& x) {
  LOWBIT_CHECK(q.shape.rank() == 2, ErrorCode::ShapeMismatch,
               "matmul_nf4_reference: {} weight has shape {}; the matmul needs a 2-D weight [n, k]", q.method,
               q.shape.to_string());
  return matmul_reference(x, dequantize_nf4_reference(q));
}

MethodInfo nf4_method_info() { return method_info(Nf4Type::NF4); }
MethodInfo fp4_method_info() { return method_info(Nf4Type::FP4); }

}  // namespace lowbit::quant
