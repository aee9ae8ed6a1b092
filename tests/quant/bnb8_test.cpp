// quant/bnb8.hpp: the two maps, the CUDA kernel's nearest-code rule and our table-driven encoder (equal on
// every threshold and its neighbours), the spec's vectors (shared/methods/int8.md section 7, nf4.md test
// vector C), byte identity with vectors the bitsandbytes package made on CUDA (tests/data/bnb8,
// make_bnb8_vectors.py), properties on random inputs, and bad input.
#include "lowbit/quant/bnb8.hpp"

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

using ::lowbit::test::bytes_of;
using ::lowbit::test::contains;
using ::lowbit::test::error_message;
using ::lowbit::test::floats_of;

const std::filesystem::path kDataDir = std::filesystem::path(LOWBIT_TEST_DATA_DIR) / "bnb8";

std::vector<std::uint32_t> float_bits_of(const Tensor& t) {
  std::vector<std::uint32_t> v;
  for (const float f : floats_of(t)) v.push_back(float_bits(f));
  return v;
}

Tensor f32_tensor(const std::vector<float>& v) {
  return Tensor::from_values(std::span<const float>(v), {static_cast<std::int64_t>(v.size())});
}

Tensor random_weight(std::int64_t n, std::int64_t k, std::uint64_t seed, float scale = 0.02f) {
  Tensor t = Tensor::empty({n, k}, DType::F32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng) * (u(rng) < 0.002f ? 30.0f : 1.0f);
  return t;
}

Bnb8Config bnb8_config(std::int64_t block_size, Bnb8Map map = Bnb8Map::Dynamic, bool nested = false) {
  Bnb8Config c;
  c.block_size = block_size;
  c.map = map;
  c.nested = nested;
  return c;
}

float ulp(float x) { return std::nextafter(std::fabs(x), INFINITY) - std::fabs(x); }

// ---- the maps ------------------------------------------------------------------------------------------

TEST(Bnb8Map, DynamicTableSpotValues) {
  const std::array<float, 256> m = bnb8_map(Bnb8Map::Dynamic);
  const std::pair<int, float> spots[] = {{0, -0.992968738f},  {23, -0.669531286f},     {35, -0.500781238f},
                                         {47, -0.33203125f},  {81, -0.05078125f},      {126, -5.500000384e-07f},
                                         {127, 0.0f},         {128, 5.500000384e-07f}, {192, 0.12109375f},
                                         {201, 0.247656256f}, {237, 0.75390625f},      {254, 0.992968738f},
                                         {255, 1.0f}};
  for (const auto& [i, v] : spots) EXPECT_EQ(m[static_cast<std::size_t>(i)], v) << "index " << i;
  for (int i = 0; i < 255; ++i) EXPECT_LT(m[i], m[i + 1]) << "index " << i;
  for (int i = 1; i < 128; ++i) EXPECT_EQ(m[127 - i], -m[127 + i]) << "index " << i;  // negatives mirror positives
}

TEST(Bnb8Map, DynamicTableFollowsItsConstruction) {
  // Decade i (0..6) holds 2^i magnitudes 10^(i-6) (0.1 + (j + 0.5) 0.9 / 2^i); fp32 rounding aside.
  std::vector<double> expected = {0.0, 1.0};
  for (int i = 0; i < 7; ++i) {
    for (int j = 0; j < (1 << i); ++j) {
      const double v = std::pow(10.0, i - 6) * (0.1 + (j + 0.5) * 0.9 / (1 << i));
      expected.push_back(v);
      expected.push_back(-v);
    }
  }
  std::sort(expected.begin(), expected.end());
  ASSERT_EQ(expected.size(), 256u);
  const std::array<float, 256> m = bnb8_map(Bnb8Map::Dynamic);
  for (std::size_t i = 0; i < 256; ++i) {
    EXPECT_LE(std::fabs(m[i] - expected[i]), 2.0 * ulp(static_cast<float>(expected[i])) + 1e-45) << "index " << i;
  }
}

TEST(Bnb8Map, LinearTableIsKOver127WithAnExtraZero) {
  const std::array<float, 256> m = bnb8_map(Bnb8Map::Linear);
  EXPECT_EQ(m[0], -1.0f);
  EXPECT_EQ(m[255], 1.0f);
  EXPECT_EQ(m[127], 0.0f);
  EXPECT_NEAR(m[128], 3.7e-9f, 1e-10f);
  for (int k = -127; k <= 127; ++k) {
    if (k == 0) continue;
    const int index = k < 0 ? k + 127 : k + 128;
    EXPECT_NEAR(m[static_cast<std::size_t>(index)], k / 127.0, 3.1e-8) << "k " << k;
  }
  for (int i = 0; i < 255; ++i) EXPECT_LT(m[i], m[i + 1]) << "index " << i;
}

