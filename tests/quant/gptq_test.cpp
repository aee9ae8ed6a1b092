// GPTQ: the spec's hand-derived two-column example, agreement with IST-DASLab's own fasterquant on committed
// layers (tests/data/gptq, make_gptq_reference.py), the loss identity that checks the fp64 factor, lazy batches
// against column-by-column updates, proxy loss against round-to-nearest (random and real weights), diagonal
// H, act-order on outlier channels, dead columns, non-positive-definite H, bad input, thread and kernel
// independence, the registry entry.
#include "lowbit/quant/gptq.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "lowbit/core/parallel.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/quant/affine.hpp"
#include "lowbit/quant/calibration.hpp"
#include "lowbit/quant/registry.hpp"
#include "test_util.hpp"

namespace lowbit::quant {
namespace {

using ::lowbit::test::contains;
using ::lowbit::test::error_message;
using ::lowbit::test::floats_of;

const std::filesystem::path kDataDir = std::filesystem::path(LOWBIT_TEST_DATA_DIR) / "gptq";

Tensor random_weight(std::int64_t n, std::int64_t k, std::uint64_t seed, float sigma = 1.0f) {
  Tensor t = Tensor::empty({n, k}, DType::F32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < n * k; ++i) p[i] = dist(rng);
  return t;
}

// H = (2/N) X^T X (Calibration, fp64) of correlated inputs: each channel mixes its neighbours, a shared
// component, `outliers` channels x20, `dead` channels zero.
Tensor correlated_hessian(std::int64_t k, std::int64_t tokens, std::uint64_t seed,
                          const std::vector<std::int64_t>& outliers = {}, const std::vector<std::int64_t>& dead = {}) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Tensor x = Tensor::empty({tokens, k}, DType::F32);
  float* p = x.data<float>();
  std::vector<float> z(static_cast<std::size_t>(k));
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (auto& v : z) v = dist(rng);
    const float shared = 0.5f * dist(rng);
    for (std::int64_t c = 0; c < k; ++c) {
      float v = z[static_cast<std::size_t>(c)] + shared;
      if (c >= 1) v += 0.6f * z[static_cast<std::size_t>(c - 1)];
      if (c >= 2) v += 0.3f * z[static_cast<std::size_t>(c - 2)];
      p[t * k + c] = v;
    }
    for (const auto c : outliers) p[t * k + c] *= 20.0f;
    for (const auto c : dead) p[t * k + c] = 0.0f;
  }
  Calibration calib(k, CalibrationNeeds{.hessian = true});
  calib.add(x, 1);
  return calib.hessian();
}

GptqConfig gptq_config(int bits, std::int64_t group_size, bool symmetric, bool act_order = false,
                       bool static_groups = false) {
  GptqConfig c;
  c.bits = bits;
  c.group_size = group_size;
  c.symmetric = symmetric;
  c.act_order = act_order;
  c.static_groups = static_groups;
  c.scale_dtype = DType::F32;
  return c;
}

AffineConfig rtn_config(const GptqConfig& g) {
  AffineConfig a;
  a.bits = g.bits;
  a.group_size = g.group_size;
  a.mode = g.symmetric ? AffineMode::Symmetric : AffineMode::Asymmetric;
  a.scale_dtype = g.scale_dtype;
  return a;
}

std::vector<int> codes_of(const QuantizedTensor& q) {
  const Tensor c = q.component("codes").contiguous();
  const std::uint8_t* p = c.data<std::uint8_t>();
  return std::vector<int>(p, p + c.numel());
}

double fraction_equal(const std::vector<int>& a, const std::vector<int>& b) {
  EXPECT_EQ(a.size(), b.size());
  std::size_t same = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) same += a[i] == b[i] ? 1 : 0;
  return a.empty() ? 1.0 : static_cast<double>(same) / static_cast<double>(a.size());
}

double proxy(const Tensor& w, const Tensor& h, const QuantizedTensor& q) {
  return gptq_proxy_loss(w, h, dequantize_affine_reference(q));
}

// H + lambda I with lambda = damp * mean(diag H), fp64.
Tensor damped(const Tensor& h, double damp) {
  Tensor d = h.to(DType::F64).clone();
  const std::int64_t k = d.size(0);
  double* p = d.data<double>();
  double mean = 0;
  for (std::int64_t i = 0; i < k; ++i) mean += p[i * k + i];
  mean /= static_cast<double>(k);
  for (std::int64_t i = 0; i < k; ++i) p[i * k + i] += damp * mean;
  return d;
}

