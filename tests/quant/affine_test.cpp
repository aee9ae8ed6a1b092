// quant/affine.hpp: the GPTQ quantizer's and bitsandbytes' absmax test vectors (shared/methods/gptq.md
// section 8, int8.md section 7), golden vectors made by GPTQ's own quant.py and bitsandbytes'
// int8_vectorwise_quant (tests/data/affine, make_affine_vectors.py), the vectorized quantize path against
// the single-value functions GPTQ and the kernels share, short last groups, all-zero groups, properties on
// random and real weights, bad input.
#include "lowbit/quant/affine.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "lowbit/core/half.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/io/checkpoint.hpp"
#include "lowbit/io/quantized.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/quant/common.hpp"
#include "test_util.hpp"

namespace lowbit::quant {
namespace {

using ::lowbit::test::contains;
using ::lowbit::test::error_message;
using ::lowbit::test::floats_of;

std::vector<int> ints_of(const Tensor& t) {
  std::vector<int> v;
  const Tensor c = t.contiguous();
  for (std::int64_t i = 0; i < c.numel(); ++i) v.push_back(c.data<std::uint8_t>()[i]);
  return v;
}

Tensor row_tensor(const std::vector<float>& v) {
  return Tensor::from_values(std::span<const float>(v), {1, static_cast<std::int64_t>(v.size())});
}

// N(0, scale) with a few large values (outlier channels, as real weights have). Seeded: failures replay.
Tensor random_weight(std::int64_t n, std::int64_t k, std::uint64_t seed, float scale = 0.02f) {
  Tensor t = Tensor::empty({n, k}, DType::F32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng) * (u(rng) < 0.002f ? 30.0f : 1.0f);
  return t;
}

AffineConfig config(int bits, std::int64_t group_size, AffineMode mode, DType scale_dtype = DType::F32) {
  AffineConfig c;
  c.bits = bits;
  c.group_size = group_size;
  c.mode = mode;
  c.scale_dtype = scale_dtype;
  return c;
}

std::string describe(const AffineConfig& c) {
  return fmt::format("bits={} group_size={} mode={} clip_ratio={} scale_dtype={}", c.bits, c.group_size,
                     static_cast<int>(c.mode), c.clip_ratio, dtype_name(c.scale_dtype));
}

constexpr AffineMode kModes[] = {AffineMode::Asymmetric, AffineMode::Symmetric, AffineMode::Absmax};

// ---- decode math, over every code -------------------------------------------------------------------------

static_assert(affine_dequantize_value(15, 0.25f, 3) == 3.0f);
static_assert(affine_dequantize_value(0, 1.0f, 8) == -8.0f);
static_assert(affine_groups_per_row(288, 128) == 3 && affine_group_length(288, 128, 2) == 32);
static_assert(affine_groups_per_row(288, -1) == 1 && affine_groups_per_row(288, 0) == 1);
static_assert(affine_group_length(288, -1, 0) == 288);

TEST(AffineDecode, EveryCodeAndZeroAgainstDoubleArithmetic) {
  // fl32(scale * (code - zero)) = the exact product rounded once: float(double(scale) * (code - zero)).
  const float scales[] = {0.25f, 2.0f / 15.0f, 0.0123456f, 1e-30f, 3e30f, 7.874015718698502e-3f};
  for (const int bits : kAffineBits) {
    const int maxq = (1 << bits) - 1;
    for (const float scale : scales)
      for (int zero = 0; zero <= maxq; ++zero)
        for (int code = 0; code <= maxq; ++code)
          ASSERT_EQ(affine_dequantize_value(code, scale, zero), static_cast<float>(double(scale) * (code - zero)))
              << bits << " " << scale << " " << zero << " " << code;
  }
}

TEST(AffineDecode, QuantizeInvertsDequantizeOnEveryCode) {
  // Each grid point quantizes back to its own code (the grid is what the codes mean).
  for (const int bits : kAffineBits) {
    for (const bool sym : {false, true}) {
      const AffineGroupParams p = affine_params_minmax(-0.37f, 1.91f, bits, sym);
      for (int code = 0; code < (1 << bits); ++code) {
        ASSERT_EQ(affine_quantize_value(affine_dequantize_value(code, p.scale, p.zero), p, bits), code)
            << "bits " << bits << " sym " << sym << " code " << code;
      }
    }
    const AffineGroupParams a = affine_params_absmax(1.91f, bits);
    for (int code = 1; code < (1 << bits); ++code) {
      ASSERT_EQ(affine_quantize_value(affine_dequantize_value(code, a.scale, a.zero), a, bits), code)
          << "absmax bits " << bits << " code " << code;
    }
  }
}

// ---- the GPTQ quantizer's vectors (gptq.md section 8) -----------------------------------------------------------

struct GptqVector {
  std::vector<float> row;
  bool symmetric;
  float scale;
  int zero;
  std::vector<int> codes;
  std::vector<float> dequantized;
};

const GptqVector kGptqVectors[] = {
    {{-0.75f, 0.0f, 0.625f, 0.875f, 3.0f}, false, 0.25f, 3, {0, 3, 5, 7, 15}, {-0.75f, 0.0f, 0.5f, 1.0f, 3.0f}},
    {{-7.5f, -1.5f, 0.5f, 2.5f, 7.5f}, true, 1.0f, 8, {0, 6, 8, 10, 15}, {-8.0f, -2.0f, 0.0f, 2.0f, 7.0f}},
    {{0.0f, 1.0f, 7.5f}, true, 0.5f, 8, {8, 10, 15}, {0.0f, 1.0f, 3.5f}},
    {{1.0f, 2.0f, 3.75f}, false, 0.25f, 0, {4, 8, 15}, {1.0f, 2.0f, 3.75f}},
    {{0.0f, 0.0f}, false, 2.0f / 15.0f, 7, {7, 7}, {0.0f, 0.0f}},
    {{0.0f, 0.0f}, true, 2.0f / 15.0f, 8, {8, 8}, {0.0f, 0.0f}},
};

TEST(AffineGroupParams, GptqQuantizerVectors) {
  for (const GptqVector& v : kGptqVectors) {
    SCOPED_TRACE(fmt::format("row [{}] {}", fmt::join(v.row, ", "), v.symmetric ? "sym" : "asym"));
    const auto [lo, hi] = std::minmax_element(v.row.begin(), v.row.end());
    const AffineGroupParams p = affine_params_minmax(*lo, *hi, 4, v.symmetric);
    EXPECT_EQ(p.scale, v.scale);
    EXPECT_EQ(p.zero, v.zero);
    EXPECT_EQ(p.multiplier, 0.0f);
    for (std::size_t i = 0; i < v.row.size(); ++i) {
      const int code = affine_quantize_value(v.row[i], p, 4);
      EXPECT_EQ(code, v.codes[i]) << "element " << i;
      EXPECT_EQ(affine_dequantize_value(code, p.scale, p.zero), v.dequantized[i]) << "element " << i;
    }
    // The whole method, per row, gives the same.
    const QuantizedTensor q =
        quantize_affine(row_tensor(v.row), config(4, -1, v.symmetric ? AffineMode::Symmetric : AffineMode::Asymmetric));
    EXPECT_EQ(ints_of(q.component("codes")), v.codes);
    EXPECT_EQ(floats_of(q.component("scales")), std::vector<float>{v.scale});
    EXPECT_EQ(ints_of(q.component("zeros")), std::vector<int>{v.zero});
    EXPECT_EQ(floats_of(dequantize_affine_reference(q)), v.dequantized);
  }
}

TEST(AffineGroupParams, HalfToEvenNotHalfAway) {
  // 0.625 / 0.25 = 2.5 -> 2 and 0.875 / 0.25 = 3.5 -> 4; std::round would give 3 and 4.
  const AffineGroupParams p = affine_params_minmax(-0.75f, 3.0f, 4, false);
  EXPECT_EQ(affine_quantize_value(0.625f, p, 4), 3 + 2);
  EXPECT_EQ(affine_quantize_value(0.875f, p, 4), 3 + 4);
  EXPECT_EQ(affine_round(2.5f), 2.0f);
  EXPECT_EQ(affine_round(-2.5f), -2.0f);
  EXPECT_EQ(affine_round(3.5f), 4.0f);
}

TEST(AffineGroupParams, AllZeroGroupFloat32Zero) {
  // gptq.md section 6.3: asym 4-bit gives zero 7 because 1 / fl32(2/15) = 7.4999996 in fp32.
  const AffineGroupParams p = affine_params_minmax(0.0f, 0.0f, 4, false);
  EXPECT_EQ(p.scale, 2.0f / 15.0f);
  EXPECT_EQ(p.zero, 7);
  for (const int bits : kAffineBits) {
    SCOPED_TRACE(bits);
    for (const bool sym : {false, true}) {
      const AffineGroupParams g = affine_params_minmax(0.0f, 0.0f, bits, sym);
      EXPECT_GT(g.scale, 0.0f);
      EXPECT_TRUE(std::isfinite(g.scale));
      EXPECT_EQ(affine_dequantize_value(affine_quantize_value(0.0f, g, bits), g.scale, g.zero), 0.0f);
    }
    const AffineGroupParams a = affine_params_absmax(0.0f, bits);
    EXPECT_EQ(a.scale, 1.0f / static_cast<float>((1 << (bits - 1)) - 1));
    EXPECT_EQ(affine_quantize_value(0.0f, a, bits), 1 << (bits - 1));
  }
}

TEST(AffineGroupParams, SymmetricZerosAreHalfTheCodeRange) {
  EXPECT_EQ(affine_params_minmax(-1.0f, 1.0f, 2, true).zero, 2);
  EXPECT_EQ(affine_params_minmax(-1.0f, 1.0f, 3, true).zero, 4);
  EXPECT_EQ(affine_params_minmax(-1.0f, 1.0f, 4, true).zero, 8);
  EXPECT_EQ(affine_params_minmax(-1.0f, 1.0f, 8, true).zero, 128);
  // gptq.md section 6.1: +absmax is clamped to (2^(b-1) - 1) scale (7.5 -> 7 at 4 bits).
  const AffineGroupParams p = affine_params_minmax(-7.5f, 7.5f, 4, true);
  EXPECT_EQ(affine_dequantize_value(affine_quantize_value(7.5f, p, 4), p.scale, p.zero), 7.0f);
}

TEST(AffineGroupParams, SubnormalRangeIsTreatedAsZero) {
  // A range so small that scale = range / 15 is subnormal: the reference would divide by ~0.
  const float tiny = 1e-44f;
  const AffineGroupParams p = affine_params_minmax(-tiny, tiny, 4, false);
  EXPECT_EQ(p.scale, 2.0f / 15.0f);
  EXPECT_EQ(p.zero, 7);
  const AffineGroupParams a = affine_params_absmax(1e-38f, 8);  // 127 / 1e-38 overflows fp32
  EXPECT_EQ(a.scale, 1.0f / 127.0f);
}

TEST(AffineGroupParams, ShrinkScalesTheRangeLikeGptqMseCandidates) {
  // p = 0.9: xmin' = 0.9 xmin, xmax' = 0.9 xmax, then the usual formulas.
  const AffineGroupParams p = affine_params_minmax(-1.0f, 3.0f, 4, false, 0.9f);
  const float xmin = 0.9f * -1.0f, xmax = 0.9f * 3.0f;
  EXPECT_EQ(p.scale, (xmax - xmin) / 15.0f);
  EXPECT_EQ(p.zero, static_cast<int>(std::nearbyint(-xmin / ((xmax - xmin) / 15.0f))));
  EXPECT_EQ(affine_quantize_value(3.0f, p, 4), 15);  // beyond the shrunk range: clamped
}

TEST(AffineGroupParams, HandDerivedGptqExampleRoundToNearest) {
  // gptq.md section 8: W = [[7.5, -1.3]], 4-bit sym per row: scale 1, zero 8, RTN Q = [[7, -1]].
  const QuantizedTensor q = quantize_affine(row_tensor({7.5f, -1.3f}), config(4, -1, AffineMode::Symmetric));
  EXPECT_EQ(floats_of(dequantize_affine_reference(q)), (std::vector<float>{7.0f, -1.0f}));
  EXPECT_EQ(ints_of(q.component("codes")), (std::vector<int>{15, 7}));
}

// ---- absmax: bitsandbytes' vector-wise int8 (int8.md section 2.1, vector 1) ------------------------------------

TEST(AffineAbsmax, BnbVectorwiseVector1) {
  const Tensor w = row_tensor({1.0f, -2.0f, 0.5f, 4.0f}).to(DType::F16);
  const QuantizedTensor q = quantize_affine(w, affine_int8_config());
  // bnb's int8 CB = [32, -64, 16, 127] (bytes 20 C0 10 7F): -63.5 -> -64 by half to even. Ours is CB + 128.
  EXPECT_EQ(ints_of(q.component("codes")), (std::vector<int>{160, 64, 144, 255}));
  EXPECT_EQ(ints_of(q.component("zeros")), std::vector<int>{128});
  EXPECT_EQ(q.component("scales").dtype(), DType::F32);
  EXPECT_EQ(floats_of(q.component("scales")), std::vector<float>{4.0f / 127.0f});
  // With a power-of-two absmax our order (q * fl32(a/127)) and bnb's (fl32(q*a) * fl32(1/127)) agree.
  EXPECT_EQ(floats_of(dequantize_affine_reference(q)),
            (std::vector<float>{1.0078740120f, -2.0157480240f, 0.5039370060f, 4.0f}));
  EXPECT_EQ(q.params.variant, "absmax:f32");
  EXPECT_TRUE(q.params.symmetric);
}

TEST(AffineAbsmax, MatchesBnbRuleOnRandomRows) {
  // bnb (PyTorch backend, and CUDA away from ~2 ulp of a .5): a = max|w| of the fp16 row,
  // q = RNE(fl32(w * fl32(127 / a))); dequant fl32(fl32(q * a) * fl32(1/127)).
  const Tensor w = random_weight(37, 301, 11).to(DType::F16);
  const QuantizedTensor q = quantize_affine(w, affine_int8_config());
  const std::vector<float> wf = floats_of(w);
  const std::vector<int> codes = ints_of(q.component("codes"));
  const std::vector<float> deq = floats_of(dequantize_affine_reference(q));
  const float inv127 = 7.874015718698502e-3f;
  for (std::int64_t r = 0; r < 37; ++r) {
    float a = 0;
    for (std::int64_t c = 0; c < 301; ++c) a = std::max(a, std::fabs(wf[r * 301 + c]));
    const float s = 127.0f / a;
    for (std::int64_t c = 0; c < 301; ++c) {
      const float x = wf[r * 301 + c];
      const int cb = static_cast<int>(std::nearbyint(x * s));
      ASSERT_EQ(codes[r * 301 + c] - 128, cb) << "row " << r << " column " << c;
      const float bnb = (static_cast<float>(cb) * a) * inv127;
      // Same code, two rounding orders: within 2 ulps of each other.
      EXPECT_LE(std::fabs(deq[r * 301 + c] - bnb), 2.0f * std::numeric_limits<float>::epsilon() * std::fabs(bnb))
          << "row " << r << " column " << c;
    }
  }
}

TEST(AffineAbsmax, CodesAreOddSymmetric) {
  Tensor w = random_weight(9, 130, 12);
  Tensor neg = w.clone();
  for (std::int64_t i = 0; i < neg.numel(); ++i) neg.data<float>()[i] = -neg.data<float>()[i];
  for (const int bits : kAffineBits) {
    const AffineConfig c = config(bits, 32, AffineMode::Absmax);
    const std::vector<int> a = ints_of(quantize_affine(w, c).component("codes"));
    const std::vector<int> b = ints_of(quantize_affine(neg, c).component("codes"));
    const int zero = 1 << (bits - 1);
    for (std::size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(a[i] - zero, -(b[i] - zero)) << "bits " << bits << " element " << i;
      ASSERT_GE(a[i], 1) << "absmax never produces code 0 (-128 for int8)";
    }
  }
}

// ---- the vectorized path against the single-value functions -----------------------------------------------

// Expected components from affine_params_* and affine_quantize_value(), plain loops.
struct Expected {
  std::vector<int> codes, zeros;
  std::vector<float> scales;
};
Expected expected_components(const Tensor& w32, const AffineConfig& c) {
  const std::int64_t n = w32.size(0), k = w32.size(1);
  const float* w = w32.data<float>();
  const bool per_tensor = c.group_size == 0;
  const std::int64_t g = c.group_size >= 1 ? c.group_size : k;
  const std::int64_t groups = affine_groups_per_row(k, c.group_size);
  const float* clip = c.clip_max.defined() ? c.clip_max.data<float>() : nullptr;
  auto value = [&](std::int64_t r, std::int64_t col) {
    float x = w[r * k + col];
    if (clip) {
      const float m = per_tensor ? clip[0] : clip[r * groups + col / g];
      x = std::min(std::max(x, -m), m);
    }
    return x;
  };
  auto params = [&](float lo, float hi) {
    return c.mode == AffineMode::Absmax
               ? affine_params_absmax(std::max(std::fabs(lo), std::fabs(hi)), c.bits, c.clip_ratio)
               : affine_params_minmax(lo, hi, c.bits, c.mode == AffineMode::Symmetric, c.clip_ratio);
  };
  Expected e;
  e.codes.resize(static_cast<std::size_t>(n * k));
  if (per_tensor) {
    float lo = INFINITY, hi = -INFINITY;
    for (std::int64_t r = 0; r < n; ++r)
      for (std::int64_t col = 0; col < k; ++col) lo = std::min(lo, value(r, col)), hi = std::max(hi, value(r, col));
    const AffineGroupParams p = params(lo, hi);
    e.scales = {p.scale};
    e.zeros = {p.zero};
    for (std::int64_t r = 0; r < n; ++r)
      for (std::int64_t col = 0; col < k; ++col) e.codes[r * k + col] = affine_quantize_value(value(r, col), p, c.bits);
    return e;
  }
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t gi = 0; gi < groups; ++gi) {
      const std::int64_t b = gi * g, len = affine_group_length(k, c.group_size, gi);
      float lo = INFINITY, hi = -INFINITY;
      for (std::int64_t col = b; col < b + len; ++col)
        lo = std::min(lo, value(r, col)), hi = std::max(hi, value(r, col));
      const AffineGroupParams p = params(lo, hi);
      e.scales.push_back(p.scale);
      e.zeros.push_back(p.zero);
      for (std::int64_t col = b; col < b + len; ++col)
        e.codes[r * k + col] = affine_quantize_value(value(r, col), p, c.bits);
    }
  }
  return e;
}