TEST(Bnb8Decode, EveryCodeOfBothMaps) {
  const float absmaxes[] = {1.0f, 2.0f, 0.0371f, 123.456f, 0.0f};
  for (const Bnb8Map which : {Bnb8Map::Dynamic, Bnb8Map::Linear}) {
    const std::array<float, 256> m = bnb8_map(which);
    for (const float a : absmaxes)
      for (int code = 0; code < 256; ++code)
        ASSERT_EQ(bnb8_decode(m.data(), static_cast<std::uint8_t>(code), a), static_cast<float>(double(m[code]) * a));
    // Every code encodes back to itself.
    for (int code = 0; code < 256; ++code) ASSERT_EQ(bnb8_encode(m.data(), m[static_cast<std::size_t>(code)]), code);
  }
}

// ---- the nearest-code rule -----------------------------------------------------------------------------

TEST(Bnb8Encode, SpecVector5TiesGoToTheEvenCode) {
  const std::array<float, 256> m = bnb8_map(Bnb8Map::Dynamic);
  const float mid126 = (m[126] + m[127]) * 0.5f;  // -2.75000019e-07
  EXPECT_NEAR(mid126, -2.75000019e-07f, 1e-13f);
  EXPECT_EQ(bnb8_encode(m.data(), mid126), 126);
  EXPECT_EQ(bnb8_encode(m.data(), (m[127] + m[128]) * 0.5f), 128);
}

TEST(Bnb8Encode, EveryMidpointAndItsNeighboursBothMaps) {
  for (const Bnb8Map which : {Bnb8Map::Dynamic, Bnb8Map::Linear}) {
    const std::array<float, 256> m = bnb8_map(which);
    for (int k = 0; k < 255; ++k) {
      const float mid = (m[k] + m[k + 1]) * 0.5f;
      EXPECT_EQ(bnb8_encode(m.data(), mid), k % 2 == 0 ? k : k + 1) << "midpoint " << k;
      EXPECT_EQ(bnb8_encode(m.data(), std::nextafter(mid, -INFINITY)), k) << "below midpoint " << k;
      EXPECT_EQ(bnb8_encode(m.data(), std::nextafter(mid, INFINITY)), k + 1) << "above midpoint " << k;
    }
    for (int k = 0; k < 256; ++k) EXPECT_EQ(bnb8_encode(m.data(), m[static_cast<std::size_t>(k)]), k) << "entry " << k;
    EXPECT_EQ(bnb8_encode(m.data(), -2.0f), 0);
    EXPECT_EQ(bnb8_encode(m.data(), 2.0f), 255);
    EXPECT_EQ(bnb8_encode(m.data(), std::numeric_limits<float>::quiet_NaN()), 0);
  }
}

TEST(Bnb8Encoder, EqualsTheKernelSearchOnEveryThresholdAndRandomFloats) {
  std::mt19937 rng(5);
  for (const Bnb8Map which : {Bnb8Map::Dynamic, Bnb8Map::Linear}) {
    const std::array<float, 256> m = bnb8_map(which);
    const Bnb8Encoder encoder(m);
    ASSERT_TRUE(encoder.fast());
    std::vector<float> probes = {
        0.0f,   -0.0f,  1.0f,    -1.0f,  1.0000001f, -1.0000001f, 2.0f,
        -3.0f,  1e-45f, -1e-45f, 1e-38f, INFINITY,   -INFINITY,   std::numeric_limits<float>::quiet_NaN(),
        FLT_MAX};
    for (int k = 0; k < 256; ++k) {
      const float points[] = {m[static_cast<std::size_t>(k)], k < 255 ? (m[k] + m[k + 1]) * 0.5f : 1.0f};
      for (float p : points) {
        float lo = p, hi = p;
        for (int j = 0; j < 4; ++j) {
          probes.push_back(lo);
          probes.push_back(hi);
          lo = std::nextafter(lo, -INFINITY);
          hi = std::nextafter(hi, INFINITY);
        }
      }
    }
    std::uniform_real_distribution<float> u(-1.02f, 1.02f);
    std::uniform_int_distribution<std::uint32_t> bits(0, 0xffffffffu);
    for (int i = 0; i < 1'000'000; ++i) probes.push_back(u(rng));
    for (int i = 0; i < 1'000'000; ++i) {
      // Random magnitudes down to 2^-127 and both signs: every bucket of the table.
      const std::uint32_t b = bits(rng);
      probes.push_back(bits_float((b & 0x807fffffu) | ((b >> 8) % 128u) << 23));
    }
    for (const float y : probes) {
      ASSERT_EQ(encoder(y), bnb8_encode(m.data(), y)) << fmt::format("y = {} (bits {:08x})", y, float_bits(y));
    }
    // The batch form, with the product rounded first.
    std::vector<float> x(4096);
    for (float& v : x) v = u(rng) * 37.0f;
    const float scale = 1.0f / 37.7f;
    std::vector<std::uint8_t> out(x.size());
    encoder.encode_scaled(x.data(), static_cast<std::int64_t>(x.size()), scale, out.data());
    for (std::size_t i = 0; i < x.size(); ++i) ASSERT_EQ(out[i], bnb8_encode(m.data(), x[i] * scale)) << i;
  }
}

