// AWQ's search math (quant/awq.hpp): the grid against the spec's vectors (awq.md section 7), the scale
// formulas, the scale search on a linear with outlier channels against RTN, the clip search's monotonicity,
// the checkpoint form against the pseudo-quantizer, and the guards.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "lowbit/core/error.hpp"
#include "lowbit/quant/affine.hpp"
#include "lowbit/quant/awq.hpp"
#include "lowbit/quant/common.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::quant {
namespace {

Tensor normal(std::int64_t rows, std::int64_t cols, float stddev, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  Tensor t = Tensor::empty({rows, cols}, DType::F32);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(rng);
  return t;
}

// Inputs ~ N(0, 1) with a few input channels 30x larger (the activation outliers AWQ protects).
Tensor outlier_inputs(std::int64_t tokens, std::int64_t k, std::mt19937_64& rng, std::vector<int>* channels = nullptr) {
  Tensor x = normal(tokens, k, 1.0f, rng);
  std::uniform_int_distribution<int> pick(0, static_cast<int>(k) - 1);
  for (int c = 0; c < 8; ++c) {
    const int ch = pick(rng);
    if (channels) channels->push_back(ch);
    for (std::int64_t r = 0; r < tokens; ++r) x.data<float>()[r * k + ch] *= 30.0f;
  }
  return x;
}

std::vector<float> mean_abs(const Tensor& x) {
  const std::int64_t k = x.size(1);
  std::vector<double> sum(static_cast<std::size_t>(k), 0.0);
  for (std::int64_t r = 0; r < x.size(0); ++r)
    for (std::int64_t j = 0; j < k; ++j) sum[static_cast<std::size_t>(j)] += std::abs(x.data<float>()[r * k + j]);
  std::vector<float> out;
  for (double v : sum) out.push_back(static_cast<float>(v / static_cast<double>(x.size(0))));
  return out;
}

double mse(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double d = static_cast<double>(a.data<float>()[i]) - b.data<float>()[i];
    s += d * d;
  }
  return s / static_cast<double>(a.numel());
}

// Output MSE of x Q(W diag(s)) diag(s)^-1 against x W^T (s empty: RTN on the AWQ grid).
double output_mse(const Tensor& w, const Tensor& x, std::span<const float> s, const AwqConfig& c,
                  const Tensor& reference) {
  Tensor q = w.clone();
  const std::int64_t n = q.size(0), k = q.size(1);
  if (!s.empty()) awq_scale_columns(q.data<float>(), n, k, s);
  awq_pseudo_quantize(q.data<float>(), n, k, c.bits, c.group_size);
  if (!s.empty()) awq_divide_columns(q.data<float>(), n, k, s);
  return mse(matmul_reference(x, q), reference);
}

TEST(Awq, GridMatchesTheSpecVectors) {
  struct Case {
    std::vector<float> group;
    float scale;
    int zero;
    std::vector<float> dequantized;
  };
  const Case cases[] = {
      {{-0.75f, 0.0f, 0.625f, 0.875f, 3.0f}, 0.25f, 3, {-0.75f, 0.0f, 0.5f, 1.0f, 3.0f}},
      {{1.0f, 2.0f, 4.75f}, 0.25f, 0, {1.0f, 2.0f, 3.75f}},
      {{-4.75f, -2.0f, -1.0f}, 0.25f, 15, {-3.75f, -2.0f, -1.0f}},
  };
  for (const Case& c : cases) {
    std::vector<float> w = c.group;
    const auto [lo, hi] = std::minmax_element(w.begin(), w.end());
    const AffineGroupParams p = awq_group_params(*lo, *hi, 4);
    EXPECT_EQ(p.scale, c.scale);
    EXPECT_EQ(p.zero, c.zero);
    awq_pseudo_quantize(w.data(), 1, static_cast<std::int64_t>(w.size()), 4, -1);
    for (std::size_t i = 0; i < w.size(); ++i) EXPECT_EQ(w[i], c.dequantized[i]) << i;
  }
  // A constant group: scale 1e-5 / 15 (rounded to an f16 subnormal, 6.557e-7), zero 0, every value 15
  // scale (the spec's 1e-5 in fp32; AutoAWQ's fp16 arithmetic rounds the same way).
  std::vector<float> w = {0.5f, 0.5f, 0.5f};
  awq_pseudo_quantize(w.data(), 1, 3, 4, -1);
  for (float v : w) EXPECT_NEAR(v, 1e-5, 2e-7);
}