TEST(AffineQuantize, MatchesSingleValueFunctionsForEveryModeBitsAndGroup) {
  const Tensor w = random_weight(13, 300, 21);
  for (const AffineMode mode : kModes) {
    for (const int bits : kAffineBits) {
      for (const std::int64_t g : {1, 7, 32, 64, 128, 256, 300, 512, -1, 0}) {
        for (const float clip : {1.0f, 0.85f}) {
          AffineConfig c = config(bits, g, mode);
          c.clip_ratio = clip;
          SCOPED_TRACE(describe(c));
          const QuantizedTensor q = quantize_affine(w, c);
          const Expected e = expected_components(w, c);
          ASSERT_EQ(ints_of(q.component("codes")), e.codes);
          ASSERT_EQ(ints_of(q.component("zeros")), e.zeros);
          ASSERT_EQ(floats_of(q.component("scales")), e.scales);
          // The reference dequantization is the single-value decode.
          const std::vector<float> deq = floats_of(dequantize_affine_reference(q));
          const std::int64_t gs = g >= 1 ? g : 300;
          const std::int64_t groups = affine_groups_per_row(300, g);
          for (std::int64_t i = 0; i < 13 * 300; i += 37) {
            const std::int64_t gi = g == 0 ? 0 : (i / 300) * groups + (i % 300) / gs;
            ASSERT_EQ(deq[static_cast<std::size_t>(i)],
                      affine_dequantize_value(e.codes[static_cast<std::size_t>(i)], e.scales[gi], e.zeros[gi]));
          }
        }
      }
    }
  }
}

