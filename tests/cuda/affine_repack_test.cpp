// CPU tests of the affine kernels' host side: the decode tricks against the plain pack reads, the repacked
// layout against dequantize_affine_reference(), the fast division, and planning against the table of
// built kernels. No GPU needed; these run everywhere.
#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <random>
#include <set>

#include "cuda/affine_test_util.hpp"
#include "lowbit/core/error.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/cuda/affine.hpp"
#include "lowbit/cuda/matmul.hpp"
#include "lowbit/quant/affine.hpp"

namespace lowbit::cuda {
namespace {

using test::random_affine;

std::uint32_t low16(std::uint32_t v) { return v & 0xffffu; }
std::uint32_t high16(std::uint32_t v) { return v >> 16; }

// Every pair position and every pair of codes (exhaustive per pair: 2^(2 bits) patterns), surrounded by
// random codes: the LOP3 trick gives magic + code in each half, and the plain read agrees with what was set.
TEST(CudaAffineDecode, PairMagicMatchesPlainReadsForEveryCodePair) {
  std::mt19937 rng(7);
  for (const int bits : {2, 3, 4}) {
    SCOPED_TRACE(bits);
    const int levels = 1 << bits;
    std::uniform_int_distribution<int> any(0, levels - 1);
    for (int pair = 0; pair < 16; ++pair) {
      for (int a = 0; a < levels; ++a) {
        for (int b = 0; b < levels; ++b) {
          std::uint32_t w[4] = {0, 0, 0, 0};
          int codes[32];
          for (int j = 0; j < 32; ++j) {
            codes[j] = j == 2 * pair ? a : j == 2 * pair + 1 ? b : any(rng);
            affine_pack_set_code(w, bits, j, codes[j]);
          }
          for (int j = 0; j < 32; ++j) ASSERT_EQ(affine_pack_code_at(w, bits, j), codes[j]) << "j=" << j;
          std::uint32_t f16 = 0, bf16 = 0;
          if (bits == 4) {
            f16 = affine_pair_magic<4>(w, pair, kMagicF16x2), bf16 = affine_pair_magic<4>(w, pair, kMagicBF16x2);
          } else if (bits == 3) {
            f16 = affine_pair_magic<3>(w, pair, kMagicF16x2), bf16 = affine_pair_magic<3>(w, pair, kMagicBF16x2);
          } else {
            f16 = affine_pair_magic<2>(w, pair, kMagicF16x2), bf16 = affine_pair_magic<2>(w, pair, kMagicBF16x2);
          }
          ASSERT_EQ(f16_bits_to_f32(static_cast<std::uint16_t>(low16(f16))), 1024.0f + static_cast<float>(a));
          ASSERT_EQ(f16_bits_to_f32(static_cast<std::uint16_t>(high16(f16))), 1024.0f + static_cast<float>(b));
          ASSERT_EQ(bf16_bits_to_f32(static_cast<std::uint16_t>(low16(bf16))), 128.0f + static_cast<float>(a));
          ASSERT_EQ(bf16_bits_to_f32(static_cast<std::uint16_t>(high16(bf16))), 128.0f + static_cast<float>(b));
        }
      }
    }
  }
}

TEST(CudaAffineDecode, EightBitPermutesMatchPlainReads) {
  std::mt19937 rng(8);
  std::uniform_int_distribution<int> any(0, 255);
  for (int pair = 0; pair < 16; ++pair) {
    for (int a = 0; a < 256; ++a) {
      for (int b = 0; b < 256; b += 3) {  // every a, a third of b: 87k patterns per pair position
        std::uint32_t w[8] = {};
        int codes[32];
        for (int j = 0; j < 32; ++j) {
          codes[j] = j == 2 * pair ? a : j == 2 * pair + 1 ? b : any(rng);
          affine_pack_set_code(w, 8, j, codes[j]);
        }
        const std::uint32_t f16 = affine_pair_magic8_f16(w, pair);
        ASSERT_EQ(f16_bits_to_f32(static_cast<std::uint16_t>(low16(f16))), 1024.0f + static_cast<float>(a));
        ASSERT_EQ(f16_bits_to_f32(static_cast<std::uint16_t>(high16(f16))), 1024.0f + static_cast<float>(b));
        ASSERT_EQ(bits_float(affine_code8_magic_f32(w, 2 * pair)), 8388608.0f + static_cast<float>(a));
        ASSERT_EQ(bits_float(affine_code8_magic_f32(w, 2 * pair + 1)), 8388608.0f + static_cast<float>(b));
        ASSERT_EQ(affine_pack_code_at(w, 8, 2 * pair), a);
        ASSERT_EQ(affine_pack_code_at(w, 8, 2 * pair + 1), b);
      }
    }
  }
}

// The kernels' arithmetic after the trick: (magic + code) - (magic + zero) is exact in fp16 and bf16, and
// the fp16 product with an fp16 scale is the reference rounded once.
TEST(CudaAffineDecode, MagicSubtractionIsExactAndF16ProductIsTheRoundedReference) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> scale(1e-4f, 1.0f);
  for (int code = 0; code < 256; ++code) {
    for (int zero = 0; zero < 256; ++zero) {
      const float d = (1024.0f + static_cast<float>(code)) - (1024.0f + static_cast<float>(zero));
      ASSERT_EQ(f16_bits_to_f32(f32_to_f16_bits(d)), static_cast<float>(code - zero));
      if (code < 16 && zero < 16) {
        ASSERT_EQ(bf16_bits_to_f32(f32_to_bf16_bits(128.0f + static_cast<float>(code))), 128.0f + static_cast<float>(code));
      }
      const float s = f16_bits_to_f32(f32_to_f16_bits(scale(rng)));
      // the exact product fits fp32 (11 + 9 significant bits), so fp16(fp32 product) is one rounding
      ASSERT_EQ(f32_to_f16_bits(d * s), f32_to_f16_bits(quant::affine_dequantize_value(code, s, zero)));
    }
  }
}

TEST(CudaAffineDecode, FastDivisionEqualsDivision) {
  std::mt19937_64 rng(10);
  std::vector<std::uint32_t> divisors = {1, 2, 3, 7, 32, 64, 96, 128, 7392, 7424, 14336, 1u << 20, (1u << 30) + 7};
  for (int i = 0; i < 30; ++i) divisors.push_back(1 + static_cast<std::uint32_t>(rng() % (1u << 30)));
  for (const std::uint32_t d : divisors) {
    const FastDivU32 f = FastDivU32::make(d);
    for (const std::uint32_t n : {0u, 1u, d - 1, d, d + 1, 2 * d - 1, 0x7fffffffu}) {
      if (n < 0x80000000u) ASSERT_EQ(f(n), n / d) << n << " / " << d;
    }
    for (int i = 0; i < 2000; ++i) {
      const auto n = static_cast<std::uint32_t>(rng() % 0x80000000u);
      ASSERT_EQ(f(n), n / d) << n << " / " << d;
    }
  }
}

void expect_round_trip(const quant::QuantizedTensor& q) {
  const AffineRepacked r = repack_affine(q);
  const Tensor want = quant::dequantize_affine_reference(q);
  const Tensor got = decode_affine_repacked(r);
  ASSERT_EQ(got.shape(), want.shape());
  ASSERT_EQ(std::memcmp(got.raw_data(), want.raw_data(), want.nbytes()), 0);
  EXPECT_EQ(r.qweight.shape(), (Shape{r.n, r.k_pad / 32 * r.bits}));
  EXPECT_EQ(r.k_pad % 64, 0);
  EXPECT_EQ(r.group % 32, 0);
}

// Every built bit width x group size x scale dtype, k with a short last group, k not a multiple of 32,
// a tensor-parallel shard's k, and act-order.
TEST(CudaAffineRepack, DecodeEqualsReferenceForEveryVariant) {
  std::uint64_t seed = 100;
  for (const int bits : {2, 3, 4, 8}) {
    for (const std::int64_t g : {32, 64, 128, -1, 0}) {
      for (const DType sd : {DType::F16, DType::F32}) {
        for (const std::int64_t k : {288, 40, 520}) {
          SCOPED_TRACE(::testing::Message() << bits << "-bit g=" << g << " " << dtype_name(sd) << " k=" << k);
          expect_round_trip(random_affine(24, k, bits, g, sd, false, ++seed));
          if (g != 0) expect_round_trip(random_affine(16, k, bits, g, sd, true, ++seed));
        }
      }
    }
  }
  SCOPED_TRACE("k = 7392");
  expect_round_trip(random_affine(8, 7392, 4, 128, DType::F16, true, ++seed));
  expect_round_trip(random_affine(8, 7392, 4, 128, DType::F16, false, ++seed));
}

TEST(CudaAffineRepack, ActOrderSortsColumnsOnceAndKeepsTheNominalGroup) {
  const quant::QuantizedTensor q = random_affine(8, 520, 4, 128, DType::F16, true, 5);
  const AffineRepacked r = repack_affine(q);
  ASSERT_TRUE(r.perm.defined());
  EXPECT_EQ(r.group, 128);
  EXPECT_EQ(r.groups, 5);
  const std::int32_t* perm = r.perm.data<std::int32_t>();
  const std::int32_t* g_idx = q.component("g_idx").data<std::int32_t>();
  std::set<std::int32_t> seen;
  for (std::int64_t j = 0; j < r.k; ++j) {
    seen.insert(perm[j]);
    EXPECT_EQ(g_idx[perm[j]], j / 128) << j;
    if (j > 0 && g_idx[perm[j]] == g_idx[perm[j - 1]]) EXPECT_LT(perm[j - 1], perm[j]) << "stable";
  }
  EXPECT_EQ(seen.size(), 520u);
  // A trivial g_idx (static groups) needs no permutation.
  quant::QuantizedTensor trivial = random_affine(8, 520, 4, 128, DType::F16, false, 6);
  Tensor g = Tensor::empty({520}, DType::I32);
  for (int c = 0; c < 520; ++c) g.data<std::int32_t>()[c] = c / 128;
  trivial.components.emplace("g_idx", g);
  EXPECT_FALSE(repack_affine(trivial).perm.defined());
}

// g_idx whose sorted runs are unequal but start at multiples of 32: re-expressed with groups of 32.
TEST(CudaAffineRepack, UnequalActOrderRunsUseGroupsOf32) {
  std::mt19937 rng(11);
  quant::QuantizedTensor q = random_affine(8, 256, 4, 64, DType::F16, false, 12);  // 4 groups
  // runs of 32, 96, 64, 64 columns, then shuffled
  std::vector<std::int32_t> g;
  for (int i = 0; i < 32; ++i) g.push_back(0);
  for (int i = 0; i < 96; ++i) g.push_back(1);
  for (int i = 0; i < 64; ++i) g.push_back(2);
  for (int i = 0; i < 64; ++i) g.push_back(3);
  std::shuffle(g.begin(), g.end(), rng);
  q.components.emplace("g_idx", Tensor::from_values(std::span<const std::int32_t>(g), Shape{256}));
  const AffineRepacked r = repack_affine(q);
  EXPECT_EQ(r.group, 32);
  EXPECT_EQ(r.groups, 8);
  const Tensor want = quant::dequantize_affine_reference(q);
  const Tensor got = decode_affine_repacked(r);
  ASSERT_EQ(std::memcmp(got.raw_data(), want.raw_data(), want.nbytes()), 0);

  // a run of 40 columns: refused, naming the column
  std::vector<std::int32_t> bad(256, 1);
  for (int i = 0; i < 40; ++i) bad[static_cast<std::size_t>(i)] = 0;
  q.components["g_idx"] = Tensor::from_values(std::span<const std::int32_t>(bad), Shape{256});
  try {
    (void)repack_affine(q);
    FAIL() << "expected Unsupported";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Unsupported);
    EXPECT_NE(std::string(e.what()).find("sorted column 40"), std::string::npos) << e.what();
  }
}

