// Exact conversions between fp32 and the two 16-bit float formats, usable on host and device.
//
//     fp16 (IEEE binary16):  | sign | exponent (5, bias 15) | mantissa (10) |
//     bf16 (bfloat16):       | sign | exponent (8, bias 127) | mantissa (7) |   = the top half of an fp32
//
// fp32 -> 16 bit rounds to nearest, ties to even, as hardware conversions do. Overflow gives +-Inf
// (fp16: |x| >= 65520, the midpoint between 65504 and 2^16). Results that fall below the smallest normal
// become subnormals, rounded the same way. A NaN stays a NaN with its sign and the top of its payload,
// made quiet, so it never turns into an Inf. 16 bit -> fp32 is exact for all 65,536 patterns.
// tests/core/half_test.cpp checks every pattern of both types against independent computations.
#pragma once

#include <cstdint>

#include "lowbit/core/config.hpp"
#include "lowbit/core/dtype.hpp"

namespace lowbit {

LOWBIT_HOST_DEVICE constexpr std::uint32_t float_bits(float f) noexcept {
  return __builtin_bit_cast(std::uint32_t, f);
}
LOWBIT_HOST_DEVICE constexpr float bits_float(std::uint32_t u) noexcept { return __builtin_bit_cast(float, u); }

LOWBIT_HOST_DEVICE constexpr std::uint16_t f32_to_f16_bits(float f) noexcept {
  std::uint32_t x = float_bits(f);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) {  // Inf or NaN
    if (x == 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));  // quiet bit set
  }
  if (x >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to Inf
  if (x < 0x38800000u) {  // below 2^-14: an fp16 subnormal or zero, in units of 2^-24
    const std::uint32_t exponent = x >> 23;
    if (exponent < 102) return sign;  // below 2^-25: rounds to zero (2^-25 itself is a tie, to even 0)
    const std::uint32_t mantissa = (x & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126 - exponent;  // 14..24
    const std::uint32_t halfway = 1u << (shift - 1);
    const std::uint32_t rest = mantissa & ((1u << shift) - 1);
    std::uint32_t r = mantissa >> shift;
    if (rest > halfway || (rest == halfway && (r & 1u))) ++r;  // may carry into the smallest normal
    return static_cast<std::uint16_t>(sign | r);
  }
  // Normal: rebias the exponent by 127 - 15 = 112; a rounding carry moves into the exponent correctly.
  std::uint32_t r = (x - 0x38000000u) >> 13;
  const std::uint32_t rest = x & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) ++r;
  return static_cast<std::uint16_t>(sign | r);
}

LOWBIT_HOST_DEVICE constexpr float f16_bits_to_f32(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    if (mantissa == 0) return bits_float(sign);
    std::uint32_t e = 113;  // 127 - 14, the exponent of 2^-14, lowered once per normalizing shift
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    return bits_float(sign | e << 23 | (mantissa & 0x3ffu) << 13);
  }
  return bits_float(sign | (exponent + 112) << 23 | mantissa << 13);
}

LOWBIT_HOST_DEVICE constexpr std::uint16_t f32_to_bf16_bits(float f) noexcept {
  const std::uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);  // ties to even; overflow carries to Inf
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

LOWBIT_HOST_DEVICE constexpr float bf16_bits_to_f32(std::uint16_t b) noexcept {
  return bits_float(static_cast<std::uint32_t>(b) << 16);
}

// Storage types for 16-bit floats: plain bits, no arithmetic (convert to float for that).
struct Half {
  std::uint16_t bits = 0;
  LOWBIT_HOST_DEVICE static constexpr Half from_float(float f) noexcept { return Half{f32_to_f16_bits(f)}; }
  LOWBIT_HOST_DEVICE constexpr float to_float() const noexcept { return f16_bits_to_f32(bits); }
};
struct BFloat16 {
  std::uint16_t bits = 0;
  LOWBIT_HOST_DEVICE static constexpr BFloat16 from_float(float f) noexcept {
    return BFloat16{f32_to_bf16_bits(f)};
  }
  LOWBIT_HOST_DEVICE constexpr float to_float() const noexcept { return bf16_bits_to_f32(bits); }
};
static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2);

template <> struct dtype_of<Half> { static constexpr DType value = DType::F16; };
template <> struct dtype_of<BFloat16> { static constexpr DType value = DType::BF16; };

}  // namespace lowbit