TEST(AffineQuantize, RoundingTiesOnTheFastPath) {
  // Every value sits on a half-integer multiple of the scale: the vectorized rounding must go to even.
  std::vector<float> row;
  for (int i = -30; i <= 30; ++i) row.push_back(0.5f * static_cast<float>(i));  // [-15, 15], step 0.5
  const QuantizedTensor q = quantize_affine(row_tensor(row), config(8, -1, AffineMode::Asymmetric));
  const AffineGroupParams p = affine_params_minmax(-15.0f, 15.0f, 8, false);
  const std::vector<int> codes = ints_of(q.component("codes"));
  for (std::size_t i = 0; i < row.size(); ++i) EXPECT_EQ(codes[i], affine_quantize_value(row[i], p, 8)) << row[i];
  // And absmax with multiplier 1 (absmax = 127): w * 1 lands on every .5 between -63.5 and 63.5.
  std::vector<float> halves = {127.0f};
  for (int i = -127; i <= 127; ++i) halves.push_back(0.5f * static_cast<float>(i));
  const QuantizedTensor qa = quantize_affine(row_tensor(halves), config(8, -1, AffineMode::Absmax));
  const std::vector<int> ca = ints_of(qa.component("codes"));
  for (std::size_t i = 0; i < halves.size(); ++i) {
    EXPECT_EQ(ca[i] - 128, static_cast<int>(std::nearbyint(halves[i]))) << halves[i];
  }
}