// ---- the spec's hand-derived example (gptq.md section 8) ---------------------------------------------------------

TEST(GptqHandExample, TwoColumnsPropagateTheFirstError) {
  // W = [[7.5, -1.3]], H = [[2, -1], [-1, 2]], 4-bit sym per row, damp 0.01: scale 1, zero 8; column 0: 7.5 ->
  // code 15 (clamped) = 7.0, e = 0.5 / U00; w1 = -1.3 - 0.5 / 2.02 = -1.5475 -> -2 (code 6). RTN gives -1.
  const Tensor w = Tensor::from_values<float>({7.5f, -1.3f}, {1, 2});
  const Tensor h = Tensor::from_values<double>({2.0, -1.0, -1.0, 2.0}, {2, 2});
  const GptqResult r = quantize_gptq(w, h, gptq_config(4, -1, true));
  EXPECT_EQ(codes_of(r.q), (std::vector<int>{15, 6}));
  EXPECT_EQ(floats_of(r.q.component("scales")), (std::vector<float>{1.0f}));
  EXPECT_EQ(floats_of(r.q.component("zeros")), (std::vector<float>{8.0f}));
  EXPECT_EQ(floats_of(dequantize_affine_reference(r.q)), (std::vector<float>{7.0f, -2.0f}));
  // Losses: 1/2 delta H_d delta^T with delta = [0.5, 0.7], H_d = H + 0.02 I: 0.3974.
  EXPECT_NEAR(r.loss, 0.3974, 1e-6);
  EXPECT_DOUBLE_EQ(r.damp_used, 0.01);
  EXPECT_EQ(r.factor_attempts, 1);
  EXPECT_FALSE(r.fallback);
  // Proxy loss (undamped, no 1/2): GPTQ 0.78, RTN (delta = [0.5, -0.3]) 0.98.
  EXPECT_NEAR(proxy(w, h, r.q), 0.78, 1e-6);
  EXPECT_NEAR(proxy(w, h, quantize_affine(w, rtn_config(gptq_config(4, -1, true)))), 0.98, 1e-6);
}

TEST(GptqHandExample, GIdxOfTheSpecsToyPermutation) {
  // diag H = [3, 1, 4, 2] -> perm [2, 0, 3, 1]; g = 2: dynamic g_idx = [0, 1, 0, 1]; static: no g_idx.
  const Tensor h = Tensor::from_values<double>({3, 0, 0, 0, 0, 1, 0, 0, 0, 0, 4, 0, 0, 0, 0, 2}, {4, 4});
  const Tensor w = random_weight(3, 4, 1);
  const GptqResult dyn = quantize_gptq(w, h, gptq_config(4, 2, false, true));
  ASSERT_TRUE(dyn.q.has("g_idx"));
  const Tensor g = dyn.q.component("g_idx");
  EXPECT_EQ(std::vector<std::int32_t>(g.data<std::int32_t>(), g.data<std::int32_t>() + 4),
            (std::vector<std::int32_t>{0, 1, 0, 1}));
  const GptqResult st = quantize_gptq(w, h, gptq_config(4, 2, false, true, true));
  EXPECT_FALSE(st.q.has("g_idx"));
  EXPECT_FALSE(quantize_gptq(w, h, gptq_config(4, 2, false, false)).q.has("g_idx"));
  // Diagonal H: no propagation, so static groups give round-to-nearest exactly, act-order or not.
  EXPECT_EQ(codes_of(st.q), codes_of(quantize_affine(w, rtn_config(gptq_config(4, 2, false)))));
}

// ---- the reference: IST-DASLab gptq.py fasterquant on the same W and H (tests/data/gptq) --------------------------

class GptqReference : public ::testing::TestWithParam<DType> {};