TEST(Awq, CheckpointFormDecodesToThePseudoQuantizedWeight) {
  std::mt19937_64 rng(std::random_device{}());
  for (int bits : {2, 3, 4}) {
    const Tensor w = normal(37, 96, 0.05f, rng);
    Tensor clip = Tensor::empty({37, 3}, DType::F32);
    for (std::int64_t i = 0; i < clip.numel(); ++i) clip.data<float>()[i] = 0.08f;
    for (const Tensor& cm : {Tensor{}, clip}) {
      const QuantizedTensor q = quantize_awq(w, bits, 32, cm);
      EXPECT_EQ(q.method, "affine");
      EXPECT_EQ(q.params.bits, bits);
      EXPECT_EQ(q.params.group_size, 32);
      EXPECT_FALSE(q.params.symmetric);
      const Tensor decoded = dequantize_affine_reference(q);
      Tensor expect = w.clone();
      awq_pseudo_quantize(expect.data<float>(), 37, 96, bits, 32,
                          cm.defined() ? std::span<const float>(cm.data<float>(), 111) : std::span<const float>{});
      for (std::int64_t i = 0; i < w.numel(); ++i) ASSERT_EQ(decoded.data<float>()[i], expect.data<float>()[i]) << i;
    }
  }
  EXPECT_THROW(quantize_awq(normal(4, 96, 1.0f, rng), 4, 0), Error);
  EXPECT_THROW(quantize_awq(normal(4, 96, 1.0f, rng), 4, -2), Error);
}

// Group 128 on K = 288 (stories15M's hidden size): groups of 128, 128 and 32. Each group must come out as if
// it were quantized alone (a row of its own length, one group), in both the checkpoint form and the pseudo-
// quantizer; the clip search returns one bound per group, the short one included, and never raises the loss.
TEST(Awq, ShortLastGroupIsQuantizedAsAGroupOfItsOwn) {
  std::mt19937_64 rng(std::random_device{}());
  const std::int64_t n = 19, k = 288, g = 128;
  const Tensor w = normal(n, k, 0.05f, rng);
  const QuantizedTensor q = quantize_awq(w, 4, g);
  EXPECT_EQ(q.component("scales").shape(), (Shape{n, 3}));
  const Tensor decoded = dequantize_affine_reference(q);
  Tensor pseudo = w.clone();
  awq_pseudo_quantize(pseudo.data<float>(), n, k, 4, g);
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t c0 = 0; c0 < k; c0 += g) {
      const std::int64_t len = std::min(g, k - c0);
      std::vector<float> alone(w.data<float>() + r * k + c0, w.data<float>() + r * k + c0 + len);
      awq_pseudo_quantize(alone.data(), 1, len, 4, -1);
      for (std::int64_t j = 0; j < len; ++j) {
        ASSERT_EQ(decoded.data<float>()[r * k + c0 + j], alone[static_cast<std::size_t>(j)]) << r << " " << c0 + j;
        ASSERT_EQ(pseudo.data<float>()[r * k + c0 + j], alone[static_cast<std::size_t>(j)]) << r << " " << c0 + j;
      }
    }
  }
  AwqConfig c;
  c.group_size = g;
  const Tensor x = normal(300, k, 1.0f, rng);
  const Tensor clip = awq_search_clip(w, x, c);
  EXPECT_EQ(clip.shape(), (Shape{n, 3}));
  EXPECT_LE(awq_clip_loss(w, x, c, clip), awq_clip_loss(w, x, c, Tensor{}));
}