TEST(AffineQuantize, ShortLastGroupIsQuantizedOnItsOwn) {
  // k = 100, G = 32: groups of 32, 32, 32 and 4. The last group's grid comes from its 4 values only.
  Tensor w = random_weight(3, 100, 31, 1.0f);
  for (std::int64_t r = 0; r < 3; ++r)
    for (std::int64_t c = 96; c < 100; ++c) w.data<float>()[r * 100 + c] = 0.001f * static_cast<float>(c - 95);
  const QuantizedTensor q = quantize_affine(w, config(4, 32, AffineMode::Asymmetric));
  EXPECT_EQ(q.component("scales").shape(), (Shape{3, 4}));
  EXPECT_EQ(q.component("zeros").shape(), (Shape{3, 4}));
  EXPECT_EQ(q.params.group_size, 32);
  EXPECT_EQ(affine_group_length(100, 32, 3), 4);
  const AffineGroupParams last = affine_params_minmax(0.001f, 0.004f, 4, false);
  EXPECT_EQ(floats_of(q.component("scales"))[3], last.scale);
  // The small group keeps its precision: error far below the big groups' step.
  const std::vector<float> deq = floats_of(dequantize_affine_reference(q));
  for (std::int64_t c = 96; c < 100; ++c) EXPECT_NEAR(deq[static_cast<std::size_t>(c)], w.data<float>()[c], last.scale);

  // Formats that need whole groups refuse it, naming both numbers.
  const std::string msg = error_message([&] { affine_require_whole_groups(q, "gptq export"); }, ErrorCode::Unsupported);
  EXPECT_TRUE(contains(msg, "gptq export"));
  EXPECT_TRUE(contains(msg, "k = 100"));
  EXPECT_TRUE(contains(msg, "group_size = 32"));
  EXPECT_NO_THROW(affine_require_whole_groups(quantize_affine(w, config(4, 25, AffineMode::Asymmetric)), "x"));
  EXPECT_NO_THROW(affine_require_whole_groups(quantize_affine(w, config(4, -1, AffineMode::Asymmetric)), "x"));
  EXPECT_NO_THROW(affine_require_whole_groups(quantize_affine(w, config(4, 0, AffineMode::Asymmetric)), "x"));
}

TEST(AffineQuantize, GroupLargerThanRowIsOneShortGroup) {
  const Tensor w = random_weight(4, 50, 32);
  const QuantizedTensor q = quantize_affine(w, config(4, 128, AffineMode::Symmetric));
  const QuantizedTensor per_row = quantize_affine(w, config(4, -1, AffineMode::Symmetric));
  EXPECT_EQ(q.component("scales").shape(), (Shape{4, 1}));
  EXPECT_EQ(floats_of(q.component("scales")), floats_of(per_row.component("scales")));
  EXPECT_EQ(ints_of(q.component("codes")), ints_of(per_row.component("codes")));
}

TEST(AffineQuantize, AllZeroGroupsHaveFiniteScalesAndDecodeToZero) {
  Tensor w = random_weight(4, 96, 41);
  for (std::int64_t c = 32; c < 64; ++c) w.data<float>()[1 * 96 + c] = 0.0f;  // row 1, group 1
  for (std::int64_t c = 0; c < 96; ++c) w.data<float>()[3 * 96 + c] = 0.0f;   // row 3 entirely
  for (const AffineMode mode : kModes) {
    for (const int bits : kAffineBits) {
      for (const std::int64_t g : {32, -1}) {
        const AffineConfig c = config(bits, g, mode, DType::F16);
        SCOPED_TRACE(describe(c));
        const QuantizedTensor q = quantize_affine(w, c);
        for (const float s : floats_of(q.component("scales"))) {
          EXPECT_TRUE(std::isfinite(s) && s > 0.0f) << s;
        }
        const std::vector<float> deq = floats_of(dequantize_affine_reference(q));
        for (std::int64_t col = 0; col < 96; ++col) ASSERT_EQ(deq[static_cast<std::size_t>(3 * 96 + col)], 0.0f);
        if (g == 32) {
          for (std::int64_t col = 32; col < 64; ++col) ASSERT_EQ(deq[static_cast<std::size_t>(96 + col)], 0.0f);
        }
        for (const float v : deq) ASSERT_FALSE(std::isnan(v));
      }
    }
  }
  // The documented zeros of an all-zero group: asym 4-bit 7 (gptq.md 6.3), sym and absmax 2^(bits-1).
  const QuantizedTensor asym = quantize_affine(w, config(4, 32, AffineMode::Asymmetric));
  EXPECT_EQ(ints_of(asym.component("zeros"))[3 * 3], 7);
  EXPECT_EQ(floats_of(asym.component("scales"))[3 * 3], 2.0f / 15.0f);
  const QuantizedTensor absmax = quantize_affine(w, config(8, 32, AffineMode::Absmax));
  EXPECT_EQ(ints_of(absmax.component("zeros"))[3 * 3], 128);
  EXPECT_EQ(ints_of(absmax.component("codes"))[3 * 96], 128);
  // A whole zero tensor, one group for all.
  const QuantizedTensor zero = quantize_affine(Tensor::zeros({3, 5}, DType::F16), config(4, 0, AffineMode::Asymmetric));
  EXPECT_EQ(floats_of(dequantize_affine_reference(zero)), std::vector<float>(15, 0.0f));
}

TEST(AffineQuantize, ErrorFallsAsBitsRise) {
  const Tensor w = random_weight(64, 512, 51);
  for (const AffineMode mode : kModes) {
    for (const std::int64_t g : {128, -1}) {
      double previous = INFINITY;
      for (const int bits : kAffineBits) {
        const QuantizedTensor q = quantize_affine(w, config(bits, g, mode));
        const double err = error_stats(w, dequantize_affine_reference(q)).relative_frobenius;
        SCOPED_TRACE(fmt::format("mode {} group {} bits {}: relative error {}", static_cast<int>(mode), g, bits, err));
        EXPECT_LT(err, previous);
        previous = err;
      }
      EXPECT_LT(previous, 0.05);  // 8 bits (the 30x outliers set most ranges)
    }
  }
}