TEST(CudaAffineRepack, RefusesWhatNoKernelTakes) {
  const auto code_of = [](const quant::QuantizedTensor& q) -> std::optional<ErrorCode> {
    try {
      (void)repack_affine(q);
    } catch (const Error& e) {
      return e.code();
    }
    return std::nullopt;
  };
  EXPECT_EQ(code_of(random_affine(8, 64, 4, 16, DType::F16, false, 1)), ErrorCode::Unsupported);  // group 16
  quant::QuantizedTensor q = random_affine(8, 64, 4, 32, DType::F16, false, 2);
  q.components["codes"].data<std::uint8_t>()[77] = 16;  // > 2^4 - 1
  EXPECT_EQ(code_of(q), ErrorCode::Corrupt);
  q = random_affine(8, 64, 4, 32, DType::F16, false, 3);
  q.components["zeros"] = Tensor::zeros({8, 3}, DType::U8);
  EXPECT_EQ(code_of(q), ErrorCode::Corrupt);
}

// Plans: regimes by m, every plan lands on a built kernel, and every built kernel is some plan's.
TEST(CudaAffinePlan, EveryPlanIsBuiltAndEveryBuiltKernelIsPlanned) {
  std::set<int> reached;
  for (const int bits : {2, 3, 4, 8}) {
    quant::QuantParams p;
    p.bits = bits;
    p.group_size = 128;
    for (std::int64_t m = 1; m <= 1100; m += (m < 300 ? 1 : 97)) {
      const MatmulPlan plan = plan_matmul("affine", p, m, 4096, 7392, 132);
      const bool tensor_core = bits == 4 || bits == 8;
      const Regime want = m <= (tensor_core ? 2 : 8)      ? Regime::Gemv
                          : (m <= 64 && tensor_core)      ? Regime::TensorCore
                                                          : Regime::Dequantize;
      ASSERT_EQ(plan.regime, want) << bits << "-bit m=" << m;
      ASSERT_GE(plan.k_splits, 1);
      if (plan.regime == Regime::Gemv) ASSERT_GE(plan.m_tile, m);
      if (plan.regime == Regime::TensorCore) ASSERT_TRUE(plan.m_tile == 16 || plan.m_tile == 64);
      for (const DType dt : {DType::F16, DType::BF16}) {
        const int index = affine_kernel_index(bits, dt, plan);
        ASSERT_GE(index, 0) << bits << "-bit " << dtype_name(dt) << " " << plan.describe();
        reached.insert(index);
      }
    }
  }
  EXPECT_EQ(static_cast<int>(reached.size()), kAffineBuiltCount);
  quant::QuantParams five;
  five.bits = 5;
  EXPECT_THROW((void)plan_matmul("affine", five, 1, 64, 64, 132), Error);
  EXPECT_NE(describe_affine_built().find("tensor-core 4-bit f16 m_tile=16"), std::string::npos) << describe_affine_built();
}

