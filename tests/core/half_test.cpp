// half.hpp against independent computations, over every one of the 65,536 patterns of fp16 and of bf16.
//
// Independent means: the expected values come from the fields by ldexp (16 bit -> fp32), from a search
// for the nearest representable value with ties to even (fp32 -> 16 bit), and, for fp16, from the
// compiler's own _Float16 conversions (libgcc's soft-fp on x86-64). None of them shares half.hpp's bit
// tricks, so a wrong shift or rounding constant cannot be reproduced by the reference.
#include "lowbit/core/half.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace lowbit {
namespace {

// ---- compile-time usability: every conversion is constexpr -------------------------------------------------
static_assert(f32_to_f16_bits(1.0f) == 0x3c00);
static_assert(f32_to_f16_bits(-2.0f) == 0xc000);
static_assert(f32_to_f16_bits(65520.0f) == 0x7c00);
static_assert(f32_to_f16_bits(0x1p-24f) == 0x0001);
static_assert(f16_bits_to_f32(0x3c00) == 1.0f);
static_assert(f16_bits_to_f32(0x03ff) == 1023.0f * 0x1p-24f);  // runs the subnormal normalising loop
static_assert(f16_bits_to_f32(0x7bff) == 65504.0f);
static_assert(f32_to_bf16_bits(1.0f) == 0x3f80);
static_assert(f32_to_bf16_bits(-0.0f) == 0x8000);
static_assert(bf16_bits_to_f32(0x4049) == 3.140625f);
static_assert(Half::from_float(0.5f).bits == 0x3800);
static_assert(Half{0xc500}.to_float() == -5.0f);
static_assert(BFloat16::from_float(3.0f).bits == 0x4040);
static_assert(BFloat16{0xbf80}.to_float() == -1.0f);
static_assert(dtype_of<Half>::value == DType::F16);
static_assert(dtype_of<BFloat16>::value == DType::BF16);

// ---- independent references ----------------------------------------------------------------------------

constexpr std::uint16_t kF16Inf = 0x7c00;
constexpr std::uint16_t kBf16Inf = 0x7f80;

bool is_f16_nan(std::uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }
bool is_bf16_nan(std::uint16_t b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0; }

// Value of an fp16 pattern from its fields. The all-ones exponent with mantissa 0 gives 2^16 rather than
// Inf when `unbounded` is set: the value the next step after 65504 would have with an unbounded exponent,
// which is what IEEE round-to-nearest compares against to decide overflow.
long double f16_value(std::uint16_t h, bool unbounded = false) {
  const int sign = h >> 15;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  long double magnitude;
  if (exponent == 0x1f && !(unbounded && mantissa == 0)) {
    magnitude = mantissa == 0 ? std::numeric_limits<long double>::infinity()
                              : std::numeric_limits<long double>::quiet_NaN();
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<long double>(mantissa), -24);  // subnormal: m * 2^-24
  } else {
    magnitude = std::ldexp(static_cast<long double>(1024 + mantissa), exponent - 15 - 10);
  }
  return sign ? -magnitude : magnitude;
}

// Same for bf16: 8 exponent bits (bias 127), 7 mantissa bits; subnormals m * 2^-133.
long double bf16_value(std::uint16_t b, bool unbounded = false) {
  const int sign = b >> 15;
  const int exponent = (b >> 7) & 0xff;
  const int mantissa = b & 0x7f;
  long double magnitude;
  if (exponent == 0xff && !(unbounded && mantissa == 0)) {
    magnitude = mantissa == 0 ? std::numeric_limits<long double>::infinity()
                              : std::numeric_limits<long double>::quiet_NaN();
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<long double>(mantissa), -133);
  } else {
    magnitude = std::ldexp(static_cast<long double>(128 + mantissa), exponent - 127 - 7);
  }
  return sign ? -magnitude : magnitude;
}

// Magnitudes of the patterns 0 .. inf_bits (the last one as 2^16 or 2^128), increasing.
std::vector<long double> magnitude_table(std::uint16_t inf_bits, long double (*value)(std::uint16_t, bool)) {
  std::vector<long double> table(inf_bits + 1u);
  for (std::uint32_t p = 0; p <= inf_bits; ++p) table[p] = value(static_cast<std::uint16_t>(p), true);
  return table;
}

const std::vector<long double>& f16_magnitudes() {
  static const std::vector<long double> table = magnitude_table(kF16Inf, f16_value);
  return table;
}
const std::vector<long double>& bf16_magnitudes() {
  static const std::vector<long double> table = magnitude_table(kBf16Inf, bf16_value);
  return table;
}