TEST(AffineQuantize, SmallerGroupsGiveSmallerError) {
  const Tensor w = random_weight(32, 1024, 52);
  double previous = INFINITY;
  for (const std::int64_t g : {0, -1, 256, 128, 64, 32}) {
    const double err =
        error_stats(w, dequantize_affine_reference(quantize_affine(w, config(4, g, AffineMode::Asymmetric))))
            .relative_frobenius;
    EXPECT_LT(err, previous) << "group_size " << g;
    previous = err;
  }
}

TEST(AffineQuantize, RoundTripErrorIsAtMostHalfAStep) {
  // Inside the grid's range every value is within scale / 2 of its dequantized value (fp32 slack).
  const Tensor w = random_weight(16, 200, 61);
  for (const AffineMode mode : {AffineMode::Asymmetric, AffineMode::Absmax}) {
    for (const int bits : kAffineBits) {
      const QuantizedTensor q = quantize_affine(w, config(bits, 50, mode));
      const std::vector<float> deq = floats_of(dequantize_affine_reference(q));
      const std::vector<float> scales = floats_of(q.component("scales"));
      for (std::int64_t i = 0; i < w.numel(); ++i) {
        const float s = scales[static_cast<std::size_t>((i / 200) * 4 + (i % 200) / 50)];
        ASSERT_LE(std::fabs(deq[static_cast<std::size_t>(i)] - w.data<float>()[i]), 0.5f * s * (1.0f + 1e-5f) + 1e-7f)
            << "mode " << static_cast<int>(mode) << " bits " << bits << " element " << i;
      }
    }
  }
}

TEST(AffineQuantize, F16ScalesAreTheRoundedF32Scales) {
  const Tensor w = random_weight(8, 256, 71);
  for (const AffineMode mode : kModes) {
    const QuantizedTensor a = quantize_affine(w, config(4, 64, mode, DType::F32));
    const QuantizedTensor b = quantize_affine(w, config(4, 64, mode, DType::F16));
    EXPECT_EQ(b.component("scales").dtype(), DType::F16);
    EXPECT_EQ(ints_of(a.component("codes")), ints_of(b.component("codes")));  // codes from the fp32 scale
    EXPECT_EQ(ints_of(a.component("zeros")), ints_of(b.component("zeros")));
    const std::vector<float> s32 = floats_of(a.component("scales"));
    const std::vector<float> s16 = floats_of(b.component("scales"));
    for (std::size_t i = 0; i < s32.size(); ++i) EXPECT_EQ(s16[i], Half::from_float(s32[i]).to_float());
    EXPECT_EQ(b.params.variant, mode == AffineMode::Absmax ? "absmax:f16" : "minmax:f16");
  }
}

TEST(AffineQuantize, InputDtypesAndStridesGiveTheSameResult) {
  const Tensor w16 = random_weight(17, 200, 81).to(DType::F16);
  const Tensor w32 = w16.to(DType::F32);
  const AffineConfig c = config(4, 64, AffineMode::Asymmetric);
  const QuantizedTensor ref = quantize_affine(w32, c);
  for (const Tensor& w : {w16, w16.to(DType::F64), w32.transpose(0, 1).contiguous().transpose(0, 1)}) {
    SCOPED_TRACE(w.describe());
    const QuantizedTensor q = quantize_affine(w, c);
    EXPECT_EQ(ints_of(q.component("codes")), ints_of(ref.component("codes")));
    EXPECT_EQ(floats_of(q.component("scales")), floats_of(ref.component("scales")));
    EXPECT_EQ(ints_of(q.component("zeros")), ints_of(ref.component("zeros")));
  }
  const Tensor wb = random_weight(5, 70, 82).to(DType::BF16);
  EXPECT_EQ(ints_of(quantize_affine(wb, c).component("codes")),
            ints_of(quantize_affine(wb.to(DType::F32), c).component("codes")));
  EXPECT_EQ(quantize_affine(w16, c).dtype, DType::F16);
}

TEST(AffineQuantize, F16SubnormalInputsConvertExactly) {
  std::vector<std::uint16_t> bits = {0x0001, 0x8001, 0x03ff, 0x0400, 0x3c00, 0xfbff, 0x0000, 0x8000};
  Tensor w = Tensor::empty({1, static_cast<std::int64_t>(bits.size())}, DType::F16);
  for (std::size_t i = 0; i < bits.size(); ++i) w.data<Half>()[i] = Half{bits[i]};
  const AffineConfig c = config(8, 0, AffineMode::Asymmetric);
  EXPECT_EQ(ints_of(quantize_affine(w, c).component("codes")),
            ints_of(quantize_affine(w.to(DType::F32), c).component("codes")));
}

TEST(AffineQuantize, ThreadCountDoesNotChangeTheResult) {
  const Tensor w = random_weight(301, 97, 91);
  const AffineConfig c = config(3, 32, AffineMode::Asymmetric);
  const int saved = num_threads();
  set_num_threads(1);
  const QuantizedTensor one = quantize_affine(w, c);
  set_num_threads(4);
  const QuantizedTensor four = quantize_affine(w, c);
  set_num_threads(saved);
  EXPECT_EQ(ints_of(one.component("codes")), ints_of(four.component("codes")));
  EXPECT_EQ(floats_of(one.component("scales")), floats_of(four.component("scales")));
}

TEST(AffineQuantize, ClipMaxClampsEachGroupBeforeQuantizing) {
  const Tensor w = random_weight(6, 100, 101, 1.0f);
  AffineConfig c = config(4, 32, AffineMode::Asymmetric);
  Tensor clip = Tensor::empty({6, 4}, DType::F32);
  for (std::int64_t i = 0; i < 24; ++i) clip.data<float>()[i] = 0.5f + 0.1f * static_cast<float>(i % 7);
  c.clip_max = clip;
  // Same as quantizing the clamped weight without clipping (AWQ: W <- clamp(W, -max_val, max_val)).
  Tensor clamped = w.clone();
  for (std::int64_t r = 0; r < 6; ++r)
    for (std::int64_t col = 0; col < 100; ++col) {
      const float m = clip.data<float>()[r * 4 + col / 32];
      float& x = clamped.data<float>()[r * 100 + col];
      x = std::min(std::max(x, -m), m);
    }
  const QuantizedTensor a = quantize_affine(w, c);
  const QuantizedTensor b = quantize_affine(clamped, config(4, 32, AffineMode::Asymmetric));
  EXPECT_EQ(ints_of(a.component("codes")), ints_of(b.component("codes")));
  EXPECT_EQ(floats_of(a.component("scales")), floats_of(b.component("scales")));
  const Expected e = expected_components(w, c);
  EXPECT_EQ(ints_of(a.component("codes")), e.codes);

  // Per tensor takes a [1, 1] clip value.
  AffineConfig t = config(8, 0, AffineMode::Absmax);
  t.clip_max = Tensor::from_values({0.75f}, {1, 1});
  EXPECT_EQ(floats_of(quantize_affine(w, t).component("scales")), std::vector<float>{0.75f / 127.0f});

  AffineConfig bad = c;
  bad.clip_max = Tensor::zeros({6, 3}, DType::F32);
  EXPECT_TRUE(contains(error_message([&] { quantize_affine(w, bad); }, ErrorCode::ShapeMismatch), "[6, 4]"));
  bad.clip_max = Tensor::zeros({6, 4}, DType::F32);
  bad.clip_max.data<float>()[5] = -1.0f;
  EXPECT_TRUE(contains(error_message([&] { quantize_affine(w, bad); }, ErrorCode::InvalidArgument), "clip_max[1, 1]"));
}