TEST(CudaAffinePlan, SplitsKWhenTooFewBlocksAndBoundsThePartials) {
  quant::QuantParams p;
  p.bits = 4;
  p.group_size = 128;
  const MatmulPlan tall = plan_matmul("affine", p, 16, 4096, 14336, 132);
  EXPECT_GT(tall.k_splits, 1) << tall.describe();
  const MatmulPlan wide = plan_matmul("affine", p, 64, 40960, 8192, 132);
  EXPECT_EQ(wide.regime, Regime::TensorCore) << wide.describe();
  EXPECT_EQ(wide.k_splits, 1) << wide.describe();  // 640 blocks already fill 132 SMs 4.8 times
  for (std::int64_t m : {3, 9, 16, 33, 64}) {
    const MatmulPlan plan = plan_matmul("affine", p, m, 4096, 4096, 132);
    ASSERT_EQ(plan.regime, Regime::TensorCore) << m;
    // partials (written and read) stay under half of the weight's bytes
    if (plan.k_splits > 1) EXPECT_LE(8.0 * plan.k_splits * m * 4096, 4096.0 * 4096 * 4 / 16) << m;
  }
  EXPECT_GT(plan_matmul("affine", p, 64, 8192, 8192, 132).k_splits, 1);  // 128 blocks: split to fill the SMs
  EXPECT_EQ(plan_matmul("affine", p, 65, 8192, 8192, 132).regime, Regime::Dequantize);
}

}  // namespace
}  // namespace lowbit::cuda
