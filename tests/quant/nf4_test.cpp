// quant/nf4.hpp: the decode/encode math over every code, the spec's hand-derived vectors (shared/methods/
// nf4.md section 10), byte identity with vectors bitsandbytes made (tests/data/nf4, make_nf4_vectors.py),
// properties on random inputs of odd and real shapes, and bad input.
#include "lowbit/quant/nf4.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/core/parallel.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/quant/common.hpp"
#include "lowbit/quant/registry.hpp"
#include "test_util.hpp"

namespace lowbit::quant {
namespace {

using ::lowbit::test::bytes_of;
using ::lowbit::test::contains;
using ::lowbit::test::error_message;
using ::lowbit::test::floats_of;

const std::filesystem::path kDataDir = std::filesystem::path(LOWBIT_TEST_DATA_DIR) / "nf4";

Tensor f32_tensor(std::vector<float> v) {
  return Tensor::from_values(std::span<const float>(v), {static_cast<std::int64_t>(v.size())});
}

Tensor random_weight(std::int64_t n, std::int64_t k, DType dtype, std::uint64_t seed, float scale = 0.02f) {
  Tensor t = Tensor::empty({n, k}, DType::F32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return t.to(dtype);
}

// ---- decode / encode math, exhaustively ----------------------------------------------------------------------

constexpr float kNf4Spec[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                                -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                                0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                                0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                                0.7229568362236023f, 1.0f};

// The decimal literals of kernels.cu, parsed by the compiler: an independent source from the header's bits.
static_assert(nf4_code(0.03979014977812767f) == 7 && nf4_code(0.8614784181118011f) == 14);
static_assert(bits_float(0x3b2aaab9) == 0.00260417f && bits_float(0x3db00000) == 0.0859375f &&
              bits_float(0x3e555555) == 0.20833333f && bits_float(0x3e955555) == 0.29166667f &&
              bits_float(0x3ed55556) == 0.4166667f && bits_float(0x3f155550) == 0.583333f &&
              bits_float(0x3f555555) == 0.8333333f);
static_assert(fp4_code(-0.5f) == 0b1101 && fp4_code(0.25f) == 0b0111 && fp4_value(0b1011) == -1.0f);

TEST(Nf4Decode, TablesMatchTheSpecAndTheStoredQuantMaps) {
  const auto nf4_map = nf4_quant_map(Nf4Type::NF4);
  const auto fp4_map = nf4_quant_map(Nf4Type::FP4);
  const float fp4_raw[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};
  for (unsigned c = 0; c < 16; ++c) {
    EXPECT_EQ(float_bits(nf4_value(c)), float_bits(kNf4Spec[c])) << c;
    EXPECT_EQ(float_bits(nf4_map[c]), float_bits(kNf4Spec[c])) << c;
    const float expected_fp4 = (c & 8 ? -1.0f : 1.0f) * (fp4_raw[c & 7] / 12.0f);
    EXPECT_EQ(float_bits(fp4_value(c)), float_bits(expected_fp4)) << c;  // code 8 decodes to -0.0
    EXPECT_EQ(fp4_map[c], expected_fp4) << c;                              // stored +0.0 == -0.0
  }
  EXPECT_EQ(float_bits(fp4_map[8]), 0u);  // bitsandbytes' list has the integer -0
  EXPECT_EQ(float_bits(fp4_value(8)), 0x80000000u);
}

// kernels.cu dQuantizeNF4's literals in tree order sorted ascending, parsed by the compiler as nvcc does.
constexpr float kNf4KernelThresholds[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};

TEST(Nf4Decode, Nf4ThresholdsAreTheKernelLiteralsTiesGoDown) {
  for (unsigned i = 0; i < 15; ++i) {
    const float t = kNf4KernelThresholds[i];
    EXPECT_EQ(nf4_code(t), i) << "on threshold " << i;
    EXPECT_EQ(nf4_code(std::nextafter(t, 2.0f)), i + 1) << "above threshold " << i;
    EXPECT_EQ(nf4_code(std::nextafter(t, -2.0f)), i) << "below threshold " << i;
    // The fp32 midpoint of the two entries is the threshold itself, except for four literals one ulp off.
    const float mid = (kNf4Spec[i] + kNf4Spec[i + 1]) * 0.5f;
    const bool off_by_one_ulp = i == 0 || i == 8 || i == 12 || i == 14;
    EXPECT_EQ(float_bits(mid) != float_bits(t), off_by_one_ulp) << i;
    if (off_by_one_ulp) EXPECT_EQ(std::nextafter(mid, t), t) << i;
  }
  // So an exact midpoint goes up where the literal lies below it (the CUDA vectors show it for t0).
  EXPECT_EQ(nf4_code(bits_float(0xbf591cd8)), 1u);
  EXPECT_EQ(nf4_code(bits_float(0x3f006d04)), 13u);
  EXPECT_EQ(nf4_code(bits_float(0x3f5c89da)), 15u);
  EXPECT_EQ(nf4_code(bits_float(0x3df64862)), 8u);
  EXPECT_EQ(nf4_code(std::numeric_limits<float>::quiet_NaN()), 0u);
  EXPECT_EQ(nf4_code(-0.0f), 7u);
  EXPECT_EQ(nf4_code(5.0f), 15u);
  EXPECT_EQ(nf4_code(-5.0f), 0u);
}

TEST(Nf4Decode, EveryCodeRoundTripsAndCodesAreNearest) {
  for (unsigned c = 0; c < 16; ++c) {
    EXPECT_EQ(nf4_code(nf4_value(c)), c);
    EXPECT_EQ(fp4_code(fp4_value(c)), c == 8 ? 0u : c);  // -0.0 has sign 0 in dQuantizeFP4
  }
  // Every fp32 in [-1, 1] on a grid of 2^-18 plus random points: the chosen entry is nearest in exact
  // arithmetic, except within 2 ulp of a threshold (FP4's literals are not exact midpoints).
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> xs;
  for (int i = -(1 << 18); i <= (1 << 18); ++i) xs.push_back(static_cast<float>(i) * 0x1p-18f);
  for (int i = 0; i < 200000; ++i) xs.push_back(uni(rng));
  for (const Nf4Type type : {Nf4Type::NF4, Nf4Type::FP4}) {
    for (const float x : xs) {
      const unsigned c = nf4_type_code(type, x);
      const double err = std::fabs(static_cast<double>(x) - nf4_type_value(type, c));
      for (unsigned other = 0; other < 16; ++other) {
        const double e2 = std::fabs(static_cast<double>(x) - nf4_type_value(type, other));
        if (e2 < err - 4e-7) {
          ADD_FAILURE() << (type == Nf4Type::NF4 ? "nf4" : "fp4") << " x=" << x << " code " << c << " but " << other
                        << " is nearer";
          return;
        }
      }
    }
  }
}

TEST(Nf4Decode, Fp4IntervalsFollowTheKernelLiterals) {
  const float t[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f};
  const unsigned below[7] = {0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010};
  const unsigned above[7] = {0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(fp4_code(t[i]), below[i]) << i;  // on the literal: the lower pattern
    EXPECT_EQ(fp4_code(std::nextafter(t[i], 2.0f)), above[i]) << i;
    EXPECT_EQ(fp4_code(-t[i]), 8 | below[i]) << i;
    EXPECT_EQ(fp4_code(-std::nextafter(t[i], 2.0f)), 8 | above[i]) << i;
  }
  EXPECT_EQ(fp4_code(-0.0f), 0u);
  EXPECT_EQ(fp4_code(std::numeric_limits<float>::quiet_NaN()), 0u);
  EXPECT_EQ(fp4_code(-1e-30f), 8u);
}

TEST(Nf4Decode, NibbleOrderHighFirstForEveryByte) {
  for (unsigned b = 0; b < 256; ++b) {
    const std::uint8_t bytes[2] = {static_cast<std::uint8_t>(b), static_cast<std::uint8_t>(255 - b)};
    EXPECT_EQ(nf4_code_at(bytes, 0), b >> 4);
    EXPECT_EQ(nf4_code_at(bytes, 1), b & 15u);
    EXPECT_EQ(nf4_code_at(bytes, 2), (255 - b) >> 4);
    EXPECT_EQ(nf4_code_at(bytes, 3), (255 - b) & 15u);
  }
}

TEST(Nf4Decode, DynamicMapIsSortedAndMatchesSpotValues) {
  const auto d = nf4_dynamic_map();
  EXPECT_TRUE(std::is_sorted(d.begin(), d.end()));
  EXPECT_EQ(std::adjacent_find(d.begin(), d.end()), d.end());
  EXPECT_EQ(float_bits(d[0]), 0xbf7e3333u);
  EXPECT_EQ(d[127], 0.0f);
  EXPECT_EQ(d[255], 1.0f);
  EXPECT_NEAR(d[128], 5.5e-7, 1e-12);
  EXPECT_NEAR(d[192], 0.12109375, 1e-7);
}

// Brute force for quantize_dynamic8: nearest entry, on an exact fp32 midpoint the even index.
unsigned nearest_even(std::span<const float, 256> map, float y) {
  if (std::isnan(y)) return 0;
  if (y <= map[0]) return 0;
  if (y >= map[255]) return 255;
  unsigned k = 0;
  while (!(map[k] <= y && y <= map[k + 1])) ++k;
  if (y == map[k]) return k;
  if (y == map[k + 1]) return k + 1;
  const float mid = (map[k] + map[k + 1]) * 0.5f;
  if (y > mid) return k + 1;
  if (y < mid) return k;
  return (k % 2 == 0) ? k : k + 1;
}

TEST(Nf4Nested, Dynamic8IsNearestWithTiesToEven) {
  const auto map = nf4_dynamic_map();
  for (unsigned k = 0; k < 255; ++k) {
    const float mid = (map[k] + map[k + 1]) * 0.5f;
    EXPECT_EQ(quantize_dynamic8(map.data(), mid), k % 2 == 0 ? k : k + 1) << "midpoint " << k;
    EXPECT_EQ(quantize_dynamic8(map.data(), map[k]), k);
    EXPECT_EQ(quantize_dynamic8(map.data(), std::nextafter(mid, 2.0f)), k + 1);
    EXPECT_EQ(quantize_dynamic8(map.data(), std::nextafter(mid, -2.0f)), k);
  }
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  for (int i = 0; i < 100000; ++i) {
    const float y = i % 2 ? uni(rng) : uni(rng) * 1e-3f;
    ASSERT_EQ(quantize_dynamic8(map.data(), y), nearest_even(map, y)) << y;
  }
  EXPECT_EQ(quantize_dynamic8(map.data(), std::numeric_limits<float>::quiet_NaN()), 0);
  EXPECT_EQ(quantize_dynamic8(map.data(), -2.0f), 0);
  EXPECT_EQ(quantize_dynamic8(map.data(), 2.0f), 255);
}

// ---- the spec's vectors (nf4.md section 10) ------------------------------------------------------------------

const std::vector<float> kVectorA = {0.5f, -1.0f, 0.25f, 0.0f, 2.0f, -0.1f, 1.5f, -2.0f};

TEST(Nf4Spec, VectorA) {
  const QuantizedTensor q = quantize_nf4(f32_tensor(kVectorA), {});
  EXPECT_EQ(q.method, "nf4");
  EXPECT_EQ(bytes_of(q.component("codes")), (std::vector<std::uint8_t>{0xA2, 0x97, 0xF6, 0xE0}));
  EXPECT_EQ(floats_of(q.component("absmax")), std::vector<float>{2.0f});
  const std::vector<float> w = floats_of(dequantize_nf4_reference(q));
  const double expected[8] = {0.4922246039, -1.0501461029, 0.3218604028, 0.0, 2.0, -0.1821000725, 1.4459136724, -2.0};
  const float expected_bf16[8] = {0.4921875f, -1.046875f, 0.322265625f, 0.0f, 2.0f, -0.181640625f, 1.4453125f, -2.0f};
  for (int i = 0; i < 8; ++i) {
    EXPECT_NEAR(w[i], expected[i], 1e-9) << i;
    EXPECT_EQ(bf16_bits_to_f32(f32_to_bf16_bits(w[i])), expected_bf16[i]) << i;
  }
}

TEST(Fp4Spec, VectorB) {
  const QuantizedTensor q = quantize_nf4(f32_tensor(kVectorA), {.type = Nf4Type::FP4});
  EXPECT_EQ(q.method, "fp4");
  EXPECT_EQ(bytes_of(q.component("codes")), (std::vector<std::uint8_t>{0x7D, 0x60, 0x39, 0x2B}));
  const std::vector<float> w = floats_of(dequantize_nf4_reference(q));
  const float expected[8] = {0.5f, -1.0f, 0.33333334f, 0.0f, 2.0f, -0.010416667f, 1.3333334f, -2.0f};
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(w[i], expected[i]) << i;
}

TEST(Nf4Spec, VectorCDoubleQuantOfAnAbsmaxVector) {
  const std::vector<float> a = {1.0f, 2.0f, 3.0f, 6.0f};
  EXPECT_EQ(nf4_absmax_offset(a), 3.0f);
  const Nf4NestedAbsmax nested = quantize_nf4_absmax(a, 3.0f);
  EXPECT_EQ(nested.codes, (std::vector<std::uint8_t>{23, 47, 127, 255}));
  EXPECT_EQ(nested.nested_absmax, std::vector<float>{3.0f});
  const auto d = nf4_dynamic_map();
  const float rebuilt[4] = {0.99140620f, 2.00390625f, 3.0f, 6.0f};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(d[nested.codes[i]] * 3.0f + 3.0f, rebuilt[i], 1e-6) << i;
}

TEST(Nf4Spec, TiesOnThresholdsGoToTheLowerCode) {
  const float t_nf4 = bits_float(0x3d22faff);
  QuantizedTensor q = quantize_nf4(f32_tensor({1.0f, t_nf4, std::nextafter(t_nf4, 1.0f), 0.0f}), {});
  EXPECT_EQ(bytes_of(q.component("codes")), (std::vector<std::uint8_t>{0xF7, 0x87}));
  const float t_fp4 = bits_float(0x3e955555);
  q = quantize_nf4(f32_tensor({1.0f, t_fp4, std::nextafter(t_fp4, 1.0f), 0.0f}), {.type = Nf4Type::FP4});
  EXPECT_EQ(bytes_of(q.component("codes")), (std::vector<std::uint8_t>{0x37, 0x40}));
}

// ---- byte identity with bitsandbytes (tests/data/nf4) --------------------------------------------------------

struct GoldenCase {
  std::string name, input;
  Nf4Type type = Nf4Type::NF4;
  int block_size = 64;
  bool double_quant = false, dequant = false;
};

struct Golden {
  io::SafetensorsFile inputs;
  io::SafetensorsFile vectors;
  nlohmann::json meta;
  std::vector<GoldenCase> cases;
};

std::optional<Golden> open_golden(const std::string& device) {
  const auto vectors = kDataDir / ("vectors_" + device + ".safetensors");
  if (!std::filesystem::exists(vectors)) return std::nullopt;
  std::ifstream in(kDataDir / ("vectors_" + device + ".json"));
  Golden g{io::SafetensorsFile::open(kDataDir / "inputs.safetensors"), io::SafetensorsFile::open(vectors),
           nlohmann::json::parse(in), {}};
  for (const auto& c : g.meta["cases"]) {
    g.cases.push_back({c["case"], c["input"], c["quant_type"] == "nf4" ? Nf4Type::NF4 : Nf4Type::FP4,
                       c["blocksize"].get<int>(), c["double_quant"].get<bool>(), c["dequant"].get<bool>()});
  }
  return g;
}

// bitsandbytes' state as a QuantizedTensor, to run our dequantization on their bytes.
QuantizedTensor golden_state(const Golden& g, const GoldenCase& c, const Tensor& input) {
  QuantizedTensor q;
  q.method = c.type == Nf4Type::NF4 ? "nf4" : "fp4";
  q.shape = input.shape();
  q.dtype = input.dtype();
  q.params.bits = 4;
  q.params.block_size = c.block_size;
  q.params.variant = q.method;
  q.components["codes"] = g.vectors.tensor(c.name + ".codes");
  q.components["quant_map"] = f32_tensor({nf4_quant_map(c.type).begin(), nf4_quant_map(c.type).end()});
  q.components["absmax"] = g.vectors.tensor(c.name + ".absmax");
  if (c.double_quant) {
    q.params.double_quant = true;
    q.params.nested_block_size = kNf4NestedBlockSize;
    q.components["nested_absmax"] = g.vectors.tensor(c.name + ".nested_absmax");
    q.components["nested_quant_map"] = g.vectors.tensor("dynamic_map");
    q.components["nested_offset"] = g.vectors.tensor(c.name + ".nested_offset");
  }
  return q;
}

std::string describe_first_difference(const std::vector<std::uint8_t>& ours, const std::vector<std::uint8_t>& theirs,
                                       const std::vector<float>& input) {
  std::size_t count = 0, first = ours.size();
  for (std::size_t i = 0; i < std::min(ours.size(), theirs.size()); ++i) {
    if (ours[i] != theirs[i]) {
      ++count;
      first = std::min(first, i);
    }
  }
  if (count == 0) return ours.size() == theirs.size() ? "equal" : "sizes differ";
  return fmt::format("{} bytes differ; first at byte {}: ours {:02x} theirs {:02x} (elements {} {})", count, first,
                     ours[first], theirs[first], 2 * first < input.size() ? input[2 * first] : 0.0f,
                     2 * first + 1 < input.size() ? input[2 * first + 1] : 0.0f);
}

// The CUDA kernels are normative: every byte must match.
TEST(Nf4Golden, MatchesBitsandbytesCudaByteForByte) {
  const std::optional<Golden> g = open_golden("cuda");
  if (!g) GTEST_SKIP() << "no " << (kDataDir / "vectors_cuda.safetensors") << "; run make_nf4_vectors.py --device cuda";
  ASSERT_GE(g->cases.size(), 40u);
  for (const GoldenCase& c : g->cases) {
    SCOPED_TRACE(c.name);
    const Tensor input = g->inputs.tensor(c.input);
    const std::vector<float> x = floats_of(input);
    const QuantizedTensor q = quantize_nf4(input, {c.type, c.block_size, c.double_quant});
    const std::vector<std::uint8_t> theirs = bytes_of(g->vectors.tensor(c.name + ".codes"));
    EXPECT_EQ(describe_first_difference(bytes_of(q.component("codes")), theirs, x), "equal");
    const QuantizedTensor raw = quantize_nf4(input, {c.type, c.block_size, false});
    if (!c.double_quant) {
      EXPECT_EQ(bytes_of(raw.component("absmax")), bytes_of(g->vectors.tensor(c.name + ".absmax")));
    } else {
      // The offset is a mean whose last bit depends on the reduction order (ours: double, rounded once);
      // with bitsandbytes' offset the nested codes and absmaxes must match exactly.
      const std::vector<float> a = floats_of(raw.component("absmax"));
      const float their_offset = floats_of(g->vectors.tensor(c.name + ".nested_offset"))[0];
      EXPECT_NEAR(nf4_absmax_offset(a), their_offset, 4e-7 * std::fabs(their_offset));
      const std::vector<float> map = floats_of(g->vectors.tensor("dynamic_map"));
      const Nf4NestedAbsmax nested =
          quantize_nf4_absmax(a, their_offset, std::span<const float, 256>(map.data(), 256), kNf4NestedBlockSize);
      EXPECT_EQ(nested.codes, bytes_of(g->vectors.tensor(c.name + ".absmax")));
      EXPECT_EQ(nested.nested_absmax, floats_of(g->vectors.tensor(c.name + ".nested_absmax")));
      const QuantizedTensor state = golden_state(*g, c, input);
      EXPECT_EQ(nf4_block_absmax(state), floats_of(g->vectors.tensor(c.name + ".absmax_hat")));
    }
    if (c.dequant) {
      const QuantizedTensor state = golden_state(*g, c, input);
      EXPECT_EQ(floats_of(dequantize_nf4_reference(state)), floats_of(g->vectors.tensor(c.name + ".dequant")));
    }
  }
  // The nested 8-bit quantizer on every midpoint of bitsandbytes' map: ties to the even index.
  const std::vector<float> map = floats_of(g->vectors.tensor("nested_ties.map"));
  const std::vector<float> ties = floats_of(g->vectors.tensor("nested_ties.input"));
  const Nf4NestedAbsmax nested = quantize_nf4_absmax(ties, 0.0f, std::span<const float, 256>(map.data(), 256), 256);
  EXPECT_EQ(nested.codes, bytes_of(g->vectors.tensor("nested_ties.codes")));
}

// bitsandbytes' CPU backend (its PyTorch reference kernels: bucketize against the midpoints of the sorted
// table, absmax clamped to 1e-38 for the division; the nested 8-bit step through a C++ 65536-bin lookup
// table) differs from the CUDA rule in documented places only; every other byte is equal.
bool near_fp4_threshold(float y) {
  for (const float t : {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f}) {
    if (std::fabs(std::fabs(y) - t) <= 2.0f * (std::nextafter(t, 1.0f) - t)) return true;
  }
  return false;
}

// The four NF4 literals that are not the exact fp32 midpoint the CPU backend compares against.
bool on_nf4_literal_gap(float y) {
  for (const int i : {0, 8, 12, 14}) {
    const float t = kNf4KernelThresholds[i];
    const float mid = (kNf4Spec[i] + kNf4Spec[i + 1]) * 0.5f;
    if ((y > t && y <= mid) || (y > mid && y <= t)) return true;
  }
  return false;
}

TEST(Nf4Golden, CpuBackendDiffersOnlyWhereDocumented) {
  const std::optional<Golden> g = open_golden("cpu");
  if (!g) GTEST_SKIP() << "no vectors_cpu.safetensors";
  int zero_blocks = 0, zero_signs = 0, fp4_ties = 0, nf4_literals = 0;
  for (const GoldenCase& c : g->cases) {
    SCOPED_TRACE(c.name);
    if (c.input == "subnormal") continue;  // the CPU backend keeps subnormals and clamps the divisor to 1e-38
    const Tensor input = g->inputs.tensor(c.input);
    const std::vector<float> x = floats_of(input);
    const QuantizedTensor q = quantize_nf4(input, {c.type, c.block_size, c.double_quant});
    const QuantizedTensor raw = quantize_nf4(input, {c.type, c.block_size, false});
    const std::vector<std::uint8_t> ours = bytes_of(q.component("codes"));
    const std::vector<std::uint8_t> theirs = bytes_of(g->vectors.tensor(c.name + ".codes"));
    const std::vector<float> a = floats_of(raw.component("absmax"));
    ASSERT_EQ(ours.size(), theirs.size());
    for (std::size_t e = 0; e < x.size(); ++e) {
      const unsigned mine = nf4_code_at(ours.data(), static_cast<std::int64_t>(e));
      const unsigned cpu = nf4_code_at(theirs.data(), static_cast<std::int64_t>(e));
      if (mine == cpu) continue;
      const float block_absmax = a[e / static_cast<std::size_t>(c.block_size)];
      const float y = x[e] * (1.0f / block_absmax);
      if (block_absmax == 0.0f && mine == 0 && cpu == (c.type == Nf4Type::NF4 ? 7u : 0u)) {
        ++zero_blocks;  // CUDA: 0 * (1/0) = NaN -> code 0; CPU: 0 / 1e-38 = 0 -> the code of zero
      } else if (c.type == Nf4Type::FP4 && (mine | 8u) == 8u && (cpu | 8u) == 8u) {
        ++zero_signs;  // a zero code of either sign: the CPU's two +0 table entries pick the sign apart
      } else if (c.type == Nf4Type::FP4 && near_fp4_threshold(y)) {
        ++fp4_ties;  // the CPU uses exact midpoints, the kernel its decimal literals
      } else if (c.type == Nf4Type::NF4 && on_nf4_literal_gap(y)) {
        ++nf4_literals;  // likewise for the four NF4 literals one ulp off the midpoint
      } else {
        ADD_FAILURE() << fmt::format("element {} x={} absmax={} ours {} theirs {}", e, x[e], block_absmax, mine, cpu);
      }
    }
    if (!c.double_quant) {
      EXPECT_EQ(bytes_of(raw.component("absmax")), bytes_of(g->vectors.tensor(c.name + ".absmax")));
    } else {
      const float theirs_offset = floats_of(g->vectors.tensor(c.name + ".nested_offset"))[0];
      EXPECT_LE(std::fabs(nf4_absmax_offset(a) - theirs_offset), 1.2e-7f * theirs_offset);  // torch's CPU sum order
    }
  }
  EXPECT_GT(zero_blocks, 0);
  EXPECT_GT(zero_signs, 0);
  EXPECT_GT(fp4_ties, 0);
  EXPECT_GT(nf4_literals, 0);
}

// ---- properties on random inputs -------------------------------------------------------------------------

struct Shape2 {
  std::int64_t n, k;
};

TEST(Nf4Properties, AbsmaxExactErrorBoundedExtremesExactZerosZero) {
  const Shape2 shapes[] = {{1, 1}, {3, 5}, {7, 37}, {17, 96}, {33, 100}, {64, 64}, {5, 4099}};
  const DType dtypes[] = {DType::F32, DType::F16, DType::BF16};
  for (const Nf4Type type : {Nf4Type::NF4, Nf4Type::FP4}) {
    for (const int block_size : kNf4BlockSizes) {
      for (std::size_t s = 0; s < std::size(shapes); ++s) {
        const DType dtype = dtypes[s % 3];
        const std::uint64_t seed = 1000 * s + static_cast<std::uint64_t>(block_size) + (type == Nf4Type::FP4);
        SCOPED_TRACE(fmt::format("{} block {} shape [{}, {}] {} seed {}", type == Nf4Type::NF4 ? "nf4" : "fp4",
                                 block_size, shapes[s].n, shapes[s].k, dtype_name(dtype), seed));
        Tensor w = random_weight(shapes[s].n, shapes[s].k, dtype, seed);
        if (w.numel() > 10) w.set({0, 0}, 0.0);  // an exact zero
        const std::vector<float> x = floats_of(w);
        ASSERT_TRUE(std::any_of(x.begin(), x.end(), [](float v) { return v != 0.0f; }));
        const QuantizedTensor q = quantize_nf4(w, {type, block_size, false});
        EXPECT_EQ(q.storage_bytes(), static_cast<std::uint64_t>((x.size() + 1) / 2 + 64 +
                                                                4 * ((x.size() + block_size - 1) / block_size)));
        const std::vector<float> a = floats_of(q.component("absmax"));
        const std::vector<float> w_hat = floats_of(dequantize_nf4_reference(q));
        const double half_gap = type == Nf4Type::NF4 ? 0.1519 : 0.16667 * (1 + 1e-6);
        const std::vector<std::uint8_t> codes = bytes_of(q.component("codes"));
        for (std::size_t b = 0; b < a.size(); ++b) {
          float expected = 0.0f;
          std::size_t arg = b * block_size;
          for (std::size_t e = b * block_size; e < std::min(x.size(), (b + 1) * block_size); ++e) {
            if (std::fabs(x[e]) > expected) expected = std::fabs(x[e]), arg = e;
          }
          ASSERT_EQ(a[b], expected) << "block " << b;
          EXPECT_EQ(std::fabs(w_hat[arg]), expected) << "the absmax element of block " << b;
        }
        for (std::size_t e = 0; e < x.size(); ++e) {
          const float ab = a[e / block_size];
          ASSERT_LE(std::fabs(x[e] - w_hat[e]), ab * half_gap) << "element " << e;
          if (x[e] == 0.0f) ASSERT_EQ(w_hat[e], 0.0f) << "element " << e;
        }
        if (x.size() % 2 == 1 && a.back() != 0.0f) {
          EXPECT_EQ(codes.back() & 15u, type == Nf4Type::NF4 ? 7u : 0u) << "padding nibble";
        }
      }
    }
  }
}

TEST(Nf4Properties, CodesAreMonotoneAndErrorFallsWithBlockSize) {
  const Tensor w = random_weight(64, 512, DType::F32, 11);
  double previous = 0;
  for (const int block_size : {32, 64, 256, 1024, 4096}) {
    const QuantizedTensor q = quantize_nf4(w, {Nf4Type::NF4, block_size, false});
    const double err = error_stats(w, dequantize_nf4_reference(q)).relative_frobenius;
    EXPECT_GT(err, previous) << "block " << block_size;  // larger blocks, coarser scales
    previous = err;
  }
  // Within one block, the NF4 code never decreases as the value grows.
  std::vector<float> ramp(4096);
  for (std::size_t i = 0; i < ramp.size(); ++i) ramp[i] = -1.0f + 2.0f * static_cast<float>(i) / 4095.0f;
  const QuantizedTensor q = quantize_nf4(f32_tensor(ramp), {Nf4Type::NF4, 4096, false});
  const std::vector<std::uint8_t> codes = bytes_of(q.component("codes"));
  for (std::int64_t e = 1; e < 4096; ++e) ASSERT_LE(nf4_code_at(codes.data(), e - 1), nf4_code_at(codes.data(), e));
}

// An all-zero block takes the CUDA kernel's NaN path: absmax 0, every code 0 (also the padding nibble of an
// odd numel). Without double quantization it dequantizes to +-0. With it, the rebuilt absmax is only near 0,
// so NF4's code 0 (-1.0) gives -a_hat: small (within the nested step) but not zero, as in bitsandbytes.
TEST(Nf4Properties, AllZeroBlocksGiveCodeZeroAndNoNaN) {
  std::vector<float> v(64 * 3 + 7, 0.0f);
  for (std::size_t i = 64; i < 128; ++i) v[i] = 0.01f * static_cast<float>(i % 7) - 0.03f;  // block 1 non-zero
  for (const Nf4Type type : {Nf4Type::NF4, Nf4Type::FP4}) {
    for (const bool dq : {false, true}) {
      SCOPED_TRACE(fmt::format("{} dq={}", type == Nf4Type::NF4 ? "nf4" : "fp4", dq));
      const QuantizedTensor q = quantize_nf4(f32_tensor(v), {type, 64, dq});
      const std::vector<std::uint8_t> codes = bytes_of(q.component("codes"));
      for (std::size_t byte = 0; byte < codes.size(); ++byte) {
        if (byte >= 32 && byte < 64) continue;
        ASSERT_EQ(codes[byte], 0u) << "byte " << byte << " (the CUDA kernel writes 0x00 for a zero block)";
      }
      const std::vector<float> a = nf4_block_absmax(q);
      const float bound = dq ? floats_of(q.component("nested_absmax"))[0] * 0.00704f : 0.0f;
      EXPECT_LE(std::fabs(a[0]), bound);
      EXPECT_LE(std::fabs(a[3]), bound);  // the short last block (7 elements; odd: its padding nibble too)
      const std::vector<float> w_hat = floats_of(dequantize_nf4_reference(q));
      for (std::size_t i = 0; i < v.size(); ++i) {
        ASSERT_FALSE(std::isnan(w_hat[i])) << i;
        if (i >= 64 && i < 128) continue;
        if (!dq || type == Nf4Type::FP4) {
          ASSERT_EQ(w_hat[i], 0.0f) << i;
        } else {
          ASSERT_EQ(w_hat[i], -a[i / 64]) << i;
        }
      }
    }
  }
}

// The CUDA build flushes fp32 subnormals to zero (--use_fast_math): an all-subnormal block stores absmax 0
// and codes 0; a subnormal beside normal values counts as 0 (FP4: sign 0). The CUDA vectors' "subnormal"
// cases show the same bytes.
TEST(Nf4Properties, SubnormalsFlushToZeroLikeTheKernel) {
  std::vector<float> v(128, 1e-40f);
  v[0] = 1.0f;
  v[1] = -1e-40f;
  v[2] = -1.1e-38f;  // normal: kept
  for (std::size_t i = 64; i < 128; ++i) v[i] = (i % 2 ? -1.0f : 1.0f) * static_cast<float>(i) * 1e-41f;
  for (const Nf4Type type : {Nf4Type::NF4, Nf4Type::FP4}) {
    const QuantizedTensor q = quantize_nf4(f32_tensor(v), {type, 64, false});
    EXPECT_EQ(floats_of(q.component("absmax")), (std::vector<float>{1.0f, 0.0f}));
    const std::vector<std::uint8_t> codes = bytes_of(q.component("codes"));
    const unsigned zero = type == Nf4Type::NF4 ? 7u : 0u;
    EXPECT_EQ(nf4_code_at(codes.data(), 1), zero);
    EXPECT_EQ(nf4_code_at(codes.data(), 2), zero);  // -1.1e-38 * 1 is normal but rounds to the zero code
    for (std::int64_t e = 64; e < 128; ++e) ASSERT_EQ(nf4_code_at(codes.data(), e), 0u) << e;
  }
}

TEST(Nf4Properties, DoubleQuantRebuildsAbsmaxWithinHalfAStep) {
  for (const DType dtype : {DType::F16, DType::BF16, DType::F32}) {
    // 300 rows x 128: 600 blocks of 64, three nested blocks (256, 256, 88), row scales spread 1:20.
    Tensor w = random_weight(300, 128, DType::F32, 21 + static_cast<std::uint64_t>(dtype));
    for (std::int64_t r = 0; r < 300; ++r) {
      for (std::int64_t c = 0; c < 128; ++c) w.set({r, c}, w.get({r, c}) * (0.1 + 0.0066 * static_cast<double>(r)));
    }
    w = w.to(dtype);
    const QuantizedTensor plain = quantize_nf4(w, {Nf4Type::NF4, 64, false});
    const QuantizedTensor dq = quantize_nf4(w, {Nf4Type::NF4, 64, true});
    EXPECT_EQ(bytes_of(plain.component("codes")), bytes_of(dq.component("codes")));
    EXPECT_EQ(dq.params.nested_block_size, 256);
    EXPECT_EQ(dq.component("absmax").dtype(), DType::U8);
    const std::vector<float> a = floats_of(plain.component("absmax"));
    const std::vector<float> a_hat = nf4_block_absmax(dq);
    const std::vector<float> nested = floats_of(dq.component("nested_absmax"));
    ASSERT_EQ(nested.size(), 3u);
    const float offset = floats_of(dq.component("nested_offset"))[0];
    EXPECT_EQ(offset, nf4_absmax_offset(a));
    for (std::size_t j = 0; j < 3; ++j) {
      float expected = 0;
      for (std::size_t b = 256 * j; b < std::min<std::size_t>(a.size(), 256 * (j + 1)); ++b) {
        expected = std::max(expected, std::fabs(a[b] - offset));
      }
      EXPECT_EQ(nested[j], expected) << j;
    }
    for (std::size_t b = 0; b < a.size(); ++b) {
      ASSERT_LE(std::fabs(a[b] - a_hat[b]), nested[b / 256] * 0.00704f + 1e-7f) << b;
    }
    EXPECT_LT(dq.bits_per_weight(), plain.bits_per_weight());
  }
}

TEST(Nf4Properties, ConstantAbsmaxDoubleQuantizesExactly) {
  std::vector<float> v(64 * 5, 0.25f);
  for (std::size_t b = 0; b < 5; ++b) v[b * 64 + b] = b % 2 ? -1.5f : 1.5f;
  const QuantizedTensor q = quantize_nf4(f32_tensor(v), {Nf4Type::NF4, 64, true});
  EXPECT_EQ(floats_of(q.component("nested_absmax")), std::vector<float>{0.0f});
  EXPECT_EQ(bytes_of(q.component("absmax")), std::vector<std::uint8_t>(5, 0));  // the kernel's NaN path
  EXPECT_EQ(nf4_block_absmax(q), std::vector<float>(5, 1.5f));
}

TEST(Nf4Properties, DeterministicOverThreadsAndStrides) {
  const Tensor w = random_weight(129, 257, DType::BF16, 31);
  const int threads = num_threads();
  set_num_threads(1);
  const QuantizedTensor one = quantize_nf4(w, {Nf4Type::FP4, 128, true});
  set_num_threads(3);
  const QuantizedTensor two = quantize_nf4(w, {Nf4Type::FP4, 128, true});
  set_num_threads(threads);
  for (const char* name : {"codes", "absmax", "nested_absmax", "nested_offset"}) {
    EXPECT_EQ(bytes_of(one.component(name)), bytes_of(two.component(name))) << name;
  }
  // A transposed view quantizes as its contiguous copy (blocks follow the logical row-major order).
  const Tensor t = w.transpose(0, 1);
  EXPECT_EQ(bytes_of(quantize_nf4(t, {}).component("codes")), bytes_of(quantize_nf4(t.contiguous(), {}).component("codes")));
  EXPECT_EQ(quantize_nf4(t, {}).shape, (Shape{257, 129}));
}

TEST(Nf4Properties, AnyRankIsFlattened) {
  const Tensor w2 = random_weight(6, 40, DType::F16, 41);
  const Tensor w3 = w2.reshape({2, 3, 40});
  const Tensor w1 = w2.reshape({240});
  const QuantizedTensor q2 = quantize_nf4(w2, {});
  for (const Tensor& w : {w1, w3}) {
    const QuantizedTensor q = quantize_nf4(w, {});
    EXPECT_EQ(q.shape, w.shape());
    EXPECT_EQ(bytes_of(q.component("codes")), bytes_of(q2.component("codes")));
    EXPECT_EQ(floats_of(dequantize_nf4_reference(q)), floats_of(dequantize_nf4_reference(q2)));
  }
}

TEST(Nf4Matmul, EqualsMatmulOfTheDequantizedWeight) {
  const Tensor w = random_weight(48, 96, DType::BF16, 51);
  const Tensor x = random_weight(3, 96, DType::F32, 52, 1.0f);
  const QuantizedTensor q = quantize_nf4(w, {Nf4Type::NF4, 64, true});
  const std::vector<float> y = floats_of(matmul_nf4_reference(q, x));
  const std::vector<float> w_hat = floats_of(dequantize_nf4_reference(q));
  const std::vector<float> xv = floats_of(x);
  ASSERT_EQ(y.size(), 3u * 48u);
  for (int m = 0; m < 3; ++m) {
    for (int n = 0; n < 48; ++n) {
      double ref = 0;
      for (int k = 0; k < 96; ++k) ref += static_cast<double>(xv[m * 96 + k]) * w_hat[n * 96 + k];
      EXPECT_NEAR(y[m * 48 + n], ref, 1e-5) << m << "," << n;
    }
  }
  const QuantizedTensor q1 = quantize_nf4(w.reshape({48 * 96}), {});
  EXPECT_TRUE(contains(error_message([&] { matmul_nf4_reference(q1, x); }, ErrorCode::ShapeMismatch), "2-D weight"));
}

// ---- bad input ---------------------------------------------------------------------------------------------

TEST(Nf4Errors, RejectsBadBlockSizeDtypeEmptyAndNonFinite) {
  const Tensor w = random_weight(4, 64, DType::F32, 61);
  std::string m = error_message([&] { quantize_nf4(w, {Nf4Type::NF4, 48, false}); }, ErrorCode::InvalidArgument);
  EXPECT_TRUE(contains(m, "block_size = 48"));
  EXPECT_TRUE(contains(m, "32, 64, 128, 256, 512, 1024, 2048, 4096"));
  m = error_message([&] { quantize_nf4(w.to(DType::F64), {}); }, ErrorCode::DTypeMismatch);
  EXPECT_TRUE(contains(m, "f64"));
  error_message([&] { quantize_nf4(Tensor::empty({0, 64}, DType::F32), {}); }, ErrorCode::InvalidArgument);
  error_message([&] { quantize_nf4(Tensor{}, {}); }, ErrorCode::InvalidArgument);
  for (const DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    for (const double bad : {std::nan(""), HUGE_VAL, -HUGE_VAL}) {
      Tensor v = w.to(dtype);
      v.set({2, 9}, bad);
      v.set({3, 1}, bad);
      m = error_message([&] { quantize_nf4(v, {}); }, ErrorCode::Numerical);
      EXPECT_TRUE(contains(m, "element 137 (row 2, column 9)")) << m;
    }
  }
}

TEST(Nf4Errors, DequantizeRejectsMalformedTensors) {
  QuantizedTensor q = quantize_nf4(random_weight(4, 64, DType::F16, 71), {Nf4Type::NF4, 64, true});
  QuantizedTensor bad = q;
  bad.components.erase("nested_offset");
  EXPECT_TRUE(contains(error_message([&] { dequantize_nf4_reference(bad); }, ErrorCode::InvalidArgument),
                       "nested_offset"));
  bad = q;
  bad.components["codes"] = Tensor::zeros({31}, DType::U8);
  EXPECT_TRUE(contains(error_message([&] { dequantize_nf4_reference(bad); }, ErrorCode::InvalidArgument), "'codes'"));
  bad = q;
  bad.method = "affine";
  error_message([&] { dequantize_nf4_reference(bad); }, ErrorCode::InvalidArgument);
}

// The 16-bit path equals the fp32 reference rounded once, bit for bit: both types, with and without double
// quantization, blocks of 64 and 4096, an odd element count (the last byte half used), an all-zero row (a_b =
// 0) and a block whose outputs overflow fp16 (inf in both).
TEST(Nf4Dequantize, SixteenBitOutputsEqualTheReferenceRoundedOnce) {
  std::uint64_t seed = 90;
  for (const Nf4Type type : {Nf4Type::NF4, Nf4Type::FP4}) {
    for (const bool dq : {false, true}) {
      for (const int block : {64, 4096}) {
        Tensor w = random_weight(37, 129, DType::F32, ++seed);  // 4773 elements
        for (std::int64_t c = 0; c < 129; ++c) w.set({3, c}, 0.0);
        w.set({20, 7}, 1e5);
        const QuantizedTensor q = quantize_nf4(w, {type, block, dq});
        const Tensor ref = dequantize_nf4_reference(q);
        for (const DType dt : {DType::F16, DType::BF16, DType::F32}) {
          SCOPED_TRACE(::testing::Message() << q.method << " dq=" << dq << " block=" << block << " " << dtype_name(dt));
          const Tensor got = dequantize_nf4(q, dt);
          EXPECT_EQ(got.dtype(), dt);
          EXPECT_EQ(got.shape(), q.shape);
          EXPECT_EQ(bytes_of(got), bytes_of(ref.to(dt)));
        }
      }
    }
  }
  const QuantizedTensor q = quantize_nf4(random_weight(4, 64, DType::F16, 99), {});
  EXPECT_TRUE(contains(error_message([&] { dequantize_nf4(q, DType::F64); }, ErrorCode::InvalidArgument), "f64"));
  QuantizedTensor bad = q;
  bad.components.erase("codes");
  EXPECT_TRUE(contains(error_message([&] { dequantize_nf4(bad, DType::F16); }, ErrorCode::InvalidArgument), "codes"));
}

// ---- registry ----------------------------------------------------------------------------------------------

TEST(Nf4Registry, MethodInfosMapParamsToConfig) {
  const MethodInfo nf4 = nf4_method_info();
  const MethodInfo fp4 = fp4_method_info();
  EXPECT_EQ(nf4.name, "nf4");
  EXPECT_EQ(fp4.name, "fp4");
  EXPECT_EQ(nf4.defaults.block_size, 64);
  EXPECT_EQ(nf4.defaults.bits, 4);
  EXPECT_FALSE(nf4.defaults.double_quant);
  const Tensor w = random_weight(8, 100, DType::BF16, 81);
  QuantParams p = nf4.defaults;
  p.double_quant = true;
  p.block_size = 128;
  const QuantizedTensor q = nf4.quantize(w, p);
  const QuantizedTensor direct = quantize_nf4(w, {Nf4Type::NF4, 128, true});
  EXPECT_EQ(q.params, direct.params);
  EXPECT_EQ(bytes_of(q.component("absmax")), bytes_of(direct.component("absmax")));
  EXPECT_EQ(floats_of(nf4.dequantize(q)), floats_of(dequantize_nf4_reference(direct)));
  EXPECT_EQ(fp4.quantize(w, QuantParams{}).method, "fp4");  // all zeros: the defaults
  EXPECT_EQ(floats_of(fp4.matmul(fp4.quantize(w, {}), random_weight(2, 100, DType::F32, 82))).size(), 16u);

  p = nf4.defaults;
  p.bits = 3;
  EXPECT_TRUE(contains(error_message([&] { nf4.quantize(w, p); }, ErrorCode::InvalidArgument), "bits = 3"));
  p = nf4.defaults;
  p.group_size = 128;
  EXPECT_TRUE(contains(error_message([&] { nf4.quantize(w, p); }, ErrorCode::InvalidArgument), "block_size"));
  p = nf4.defaults;
  p.variant = "fp4";
  error_message([&] { nf4.quantize(w, p); }, ErrorCode::InvalidArgument);
  p = nf4.defaults;
  p.nested_block_size = 128;
  error_message([&] { nf4.quantize(w, p); }, ErrorCode::InvalidArgument);
  p = nf4.defaults;
  p.block_size = 100;
  EXPECT_TRUE(contains(error_message([&] { nf4.quantize(w, p); }, ErrorCode::InvalidArgument), "block_size = 100"));
}

}  // namespace
}  // namespace lowbit::quant