TEST_P(GptqReference, MatchesFasterquantOnCommittedLayers) {
  const auto file = io::SafetensorsFile::open(kDataDir / "gptq_reference.safetensors");
  std::ifstream in(kDataDir / "gptq_reference.json");
  const nlohmann::json meta = nlohmann::json::parse(in);
  int cases = 0;
  std::size_t codes_total = 0, codes_same = 0;
  double worst_proxy = 0;
  std::printf("  factor in %s\n", std::string(dtype_name(GetParam())).c_str());
  for (const auto& c : meta["cases"]) {
    const std::string name = c["name"];
    const std::string layer = c["layer"];
    SCOPED_TRACE(name);
    ++cases;
    const Tensor w = file.tensor(layer + ".W");                 // f16 [n, k]
    const Tensor h = file.tensor(layer + ".H").to(DType::F32);  // the reference's fp32 H
    GptqConfig cfg = gptq_config(c["bits"].get<int>(), c["group_size"].get<std::int64_t>(), c["symmetric"].get<bool>(),
                                 c["act_order"].get<bool>(), c["static_groups"].get<bool>());
    cfg.mse = c["mse"].get<bool>();
    cfg.factor_dtype = GetParam();
    const GptqResult r = quantize_gptq(w, h, cfg);
    EXPECT_FALSE(r.fallback);
    EXPECT_EQ(r.dead_columns, static_cast<std::int64_t>(meta["layers"][layer]["dead"].size()));

    const std::vector<int> ours = codes_of(r.q);
    const Tensor ref_codes = file.tensor(name + ".codes");
    const std::vector<int> ref(ref_codes.data<std::uint8_t>(), ref_codes.data<std::uint8_t>() + ref_codes.numel());
    const double agree = fraction_equal(ours, ref);
    codes_total += ours.size();
    for (std::size_t i = 0; i < ours.size(); ++i) codes_same += ours[i] == ref[i] ? 1 : 0;

    const double ref_proxy = c["proxy_loss"].get<double>();
    const double our_proxy = proxy(w, h, r.q);
    const double ref_error = c["error"].get<double>();
    worst_proxy = std::max(worst_proxy, std::fabs(our_proxy / ref_proxy - 1.0));
    std::printf("  %-30s codes equal %.5f  proxy %.6f vs %.6f (%+.2e)  error %.6f vs %.6f\n", name.c_str(), agree,
                our_proxy, ref_proxy, our_proxy / ref_proxy - 1.0, r.loss, ref_error);
    EXPECT_NEAR(our_proxy / ref_proxy, 1.0, 0.01);
    EXPECT_NEAR(r.loss / ref_error, 1.0, 0.01);
    EXPECT_GT(agree, 0.98);
    EXPECT_LT(our_proxy, c["proxy_loss_rtn"].get<double>());

    // The grids: a group's range is taken from weights that earlier columns' errors moved, which carry the
    // two factors' rounding differences; so scales agree to about 1e-6 (relative) and zeros exactly, except
    // in rows where a code already differed.
    const Tensor ref_scales = file.tensor(name + ".scales");
    ASSERT_EQ(r.q.component("scales").shape(), ref_scales.shape());
    const std::vector<float> s_ours = floats_of(r.q.component("scales")), s_ref = floats_of(ref_scales);
    const std::vector<float> z_ours = floats_of(r.q.component("zeros")),
                             z_ref = floats_of(file.tensor(name + ".zeros"));
    std::size_t grids_same = 0;
    for (std::size_t i = 0; i < s_ref.size(); ++i)
      grids_same += std::fabs(s_ours[i] / s_ref[i] - 1.0f) < 1e-4f && z_ours[i] == z_ref[i] ? 1 : 0;
    EXPECT_GT(static_cast<double>(grids_same) / static_cast<double>(s_ref.size()), 0.97);
    // g_idx: the reference's, stored by us only where it is not c / g.
    const Tensor ref_gidx = file.tensor(name + ".g_idx");
    const std::int64_t k = w.size(1), g = cfg.group_size == -1 ? k : cfg.group_size;
    std::vector<std::int32_t> ours_gidx(static_cast<std::size_t>(k));
    for (std::int64_t j = 0; j < k; ++j) ours_gidx[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(j / g);
    if (r.q.has("g_idx")) {
      const Tensor gi = r.q.component("g_idx");
      ours_gidx.assign(gi.data<std::int32_t>(), gi.data<std::int32_t>() + k);
    }
    std::size_t gidx_same = 0;
    for (std::int64_t j = 0; j < k; ++j)
      gidx_same += ours_gidx[static_cast<std::size_t>(j)] == ref_gidx.data<std::int32_t>()[j];
    // Columns whose diag(H) ties (the dead ones) may sit in another act-order group than torch's argsort put them.
    EXPECT_GE(static_cast<std::int64_t>(gidx_same), k - 2 * r.dead_columns);
  }
  EXPECT_EQ(cases, 15);
  std::printf("  all cases: %zu of %zu codes equal (%.5f); worst proxy-loss difference %.2e\n", codes_same, codes_total,
              static_cast<double>(codes_same) / static_cast<double>(codes_total), worst_proxy);
  RecordProperty("codes_equal_fraction", fmt::format("{:.6f}", static_cast<double>(codes_same) / codes_total));
}

INSTANTIATE_TEST_SUITE_P(FactorDType, GptqReference, ::testing::Values(DType::F64, DType::F32),
                         [](const ::testing::TestParamInfo<DType>& p) { return std::string(dtype_name(p.param)); });

// ---- the factor, checked through the loss identity -----------------------------------------------------------------

TEST(GptqFactor, LossIsHalfTheDampedProxyLoss) {
  // sum (w - q)^2 / (2 U_cc^2) = 1/2 tr((W - Q) H_d (W - Q)^T) holds exactly for U^T U = H_d^-1 in exact
  // arithmetic; a wrong factor (or a wrong order of it) breaks it. k = 300: five 64-blocks of the Cholesky
  // and a partial one, three lazy-batch blocks, partial tiles everywhere.
  const std::int64_t n = 37, k = 300;
  const Tensor w = random_weight(n, k, 3);
  const Tensor h = correlated_hessian(k, 900, 4, {5, 150, 299});
  for (const bool act : {false, true}) {
    for (const std::int64_t g : {std::int64_t{-1}, std::int64_t{64}}) {
      SCOPED_TRACE(fmt::format("act_order {} group_size {}", act, g));
      const GptqResult r = quantize_gptq(w, h, gptq_config(3, g, false, act));
      const double expected = 0.5 * proxy(w, damped(h, 0.01), r.q);
      EXPECT_NEAR(r.loss / expected, 1.0, 2e-5);
    }
  }
}

// ---- lazy batches ------------------------------------------------------------------------------------------------

TEST(GptqLazyBatch, EqualsColumnByColumnWhereGroupsAlignWithBlocks) {
  const std::int64_t n = 48, k = 320;
  const Tensor w = random_weight(n, k, 5);
  const Tensor h = correlated_hessian(k, 1200, 6, {7, 100});
  struct Case {
    std::int64_t group_size;
    bool act_order;
  };
  for (const Case cs : {Case{-1, false}, Case{-1, true}, Case{128, false}, Case{64, true}}) {
    SCOPED_TRACE(fmt::format("group_size {} act_order {}", cs.group_size, cs.act_order));
    GptqConfig lazy = gptq_config(4, cs.group_size, false, cs.act_order);
    lazy.block_size = cs.group_size == 64 ? 64 : 128;
    GptqConfig single = lazy;
    single.block_size = 1;
    const GptqResult a = quantize_gptq(w, h, lazy), b = quantize_gptq(w, h, single);
    // Only the summation order of the updates differs: fp32 rounding may flip a rare code.
    EXPECT_GT(fraction_equal(codes_of(a.q), codes_of(b.q)), 0.999);
    EXPECT_NEAR(a.loss / b.loss, 1.0, 1e-4);
  }
  // group_size 32 < block_size 128: the reference finds a group's grid without the updates made inside the
  // current block (gptq.md section 6.5), so the grids of groups starting inside a block differ from a
  // column-by-column run, and agree when every group starts a block.
  GptqConfig g32 = gptq_config(4, 32, false);
  GptqConfig g32_single = g32;
  g32_single.block_size = 1;
  GptqConfig g32_aligned = g32;
  g32_aligned.block_size = 32;
  const std::vector<float> s128 = floats_of(quantize_gptq(w, h, g32).q.component("scales"));
  const std::vector<float> s1 = floats_of(quantize_gptq(w, h, g32_single).q.component("scales"));
  const std::vector<float> s32 = floats_of(quantize_gptq(w, h, g32_aligned).q.component("scales"));
  // Scales move by the rounding of the updates (about 1e-6 relative) between any two summation orders; a
  // grid found from weights that lack a block's updates moves by far more.
  const auto moved = [](float a, float b) { return std::fabs(a / b - 1.0f) > 1e-4f; };
  std::size_t differ_128 = 0, differ_32 = 0;
  for (std::size_t i = 0; i < s1.size(); ++i) {
    differ_128 += moved(s128[i], s1[i]) ? 1 : 0;
    differ_32 += moved(s32[i], s1[i]) ? 1 : 0;
  }
  EXPECT_GT(differ_128, s1.size() / 2);   // groups 1, 2, 3 of each block: most grids move
  EXPECT_LT(differ_32, s1.size() / 100);  // only where rounding flipped a code
}

// ---- proxy loss against round-to-nearest ---------------------------------------------------------------------------

TEST(GptqProxyLoss, NotAboveRoundToNearest) {
  const std::int64_t n = 64, k = 192;
  const Tensor w = random_weight(n, k, 7, 0.02f);
  const Tensor h = correlated_hessian(k, 800, 8, {3, 90});
  for (const GptqConfig& c :
       {gptq_config(4, -1, false), gptq_config(4, 64, true), gptq_config(3, 32, false, true), gptq_config(2, 64, false),
        gptq_config(8, -1, true), gptq_config(3, 64, true, true, true)}) {
    SCOPED_TRACE(fmt::format("bits {} group {} sym {} act {} static {}", c.bits, c.group_size, c.symmetric, c.act_order,
                             c.static_groups));
    const double gptq = proxy(w, h, quantize_gptq(w, h, c).q);
    const double rtn = proxy(w, h, quantize_affine(w, rtn_config(c)));
    EXPECT_GT(gptq, 0.0);
    EXPECT_LT(gptq, 0.8 * rtn);
  }
}

TEST(GptqProxyLoss, NotAboveRoundToNearestOnRealWeights) {
  const auto path = std::filesystem::path(LOWBIT_SHARED_DATA_DIR) / "stories15M" / "model.safetensors";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no " << path << " (shared data absent)";
  const auto file = io::SafetensorsFile::open(path);
  // q_proj [288, 288] (k = 288: g32 divides it, g128 leaves a last group of 32) and down_proj [288, 768].
  for (const std::string name : {"model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight"}) {
    const Tensor w = file.tensor(name);
    const Tensor h = correlated_hessian(w.size(1), 2 * w.size(1), 9, {11, 200});
    for (const GptqConfig& c :
         {gptq_config(4, 128, true), gptq_config(3, 32, false, true), gptq_config(4, -1, false)}) {
      SCOPED_TRACE(fmt::format("{} bits {} group {}", name, c.bits, c.group_size));
      const double gptq = proxy(w, h, quantize_gptq(w, h, c).q);
      const double rtn = proxy(w, h, quantize_affine(w, rtn_config(c)));
      EXPECT_LT(gptq, 0.8 * rtn);
    }
  }
}

TEST(GptqProxyLoss, EqualsRoundToNearestForDiagonalHessian) {
  const std::int64_t n = 20, k = 150;
  const Tensor w = random_weight(n, k, 10);
  Tensor h = Tensor::zeros({k, k}, DType::F64);
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> u(0.1, 10.0);
  for (std::int64_t i = 0; i < k; ++i) h.data<double>()[i * k + i] = u(rng);
  for (const GptqConfig& c :
       {gptq_config(4, -1, false), gptq_config(3, 32, true), gptq_config(4, 64, false, true, true),
        gptq_config(2, 50, false), gptq_config(4, -1, true, true)}) {
    SCOPED_TRACE(fmt::format("bits {} group {} act {} static {}", c.bits, c.group_size, c.act_order, c.static_groups));
    const GptqResult r = quantize_gptq(w, h, c);
    const QuantizedTensor rtn = quantize_affine(w, rtn_config(c));
    EXPECT_EQ(codes_of(r.q), codes_of(rtn));
    EXPECT_EQ(floats_of(r.q.component("scales")), floats_of(rtn.component("scales")));
    EXPECT_DOUBLE_EQ(proxy(w, h, r.q), proxy(w, h, rtn));
  }
}

TEST(GptqActOrder, BeatsColumnOrderOnOutlierChannels) {
  const std::int64_t n = 64, k = 256;
  const Tensor w = random_weight(n, k, 12);
  const Tensor h = correlated_hessian(k, 1024, 13, {17, 60, 61, 130, 200, 250});
  for (const GptqConfig& c : {gptq_config(3, -1, false), gptq_config(4, -1, true), gptq_config(3, 64, false)}) {
    GptqConfig act = c;
    act.act_order = true;
    SCOPED_TRACE(fmt::format("bits {} group {}", c.bits, c.group_size));
    EXPECT_LT(proxy(w, h, quantize_gptq(w, h, act).q), 0.9 * proxy(w, h, quantize_gptq(w, h, c).q));
  }
}

// ---- dead columns, non-PD Hessians, bad input --------------------------------------------------------------------

TEST(GptqRobustness, DeadColumnsQuantizeToTheZeroPoint) {
  const std::int64_t n = 16, k = 96;
  const std::vector<std::int64_t> dead = {0, 31, 32, 95};
  const Tensor w = random_weight(n, k, 14);
  const Tensor h = correlated_hessian(k, 300, 15, {}, dead);
  for (const GptqConfig& c :
       {gptq_config(4, 32, false), gptq_config(3, -1, true, true), gptq_config(4, 32, false, true)}) {
    SCOPED_TRACE(fmt::format("group {} act {}", c.group_size, c.act_order));
    const GptqResult r = quantize_gptq(w, h, c);
    EXPECT_EQ(r.dead_columns, 4);
    const Tensor d = dequantize_affine_reference(r.q);
    for (std::int64_t row = 0; row < n; ++row)
      for (const auto col : dead) EXPECT_EQ(d.data<float>()[row * k + col], 0.0f) << row << ", " << col;
    EXPECT_TRUE(std::isfinite(r.loss));
  }
  // All columns dead (H = 0): every H_ii becomes 1, nothing propagates, every code is the zero point.
  const GptqResult all = quantize_gptq(w, Tensor::zeros({k, k}, DType::F64), gptq_config(4, 32, true));
  EXPECT_EQ(all.dead_columns, k);
  for (const int code : codes_of(all.q)) ASSERT_EQ(code, 8);
}

TEST(GptqRobustness, IndefiniteHessianRaisesTheDampThenFallsBack) {
  const std::int64_t n = 12, k = 40;
  const Tensor w = random_weight(n, k, 16);
  // H = X^T X - 0.045 mean(diag) I: not PD; the schedule 0.01, 0.02, ... succeeds at 0.05 or 0.06.
  Tensor h = correlated_hessian(k, 30, 17);  // rank 30 < k: eigenvalues 0
  double mean = 0;
  for (std::int64_t i = 0; i < k; ++i) mean += h.data<double>()[i * k + i] / static_cast<double>(k);
  for (std::int64_t i = 0; i < k; ++i) h.data<double>()[i * k + i] -= 0.045 * mean;
  const GptqResult raised = quantize_gptq(w, h, gptq_config(4, -1, false));
  EXPECT_FALSE(raised.fallback);
  EXPECT_GE(raised.damp_used, 0.05 - 1e-12);
  EXPECT_LE(raised.damp_used, 0.06 + 1e-12);
  EXPECT_EQ(raised.factor_attempts, static_cast<int>(std::lround(raised.damp_used / 0.01)));
  EXPECT_EQ(raised.diag_floor, 0.0);

  // H = I + 5 (ones - I): eigenvalue -4 (63-fold) that no damp below 1 or diagonal floor fixes: fallback to
  // round-to-nearest on the same grid, no abort, nothing NaN.
  Tensor bad = Tensor::empty({k, k}, DType::F64);
  for (std::int64_t i = 0; i < k * k; ++i) bad.data<double>()[i] = (i / k == i % k) ? 1.0 : 5.0;
  const GptqResult fb = quantize_gptq(w, bad, gptq_config(4, 8, false));
  EXPECT_TRUE(fb.fallback);
  EXPECT_TRUE(contains(fb.fallback_reason, "not positive definite")) << fb.fallback_reason;
  EXPECT_EQ(fb.damp_used, 0.0);
  EXPECT_GT(fb.factor_attempts, 600);  // 99 damps, then 6 floors x 99 damps (each fails at column 1 or 2)
  EXPECT_EQ(codes_of(fb.q), codes_of(quantize_affine(w, rtn_config(gptq_config(4, 8, false)))));
  GptqConfig no_increment = gptq_config(4, 8, false);
  no_increment.damp_auto_increment = 0.0;
  const GptqResult fb2 = quantize_gptq(w, bad, no_increment);
  EXPECT_TRUE(fb2.fallback);
  EXPECT_EQ(fb2.factor_attempts, 7);  // the damp, then the 6 floors

  // All-negative diagonal: the first diagonal floor makes it positive.
  Tensor neg = Tensor::zeros({k, k}, DType::F64);
  for (std::int64_t i = 0; i < k; ++i) neg.data<double>()[i * k + i] = -1.0;
  const GptqResult floored = quantize_gptq(w, neg, gptq_config(4, -1, false));
  EXPECT_FALSE(floored.fallback);
  EXPECT_DOUBLE_EQ(floored.diag_floor, 1e-6);
}

TEST(GptqRobustness, NonFiniteInputIsANumericalError) {
  const std::int64_t n = 6, k = 20;
  const Tensor w = random_weight(n, k, 18);
  Tensor h = correlated_hessian(k, 100, 19);
  h.data<double>()[3 * k + 7] = std::numeric_limits<double>::quiet_NaN();
  std::string msg = error_message(ErrorCode::Numerical, [&] { quantize_gptq(w, h, GptqConfig{}); });
  EXPECT_TRUE(contains(msg, "row 3, column 7")) << msg;
  const Tensor h_ok = correlated_hessian(k, 100, 19);
  Tensor w_bad = w.clone();
  w_bad.data<float>()[2 * k + 5] = std::numeric_limits<float>::infinity();
  msg = error_message(ErrorCode::Numerical, [&] { quantize_gptq(w_bad, h_ok, GptqConfig{}); });
  EXPECT_TRUE(contains(msg, "row 2, column 5")) << msg;
  Tensor h32 = h_ok.to(DType::F32);
  h32.data<float>()[k * k - 1] = -std::numeric_limits<float>::infinity();
  msg = error_message(ErrorCode::Numerical, [&] { quantize_gptq(w, h32, GptqConfig{}); });
  EXPECT_TRUE(contains(msg, "row 19, column 19")) << msg;
}

TEST(GptqRobustness, RejectsBadArgumentsNamingTheValue) {
  const Tensor w = random_weight(4, 16, 20);
  const Tensor h = correlated_hessian(16, 64, 21);
  const auto bad = [&](auto mutate, const std::string& part, ErrorCode code = ErrorCode::InvalidArgument) {
    GptqConfig c;
    mutate(c);
    const std::string msg = error_message(code, [&] { quantize_gptq(w, h, c); });
    EXPECT_TRUE(contains(msg, part)) << msg;
  };
  bad([](GptqConfig& c) { c.bits = 5; }, "bits = 5");
  bad([](GptqConfig& c) { c.group_size = 0; }, "group_size = 0");
  bad([](GptqConfig& c) { c.damp = 1.0; }, "damp = 1");
  bad([](GptqConfig& c) { c.block_size = 0; }, "block_size = 0");
  bad([](GptqConfig& c) { c.scale_dtype = DType::BF16; }, "scale_dtype bf16");
  EXPECT_TRUE(contains(
      error_message(ErrorCode::ShapeMismatch, [&] { quantize_gptq(w, correlated_hessian(15, 64, 21), GptqConfig{}); }),
      "expected [16, 16]"));
  EXPECT_TRUE(
      contains(error_message(ErrorCode::DTypeMismatch, [&] { quantize_gptq(w, h.to(DType::F16), GptqConfig{}); }),
               "expected f64 or f32"));
}

// ---- determinism, kernels, shapes, registry ----------------------------------------------------------------------

TEST(GptqThreads, SameResultForAnyThreadCount) {
  const std::int64_t n = 70, k = 260;
  const Tensor w = random_weight(n, k, 22);
  const Tensor h = correlated_hessian(k, 600, 23, {9});
  const int before = num_threads();
  std::vector<int> codes1;
  double loss1 = 0;
  for (const int threads : {1, 2, 3, 5}) {
    set_num_threads(threads);
    const GptqResult r = quantize_gptq(w, h, gptq_config(4, 32, false, true));
    if (threads == 1) {
      codes1 = codes_of(r.q);
      loss1 = r.loss;
    } else {
      EXPECT_EQ(codes_of(r.q), codes1) << threads << " threads";
      EXPECT_EQ(r.loss, loss1) << threads << " threads";
    }
  }
  set_num_threads(before);
}

TEST(GptqKernels, InstructionSetsAgree) {
  const std::int64_t n = 40, k = 200;
  const Tensor w = random_weight(n, k, 24);
  const Tensor h = correlated_hessian(k, 500, 25, {1});
  // Restores the caller's LOWBIT_CPU_KERNEL (a whole-suite run may have set one).
  const char* before = std::getenv("LOWBIT_CPU_KERNEL");
  const std::optional<std::string> saved = before ? std::optional<std::string>(before) : std::nullopt;
  const auto restore = [&] {
    if (saved) {
      ::setenv("LOWBIT_CPU_KERNEL", saved->c_str(), 1);
    } else {
      ::unsetenv("LOWBIT_CPU_KERNEL");
    }
  };
  const auto run = [&](const char* kernel) -> std::optional<GptqResult> {
    ::setenv("LOWBIT_CPU_KERNEL", kernel, 1);
    try {
      GptqResult r = quantize_gptq(w, h, gptq_config(3, 64, true, true));
      restore();
      return r;
    } catch (const Error& e) {
      restore();
      EXPECT_EQ(e.code(), ErrorCode::Unsupported) << e.what();
      return std::nullopt;
    }
  };
  const std::optional<GptqResult> generic = run("generic"), avx2 = run("avx2"), avx512 = run("avx512");
  ASSERT_TRUE(generic.has_value());
  if (avx2 && avx512) {  // both fuse multiply-adds in the same order: identical
    EXPECT_EQ(codes_of(avx2->q), codes_of(avx512->q));
    EXPECT_EQ(avx2->loss, avx512->loss);
  }
  for (const auto* other : {&avx2, &avx512}) {
    if (!other->has_value()) continue;
    EXPECT_GT(fraction_equal(codes_of(generic->q), codes_of((*other)->q)), 0.995);
    EXPECT_NEAR(generic->loss / (*other)->loss, 1.0, 1e-4);
  }
}

TEST(GptqShapes, TinyAndOddShapes) {
  for (const auto& [n, k, g] : std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t>>{
           {1, 1, -1}, {1, 3, 2}, {5, 1, 1}, {3, 129, 128}, {9, 130, 7}, {2, 64, 1000}}) {
    SCOPED_TRACE(fmt::format("n {} k {} g {}", n, k, g));
    const Tensor w = random_weight(n, k, 26);
    const Tensor h = correlated_hessian(k, 3 * k + 3, 27);
    const GptqResult r = quantize_gptq(w, h, gptq_config(4, g, false, true));
    EXPECT_EQ(r.q.component("codes").shape(), (Shape{n, k}));
    EXPECT_EQ(r.q.component("scales").shape(), (Shape{n, affine_groups_per_row(k, g)}));
    EXPECT_TRUE(std::isfinite(r.loss));
    const Tensor d = dequantize_affine_reference(r.q);
    for (std::int64_t i = 0; i < n * k; ++i) ASSERT_TRUE(std::isfinite(d.data<float>()[i]));
  }
}

TEST(GptqScales, F16ScalesAreTheFp32ScalesRounded) {
  const Tensor w = random_weight(8, 64, 28, 0.02f);
  const Tensor h = correlated_hessian(64, 200, 29);
  GptqConfig c32 = gptq_config(4, 32, false);
  GptqConfig c16 = c32;
  c16.scale_dtype = DType::F16;
  const GptqResult a = quantize_gptq(w, h, c32), b = quantize_gptq(w, h, c16);
  EXPECT_EQ(codes_of(a.q), codes_of(b.q));  // codes come from the fp32 scale either way
  EXPECT_EQ(b.q.component("scales").dtype(), DType::F16);
  EXPECT_EQ(floats_of(a.q.component("scales").to(DType::F16)), floats_of(b.q.component("scales")));
  EXPECT_EQ(b.q.params.variant, "minmax:f16");
  EXPECT_EQ(a.q.params.variant, "minmax:f32");
  EXPECT_EQ(b.q.method, "affine");
}

TEST(GptqRegistry, CalibratedMethodMapsParamsAndOptions) {
  const MethodInfo& m = find_method("gptq");
  EXPECT_TRUE(m.needs.hessian);
  EXPECT_TRUE(m.calibrated());
  EXPECT_EQ(m.defaults.bits, 4);
  EXPECT_EQ(m.defaults.group_size, -1);
  EXPECT_FALSE(m.defaults.symmetric);
  const std::int64_t n = 10, k = 64;
  const Tensor w = random_weight(n, k, 30);
  EXPECT_TRUE(contains(error_message(ErrorCode::InvalidArgument, [&] { m.quantize(w, m.defaults); }), "--calib"));

  Tensor x = random_weight(200, k, 31);
  Calibration calib(k, m.needs);
  calib.add(x, 2);
  QuantParams params = m.defaults;
  params.group_size = 32;
  params.symmetric = true;
  params.bits = 3;
  SolverOptions options;
  options.act_order = true;
  const QuantizedTensor q = m.quantize_calibrated(w, params, calib, options);
  GptqConfig direct = gptq_config(3, 32, true, true);
  direct.scale_dtype = DType::F16;
  const GptqResult r = quantize_gptq(w, calib.hessian(), direct);
  EXPECT_EQ(codes_of(q), codes_of(r.q));
  EXPECT_EQ(q.params, r.q.params);
  EXPECT_EQ(floats_of(m.dequantize(q)), floats_of(dequantize_affine_reference(r.q)));
  params.group_size = 0;
  EXPECT_TRUE(
      contains(error_message(ErrorCode::InvalidArgument, [&] { m.quantize_calibrated(w, params, calib, options); }),
               "group_size = 0"));
}

}  // namespace
}  // namespace lowbit::quant