TEST(AffineQuantize, RealModelWeights) {
  // stories15M's projections have k = 288: g128 leaves a last group of 32 in every row.
  const auto path = std::filesystem::path(LOWBIT_SHARED_DATA_DIR) / "stories15M" / "model.safetensors";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no " << path << " (shared data absent)";
  const auto file = io::SafetensorsFile::open(path);
  const Tensor w = file.tensor("model.layers.0.mlp.gate_proj.weight");  // [768, 288]
  struct Case {
    AffineConfig c;
    double max_rel;
  };
  const Case cases[] = {{config(4, 128, AffineMode::Asymmetric, DType::F16), 0.12},
                        {config(4, 128, AffineMode::Symmetric, DType::F16), 0.15},
                        {config(3, 32, AffineMode::Asymmetric, DType::F16), 0.2},
                        {affine_int8_config(), 0.01}};
  for (const Case& cs : cases) {
    const QuantizedTensor q = quantize_affine(w, cs.c);
    const ErrorStats s = error_stats(w, dequantize_affine_reference(q));
    SCOPED_TRACE(
        fmt::format("{}: relative error {:.4f}, SNR {:.1f} dB", describe(cs.c), s.relative_frobenius, s.snr_db));
    EXPECT_LT(s.relative_frobenius, cs.max_rel);
    EXPECT_GT(s.relative_frobenius, 0.0);
  }
  EXPECT_EQ(quantize_affine(w, cases[0].c).component("scales").shape(), (Shape{768, 3}));
}

// ---- golden vectors: GPTQ's quant.py and bitsandbytes' int8_vectorwise_quant (tests/data/affine) ----------

const std::filesystem::path kDataDir = std::filesystem::path(LOWBIT_TEST_DATA_DIR) / "affine";