// Round a finite or infinite non-NaN x to the pattern nearest in value, ties to the even pattern, by
// searching the table of all magnitudes. Beyond the table's last entry (2^16 / 2^128) lies only Inf.
// Every midpoint of two table entries and every float are exact in long double, so the comparisons are.
std::uint16_t round_nearest_even(long double x, const std::vector<long double>& magnitudes) {
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const long double a = std::fabs(x);
  const auto last = static_cast<std::uint16_t>(magnitudes.size() - 1);  // the Inf pattern
  if (a >= magnitudes.back()) return static_cast<std::uint16_t>(sign | last);
  // lo: the largest pattern with magnitude <= a.
  const auto it = std::upper_bound(magnitudes.begin(), magnitudes.end(), a);
  const auto lo = static_cast<std::uint16_t>((it - magnitudes.begin()) - 1);
  const auto hi = static_cast<std::uint16_t>(lo + 1);
  const long double mid = (magnitudes[lo] + magnitudes[hi]) / 2;
  std::uint16_t r;
  if (a < mid) {
    r = lo;
  } else if (a > mid) {
    r = hi;
  } else {
    r = (lo & 1u) == 0 ? lo : hi;
  }
  return static_cast<std::uint16_t>(sign | r);
}

std::uint16_t reference_f32_to_f16(float f) { return round_nearest_even(f, f16_magnitudes()); }
std::uint16_t reference_f32_to_bf16(float f) { return round_nearest_even(f, bf16_magnitudes()); }

std::uint16_t compiler_f32_to_f16(float f) { return std::bit_cast<std::uint16_t>(static_cast<_Float16>(f)); }
float compiler_f16_to_f32(std::uint16_t h) { return static_cast<float>(std::bit_cast<_Float16>(h)); }

// Collects mismatches of a long loop and reports the first few, so one bug does not print 65,536 lines.
class Mismatches {
 public:
  void add(const std::string& what) {
    if (count_ < 8) first_ += what + "\n";
    ++count_;
  }
  std::int64_t count() const { return count_; }
  const std::string& first() const { return first_; }

 private:
  std::int64_t count_ = 0;
  std::string first_;
};

#define EXPECT_NO_MISMATCHES(m) EXPECT_EQ((m).count(), 0) << "first mismatches:\n" << (m).first()

std::string hex32(float f) { return fmt::format("{:#010x} ({})", float_bits(f), f); }

// ---- fp16 -> fp32 ----------------------------------------------------------------------------------------

TEST(HalfToFloat, EveryPatternMatchesFieldsAndCompiler) {
  Mismatches m;
  for (std::uint32_t p = 0; p <= 0xffff; ++p) {
    const auto h = static_cast<std::uint16_t>(p);
    const float got = f16_bits_to_f32(h);
    const float compiler = compiler_f16_to_f32(h);
    if (is_f16_nan(h)) {
      if (!std::isnan(got) || std::signbit(got) != ((h & 0x8000u) != 0) || !std::isnan(compiler)) {
        m.add(fmt::format("{:#06x}: got {}, compiler {}; want NaN with sign {}", h, hex32(got), hex32(compiler),
                          h >> 15));
      }
      continue;
    }
    const float want = static_cast<float>(f16_value(h));  // exact: fp16 values are fp32 values
    if (float_bits(got) != float_bits(want) || float_bits(compiler) != float_bits(want)) {
      m.add(fmt::format("{:#06x}: got {}, fields {}, compiler {}", h, hex32(got), hex32(want), hex32(compiler)));
    }
  }
  EXPECT_NO_MISMATCHES(m);
}

TEST(HalfToFloat, SpecialValues) {
  EXPECT_EQ(float_bits(f16_bits_to_f32(0x0000)), 0x00000000u);
  EXPECT_EQ(float_bits(f16_bits_to_f32(0x8000)), 0x80000000u);  // -0 keeps its sign
  EXPECT_EQ(f16_bits_to_f32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_bits_to_f32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_bits_to_f32(0x0001), 0x1p-24f);    // smallest subnormal
  EXPECT_EQ(f16_bits_to_f32(0x03ff), 0x1.ff8p-15f);  // largest subnormal
  EXPECT_EQ(f16_bits_to_f32(0x0400), 0x1p-14f);    // smallest normal
  EXPECT_EQ(f16_bits_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_bits_to_f32(0x3555), 0x1.554p-2f);
  EXPECT_TRUE(std::isnan(f16_bits_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_bits_to_f32(0x7c01)));  // signalling NaN with the lowest payload bit
  EXPECT_TRUE(std::signbit(f16_bits_to_f32(0xfe00)));
}