TEST(Bnb8Encoder, UnsortedMapFallsBackToTheKernelSearch) {
  std::array<float, 256> m = bnb8_map(Bnb8Map::Linear);
  m[128] = -3.7e-9f;  // torch 1.13's linear map: not sorted at 127/128
  const Bnb8Encoder encoder(m);
  EXPECT_FALSE(encoder.fast());
  for (const float y : {-1e-9f, 0.0f, 1e-9f, -2e-9f, 0.5f, -0.99f})
    EXPECT_EQ(encoder(y), bnb8_encode(m.data(), y)) << y;
}

// ---- quantize: the spec's vectors ----------------------------------------------------------------------

TEST(Bnb8Quantize, SpecVector4) {
  const QuantizedTensor q =
      quantize_bnb8(f32_tensor({0.5f, -1.0f, 0.25f, 0.0f, 2.0f, -0.1f, 1.5f, -2.0f}), bnb8_config(64));
  EXPECT_EQ(bytes_of(q.component("codes")), (std::vector<std::uint8_t>{201, 35, 192, 127, 255, 81, 237, 0}));
  EXPECT_EQ(floats_of(q.component("absmax")), std::vector<float>{2.0f});
  const std::vector<float> expected = {0.4953125f, -1.0015625f, 0.2421875f, 0.0f,
                                       2.0f,       -0.1015625f, 1.5078125f, -1.9859375f};
  const std::vector<float> deq = floats_of(dequantize_bnb8_reference(q));
  for (std::size_t i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(deq[i], expected[i]) << i;
  EXPECT_EQ(q.shape, (Shape{8}));
  EXPECT_EQ(q.params.block_size, 64);
  EXPECT_EQ(q.params.variant, "dynamic");
}

TEST(Bnb8QuantizeBlocks, Nf4SpecVectorCNestedAbsmax) {
  // nf4.md test vector C: a = [1, 2, 3, 6], m = 3, d = [-2, -1, 0, 3] -> nested_absmax [3], codes
  // [23, 47, 127, 255], reconstructed [0.99140620, 2.00390625, 3.0, 6.0].
  const std::array<float, 256> m = bnb8_map(Bnb8Map::Dynamic);
  const std::vector<float> d = {-2.0f, -1.0f, 0.0f, 3.0f};
  std::vector<std::uint8_t> codes(4);
  std::vector<float> absmax(1);
  bnb8_quantize_blocks(d, 256, Bnb8Encoder(m), codes, absmax);
  EXPECT_EQ(codes, (std::vector<std::uint8_t>{23, 47, 127, 255}));
  EXPECT_EQ(absmax, std::vector<float>{3.0f});
  const float expected[] = {0.99140620f, 2.00390625f, 3.0f, 6.0f};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(bnb8_nested_absmax(m.data(), codes[i], 3.0f, 3.0f), expected[i], 1e-6f);
  // Through the method: four blocks of one element whose absmaxes are 1, 2, 3, 6. 8-bit nesting reuses the
  // outer block size, here 1, so each d is its own nested block: -1 -> 0, 0 -> 0 (zero block), +1 -> 255.
  const QuantizedTensor q =
      quantize_bnb8(f32_tensor({1.0f, -2.0f, 3.0f, 6.0f}), bnb8_config(1, Bnb8Map::Dynamic, true));
  EXPECT_EQ(floats_of(q.component("nested_offset")), std::vector<float>{3.0f});
  EXPECT_EQ(bytes_of(q.component("absmax")), (std::vector<std::uint8_t>{0, 0, 0, 255}));
  EXPECT_EQ(floats_of(q.component("nested_absmax")), (std::vector<float>{2.0f, 1.0f, 0.0f, 3.0f}));
  // Rebuilt absmaxes: fl32(map[0] * 2) + 3, fl32(map[0] * 1) + 3, -0 + 3, 1 * 3 + 3; -2.0 and 1.0 lose.
  const float m0 = m[0];
  const std::vector<float> deq = floats_of(dequantize_bnb8_reference(q));
  EXPECT_EQ(deq, (std::vector<float>{1.0f * (m0 * 2.0f + 3.0f), m0 * (m0 * 1.0f + 3.0f), 3.0f, 6.0f}));
}

TEST(Bnb8Quantize, AllZeroBlockGivesCodeZeroAndNegativeZero) {
  // What the CUDA kernel does (0 * (1/0) = NaN -> code 0), confirmed by the golden vectors.
  std::vector<float> v(48, 0.0f);
  for (int i = 0; i < 16; ++i) v[static_cast<std::size_t>(i)] = 0.1f * static_cast<float>(i + 1);
  const QuantizedTensor q = quantize_bnb8(f32_tensor(v), bnb8_config(16));
  const std::vector<std::uint8_t> codes = bytes_of(q.component("codes"));
  EXPECT_EQ(floats_of(q.component("absmax")), (std::vector<float>{1.6f, 0.0f, 0.0f}));
  const std::vector<float> deq = floats_of(dequantize_bnb8_reference(q));
  for (int i = 16; i < 48; ++i) {
    EXPECT_EQ(codes[static_cast<std::size_t>(i)], 0);
    EXPECT_EQ(deq[static_cast<std::size_t>(i)], 0.0f);
    EXPECT_TRUE(std::signbit(deq[static_cast<std::size_t>(i)]));
  }
}

// ---- golden vectors from the bitsandbytes package ------------------------------------------------------

// Codes may differ by one where bnb's CUDA reciprocal (fast-math) and our IEEE 1 / absmax put y on
// different sides of a threshold: we accept that only where y lies within 2 ulps of the threshold.
bool reciprocal_ambiguous(const std::array<float, 256>& map, float y, int ours, int theirs) {
  if (std::abs(ours - theirs) != 1) return false;
  const int k = std::min(ours, theirs);
  const float mid = (map[static_cast<std::size_t>(k)] + map[static_cast<std::size_t>(k + 1)]) * 0.5f;
  return std::fabs(y - mid) <= 2.0f * ulp(mid);
}

TEST(Bnb8Golden, MatchesBitsandbytesCudaVectors) {
  const auto json_path = kDataDir / "bnb8_vectors.json";
  ASSERT_TRUE(std::filesystem::exists(json_path)) << json_path;
  std::ifstream in(json_path);
  const nlohmann::json meta = nlohmann::json::parse(in);
  EXPECT_EQ(meta["backend"], "cuda");
  const auto file = io::SafetensorsFile::open(kDataDir / "bnb8_vectors.safetensors");
  int cases = 0, ambiguous_total = 0;
  std::int64_t elements = 0;
  for (const auto& c : meta["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    ++cases;
    const Bnb8Config config =
        bnb8_config(c["blocksize"].get<std::int64_t>(), c["map"] == "linear" ? Bnb8Map::Linear : Bnb8Map::Dynamic,
                    c["nested"].get<bool>());
    const Tensor input = file.tensor(name + ".input");
    const QuantizedTensor q = quantize_bnb8(input, config);
    const std::array<float, 256> map = bnb8_map(config.map);
    if (file.contains(name + ".quant_map")) {
      EXPECT_EQ(float_bits_of(file.tensor(name + ".quant_map")), float_bits_of(q.component("quant_map")));
    }

    // Block absmax (non-nested): exact.
    const std::int64_t n = input.numel(), block = config.block_size, blocks = (n + block - 1) / block;
    std::vector<float> a(static_cast<std::size_t>(blocks));
    {
      const std::vector<float> x = floats_of(input);
      for (std::int64_t e = 0; e < n; ++e)
        a[e / block] = std::max(a[e / block], std::fabs(x[static_cast<std::size_t>(e)]));
    }
    if (!config.nested) EXPECT_EQ(float_bits_of(q.component("absmax")), float_bits_of(file.tensor(name + ".absmax")));

    // Codes: identical but for reciprocal-ambiguous elements.
    const std::vector<std::uint8_t> ours = bytes_of(q.component("codes"));
    const std::vector<std::uint8_t> theirs = bytes_of(file.tensor(name + ".codes"));
    ASSERT_EQ(ours.size(), theirs.size());
    const std::vector<float> x = floats_of(input);
    int ambiguous = 0;
    for (std::size_t e = 0; e < ours.size(); ++e) {
      if (ours[e] == theirs[e]) continue;
      const float y = x[e] * (1.0f / a[e / static_cast<std::size_t>(block)]);
      ASSERT_TRUE(reciprocal_ambiguous(map, y, ours[e], theirs[e]))
          << fmt::format("element {}: w = {}, absmax = {}, y = {}: ours {}, bitsandbytes {}", e, x[e],
                         a[e / static_cast<std::size_t>(block)], y, ours[e], theirs[e]);
      ++ambiguous;
    }
    // Cases whose 1 / absmax is exact (powers of two) or whose y is the input itself match exactly.
    if (name == "spec_vector4" || name == "ties" || name == "pow2_f16_b128") EXPECT_EQ(ambiguous, 0);
    ambiguous_total += ambiguous;
    elements += n;

    if (config.nested) {
      // torch's CUDA mean sums in fp32 in its own order: the offset may differ in the last bit from ours
      // (fp64 sum, rounded once). Given bnb's offset, the nested level must match bit for bit.
      const float their_offset = floats_of(file.tensor(name + ".nested_offset"))[0];
      const float our_offset = floats_of(q.component("nested_offset"))[0];
      EXPECT_LE(std::fabs(our_offset - their_offset), ulp(their_offset)) << our_offset << " vs " << their_offset;
      std::vector<float> centred(a.size());
      for (std::size_t b = 0; b < a.size(); ++b) centred[b] = a[b] - their_offset;
      std::vector<std::uint8_t> nested_codes(a.size());
      std::vector<float> nested_absmax(static_cast<std::size_t>((blocks + block - 1) / block));
      bnb8_quantize_blocks(centred, block, Bnb8Encoder(bnb8_map(Bnb8Map::Dynamic)), nested_codes, nested_absmax);
      EXPECT_EQ(nested_codes, bytes_of(file.tensor(name + ".absmax")));
      EXPECT_EQ(float_bits_of(Tensor::from_values(std::span<const float>(nested_absmax),
                                                  {static_cast<std::int64_t>(nested_absmax.size())})),
                float_bits_of(file.tensor(name + ".nested_absmax")));
      if (our_offset == their_offset) {
        EXPECT_EQ(bytes_of(q.component("absmax")), bytes_of(file.tensor(name + ".absmax")));
        EXPECT_EQ(float_bits_of(q.component("nested_absmax")), float_bits_of(file.tensor(name + ".nested_absmax")));
      }
    }

    // Dequantization of bitsandbytes' own components reproduces its output bit for bit.
    QuantizedTensor theirs_q = q;
    theirs_q.components["codes"] = file.tensor(name + ".codes");
    theirs_q.components["absmax"] = file.tensor(name + ".absmax");
    if (config.nested) {
      theirs_q.components["nested_absmax"] = file.tensor(name + ".nested_absmax");
      theirs_q.components["nested_offset"] = file.tensor(name + ".nested_offset");
    }
    const Tensor deq = dequantize_bnb8_reference(theirs_q).to(input.dtype());
    EXPECT_EQ(bytes_of(deq), bytes_of(file.tensor(name + ".dequant")));
    EXPECT_EQ(bytes_of(dequantize_bnb8(theirs_q, input.dtype())), bytes_of(file.tensor(name + ".dequant")));
  }
  EXPECT_EQ(cases, 11);
  // None in these vectors (about 350 in 2^24 for fp16 input, measured on an H100); a few would be fine.
  EXPECT_LE(ambiguous_total, 4) << "of " << elements << " elements";
  RecordProperty("reciprocal_ambiguous_codes", ambiguous_total);
}

// ---- properties ----------------------------------------------------------------------------------------

TEST(Bnb8Quantize, AbsmaxIsTheBlockMaxAndErrorIsAtMostHalfTheWidestGap) {
  const Tensor w = random_weight(37, 129, 7);
  for (const std::int64_t block : {1, 3, 64, 100, 256, 4096}) {
    for (const Bnb8Map which : {Bnb8Map::Dynamic, Bnb8Map::Linear}) {
      SCOPED_TRACE(fmt::format("block {} map {}", block, static_cast<int>(which)));
      const QuantizedTensor q = quantize_bnb8(w, bnb8_config(block, which));
      const std::vector<float> absmax = floats_of(q.component("absmax"));
      const std::vector<float> deq = floats_of(dequantize_bnb8_reference(q));
      const std::vector<std::uint8_t> codes = bytes_of(q.component("codes"));
      std::vector<float> expected(absmax.size(), 0.0f);
      const float* x = w.data<float>();
      for (std::int64_t e = 0; e < w.numel(); ++e) expected[e / block] = std::max(expected[e / block], std::fabs(x[e]));
      ASSERT_EQ(absmax, expected);
      // Dynamic map: widest half-gap 0.00703 (top decade, and -1 to map[0]); linear: 1/254.
      const float half_gap = which == Bnb8Map::Dynamic ? 0.00704f : 0.003938f;
      for (std::int64_t e = 0; e < w.numel(); ++e) {
        const float a = absmax[static_cast<std::size_t>(e / block)];
        ASSERT_LE(std::fabs(deq[static_cast<std::size_t>(e)] - x[e]), a * half_gap) << "element " << e;
        if (x[e] == a) ASSERT_EQ(codes[static_cast<std::size_t>(e)], 255);  // +absmax decodes exactly
      }
    }
  }
}

TEST(Bnb8Quantize, CodesAreMonotoneInTheValue) {
  std::vector<float> v;
  for (int i = -2000; i <= 2000; ++i) v.push_back(static_cast<float>(i) / 2000.0f);
  const std::vector<std::uint8_t> codes = bytes_of(quantize_bnb8(f32_tensor(v), bnb8_config(4096)).component("codes"));
  for (std::size_t i = 1; i < codes.size(); ++i) ASSERT_LE(codes[i - 1], codes[i]) << i;
  EXPECT_EQ(codes.front(), 0);
  EXPECT_EQ(codes[2000], 127);
  EXPECT_EQ(codes.back(), 255);
}

TEST(Bnb8Quantize, BlocksRunAcrossRowsAndTheLastIsShort) {
  const Tensor w = random_weight(7, 10, 8);
  const QuantizedTensor q2 = quantize_bnb8(w, bnb8_config(16));
  const QuantizedTensor q1 = quantize_bnb8(w.reshape({70}), bnb8_config(16));
  EXPECT_EQ(q2.component("codes").shape(), (Shape{7, 10}));
  EXPECT_EQ(q2.component("absmax").shape(), (Shape{5}));
  EXPECT_EQ(bytes_of(q2.component("codes")), bytes_of(q1.component("codes")));
  EXPECT_EQ(floats_of(q2.component("absmax")), floats_of(q1.component("absmax")));
  // Rank 3 flattens the same way.
  EXPECT_EQ(bytes_of(quantize_bnb8(w.reshape({7, 2, 5}), bnb8_config(16)).component("codes")),
            bytes_of(q1.component("codes")));
}

TEST(Bnb8Quantize, NestedAbsmaxRebuildsTheBlockAbsmax) {
  const Tensor w = random_weight(200, 64, 9);
  const QuantizedTensor plain = quantize_bnb8(w, bnb8_config(64));
  const QuantizedTensor nested = quantize_bnb8(w, bnb8_config(64, Bnb8Map::Dynamic, true));
  EXPECT_EQ(bytes_of(plain.component("codes")), bytes_of(nested.component("codes")));
  EXPECT_EQ(nested.component("absmax").dtype(), DType::U8);
  EXPECT_EQ(nested.component("absmax").shape(), (Shape{200}));
  EXPECT_EQ(nested.component("nested_absmax").shape(), (Shape{4}));  // ceil(200 / 64)
  EXPECT_TRUE(nested.params.double_quant);
  EXPECT_EQ(nested.params.nested_block_size, 64);
  const std::vector<float> a = floats_of(plain.component("absmax"));
  double mean = 0;
  for (const float v : a) mean += v;
  mean /= static_cast<double>(a.size());
  EXPECT_EQ(floats_of(nested.component("nested_offset"))[0], static_cast<float>(mean));
  const std::vector<float> n2 = floats_of(nested.component("nested_absmax"));
  const std::array<float, 256> m = bnb8_map(Bnb8Map::Dynamic);
  const std::vector<std::uint8_t> qa = bytes_of(nested.component("absmax"));
  for (std::size_t b = 0; b < a.size(); ++b) {
    const float rebuilt = bnb8_nested_absmax(m.data(), qa[b], n2[b / 64], static_cast<float>(mean));
    EXPECT_NEAR(rebuilt, a[b], n2[b / 64] * 0.00704f + 1e-7f) << "block " << b;
  }
  const double err_plain = error_stats(w, dequantize_bnb8_reference(plain)).relative_frobenius;
  const double err_nested = error_stats(w, dequantize_bnb8_reference(nested)).relative_frobenius;
  EXPECT_LT(err_nested, 2.0 * err_plain);
}

TEST(Bnb8Quantize, InputDtypesAndStridesAgree) {
  const Tensor w16 = random_weight(19, 100, 10).to(DType::F16);
  const Tensor w32 = w16.to(DType::F32);
  const QuantizedTensor ref = quantize_bnb8(w32, bnb8_config(128));
  for (const Tensor& w : {w16, w16.to(DType::F64), w32.transpose(0, 1).contiguous().transpose(0, 1)}) {
    SCOPED_TRACE(w.describe());
    const QuantizedTensor q = quantize_bnb8(w, bnb8_config(128));
    EXPECT_EQ(bytes_of(q.component("codes")), bytes_of(ref.component("codes")));
    EXPECT_EQ(floats_of(q.component("absmax")), floats_of(ref.component("absmax")));
  }
  const Tensor wb = random_weight(3, 50, 11).to(DType::BF16);
  EXPECT_EQ(bytes_of(quantize_bnb8(wb, bnb8_config(64)).component("codes")),
            bytes_of(quantize_bnb8(wb.to(DType::F32), bnb8_config(64)).component("codes")));
  EXPECT_EQ(quantize_bnb8(w16, bnb8_config(128)).dtype, DType::F16);
}

TEST(Bnb8Quantize, ThreadCountDoesNotChangeTheResult) {
  const Tensor w = random_weight(129, 257, 12);
  const int saved = num_threads();
  set_num_threads(1);
  const QuantizedTensor one = quantize_bnb8(w, bnb8_config(64, Bnb8Map::Dynamic, true));
  set_num_threads(3);
  const QuantizedTensor three = quantize_bnb8(w, bnb8_config(64, Bnb8Map::Dynamic, true));
  set_num_threads(saved);
  for (const char* name : {"codes", "absmax", "nested_absmax", "nested_offset"}) {
    EXPECT_EQ(bytes_of(one.component(name)), bytes_of(three.component(name))) << name;
  }
}

TEST(Bnb8Quantize, RealModelWeights) {
  const auto path = std::filesystem::path(LOWBIT_SHARED_DATA_DIR) / "stories15M" / "model.safetensors";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no " << path << " (shared data absent)";
  const Tensor w = io::SafetensorsFile::open(path).tensor("model.layers.0.mlp.down_proj.weight");  // [288, 768]
  for (const std::int64_t block : {64, 4096}) {
    const QuantizedTensor q = quantize_bnb8(w, bnb8_config(block));
    const ErrorStats s = error_stats(w, dequantize_bnb8_reference(q));
    SCOPED_TRACE(fmt::format("block {}: relative error {:.4f}", block, s.relative_frobenius));
    EXPECT_LT(s.relative_frobenius, 0.02);
    EXPECT_GT(s.relative_frobenius, 0.0);
  }
}

// ---- bad input, corrupt components ---------------------------------------------------------------------

TEST(Bnb8Quantize, RejectsBadInput) {
  const Tensor w = random_weight(4, 64, 13);
  EXPECT_TRUE(
      contains(error_message([&] { quantize_bnb8(w, bnb8_config(0)); }, ErrorCode::InvalidArgument), "block_size = 0"));
  EXPECT_TRUE(contains(error_message(
                           [&] {
                             quantize_bnb8(Tensor::zeros({4, 4}, DType::I8), bnb8_config(64));
                           },
                           ErrorCode::DTypeMismatch),
                       "i8"));
  EXPECT_TRUE(contains(error_message([&] { quantize_bnb8(Tensor::zeros({0}, DType::F32), bnb8_config(64)); },
                                     ErrorCode::InvalidArgument),
                       "empty"));
  Tensor bad = w.clone();
  bad.data<float>()[3 * 64 + 1] = INFINITY;
  EXPECT_TRUE(
      contains(error_message([&] { quantize_bnb8(bad, bnb8_config(64)); }, ErrorCode::Numerical), "row 3, column 1"));
}

TEST(Bnb8Dequantize, FastPathEqualsTheReferenceInEveryDtype) {
  const Tensor w = random_weight(33, 257, 19);
  for (const std::int64_t block : {1, 100, 256, 4096}) {
    for (const bool nested : {false, true}) {
      const QuantizedTensor q = quantize_bnb8(w, bnb8_config(block, Bnb8Map::Dynamic, nested));
      const Tensor ref = dequantize_bnb8_reference(q);
      for (const DType dt : {DType::F32, DType::F16, DType::BF16}) {
        ASSERT_EQ(bytes_of(dequantize_bnb8(q, dt)), bytes_of(ref.to(dt)))
            << "block " << block << " nested " << nested << " " << dtype_name(dt);
      }
    }
  }
  const QuantizedTensor q = quantize_bnb8(w, bnb8_config(64));
  EXPECT_TRUE(contains(error_message([&] { dequantize_bnb8(q, DType::F64); }, ErrorCode::InvalidArgument), "f64"));
}

TEST(Bnb8Dequantize, RejectsCorruptComponents) {
  const QuantizedTensor good = quantize_bnb8(random_weight(4, 64, 14), bnb8_config(64, Bnb8Map::Dynamic, true));
  QuantizedTensor q = good;
  q.components.erase("quant_map");
  EXPECT_TRUE(contains(error_message([&] { dequantize_bnb8_reference(q); }, ErrorCode::InvalidArgument), "quant_map"));
  q = good;
  q.components["absmax"] = Tensor::zeros({5}, DType::U8);
  EXPECT_TRUE(contains(error_message([&] { dequantize_bnb8_reference(q); }, ErrorCode::Corrupt), "u8[4]"));
  q = good;
  q.components["nested_offset"] = Tensor::zeros({2}, DType::F32);
  EXPECT_TRUE(contains(error_message([&] { dequantize_bnb8_reference(q); }, ErrorCode::Corrupt), "nested_offset"));
  q = good;
  q.params.block_size = 0;
  EXPECT_TRUE(contains(error_message([&] { dequantize_bnb8_reference(q); }, ErrorCode::Corrupt), "block_size = 0"));
  q = good;
  q.components["codes"] = Tensor::zeros({4, 63}, DType::U8);
  EXPECT_TRUE(contains(error_message([&] { dequantize_bnb8_reference(q); }, ErrorCode::Corrupt), "codes"));
}

// ---- matmul, registry ----------------------------------------------------------------------------------

TEST(Bnb8Matmul, IsXTimesDequantizedTransposed) {
  const Tensor w = random_weight(12, 40, 15);
  const QuantizedTensor q = quantize_bnb8(w, bnb8_config(64));
  const Tensor x = random_weight(2, 40, 16, 1.0f);
  const Tensor y = matmul_bnb8_reference(q, x);
  const Tensor expected = matmul_reference(x, dequantize_bnb8_reference(q));
  EXPECT_EQ(floats_of(y), floats_of(expected));
  const QuantizedTensor flat = quantize_bnb8(f32_tensor({1.0f, 2.0f}), bnb8_config(64));
  EXPECT_TRUE(contains(error_message([&] { matmul_bnb8_reference(flat, x); }, ErrorCode::ShapeMismatch), "2-D"));
}

TEST(Bnb8Registry, ParamsRoundTripAndDefaults) {
  const MethodInfo info = bnb8_method_info();
  EXPECT_EQ(info.name, "bnb8");
  EXPECT_EQ(info.defaults.block_size, 4096);
  EXPECT_EQ(info.defaults.bits, 8);
  EXPECT_EQ(info.defaults.variant, "dynamic");
  EXPECT_FALSE(info.defaults.double_quant);
  for (const bool nested : {false, true}) {
    for (const Bnb8Map which : {Bnb8Map::Dynamic, Bnb8Map::Linear}) {
      const Bnb8Config back = bnb8_config_from_params(bnb8_params_from_config(bnb8_config(256, which, nested)));
      EXPECT_EQ(back.block_size, 256);
      EXPECT_EQ(back.map, which);
      EXPECT_EQ(back.nested, nested);
    }
  }
  QuantParams p = info.defaults;
  p.bits = 4;
  EXPECT_TRUE(contains(error_message([&] { bnb8_config_from_params(p); }, ErrorCode::InvalidArgument), "bits = 4"));
  p = info.defaults;
  p.variant = "nf4";
  EXPECT_TRUE(contains(error_message([&] { bnb8_config_from_params(p); }, ErrorCode::InvalidArgument), "'nf4'"));
  p = info.defaults;
  p.double_quant = true;
  p.nested_block_size = 256;
  EXPECT_TRUE(contains(error_message([&] { bnb8_config_from_params(p); }, ErrorCode::InvalidArgument),
                       "nested_block_size = 256"));

  const Tensor w = random_weight(8, 40, 17);
  const QuantizedTensor a = info.quantize(w, info.defaults);
  EXPECT_EQ(a.method, "bnb8");
  EXPECT_EQ(bytes_of(a.component("codes")), bytes_of(quantize_bnb8(w, Bnb8Config{}).component("codes")));
  EXPECT_EQ(floats_of(info.dequantize(a)), floats_of(dequantize_bnb8_reference(a)));
  EXPECT_EQ(info.matmul(a, random_weight(3, 40, 18)).shape(), (Shape{3, 8}));
  // 8 bits a code, one fp32 absmax per block, the 1 KB map.
  EXPECT_EQ(a.storage_bytes(), 320u + 4u + 1024u);
}

TEST(Bnb8Storage, ReadsBackBitIdenticalFromALowbitFile) {
  const QuantizedTensor q = quantize_bnb8(random_weight(6, 100, 20), bnb8_config(64, Bnb8Map::Dynamic, true));
  const auto path =
      std::filesystem::temp_directory_path() / fmt::format("lowbit_Bnb8Storage_{}.safetensors", ::getpid());
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
  EXPECT_EQ(floats_of(dequantize_bnb8_reference(back)), floats_of(dequantize_bnb8_reference(q)));
}

}  // namespace
}  // namespace lowbit::quant