TEST(AffineGolden, MatchesGptqReferenceQuantizer) {
  const auto file = io::SafetensorsFile::open(kDataDir / "affine_vectors.safetensors");
  std::ifstream in(kDataDir / "affine_vectors.json");
  const nlohmann::json meta = nlohmann::json::parse(in);
  const Tensor w = file.tensor("gptq.weight");
  int cases = 0;
  for (const auto& c : meta["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    ++cases;
    const AffineConfig cfg = config(c["bits"].get<int>(), c["group_size"].get<std::int64_t>(),
                                    c["symmetric"].get<bool>() ? AffineMode::Symmetric : AffineMode::Asymmetric);
    const QuantizedTensor q = quantize_affine(w, cfg);
    EXPECT_EQ(ints_of(q.component("codes")), ints_of(file.tensor(name + ".codes")));
    EXPECT_EQ(floats_of(q.component("scales")), floats_of(file.tensor(name + ".scales")));
    EXPECT_EQ(ints_of(q.component("zeros")), ints_of(file.tensor(name + ".zeros")));
    if (file.contains(name + ".dequant")) {
      EXPECT_EQ(floats_of(dequantize_affine_reference(q)), floats_of(file.tensor(name + ".dequant")));
    }
  }
  EXPECT_EQ(cases, 22);
}

TEST(AffineGolden, Int8MatchesBitsandbytesVectorwise) {
  const auto file = io::SafetensorsFile::open(kDataDir / "affine_vectors.safetensors");
  const Tensor w = file.tensor("bnb_int8.weight");  // fp16 [16, 200]
  const QuantizedTensor q = quantize_affine(w, affine_int8_config());
  const std::vector<int> codes = ints_of(q.component("codes"));
  const Tensor cb = file.tensor("bnb_int8.CB");
  ASSERT_EQ(cb.dtype(), DType::I8);
  for (std::int64_t i = 0; i < cb.numel(); ++i) {
    ASSERT_EQ(codes[static_cast<std::size_t>(i)] - 128, cb.data<std::int8_t>()[i]) << "element " << i;
  }
  // SCB is the row absmax; our scale is fl32(SCB / 127).
  const std::vector<float> scb = floats_of(file.tensor("bnb_int8.SCB"));
  const std::vector<float> scales = floats_of(q.component("scales"));
  for (std::size_t r = 0; r < scb.size(); ++r) EXPECT_EQ(scales[r], scb[r] / 127.0f) << "row " << r;
  // Dequantized: bnb multiplies fl32(q * SCB) by fl32(1/127); we multiply q by fl32(SCB / 127).
  const std::vector<float> ours = floats_of(dequantize_affine_reference(q));
  const std::vector<float> theirs = floats_of(file.tensor("bnb_int8.dequant"));
  for (std::size_t i = 0; i < ours.size(); ++i) {
    ASSERT_LE(std::fabs(ours[i] - theirs[i]), 2.0f * std::numeric_limits<float>::epsilon() * std::fabs(theirs[i]))
        << "element " << i;
    if (i / 200 == 2) ASSERT_EQ(ours[i], theirs[i]) << "row 2 has a power-of-two absmax: exact";
  }
}

// ---- bad input ------------------------------------------------------------------------------------------

TEST(AffineQuantize, RejectsBadConfigNamingTheValue) {
  const Tensor w = random_weight(4, 64, 111);
  AffineConfig c;
  c.bits = 5;
  std::string m = error_message([&] { quantize_affine(w, c); }, ErrorCode::InvalidArgument);
  EXPECT_TRUE(contains(m, "bits = 5"));
  EXPECT_TRUE(contains(m, "2, 3, 4, 8"));
  c = AffineConfig{};
  c.group_size = -2;
  EXPECT_TRUE(contains(error_message([&] { quantize_affine(w, c); }, ErrorCode::InvalidArgument), "group_size = -2"));
  c = AffineConfig{};
  c.clip_ratio = 0.0f;
  EXPECT_TRUE(contains(error_message([&] { quantize_affine(w, c); }, ErrorCode::InvalidArgument), "clip_ratio = 0"));
  c.clip_ratio = 1.5f;
  EXPECT_TRUE(contains(error_message([&] { quantize_affine(w, c); }, ErrorCode::InvalidArgument), "(0, 1]"));
  c = AffineConfig{};
  c.scale_dtype = DType::BF16;
  EXPECT_TRUE(contains(error_message([&] { quantize_affine(w, c); }, ErrorCode::InvalidArgument), "f16, f32"));
}

TEST(AffineQuantize, RejectsBadWeights) {
  const AffineConfig c;
  EXPECT_TRUE(contains(
      error_message([&] { quantize_affine(Tensor::zeros({64}, DType::F32), c); }, ErrorCode::ShapeMismatch), "2-D"));
  EXPECT_TRUE(contains(error_message(
                           [&] {
                             quantize_affine(Tensor::zeros({4, 64}, DType::I32), c);
                           },
                           ErrorCode::DTypeMismatch),
                       "i32"));
  EXPECT_TRUE(contains(error_message(
                           [&] {
                             quantize_affine(Tensor::zeros({0, 64}, DType::F32), c);
                           },
                           ErrorCode::InvalidArgument),
                       "empty"));
  Tensor w = random_weight(4, 64, 112);
  w.data<float>()[2 * 64 + 5] = std::numeric_limits<float>::quiet_NaN();
  const std::string m = error_message([&] { quantize_affine(w, c); }, ErrorCode::Numerical);
  EXPECT_TRUE(contains(m, "row 2, column 5"));
  EXPECT_TRUE(contains(m, "nan"));
  Tensor h = random_weight(3, 10, 113).to(DType::F16);
  h.data<Half>()[17] = Half{0xfc00};  // -inf
  EXPECT_TRUE(contains(error_message([&] { quantize_affine(h, c); }, ErrorCode::Numerical), "row 1, column 7"));
  Tensor d = Tensor::zeros({2, 3}, DType::F64);
  d.data<double>()[4] = 1e300;
  EXPECT_TRUE(contains(error_message([&] { quantize_affine(d, c); }, ErrorCode::Numerical), "beyond the fp32 range"));
}

TEST(AffineQuantize, ScalesThatDoNotFitF16AreAnError) {
  const Tensor big = row_tensor({-1e6f, 1e6f});
  std::string m = error_message([&] { quantize_affine(big, config(4, -1, AffineMode::Asymmetric, DType::F16)); },
                                ErrorCode::Numerical);
  EXPECT_TRUE(contains(m, "overflows f16"));
  EXPECT_TRUE(contains(m, "row 0, group 0"));
  const Tensor small = row_tensor({-1e-9f, 1e-9f});
  EXPECT_TRUE(contains(error_message([&] { quantize_affine(small, config(4, -1, AffineMode::Asymmetric, DType::F16)); },
                                     ErrorCode::Numerical),
                       "underflows f16"));
  // fp32 scales hold both.
  EXPECT_NO_THROW(quantize_affine(big, config(4, -1, AffineMode::Asymmetric, DType::F32)));
  EXPECT_NO_THROW(quantize_affine(small, config(4, -1, AffineMode::Asymmetric, DType::F32)));
  // A range beyond fp32 (bf16 can hold 3e38).
  const Tensor huge = row_tensor({-3e38f, 3e38f});
  EXPECT_TRUE(contains(error_message([&] { quantize_affine(huge, config(4, -1, AffineMode::Asymmetric, DType::F32)); },
                                     ErrorCode::Numerical),
                       "overflows fp32"));
}

TEST(AffineDequantize, FastPathEqualsTheReferenceInEveryDtype) {
  const Tensor w = random_weight(9, 300, 122);
  for (const AffineMode mode : kModes) {
    for (const int bits : kAffineBits) {
      for (const std::int64_t g : {7, 128, 256, -1, 0}) {
        const QuantizedTensor q = quantize_affine(w, config(bits, g, mode, DType::F16));
        const Tensor ref = dequantize_affine_reference(q);
        for (const DType dt : {DType::F32, DType::F16, DType::BF16}) {
          const Tensor fast = dequantize_affine(q, dt);
          ASSERT_EQ(fast.dtype(), dt);
          const Tensor expected = ref.to(dt);
          ASSERT_EQ(0, std::memcmp(fast.raw_data(), expected.raw_data(), expected.nbytes()))
              << "mode " << static_cast<int>(mode) << " bits " << bits << " group " << g << " " << dtype_name(dt);
        }
      }
    }
  }
  const QuantizedTensor q = quantize_affine(w, affine_rtn_config());
  EXPECT_TRUE(contains(error_message([&] { dequantize_affine(q, DType::I8); }, ErrorCode::InvalidArgument), "i8"));
}

TEST(AffineDequantize, RejectsCorruptComponents) {
  const QuantizedTensor good = quantize_affine(random_weight(4, 64, 121), config(4, 32, AffineMode::Asymmetric));
  QuantizedTensor q = good;
  q.components["codes"] = good.component("codes").clone();
  q.components["codes"].data<std::uint8_t>()[70] = 16;
  std::string m = error_message([&] { dequantize_affine_reference(q); }, ErrorCode::Corrupt);
  EXPECT_TRUE(contains(m, "code 16 at row 1, column 6"));
  q = good;
  q.components["zeros"] = good.component("zeros").clone();
  q.components["zeros"].data<std::uint8_t>()[3] = 200;
  EXPECT_TRUE(contains(error_message([&] { dequantize_affine_reference(q); }, ErrorCode::Corrupt),
                       "zero 200 at row 1, group 1"));
  q = good;
  q.components["scales"] = Tensor::zeros({4, 3}, DType::F16);
  EXPECT_TRUE(contains(error_message([&] { dequantize_affine_reference(q); }, ErrorCode::Corrupt), "[4, 2]"));
  q = good;
  q.components.erase("zeros");
  EXPECT_TRUE(contains(error_message([&] { dequantize_affine_reference(q); }, ErrorCode::InvalidArgument), "zeros"));
  q = good;
  q.method = "nf4";
  EXPECT_TRUE(contains(error_message([&] { dequantize_affine_reference(q); }, ErrorCode::InvalidArgument), "'nf4'"));
  q = good;
  q.params.bits = 5;
  EXPECT_TRUE(contains(error_message([&] { dequantize_affine_reference(q); }, ErrorCode::Corrupt), "bits = 5"));
}

// ---- matmul, registry, params --------------------------------------------------------------------------

TEST(AffineMatmul, IsXTimesDequantizedTransposed) {
  const Tensor w = random_weight(24, 70, 131);
  const QuantizedTensor q = quantize_affine(w, config(4, 32, AffineMode::Asymmetric, DType::F16));
  const Tensor x = random_weight(3, 70, 132, 1.0f);
  const Tensor y = matmul_affine_reference(q, x);
  ASSERT_EQ(y.shape(), (Shape{3, 24}));
  const std::vector<float> wh = floats_of(dequantize_affine_reference(q));
  for (std::int64_t m = 0; m < 3; ++m)
    for (std::int64_t n = 0; n < 24; ++n) {
      double acc = 0;
      for (std::int64_t k = 0; k < 70; ++k)
        acc += double(x.data<float>()[m * 70 + k]) * wh[static_cast<std::size_t>(n * 70 + k)];
      EXPECT_NEAR(y.data<float>()[m * 24 + n], acc, 1e-4 * (1.0 + std::fabs(acc)));
    }
}

TEST(AffineRegistry, ParamsRoundTripAndDefaults) {
  const MethodInfo info = affine_method_info();
  EXPECT_EQ(info.name, "affine");
  EXPECT_EQ(info.defaults.bits, 4);
  EXPECT_EQ(info.defaults.group_size, 128);
  EXPECT_FALSE(info.defaults.symmetric);
  EXPECT_EQ(info.defaults.variant, "minmax:f16");
  for (const AffineMode mode : kModes) {
    for (const DType dt : {DType::F16, DType::F32}) {
      const AffineConfig c = config(3, 64, mode, dt);
      const AffineConfig back = affine_config_from_params(affine_params_from_config(c));
      EXPECT_EQ(back.bits, 3);
      EXPECT_EQ(back.group_size, 64);
      EXPECT_EQ(back.mode, mode);
      EXPECT_EQ(back.scale_dtype, dt);
    }
  }
  QuantParams p;
  p.bits = 8;
  p.group_size = -1;
  p.symmetric = true;
  p.variant = "absmax";
  const AffineConfig int8 = affine_config_from_params(p);
  EXPECT_EQ(int8.mode, AffineMode::Absmax);
  EXPECT_EQ(int8.scale_dtype, DType::F32);
  EXPECT_EQ(affine_params_from_config(affine_int8_config()), affine_params_from_config(int8));
  p.variant = "";
  EXPECT_EQ(affine_config_from_params(p).mode, AffineMode::Symmetric);
  EXPECT_EQ(affine_config_from_params(p).scale_dtype, DType::F16);
  p.variant = "absmax:f16";
  EXPECT_EQ(affine_config_from_params(p).scale_dtype, DType::F16);
  p.variant = "zeropoint";
  EXPECT_TRUE(
      contains(error_message([&] { affine_config_from_params(p); }, ErrorCode::InvalidArgument), "'zeropoint'"));
  p.variant = "minmax:bf16";
  EXPECT_TRUE(contains(error_message([&] { affine_config_from_params(p); }, ErrorCode::InvalidArgument), "'bf16'"));
  p.variant = "absmax";
  p.symmetric = false;
  EXPECT_TRUE(contains(error_message([&] { affine_config_from_params(p); }, ErrorCode::InvalidArgument), "symmetric"));

  // The registry's three faces are the functions above.
  const Tensor w = random_weight(8, 40, 141);
  const QuantizedTensor a = info.quantize(w, info.defaults);
  const QuantizedTensor b = quantize_affine(w, affine_rtn_config());
  EXPECT_EQ(a.params, b.params);
  EXPECT_EQ(ints_of(a.component("codes")), ints_of(b.component("codes")));
  EXPECT_EQ(floats_of(info.dequantize(a)), floats_of(dequantize_affine_reference(b)));
  EXPECT_EQ(info.matmul(a, random_weight(2, 40, 142)).shape(), (Shape{2, 8}));
  EXPECT_EQ(a.method, "affine");
  EXPECT_EQ(a.shape, (Shape{8, 40}));
}

TEST(AffineStorage, BitsPerWeightCountsUnpackedCodes) {
  // Codes are one byte each (kernels repack); g128 fp16 scales and u8 zeros add 24 bits per 128 weights.
  const QuantizedTensor q = quantize_affine(random_weight(16, 256, 151), affine_rtn_config());
  EXPECT_DOUBLE_EQ(q.bits_per_weight(), 8.0 + 24.0 / 128.0);
}

TEST(AffineStorage, ReadsBackBitIdenticalFromALowbitFile) {
  const QuantizedTensor q =
      quantize_affine(random_weight(6, 100, 161), config(3, 32, AffineMode::Symmetric, DType::F16));
  const auto path =
      std::filesystem::temp_directory_path() / fmt::format("lowbit_AffineStorage_{}.safetensors", ::getpid());
  io::save_safetensors(path, io::quantized_tensors("layer.weight", q), {io::quantized_metadata("layer.weight", q)});
  const QuantizedTensor back = io::load_quantized(io::Checkpoint::open(path), "layer.weight");
  std::filesystem::remove(path);
  EXPECT_EQ(back.method, q.method);
  EXPECT_EQ(back.shape, q.shape);
  EXPECT_EQ(back.params, q.params);
  ASSERT_EQ(back.components.size(), q.components.size());
  for (const auto& [name, t] : q.components) {
    EXPECT_EQ(back.component(name).dtype(), t.dtype()) << name;
    EXPECT_EQ(back.component(name).shape(), t.shape()) << name;
    EXPECT_EQ(0, std::memcmp(back.component(name).contiguous().raw_data(), t.contiguous().raw_data(), t.nbytes()))
        << name;
  }
  EXPECT_EQ(floats_of(dequantize_affine_reference(back)), floats_of(dequantize_affine_reference(q)));
}

// The optional g_idx component (GPTQ act-order): column c reads the grid of group g_idx[c].
TEST(AffineGIdx, EachColumnReadsItsGroupsGrid) {
  const std::uint64_t seed = std::random_device{}();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  const std::int64_t n = 5, k = 96, g = 32;
  QuantizedTensor q = quantize_affine(random_weight(n, k, seed), config(3, g, AffineMode::Asymmetric, DType::F16));
  Tensor g_idx = Tensor::empty({k}, DType::I32);
  std::uniform_int_distribution<std::int32_t> group(0, 2);
  for (std::int64_t c = 0; c < k; ++c) g_idx.data<std::int32_t>()[c] = group(rng);
  q.components["g_idx"] = g_idx;
  const std::vector<float> scales = floats_of(q.component("scales"));
  const std::vector<int> zeros = ints_of(q.component("zeros")), codes = ints_of(q.component("codes"));
  std::vector<float> expected;
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t c = 0; c < k; ++c) {
      const auto i = static_cast<std::size_t>(r * 3 + g_idx.data<std::int32_t>()[c]);
      expected.push_back(scales[i] * static_cast<float>(codes[static_cast<std::size_t>(r * k + c)] - zeros[i]));
    }
  }
  EXPECT_EQ(floats_of(dequantize_affine_reference(q)), expected);
  EXPECT_EQ(floats_of(dequantize_affine(q, DType::F16)), floats_of(dequantize_affine_reference(q).to(DType::F16)));

  g_idx.data<std::int32_t>()[17] = 3;  // 3 groups a row: 0..2
  EXPECT_NE(error_message([&] { (void)dequantize_affine_reference(q); }, ErrorCode::Corrupt).find("g_idx[17] = 3"),
            std::string::npos);
  q.components["g_idx"] = Tensor::zeros({k - 1}, DType::I32);
  error_message([&] { (void)dequantize_affine_reference(q); }, ErrorCode::Corrupt);
}

}  // namespace
}  // namespace lowbit::quant