// ---- fp32 -> fp16 ----------------------------------------------------------------------------------------

// Checks ours, the compiler's and the naive reference against an expected pattern known by construction.
void expect_f16(float f, std::uint16_t want, Mismatches& m, const char* what) {
  const std::uint16_t got = f32_to_f16_bits(f);
  const std::uint16_t compiler = compiler_f32_to_f16(f);
  const std::uint16_t naive = reference_f32_to_f16(f);
  if (got != want || compiler != want || naive != want) {
    m.add(fmt::format("{} {}: got {:#06x}, want {:#06x}, compiler {:#06x}, naive {:#06x}", what, hex32(f), got,
                      want, compiler, naive));
  }
}

TEST(FloatToHalf, EveryValueMidpointAndNeighbourRoundsToNearestEven) {
  Mismatches m;
  // h runs over the finite non-negative patterns; h + 1 over the next one up to Inf (value 2^16 as the
  // unbounded-exponent successor of 65504, so the midpoint 65520 is the overflow threshold).
  for (std::uint32_t p = 0; p <= 0x7bff; ++p) {
    for (const std::uint16_t sign : {std::uint16_t{0}, std::uint16_t{0x8000}}) {
      const auto lo = static_cast<std::uint16_t>(p | sign);
      const auto hi = static_cast<std::uint16_t>((p + 1) | sign);
      const float v = static_cast<float>(f16_value(lo));
      const float toward_zero = 0.0f;
      const float away = sign ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();

      expect_f16(v, lo, m, "value");  // exact round trip, -0 included
      if (v != 0.0f) expect_f16(std::nextafter(v, toward_zero), lo, m, "below value");
      expect_f16(std::nextafter(v, away), lo, m, "above value");  // from 0: the smallest float, to 0

      // fp16 midpoints have 12 significant bits and exponent >= -25: exact in fp32.
      const float mid = static_cast<float>((f16_value(lo) + f16_value(hi, true)) / 2);
      ASSERT_EQ(static_cast<long double>(mid), (f16_value(lo) + f16_value(hi, true)) / 2);
      const std::uint16_t even = (p & 1u) == 0 ? lo : hi;
      expect_f16(mid, even, m, "midpoint");
      expect_f16(std::nextafter(mid, toward_zero), lo, m, "below midpoint");
      expect_f16(std::nextafter(mid, away), hi, m, "above midpoint");
    }
  }
  EXPECT_NO_MISMATCHES(m);
}