TEST(Awq, ScaleFormulasMatchTheSpecVectors) {
  const std::vector<float> x = {4.0f, 1.0f}, w = {0.5f, 0.25f};
  const auto s1 = awq_candidate_scales(x, {}, 0.5, false);
  EXPECT_NEAR(s1[0], 1.4142135624, 1e-6);
  EXPECT_NEAR(s1[1], 0.7071067812, 1e-6);
  const auto s2 = awq_candidate_scales(x, w, 0.5, true);
  EXPECT_NEAR(s2[0], 1.1892419406, 1e-6);
  EXPECT_NEAR(s2[1], 0.8408717905, 1e-6);
  const auto s3 = awq_candidate_scales(x, w, 0.0, true);
  EXPECT_NEAR(s3[0], 0.7071774742, 1e-6);
  EXPECT_NEAR(s3[1], 1.4140721905, 1e-6);
  const auto s4 = awq_candidate_scales(x, {}, 0.0, false);  // alpha 0, paper formula: the identity
  EXPECT_EQ(s4[0], 1.0f);
  EXPECT_EQ(s4[1], 1.0f);
  // Guards: zero, huge and NaN channel statistics give finite positive scales.
  const std::vector<float> odd = {0.0f, 3e38f, std::numeric_limits<float>::quiet_NaN(), 1.0f};
  for (double a : {0.0, 0.5, 0.95}) {
    for (float v : awq_candidate_scales(odd, {}, a, false)) EXPECT_TRUE(std::isfinite(v) && v > 0.0f) << a;
  }
}

TEST(Awq, ScaleSearchBeatsRtnOnOutlierChannelsAndClippingHelpsMore) {
  std::mt19937_64 rng(std::random_device{}());
  const std::int64_t n = 128, k = 256, tokens = 512;
  const Tensor w = normal(n, k, 0.02f, rng);
  const Tensor x = outlier_inputs(tokens, k, rng);
  const Tensor reference = matmul_reference(x, w);
  AwqConfig c;
  c.group_size = 128;
  const std::vector<float> x_mean = mean_abs(x);
  const double rtn = output_mse(w, x, {}, c, reference);
  for (bool duo : {false, true}) {
    c.duo_scaling = duo;
    const std::vector<float> w_mean = duo ? awq_weight_mean(std::vector<Tensor>{w}, c.group_size) : std::vector<float>{};
    const AwqScaleSearch found = awq_search_scale(x_mean, w_mean, c, [&](std::span<const float> s) {
      return output_mse(w, x, s, c, reference);
    });
    ASSERT_EQ(found.losses.size(), 20u);
    EXPECT_LT(found.loss, 0.8 * rtn) << "duo " << duo;  // the spec's sanity run: 0.013 against 0.033
    if (!duo) {
      EXPECT_EQ(found.losses[0], rtn);  // alpha 0 is RTN
    }
    EXPECT_GT(found.alpha, 0.0);
    for (double l : found.losses) EXPECT_GE(l, found.loss);
    // Fold, then the clip search on the scaled weight and inputs.
    Tensor ws = w.clone();
    awq_scale_columns(ws.data<float>(), n, k, found.scales);
    Tensor xs = x.clone();
    awq_divide_columns(xs.data<float>(), tokens, k, found.scales);
    const Tensor clip = awq_search_clip(ws, xs, c);
    const QuantizedTensor q = quantize_awq(ws, c.bits, c.group_size, clip);
    const double clipped = mse(matmul_reference(xs, dequantize_affine_reference(q)), reference);
    EXPECT_LE(clipped, found.loss * 1.02) << "duo " << duo;
  }
}

