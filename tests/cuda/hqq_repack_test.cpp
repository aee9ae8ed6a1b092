// CPU tests of the HQQ device path: the repacked layout decodes to dequantize_hqq_reference bit for bit, the
// kernels' code-to-float trick is exact on every code and position, what the kernels do not take is refused
// with a message listing what they take, and the plan only picks built kernels. No device needed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "io/io_test_util.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/cuda/hqq.hpp"
#include "lowbit/quant/hqq.hpp"

namespace lowbit::cuda {
namespace {

using io::test::contains;
using io::test::error_message;
using io::test::random_weight;

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

std::string first_difference(const Tensor& got, const Tensor& want) {
  const float* g = got.data<float>();
  const float* w = want.data<float>();
  for (std::int64_t i = 0; i < got.numel(); ++i) {
    if (std::memcmp(g + i, w + i, 4) != 0) {
      return "element " + std::to_string(i) + ": got " + std::to_string(g[i]) + ", want " + std::to_string(w[i]);
    }
  }
  return "none";
}

quant::HqqConfig config(std::int64_t group, DType compute, bool optimize) {
  quant::HqqConfig c;
  c.bits = 4;
  c.group_size = group;
  c.axis = 1;
  c.optimize = optimize;
  c.iters = 4;
  c.compute_dtype = compute;
  return c;
}

struct Case {
  std::int64_t n, k, group;
};

TEST(HqqRepack, DecodeOfRepackedLayoutEqualsReferenceBitForBit) {
  // k = 40 and 72: groups span rows and 32-column packs span groups; [32, 7392]: the tensor-parallel width.
  const Case cases[] = {{8, 64, 32},  {64, 40, 32},  {64, 40, 64},   {64, 40, 128},  {32, 72, 64},
                        {32, 72, 128}, {16, 256, 64}, {32, 7392, 64}, {32, 7392, 128}, {16, 128, -1}};
  std::uint64_t seed = 100;
  for (const DType compute : {DType::F16, DType::BF16}) {
    for (const bool optimize : {false, true}) {
      for (const Case c : cases) {
        ++seed;
        SCOPED_TRACE(testing::Message() << dtype_name(compute) << " optimize=" << optimize << " [" << c.n << ", " << c.k
                                        << "] g=" << c.group << " seed=" << seed);
        const quant::QuantizedTensor q = quant::quantize_hqq(random_weight(c.n, c.k, seed), config(c.group, compute, optimize));
        const PreparedWeight w = repack_hqq(q);
        EXPECT_EQ(w.buffers.at("codes").shape(), (Shape{c.n, (c.k + 63) / 64 * 8}));
        EXPECT_EQ(w.buffers.at("meta").dtype(), compute);
        const Tensor got = decode_hqq_repacked(w);
        const Tensor want = quant::dequantize_hqq_reference(q);
        EXPECT_TRUE(bitwise_equal(got, want)) << first_difference(got, want);
      }
    }
  }
}

TEST(HqqDecode, PackedWordRoundTripsEveryPosition) {
  std::mt19937 rng(9);
  for (int i = 0; i < 2000; ++i) {
    std::uint8_t codes[8];
    for (auto& c : codes) c = static_cast<std::uint8_t>(rng() & 15u);
    const std::uint32_t word = hqq_pack_word(codes);
    for (int j = 0; j < 8; ++j) ASSERT_EQ(hqq_packed_code(word, j), codes[j]) << "j=" << j;
  }
}

// The kernels' LOP3 conversion: for every position q and every pair of codes, the two 16-bit floats are
// magic + code exactly (so the HSUB2 of the magic gives the code), element 2q in the low half.
TEST(HqqDecode, MagicPairIsExactOnEveryCodeAndPosition) {
  for (const bool bf16 : {false, true}) {
    const std::uint32_t magic2 = bf16 ? kHqqMagicBF16x2 : kHqqMagicF16x2;
    const float magic = bf16 ? 128.0f : 1024.0f;
    for (int q = 0; q < 4; ++q) {
      for (std::uint8_t a = 0; a < 16; ++a) {
        for (std::uint8_t b = 0; b < 16; ++b) {
          std::uint8_t codes[8] = {static_cast<std::uint8_t>((a + 5) & 15), static_cast<std::uint8_t>((b + 3) & 15),
                                   static_cast<std::uint8_t>((a + 9) & 15), static_cast<std::uint8_t>((b + 1) & 15),
                                   static_cast<std::uint8_t>((a + 7) & 15), static_cast<std::uint8_t>((b + 11) & 15),
                                   static_cast<std::uint8_t>((a + 2) & 15), static_cast<std::uint8_t>((b + 13) & 15)};
          codes[2 * q] = a;
          codes[2 * q + 1] = b;
          const std::uint32_t v = hqq_pair_magic(hqq_pack_word(codes), q, magic2);
          const auto lo = static_cast<std::uint16_t>(v & 0xffffu);
          const auto hi = static_cast<std::uint16_t>(v >> 16);
          ASSERT_EQ(hqq_meta_value(lo, bf16), magic + a) << "q=" << q << " bf16=" << bf16;
          ASSERT_EQ(hqq_meta_value(hi, bf16), magic + b) << "q=" << q << " bf16=" << bf16;
        }
      }
    }
  }
}

TEST(HqqDecode, MetaWideningIsExact) {
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const float f16 = hqq_meta_value(h, false);
    const float bf = hqq_meta_value(h, true);
    if (!std::isnan(f16)) {
      ASSERT_EQ(f32_to_f16_bits(f16), h);  // NaN payloads aside, an exact round trip
    }
    if (!std::isnan(bf)) {
      ASSERT_EQ(f32_to_bf16_bits(bf), h);
    }
  }
}

TEST(HqqRepack, RefusesWhatTheKernelsDoNotTakeListingWhatTheyDo) {
  const Tensor w = random_weight(16, 64, 21);
  {
    quant::HqqConfig c = config(64, DType::F16, false);
    c.bits = 3;
    const std::string m = error_message(ErrorCode::Unsupported, [&] { repack_hqq(quant::quantize_hqq(w, c)); });
    EXPECT_TRUE(contains(m, "bits = 3")) << m;
    EXPECT_TRUE(contains(m, "bits 4, axis 1")) << m;
  }
  {
    quant::HqqConfig c = config(64, DType::F16, false);
    c.axis = 0;
    c.group_size = 16;
    const std::string m = error_message(ErrorCode::Unsupported, [&] { repack_hqq(quant::quantize_hqq(w, c)); });
    EXPECT_TRUE(contains(m, "axis = 0")) << m;
  }
  {
    const Tensor w72 = random_weight(16, 72, 22);  // n*k = 24 groups of 48
    const std::string m = error_message(ErrorCode::Unsupported,
                                        [&] { repack_hqq(quant::quantize_hqq(w72, config(48, DType::F16, false))); });
    EXPECT_TRUE(contains(m, "group_size = 48")) << m;
  }
  {
    const std::string m = error_message(ErrorCode::Unsupported,
                                        [&] { repack_hqq(quant::quantize_hqq(w, config(64, DType::F32, false))); });
    EXPECT_TRUE(contains(m, "f16 or bf16 scale/zero")) << m;
  }
  {
    const quant::QuantizedTensor q = quant::quantize_hqq(random_weight(12, 16, 3), config(32, DType::F16, false));
    EXPECT_TRUE(contains(error_message(ErrorCode::ShapeMismatch, [&] { repack_hqq(q); }), "multiples of 8"));
  }
}

TEST(HqqPlan, RegimesFollowMAndEveryPlanIsBuilt) {
  std::vector<bool> reached(kHqqBuiltCount, false);
  quant::QuantParams params;
  params.bits = 4;
  params.group_size = 64;
  for (const std::int64_t n : {8, 4096, 28672}) {
    for (const std::int64_t k : {64, 7392, 8192}) {
      for (std::int64_t m = 1; m <= 1100; m += (m < 300 ? 1 : 97)) {
        const MatmulPlan plan = plan_matmul("hqq", params, m, n, k, 132);
        const Regime want = m <= 2 ? Regime::Gemv : m <= 64 ? Regime::TensorCore : Regime::Dequantize;
        ASSERT_EQ(plan.regime, want) << "m=" << m;
        for (const DType dtype : {DType::F16, DType::BF16}) {
          const int index = hqq_kernel_index(dtype, plan);
          ASSERT_GE(index, 0) << plan.describe() << " " << dtype_name(dtype);
          reached[static_cast<std::size_t>(index)] = true;
        }
      }
    }
  }
  for (int i = 0; i < kHqqBuiltCount; ++i) EXPECT_TRUE(reached[static_cast<std::size_t>(i)]) << "entry " << i;
}

TEST(HqqPlan, UnbuiltKernelIsAnErrorListingTheTable) {
  HqqLaunch a;
  a.dtype = DType::F32;
  MatmulPlan plan;
  plan.regime = Regime::TensorCore;
  plan.m_tile = 16;
  const std::string message = error_message(ErrorCode::Unsupported, [&] { launch_hqq(a, plan, nullptr, nullptr); });
  EXPECT_TRUE(contains(message, describe_hqq_built())) << message;
}

}  // namespace
}  // namespace lowbit::cuda