TEST(FloatToHalf, OverflowAndInfinity) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(f32_to_f16_bits(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16_bits(65519.99f), 0x7bff);
  EXPECT_EQ(f32_to_f16_bits(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(f32_to_f16_bits(65520.0f), 0x7c00);  // tie between 65504 (odd) and 2^16 (even): Inf
  EXPECT_EQ(f32_to_f16_bits(std::nextafter(65520.0f, inf)), 0x7c00);
  EXPECT_EQ(f32_to_f16_bits(65536.0f), 0x7c00);
  EXPECT_EQ(f32_to_f16_bits(1e10f), 0x7c00);
  EXPECT_EQ(f32_to_f16_bits(std::numeric_limits<float>::max()), 0x7c00);
  EXPECT_EQ(f32_to_f16_bits(inf), 0x7c00);
  EXPECT_EQ(f32_to_f16_bits(-65504.0f), 0xfbff);
  EXPECT_EQ(f32_to_f16_bits(-65520.0f), 0xfc00);
  EXPECT_EQ(f32_to_f16_bits(-std::numeric_limits<float>::max()), 0xfc00);
  EXPECT_EQ(f32_to_f16_bits(-inf), 0xfc00);
}

TEST(FloatToHalf, SubnormalsZeroAndTheCarryIntoNormals) {
  EXPECT_EQ(f32_to_f16_bits(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16_bits(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16_bits(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(f32_to_f16_bits(-std::numeric_limits<float>::denorm_min()), 0x8000);  // underflow keeps the sign
  EXPECT_EQ(f32_to_f16_bits(std::numeric_limits<float>::min()), 0x0000);
  EXPECT_EQ(f32_to_f16_bits(0x1p-26f), 0x0000);
  EXPECT_EQ(f32_to_f16_bits(0x1.fffffep-26f), 0x0000);  // the largest float below 2^-25
  EXPECT_EQ(f32_to_f16_bits(0x1p-25f), 0x0000);         // tie between 0 (even) and 2^-24: 0
  EXPECT_EQ(f32_to_f16_bits(-0x1p-25f), 0x8000);
  EXPECT_EQ(f32_to_f16_bits(0x1.000002p-25f), 0x0001);  // just above 2^-25: the smallest subnormal
  EXPECT_EQ(f32_to_f16_bits(0x1.8p-25f), 0x0001);
  EXPECT_EQ(f32_to_f16_bits(0x1p-24f), 0x0001);
  EXPECT_EQ(f32_to_f16_bits(0x1.8p-24f), 0x0002);  // 1.5 units: tie, to even 2
  EXPECT_EQ(f32_to_f16_bits(0x1.4p-23f), 0x0002);  // 2.5 units: tie, to even 2
  EXPECT_EQ(f32_to_f16_bits(0x1.cp-23f), 0x0004);  // 3.5 units: tie, to even 4
  EXPECT_EQ(f32_to_f16_bits(0x1.ff8p-15f), 0x03ff);                          // largest subnormal
  EXPECT_EQ(f32_to_f16_bits(0x1.ffcp-15f), 0x0400);                          // 1023.5 units: tie, carry to normal
  EXPECT_EQ(f32_to_f16_bits(std::nextafter(0x1.ffcp-15f, 0.0f)), 0x03ff);
  EXPECT_EQ(f32_to_f16_bits(std::nextafter(0x1p-14f, 0.0f)), 0x0400);       // carry from the mantissa
  EXPECT_EQ(f32_to_f16_bits(0x1p-14f), 0x0400);
  EXPECT_EQ(f32_to_f16_bits(0x1.ffep-1f), 0x3c00);  // carry within normals: 1 - 2^-12 rounds up to 1.0
  EXPECT_EQ(f32_to_f16_bits(0x1.ffdp-1f), 0x3bff);
}

TEST(FloatToHalf, EveryNanStaysQuietNanWithSignAndTopPayload) {
  Mismatches m;
  for (const std::uint32_t sign : {0u, 0x80000000u}) {
    for (std::uint32_t mantissa = 1; mantissa < (1u << 23); ++mantissa) {
      const float f = bits_float(sign | 0x7f800000u | mantissa);
      const std::uint16_t got = f32_to_f16_bits(f);
      // The top 10 payload bits survive, the quiet bit (the top one) is set.
      const auto want = static_cast<std::uint16_t>((sign >> 16) | 0x7c00u | 0x200u | (mantissa >> 13));
      if (got != want || !is_f16_nan(got)) m.add(fmt::format("{}: got {:#06x}, want {:#06x}", hex32(f), got, want));
    }
  }
  EXPECT_NO_MISMATCHES(m);
  // Spot checks against the compiler: NaN, same sign, quiet.
  for (const std::uint32_t bits : {0x7fc00000u, 0x7f800001u, 0x7fbfe000u, 0xffc00001u, 0xff800001u, 0x7fffffffu}) {
    const float f = bits_float(bits);
    const std::uint16_t compiler = compiler_f32_to_f16(f);
    const std::uint16_t got = f32_to_f16_bits(f);
    EXPECT_TRUE(is_f16_nan(compiler) && is_f16_nan(got)) << hex32(f);
    EXPECT_EQ(got & 0x8000u, compiler & 0x8000u) << hex32(f);
    EXPECT_EQ(got & 0x200u, 0x200u) << hex32(f);
  }
}

TEST(FloatToHalf, RandomFloatsMatchCompilerAndNaiveReference) {
  constexpr std::uint32_t kSeed = 20240611;
  SCOPED_TRACE(fmt::format("seed {}", kSeed));
  std::mt19937 rng(kSeed);
  Mismatches m;
  // Half fully random bit patterns, half with the exponent in fp16's range ([2^-27, 2^17)), where almost
  // all of the rounding happens; random bit patterns alone land there one time in six.
  constexpr int kCount = 1 << 21;
  for (int i = 0; i < 2 * kCount; ++i) {
    std::uint32_t bits = rng();
    if (i >= kCount) {
      const std::uint32_t exponent = 100 + rng() % 44;
      bits = (bits & 0x807fffffu) | (exponent << 23);
    }
    const float f = bits_float(bits);
    const std::uint16_t got = f32_to_f16_bits(f);
    const std::uint16_t compiler = compiler_f32_to_f16(f);
    if (std::isnan(f)) {
      if (!is_f16_nan(got) || !is_f16_nan(compiler) || (got & 0x8000u) != (compiler & 0x8000u)) {
        m.add(fmt::format("{}: got {:#06x}, compiler {:#06x}", hex32(f), got, compiler));
      }
      continue;
    }
    const std::uint16_t naive = reference_f32_to_f16(f);
    if (got != compiler || got != naive) {
      m.add(fmt::format("{}: got {:#06x}, compiler {:#06x}, naive {:#06x}", hex32(f), got, compiler, naive));
    }
  }
  EXPECT_NO_MISMATCHES(m);
}

// ---- bf16 -> fp32 ----------------------------------------------------------------------------------------

TEST(BFloat16ToFloat, EveryPatternMatchesFields) {
  Mismatches m;
  for (std::uint32_t p = 0; p <= 0xffff; ++p) {
    const auto b = static_cast<std::uint16_t>(p);
    const float got = bf16_bits_to_f32(b);
    if (is_bf16_nan(b)) {
      if (!std::isnan(got) || std::signbit(got) != ((b & 0x8000u) != 0)) {
        m.add(fmt::format("{:#06x}: got {}, want NaN with sign {}", b, hex32(got), b >> 15));
      }
      continue;
    }
    const long double want = bf16_value(b);
    if (static_cast<long double>(got) != want || std::signbit(got) != std::signbit(want)) {
      m.add(fmt::format("{:#06x}: got {}, fields {}", b, hex32(got), static_cast<double>(want)));
    }
  }
  EXPECT_NO_MISMATCHES(m);
}

// ---- fp32 -> bf16 ----------------------------------------------------------------------------------------

void expect_bf16(float f, std::uint16_t want, Mismatches& m, const char* what) {
  const std::uint16_t got = f32_to_bf16_bits(f);
  const std::uint16_t naive = reference_f32_to_bf16(f);
  if (got != want || naive != want) {
    m.add(fmt::format("{} {}: got {:#06x}, want {:#06x}, naive {:#06x}", what, hex32(f), got, want, naive));
  }
}

TEST(FloatToBFloat16, EveryValueMidpointAndNeighbourRoundsToNearestEven) {
  Mismatches m;
  for (std::uint32_t p = 0; p <= 0x7f7f; ++p) {
    for (const std::uint16_t sign : {std::uint16_t{0}, std::uint16_t{0x8000}}) {
      const auto lo = static_cast<std::uint16_t>(p | sign);
      const auto hi = static_cast<std::uint16_t>((p + 1) | sign);
      const float v = static_cast<float>(bf16_value(lo));
      const float away = sign ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();

      expect_bf16(v, lo, m, "value");
      if (v != 0.0f) expect_bf16(std::nextafter(v, 0.0f), lo, m, "below value");
      expect_bf16(std::nextafter(v, away), lo, m, "above value");

      // bf16 midpoints have 9 significant bits, exponent >= -134: exact in fp32, subnormals included.
      const long double exact_mid = (bf16_value(lo) + bf16_value(hi, true)) / 2;
      const float mid = static_cast<float>(exact_mid);
      ASSERT_EQ(static_cast<long double>(mid), exact_mid);
      expect_bf16(mid, (p & 1u) == 0 ? lo : hi, m, "midpoint");
      expect_bf16(std::nextafter(mid, 0.0f), lo, m, "below midpoint");
      expect_bf16(std::nextafter(mid, away), hi, m, "above midpoint");
    }
  }
  EXPECT_NO_MISMATCHES(m);
}

TEST(FloatToBFloat16, OverflowInfinityAndZero) {
  const float inf = std::numeric_limits<float>::infinity();
  // The largest float lies above the midpoint (2 - 2^-8) * 2^127 between the largest bf16 and 2^128.
  EXPECT_EQ(reference_f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(f32_to_bf16_bits(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(f32_to_bf16_bits(-std::numeric_limits<float>::max()), 0xff80);
  EXPECT_EQ(f32_to_bf16_bits(bits_float(0x7f7f8000u)), 0x7f80);  // the midpoint itself: tie, to even Inf
  EXPECT_EQ(f32_to_bf16_bits(bits_float(0x7f7f7fffu)), 0x7f7f);
  EXPECT_EQ(f32_to_bf16_bits(bits_float(0x7f7f0000u)), 0x7f7f);
  EXPECT_EQ(f32_to_bf16_bits(inf), 0x7f80);
  EXPECT_EQ(f32_to_bf16_bits(-inf), 0xff80);
  EXPECT_EQ(f32_to_bf16_bits(0.0f), 0x0000);
  EXPECT_EQ(f32_to_bf16_bits(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16_bits(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(f32_to_bf16_bits(bits_float(0x00008000u)), 0x0000);  // tie between 0 and 2^-133: 0
  EXPECT_EQ(f32_to_bf16_bits(bits_float(0x00008001u)), 0x0001);
  EXPECT_EQ(f32_to_bf16_bits(bits_float(0x00018000u)), 0x0002);  // tie between 1 and 2: to even
  EXPECT_EQ(f32_to_bf16_bits(bits_float(0x007fffffu)), 0x0080);  // largest subnormal carries to normal
  EXPECT_EQ(f32_to_bf16_bits(1.00390625f), 0x3f80);              // 1 + 2^-8: tie, to even 1.0
  EXPECT_EQ(f32_to_bf16_bits(1.01171875f), 0x3f82);              // 1 + 3 * 2^-8: tie, to even
}

TEST(FloatToBFloat16, EveryNanStaysQuietNanWithSignAndTopPayload) {
  Mismatches m;
  for (const std::uint32_t sign : {0u, 0x80000000u}) {
    for (std::uint32_t mantissa = 1; mantissa < (1u << 23); ++mantissa) {
      const float f = bits_float(sign | 0x7f800000u | mantissa);
      const std::uint16_t got = f32_to_bf16_bits(f);
      const auto want = static_cast<std::uint16_t>((sign >> 16) | 0x7f80u | 0x40u | (mantissa >> 16));
      if (got != want || !is_bf16_nan(got)) m.add(fmt::format("{}: got {:#06x}, want {:#06x}", hex32(f), got, want));
    }
  }
  EXPECT_NO_MISMATCHES(m);
}

TEST(FloatToBFloat16, RandomFloatsMatchNaiveReference) {
  constexpr std::uint32_t kSeed = 977;
  SCOPED_TRACE(fmt::format("seed {}", kSeed));
  std::mt19937 rng(kSeed);
  Mismatches m;
  for (int i = 0; i < (1 << 22); ++i) {
    const float f = bits_float(rng());
    if (std::isnan(f)) continue;  // covered exhaustively above
    const std::uint16_t got = f32_to_bf16_bits(f);
    const std::uint16_t naive = reference_f32_to_bf16(f);
    if (got != naive) m.add(fmt::format("{}: got {:#06x}, naive {:#06x}", hex32(f), got, naive));
  }
  EXPECT_NO_MISMATCHES(m);
}

// ---- storage structs -------------------------------------------------------------------------------------

TEST(HalfStruct, EveryPatternRoundTripsThroughFloat) {
  Mismatches m;
  for (std::uint32_t p = 0; p <= 0xffff; ++p) {
    const auto h = static_cast<std::uint16_t>(p);
    const std::uint16_t back = Half::from_float(Half{h}.to_float()).bits;
    // A signalling NaN comes back quiet: the only change a round trip may make.
    const std::uint16_t want = is_f16_nan(h) ? static_cast<std::uint16_t>(h | 0x200u) : h;
    if (back != want) m.add(fmt::format("{:#06x} -> {:#06x}, want {:#06x}", h, back, want));
  }
  EXPECT_NO_MISMATCHES(m);
}

TEST(BFloat16Struct, EveryPatternRoundTripsThroughFloat) {
  Mismatches m;
  for (std::uint32_t p = 0; p <= 0xffff; ++p) {
    const auto b = static_cast<std::uint16_t>(p);
    const std::uint16_t back = BFloat16::from_float(BFloat16{b}.to_float()).bits;
    const std::uint16_t want = is_bf16_nan(b) ? static_cast<std::uint16_t>(b | 0x40u) : b;
    if (back != want) m.add(fmt::format("{:#06x} -> {:#06x}, want {:#06x}", b, back, want));
  }
  EXPECT_NO_MISMATCHES(m);
}

TEST(HalfStruct, DefaultIsPositiveZero) {
  EXPECT_EQ(Half{}.bits, 0);
  EXPECT_EQ(BFloat16{}.bits, 0);
  EXPECT_EQ(float_bits(Half{}.to_float()), 0u);
  EXPECT_EQ(float_bits(BFloat16{}.to_float()), 0u);
}

}  // namespace
}  // namespace lowbit
