// CPU tests of the NF4/FP4 device path: the repacked layout decodes to dequantize_nf4_reference bit for bit,
// the kernels' decode tricks (register table lookup, double-quantized absmax) agree with the reference on
// every code, and the plan only picks built kernels. No device needed; these run everywhere.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "io/io_test_util.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/cuda/nf4.hpp"
#include "lowbit/quant/nf4.hpp"

namespace lowbit::cuda {
namespace {

using io::test::contains;
using io::test::error_message;
using io::test::random_weight;

// W [n, k] in `dtype`, N(0, 0.02) with a few large values and, from row 1 on, one all-zero run of 256
// elements (whole blocks of every size up to 256: a_b = 0, and for double quantization the NaN path).
Tensor make_weight(std::int64_t n, std::int64_t k, DType dtype, std::uint64_t seed) {
  Tensor w = random_weight(n, k, seed);
  float* p = w.data<float>();
  std::mt19937_64 rng(seed ^ 0x5eedu);
  for (int i = 0; i < 4; ++i) p[rng() % static_cast<std::uint64_t>(n * k)] = (i % 2 ? -1.0f : 1.0f) * 0.5f;
  if (n * k >= 2 * 256) std::memset(p + 256, 0, 256 * sizeof(float));
  return w.to(dtype);
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// The first element where two f32 tensors differ, for the failure message.
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

struct Shape2 {
  std::int64_t n, k;
};

TEST(Nf4Repack, DecodeOfRepackedLayoutEqualsReferenceBitForBit) {
  // k = 40, 136, 200: rows not a multiple of 32 (blocks span rows, packs span blocks, padding words);
  // [16, 7392]: the tensor-parallel shard width.
  const Shape2 shapes[] = {{8, 8}, {24, 40}, {40, 136}, {16, 200}, {16, 7392}};
  std::uint64_t seed = 1;
  for (const quant::Nf4Type type : {quant::Nf4Type::NF4, quant::Nf4Type::FP4}) {
    for (const bool dq : {false, true}) {
      for (const DType dtype : {DType::F16, DType::BF16, DType::F32}) {
        for (const int block : {32, 64, 128}) {
          for (const Shape2 s : shapes) {
            ++seed;
            SCOPED_TRACE(testing::Message() << (type == quant::Nf4Type::NF4 ? "nf4" : "fp4") << " dq=" << dq << " "
                                            << dtype_name(dtype) << " block=" << block << " [" << s.n << ", " << s.k
                                            << "] seed=" << seed);
            const quant::QuantizedTensor q = quant::quantize_nf4(make_weight(s.n, s.k, dtype, seed), {type, block, dq});
            const PreparedWeight w = repack_nf4(q);
            EXPECT_EQ(w.buffers.at("codes").shape(), (Shape{s.n, (s.k + 63) / 64 * 8}));
            const Tensor got = decode_nf4_repacked(w);
            const Tensor want = quant::dequantize_nf4_reference(q);
            EXPECT_TRUE(bitwise_equal(got, want)) << first_difference(got, want);
          }
        }
      }
    }
  }
}

TEST(Nf4Repack, DoubleQuantKeepsAbsmaxAsBytes) {
  const quant::QuantizedTensor q = quant::quantize_nf4(make_weight(64, 256, DType::F16, 7), {quant::Nf4Type::NF4, 64, true});
  const PreparedWeight w = repack_nf4(q);
  EXPECT_EQ(w.buffers.at("absmax").dtype(), DType::U8);
  // codes n*k/2, one byte per 64-weight block, one f32 per 256 blocks, the 1 KiB map and the offset: the
  // stream is ~4.13 bits per weight plus 1 KiB, not the 4.5 of f32 absmaxes.
  const std::uint64_t blocks = 64 * 256 / 64;
  EXPECT_EQ(w.weight_bytes(), 64 * 256 / 2 + blocks + 4 * ((blocks + 255) / 256) + 1024 + 4);
}

TEST(Nf4Repack, WordNibbleOrderMatchesTheQuantizedBytes) {
  std::mt19937 rng(3);
  for (int i = 0; i < 1000; ++i) {
    std::uint8_t bytes[4];
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
    std::uint32_t word = 0;
    std::memcpy(&word, bytes, 4);
    const std::uint32_t packed = nf4_repack_word(word);
    for (int j = 0; j < 8; ++j) ASSERT_EQ(nf4_packed_code(packed, j), quant::nf4_code_at(bytes, j)) << "j=" << j;
  }
}

// The kernels' register table lookup (prmt, emulated here exactly as PTX defines it, sign mode included) on
// every combination of 4 codes, for both tables and both 16-bit types.
TEST(Nf4Decode, RegisterLookupEqualsTableOnEveryFourCodes) {
  for (const quant::Nf4Type type : {quant::Nf4Type::NF4, quant::Nf4Type::FP4}) {
    float table[16];
    for (unsigned c = 0; c < 16; ++c) table[c] = quant::nf4_type_value(type, c);
    for (const bool bf16 : {false, true}) {
      const Nf4Lut lut = make_nf4_lut(table, bf16);
      std::uint16_t want[16];
      for (int c = 0; c < 16; ++c) want[c] = bf16 ? f32_to_bf16_bits(table[c]) : f32_to_f16_bits(table[c]);
      for (std::uint32_t v = 0; v < 65536; ++v) {
        const std::uint32_t high = (v * 2654435761u) & 0xffff0000u;  // bits 16..31 must be ignored
        std::uint32_t p01 = 0, p23 = 0;
        nf4_lut4(v | high, lut, p01, p23);
        const std::uint32_t c0 = v & 15, c1 = (v >> 4) & 15, c2 = (v >> 8) & 15, c3 = (v >> 12) & 15;
        ASSERT_EQ(p01, want[c0] | static_cast<std::uint32_t>(want[c1]) << 16) << "v=" << v << " bf16=" << bf16;
        ASSERT_EQ(p23, want[c2] | static_cast<std::uint32_t>(want[c3]) << 16) << "v=" << v << " bf16=" << bf16;
      }
    }
  }
}

// decode()'s pair order: pair i of a pack holds columns 2i (low half) and 2i + 1, as weight_only.cuh wants.
TEST(Nf4Decode, PackPairsAreConsecutiveColumns) {
  float table[16];
  for (unsigned c = 0; c < 16; ++c) table[c] = quant::nf4_type_value(quant::Nf4Type::NF4, c);
  const Nf4Lut lut = make_nf4_lut(table, false);
  std::mt19937 rng(17);
  for (int trial = 0; trial < 2000; ++trial) {
    std::uint32_t words[4];
    for (auto& w : words) w = static_cast<std::uint32_t>(rng());
    std::uint32_t pairs[16];
    nf4_pack_pairs(words, lut, pairs);
    for (int col = 0; col < 32; ++col) {
      const unsigned code = nf4_packed_code(words[col / 8], col % 8);
      const auto half = static_cast<std::uint16_t>(pairs[col / 2] >> (16 * (col % 2)));
      ASSERT_EQ(half, f32_to_f16_bits(table[code])) << "column " << col;
    }
  }
}

TEST(Nf4Decode, PrmtEmulationFollowsPtx) {
  // Spot values from the PTX manual's definition: plain byte moves, and sign replication for msb-set selectors.
  EXPECT_EQ(prmt(0x03020100u, 0x07060504u, 0x7531u), 0x07050301u);
  EXPECT_EQ(prmt(0x80000000u, 0x0000007fu, 0xc3b4u), 0x0080ff7fu);
}

// Double quantization: a_b rebuilt by the kernels' function equals nf4_block_absmax (the reference's) for
// every 8-bit code, in every nested block.
TEST(Nf4Decode, DoubleQuantAbsmaxEqualsReferenceOnEveryCode) {
  const quant::QuantizedTensor base =
      quant::quantize_nf4(make_weight(8, 1024, DType::F32, 11), {quant::Nf4Type::NF4, 32, true});  // nb = 256
  for (const std::uint64_t seed : {1u, 2u, 3u}) {
    quant::QuantizedTensor q = base;
    Tensor codes = Tensor::empty({256}, DType::U8);
    for (int c = 0; c < 256; ++c) codes.data<std::uint8_t>()[c] = static_cast<std::uint8_t>(c);
    q.components["absmax"] = codes;
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> u(0.001f, 2.0f);
    Tensor nested = Tensor::empty({1}, DType::F32);
    nested.data<float>()[0] = u(rng);
    Tensor offset = Tensor::empty({1}, DType::F32);
    offset.data<float>()[0] = u(rng) * 0.1f;
    q.components["nested_absmax"] = nested;
    q.components["nested_offset"] = offset;
    const std::vector<float> want = quant::nf4_block_absmax(q);
    const float* map = q.component("nested_quant_map").data<float>();
    for (int c = 0; c < 256; ++c) {
      const float got = nf4_dq_absmax(map[c], nested.data<float>()[0], offset.data<float>()[0]);
      ASSERT_EQ(float_bits(got), float_bits(want[static_cast<std::size_t>(c)])) << "code " << c;
    }
  }
}

TEST(Nf4Repack, RefusesShapesAndBlockSizesTheKernelsDoNotTake) {
  const quant::QuantizedTensor odd = quant::quantize_nf4(random_weight(12, 20, 5), {quant::Nf4Type::NF4, 64, false});
  EXPECT_TRUE(contains(error_message(ErrorCode::ShapeMismatch, [&] { repack_nf4(odd); }), "multiples of 8"));

  // block_size 48: a well-formed QuantizedTensor the kernels do not take (flat block index by shift).
  quant::QuantizedTensor q = quant::quantize_nf4(random_weight(8, 48, 5), {quant::Nf4Type::NF4, 64, false});
  q.params.block_size = 48;
  q.components["absmax"] = Tensor::zeros({8}, DType::F32);
  EXPECT_TRUE(contains(error_message(ErrorCode::Unsupported, [&] { repack_nf4(q); }), "block_size = 48"));
}

// plan_matmul's regimes for nf4/fp4, and every plan lands on a built kernel for both dtypes and both
// absmax kinds; every table entry is reached by some m.
TEST(Nf4Plan, RegimesFollowMAndEveryPlanIsBuilt) {
  std::vector<bool> reached(kNf4BuiltCount, false);
  quant::QuantParams params;
  params.bits = 4;
  params.block_size = 64;
  for (const std::int64_t n : {8, 4096, 28672}) {
    for (const std::int64_t k : {64, 7392, 8192}) {
      for (std::int64_t m = 1; m <= 1100; m += (m < 300 ? 1 : 97)) {
        const MatmulPlan plan = plan_matmul("nf4", params, m, n, k, 132);
        const Regime want = m <= 2 ? Regime::Gemv : m <= 64 ? Regime::TensorCore : Regime::Dequantize;
        ASSERT_EQ(plan.regime, want) << "m=" << m;
        ASSERT_GE(plan.k_splits, 1);
        if (plan.regime != Regime::Dequantize) {
          ASSERT_GE(plan.m_tile, std::min<std::int64_t>(m, 16));
        }
        if (plan.regime == Regime::Gemv) {
          ASSERT_GE(plan.m_tile, m);
        }
        for (const bool dq : {false, true}) {
          for (const DType dtype : {DType::F16, DType::BF16}) {
            const int index = nf4_kernel_index(dq, dtype, plan);
            ASSERT_GE(index, 0) << plan.describe() << " dq=" << dq << " " << dtype_name(dtype);
            reached[static_cast<std::size_t>(index)] = true;
          }
        }
      }
    }
  }
  for (int i = 0; i < kNf4BuiltCount; ++i) EXPECT_TRUE(reached[static_cast<std::size_t>(i)]) << "entry " << i;
  EXPECT_EQ(plan_matmul("fp4", params, 1, 4096, 4096, 132).regime, Regime::Gemv);
}

TEST(Nf4Plan, UnbuiltKernelIsAnErrorListingTheTable) {
  Nf4Launch a;
  a.dtype = DType::F32;
  MatmulPlan plan;
  plan.regime = Regime::Gemv;
  plan.m_tile = 1;
  const std::string message = error_message(ErrorCode::Unsupported, [&] { launch_nf4(a, plan, nullptr, nullptr); });
  EXPECT_TRUE(contains(message, "built: ")) << message;
  EXPECT_TRUE(contains(message, describe_nf4_built())) << message;
}

}  // namespace
}  // namespace lowbit::cuda