TEST(Awq, ClipSearchNeverIncreasesTheLoss) {
  std::mt19937_64 rng(std::random_device{}());
  for (int bits : {2, 3, 4}) {
    const std::int64_t n = 24, k = 64;
    Tensor w = normal(n, k, 0.05f, rng);
    w.data<float>()[5] = 0.9f;  // a weight outlier clipping can trade off
    const Tensor x = outlier_inputs(700, k, rng);
    AwqConfig c;
    c.bits = bits;
    c.group_size = 32;
    const Tensor clip = awq_search_clip(w, x, c);
    ASSERT_EQ(clip.shape(), (Shape{n, 2}));
    const double before = awq_clip_loss(w, x, c);
    const double after = awq_clip_loss(w, x, c, clip);
    EXPECT_LE(after, before) << bits;
    // Every bound is one of the grid's shrinks of the group's max |w|: 1.00, 0.95, ..., 0.55.
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t g = 0; g < 2; ++g) {
        float m0 = 0;
        for (std::int64_t j = 0; j < 32; ++j) m0 = std::max(m0, std::abs(w.data<float>()[r * k + g * 32 + j]));
        const float m = clip.data<float>()[r * 2 + g];
        bool on_grid = false;
        for (int i = 0; i < 10; ++i) on_grid = on_grid || m == m0 * (1.0f - static_cast<float>(i) / 20.0f);
        EXPECT_TRUE(on_grid) << r << " " << g << " " << m << " " << m0;
        // Brute force, independent of the search's Gram form: the output error over all 700 tokens (fewer
        // than n_sample_token * 2, so every token is sampled) of each grid bound, summed directly in fp64;
        // the chosen bound's error is the smallest.
        auto direct_error = [&](float bound) {
          std::vector<float> q(w.data<float>() + r * k + g * 32, w.data<float>() + r * k + g * 32 + 32);
          awq_pseudo_quantize(q.data(), 1, 32, bits, -1, std::vector<float>{bound});
          double err = 0;
          for (std::int64_t t = 0; t < 700; ++t) {
            double y = 0;
            for (std::int64_t j = 0; j < 32; ++j) {
              y += static_cast<double>(x.data<float>()[t * k + g * 32 + j]) *
                   (static_cast<double>(q[static_cast<std::size_t>(j)]) - w.data<float>()[r * k + g * 32 + j]);
            }
            err += y * y;
          }
          return err / 700.0;
        };
        double best = std::numeric_limits<double>::infinity();
        for (int i = 0; i < 10; ++i) best = std::min(best, direct_error(m0 * (1.0f - static_cast<float>(i) / 20.0f)));
        EXPECT_LE(direct_error(m), best * (1 + 1e-9)) << r << " " << g;
      }
    }
  }
}

TEST(Awq, SearchSkipsNonFiniteLossesAndFailsWhenAllAre) {
  const std::vector<float> x = {2.0f, 1.0f, 0.5f};
  AwqConfig c;
  int calls = 0;
  const AwqScaleSearch found = awq_search_scale(x, {}, c, [&](std::span<const float>) {
    ++calls;
    return calls == 1 ? std::numeric_limits<double>::quiet_NaN() : (calls == 4 ? 0.5 : 1.0);
  });
  EXPECT_EQ(calls, 20);
  EXPECT_TRUE(std::isnan(found.losses[0]));
  EXPECT_EQ(found.alpha, 3.0 / 20.0);
  EXPECT_EQ(found.loss, 0.5);
  try {
    awq_search_scale(x, {}, c, [](std::span<const float>) { return std::numeric_limits<double>::infinity(); });
    FAIL() << "expected a Numerical error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Numerical);
  }
}

TEST(Awq, RegistryEntryNeedsCalibration) {
  const MethodInfo& m = find_method("awq");
  EXPECT_EQ(m.defaults.bits, 4);
  EXPECT_EQ(m.defaults.group_size, 128);
  EXPECT_FALSE(m.defaults.symmetric);
  try {
    m.quantize(Tensor::zeros({4, 128}, DType::F32), m.defaults);
    FAIL() << "expected InvalidArgument";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("calib"), std::string::npos);
  }
}

}  // namespace
}  // namespace lowbit::quant
