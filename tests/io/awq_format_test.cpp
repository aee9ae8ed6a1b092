// io/formats/awq.hpp: AutoAWQ GEMM and GEMV checkpoints. The spec's packed-word vectors (awq.md section 7);
// both layouts round-trip through write + read with random codes and zero points over the whole 4-bit range,
// for n and k at and at odd multiples of what each layout needs; checkpoints AutoAWQ 0.2.9's own quantizer
// and packers made (tests/data/awq_format, make_awq_vectors.py) decode to exactly the f16 weights AutoAWQ
// computed, and our writer reproduces their tensors; the writer's sharded output and config files; config
// parsing (AutoAWQ's and transformers' forms, refusals); refusals and corrupt inputs named.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "io/io_test_util.hpp"
#include "lowbit/io/formats.hpp"
#include "lowbit/io/formats/awq.hpp"
#include "lowbit/io/quantized.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/quant/affine.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::io::test {
namespace {

using quant::QuantizedTensor;

const std::filesystem::path kDir = std::filesystem::path(LOWBIT_TEST_DATA_DIR) / "awq_format";

struct DataCase {
  const char* name;
  AwqVersion version;
  std::int64_t group_size;
  std::size_t linears;
};
const DataCase kCases[] = {{"gemm_g32", AwqVersion::Gemm, 32, 3},
                           {"gemm_g128_qc", AwqVersion::Gemm, 128, 2},
                           {"gemv_g64", AwqVersion::Gemv, 64, 2},
                           {"gemv_g32_qc", AwqVersion::Gemv, 32, 2},
                           {"gemv_g128", AwqVersion::Gemv, 128, 1}};

Tensor u8_matrix(std::int64_t rows, std::int64_t cols, const std::function<int(std::int64_t, std::int64_t)>& f) {
  Tensor t = Tensor::empty({rows, cols}, DType::U8);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) t.data<std::uint8_t>()[r * cols + c] = static_cast<std::uint8_t>(f(r, c));
  return t;
}

// Codes and zero points replaced by uniform values over the whole 4-bit range.
void randomize(QuantizedTensor& q, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> value(0, 15);
  for (const char* c : {"codes", "zeros"}) {
    Tensor t = q.component(c).clone();
    for (std::int64_t i = 0; i < t.numel(); ++i) t.data<std::uint8_t>()[i] = static_cast<std::uint8_t>(value(rng));
    q.components[c] = t;
  }
}

AwqConfig config_for(std::int64_t group_size, AwqVersion version) {
  AwqConfig c;
  c.group_size = group_size;
  c.version = version;
  return c;
}

// ---- packing -------------------------------------------------------------------------------------------

TEST(AwqPack, SpecPackedWordVectors) {
  // awq.md section 7: one input row, eight consecutive outputs n = 0..7.
  struct Case {
    std::vector<int> codes;
    std::uint32_t word;
    std::int32_t as_int;
  };
  const Case cases[] = {{{0, 1, 2, 3, 4, 5, 6, 7}, 0x75316420u, 1966171168},
                        {{1, 2, 3, 4, 5, 6, 7, 8}, 0x86427531u, -2042464975},
                        {{8, 8, 8, 8, 8, 8, 8, 8}, 0x88888888u, -2004318072},
                        {{15, 0, 0, 0, 0, 0, 0, 0}, 0x0000000Fu, 15},
                        {{0, 15, 0, 0, 0, 0, 0, 0}, 0x000F0000u, 983040}};
  for (const Case& c : cases) {
    const Tensor w = awq_gemm_pack(u8_row(c.codes));
    ASSERT_EQ(w.shape(), (Shape{1, 1}));
    EXPECT_EQ(w.dtype(), DType::I32);
    EXPECT_EQ(words_of(w)[0], c.word);
    EXPECT_EQ(w.data<std::int32_t>()[0], c.as_int);
    EXPECT_TRUE(same_bytes(awq_gemm_unpack(w), u8_row(c.codes)));
  }
  // 0x86427531 nibble by nibble (LSB first) is [1, 3, 5, 7, 2, 4, 6, 8]: the raw stream, before reordering.
  const Tensor raw = gptq_unpack(Tensor::from_values<std::uint32_t>({0x86427531u}, {1, 1}), 4);
  EXPECT_TRUE(same_bytes(raw, u8_row({1, 3, 5, 7, 2, 4, 6, 8})));

  // Whole linears: GEMM qweight/qzeros hold the interleave, GEMV qweight the natural input order.
  QuantizedTensor q = quantize_minmax(random_weight(8, 32, 1), 4, 32);
  q.components["codes"] = u8_matrix(8, 32, [](std::int64_t o, std::int64_t) { return static_cast<int>(o); });
  q.components["zeros"] = u8_matrix(8, 1, [](std::int64_t o, std::int64_t) { return static_cast<int>(o) + 1; });
  const TensorMap gemm = as_map(awq_linear_tensors("p", q, AwqVersion::Gemm));
  ASSERT_EQ(gemm.at("p.qweight").shape(), (Shape{32, 1}));
  EXPECT_EQ(words_of(gemm.at("p.qweight")), std::vector<std::uint32_t>(32, 0x75316420u));
  EXPECT_EQ(words_of(gemm.at("p.qzeros")), std::vector<std::uint32_t>{0x86427531u});  // no -1 offset
  q.components["codes"] = u8_matrix(8, 32, [](std::int64_t, std::int64_t i) { return static_cast<int>(i % 8) + 1; });
  const TensorMap gemv = as_map(awq_linear_tensors("p", q, AwqVersion::Gemv));
  ASSERT_EQ(gemv.at("p.qweight").shape(), (Shape{8, 4}));
  EXPECT_EQ(words_of(gemv.at("p.qweight")), std::vector<std::uint32_t>(32, 0x87654321u));
  // GEMV zeros: group 0 in nibble 0, padding (groups 1..31 of Zw = 4 words) zero.
  const auto zw = words_of(gemv.at("p.qzeros"));
  ASSERT_EQ(zw.size(), 32u);
  for (int o = 0; o < 8; ++o) EXPECT_EQ(zw[static_cast<std::size_t>(4 * o)], static_cast<std::uint32_t>(o + 1)) << o;
}

TEST(AwqPack, UnpackInvertsPackAndOutputMSitsInNibbleRevM) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int> value(0, 15);
  for (const std::int64_t count : {8, 24, 136, 4104}) {
    SCOPED_TRACE(count);
    Tensor v = u8_matrix(5, count, [&](std::int64_t, std::int64_t) { return value(rng); });
    const Tensor w = awq_gemm_pack(v);
    ASSERT_EQ(w.shape(), (Shape{5, count / 8}));
    EXPECT_TRUE(same_bytes(awq_gemm_unpack(w), v));
    const auto words = words_of(w);
    for (std::int64_t r = 0; r < 5; ++r) {
      for (std::int64_t o = 0; o < count; o += 3) {
        const std::uint32_t word = words[static_cast<std::size_t>(r * (count / 8) + o / 8)];
        EXPECT_EQ(static_cast<int>((word >> (4 * kAwqReverseOrder[o % 8])) & 15u),
                  v.data<std::uint8_t>()[r * count + o]);
      }
    }
  }
  error_message(ErrorCode::InvalidArgument, [] { awq_gemm_pack(u8_row({1, 2, 3})); });
  error_message(ErrorCode::InvalidArgument, [] { awq_gemm_pack(u8_row({16, 0, 0, 0, 0, 0, 0, 0})); });
}

TEST(AwqPack, GemvZerosWidthFollowsAutoAwq) {
  // awq.md 4.2 examples.
  EXPECT_EQ(awq_gemv_zeros_width(4096, 128), 4);
  EXPECT_EQ(awq_gemv_zeros_width(11008, 128), 11);
  EXPECT_EQ(awq_gemv_zeros_width(11008, 64), 22);
  EXPECT_EQ(awq_gemv_zeros_width(11008, 32), 44);
  EXPECT_EQ(awq_gemv_zeros_width(96, 32), 4);    // 3 groups: 1 word, rounded up to the multiplier 4
  EXPECT_EQ(awq_gemv_zeros_width(384, -1), 1);   // one group of k = 384 >= 128
  EXPECT_EQ(awq_gemv_zeros_width(576, 192), 1);  // any group size >= 128
  EXPECT_TRUE(contains(error_message(ErrorCode::Unsupported, [] { awq_gemv_zeros_width(512, 16); }), "16"));
  error_message(ErrorCode::Unsupported, [] { awq_gemv_zeros_width(960, 96); });
  error_message(ErrorCode::Unsupported, [] { awq_gemv_zeros_width(96, -1); });  // one group of 96 inputs
  EXPECT_EQ(awq_gemv_zeros_width(64, -1), 2);
}

// ---- one linear: write + read --------------------------------------------------------------------------

TEST(AwqFormat, BothLayoutsRoundTripWithRandomCodesAndZeros) {
  struct Case {
    std::int64_t n, k, group_size;
  };
  // n at and at odd multiples of 8; k at and at odd multiples of the group size; GEMV widths with padding.
  const Case cases[] = {{8, 32, 32},     {24, 96, 32},  {40, 160, 32}, {72, 320, 64}, {8, 64, 64},    {56, 384, 128},
                        {24, 1152, 128}, {16, 128, -1}, {40, 256, -1}, {8, 1056, 32}, {104, 576, 192}};
  std::uint64_t seed = 300;
  for (const Case& c : cases) {
    for (const AwqVersion version : {AwqVersion::Gemm, AwqVersion::Gemv}) {
      ++seed;
      SCOPED_TRACE(
          fmt::format("{} n {} k {} group {} seed {}", awq_version_name(version), c.n, c.k, c.group_size, seed));
      QuantizedTensor q = quantize_minmax(random_weight(c.n, c.k, seed), 4, c.group_size);
      q.dtype = DType::BF16;
      randomize(q, seed);
      const TensorMap t = as_map(awq_linear_tensors("m.layers.0.mlp.up_proj", q, version));
      ASSERT_EQ(t.size(), 3u);
      const std::int64_t groups = c.group_size > 0 ? c.k / c.group_size : 1;
      const Tensor& qweight = t.at("m.layers.0.mlp.up_proj.qweight");
      const Tensor& qzeros = t.at("m.layers.0.mlp.up_proj.qzeros");
      const Tensor& scales = t.at("m.layers.0.mlp.up_proj.scales");
      EXPECT_EQ(qweight.dtype(), DType::I32);
      EXPECT_EQ(qzeros.dtype(), DType::I32);
      EXPECT_EQ(scales.dtype(), DType::F16);
      if (version == AwqVersion::Gemm) {
        EXPECT_EQ(qweight.shape(), (Shape{c.k, c.n / 8}));
        EXPECT_EQ(qzeros.shape(), (Shape{groups, c.n / 8}));
        EXPECT_EQ(scales.shape(), (Shape{groups, c.n}));
      } else {
        const std::int64_t zw = awq_gemv_zeros_width(c.k, c.group_size);
        EXPECT_EQ(qweight.shape(), (Shape{c.n, c.k / 8}));
        EXPECT_EQ(qzeros.shape(), (Shape{c.n, zw}));
        EXPECT_EQ(scales.shape(), (Shape{c.n, zw * 8}));
      }
      const QuantizedTensor back = decode_awq_linear("m.layers.0.mlp.up_proj", lookup_of(t),
                                                     config_for(c.group_size, version), DType::BF16, "test");
      EXPECT_TRUE(same_quantized(back, q));
      // One element of each packed tensor checked against the layout directly.
      const std::int64_t o = c.n - 3, i = c.k - 5, g = i / (c.group_size > 0 ? c.group_size : c.k);
      const int code = q.component("codes").data<std::uint8_t>()[o * c.k + i];
      const int zero = q.component("zeros").data<std::uint8_t>()[o * groups + g];
      if (version == AwqVersion::Gemm) {
        const std::uint32_t wq = words_of(qweight)[static_cast<std::size_t>(i * (c.n / 8) + o / 8)];
        const std::uint32_t wz = words_of(qzeros)[static_cast<std::size_t>(g * (c.n / 8) + o / 8)];
        EXPECT_EQ(static_cast<int>((wq >> (4 * kAwqReverseOrder[o % 8])) & 15u), code);
        EXPECT_EQ(static_cast<int>((wz >> (4 * kAwqReverseOrder[o % 8])) & 15u), zero);
      } else {
        const std::int64_t zw = qzeros.size(1);
        const std::uint32_t wq = words_of(qweight)[static_cast<std::size_t>(o * (c.k / 8) + i / 8)];
        const std::uint32_t wz = words_of(qzeros)[static_cast<std::size_t>(o * zw + g / 8)];
        EXPECT_EQ(static_cast<int>((wq >> (4 * (i % 8))) & 15u), code);
        EXPECT_EQ(static_cast<int>((wz >> (4 * (g % 8))) & 15u), zero);
        const auto* s = static_cast<const std::uint16_t*>(scales.raw_data());
        for (std::int64_t col = groups; col < zw * 8; ++col) EXPECT_EQ(s[o * zw * 8 + col], 0u) << col;  // padding
      }
    }
  }
}

TEST(AwqFormat, SymmetricTensorsAreStoredWithZeroPointEightAndReadBackAsymmetric) {
  const QuantizedTensor q = quantize_minmax(random_weight(24, 128, 4), 4, 64, /*sym=*/true);
  for (const AwqVersion version : {AwqVersion::Gemm, AwqVersion::Gemv}) {
    const TensorMap t = as_map(awq_linear_tensors("p", q, version));
    if (version == AwqVersion::Gemm) EXPECT_EQ(words_of(t.at("p.qzeros"))[0], 0x88888888u);
    const QuantizedTensor back = decode_awq_linear("p", lookup_of(t), config_for(64, version), q.dtype, "t");
    EXPECT_FALSE(back.params.symmetric);
    EXPECT_TRUE(same_bytes(back.component("codes"), q.component("codes")));
    EXPECT_TRUE(same_bytes(quant::dequantize_affine(back, DType::F32), quant::dequantize_affine(q, DType::F32)));
  }
}

// ---- checkpoints AutoAWQ made ----------------------------------------------------------------------------

TEST(AwqFormat, AutoAwqCheckpointsDecodeToItsOwnWeights) {
  for (const DataCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const Checkpoint ckpt = Checkpoint::open(kDir / c.name / "model.safetensors");
    ASSERT_TRUE(is_awq_checkpoint(ckpt));
    const auto config = find_awq_config(ckpt);
    ASSERT_TRUE(config.has_value());
    EXPECT_EQ(config->version, c.version);
    EXPECT_EQ(config->group_size, c.group_size);
    const QuantizedCheckpoint qc = open_quantized(ckpt);
    EXPECT_EQ(qc.format, c.version == AwqVersion::Gemm ? "awq" : "awq-gemv");
    ASSERT_EQ(qc.weights.size(), c.linears);
    EXPECT_EQ(qc.parts.size(), 3 * c.linears);
    const SafetensorsFile expected = SafetensorsFile::open(kDir / c.name / "expected.safetensors");
    EXPECT_EQ(expected.names(), qc.weights);
    for (const std::string& weight : qc.weights) {
      SCOPED_TRACE(weight);
      const QuantizedTensor q = qc.load(weight);
      EXPECT_EQ(q.method, "affine");
      EXPECT_EQ(q.params.bits, 4);
      EXPECT_EQ(q.params.group_size, c.group_size);
      EXPECT_FALSE(q.params.symmetric);
      EXPECT_EQ(q.params.variant, "minmax:f16");
      EXPECT_EQ(q.dtype, DType::F16);
      EXPECT_TRUE(same_bytes(quant::dequantize_affine(q, DType::F16), expected.tensor(weight)));
      // Our writer gives AutoAWQ's bytes back, GEMV padding included.
      const std::string module = weight.substr(0, weight.size() - 7);
      for (const auto& [name, value] : awq_linear_tensors(module, q, c.version))
        EXPECT_TRUE(same_bytes(value, ckpt.tensor(name))) << name;
    }
  }
  // Biases stay dense tensors; the constant row AutoAWQ clamps to scale 1e-5 / 15 decodes as it does.
  const Checkpoint ckpt = Checkpoint::open(kDir / "gemm_g32" / "model.safetensors");
  const QuantizedCheckpoint qc = open_quantized(ckpt);
  EXPECT_TRUE(ckpt.contains("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_FALSE(qc.parts.contains("model.layers.0.self_attn.q_proj.bias"));
  const QuantizedTensor q = qc.load("model.layers.0.mlp.down_proj.weight");
  const Tensor zeros = q.component("zeros");
  EXPECT_EQ(zeros.data<std::uint8_t>()[0], 0);               // all-positive row: zero clamped to 0
  EXPECT_EQ(zeros.data<std::uint8_t>()[zeros.size(1)], 15);  // all-negative row: clamped to 15
}

// ---- the writer ----------------------------------------------------------------------------------------

TEST(AwqFormat, WritersMakeShardedCheckpointsWithConfigsThatReadBack) {
  TempDir dir;
  write_text(dir / "config.json", R"({"model_type": "llama", "hidden_size": 96, "torch_dtype": "bfloat16"})");
  EXPECT_EQ(&find_format_writer("awq", "awq"), &find_format_writer("awq", "affine"));
  EXPECT_EQ(find_format_writer("awq-gemv", "awq").name, "awq-gemv");
  error_message(ErrorCode::Unsupported, [] { find_format_writer("awq", "nf4"); });
  const char* const names[] = {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
                               "model.layers.1.self_attn.q_proj.weight"};
  for (const AwqVersion version : {AwqVersion::Gemm, AwqVersion::Gemv}) {
    SCOPED_TRACE(awq_version_name(version));
    const FormatWriter& w = find_format_writer(version == AwqVersion::Gemm ? "awq" : "awq-gemv", "affine");
    std::map<std::string, QuantizedTensor> qs;
    qs[names[0]] = quantize_minmax(random_weight(96, 128, 1), 4, 32);
    qs[names[1]] = quantize_minmax(random_weight(96, 256, 2), 4, 32);
    qs[names[2]] = quantize_minmax(random_weight(96, 128, 3), 4, 32);
    for (auto& [_, q] : qs) q.dtype = DType::BF16;
    const Tensor embed = random_weight(64, 96, 4).to(DType::F16);
    const Tensor bias = random_weight(1, 96, 6).reshape({96}).to(DType::F16);
    std::vector<QuantizedEntry> entries;
    const auto folder = dir / std::string(awq_version_name(version));
    {
      CheckpointWriter out(folder, /*max_shard_bytes=*/8192);
      out.add("model.embed_tokens.weight", embed);
      for (const char* name : names) {
        w.add(out, name, qs[name]);
        entries.push_back({name, "affine", qs[name].params});
      }
      out.add("model.layers.0.self_attn.q_proj.bias", bias);
      out.add_text_file("config.json", w.config_json(dir / "config.json", entries));
      w.finish(out, entries);
      out.finish();
    }
    EXPECT_TRUE(std::filesystem::exists(folder / "model.safetensors.index.json"));
    std::ifstream in_config(folder / "config.json");
    const nlohmann::json config = nlohmann::json::parse(in_config);
    EXPECT_EQ(config["hidden_size"], 96);
    const nlohmann::json want_qc = {{"quant_method", "awq"},
                                    {"zero_point", true},
                                    {"group_size", 32},
                                    {"bits", 4},
                                    {"version", std::string(awq_version_name(version))},
                                    {"modules_to_not_convert", nullptr}};
    EXPECT_EQ(config["quantization_config"], want_qc);
    std::ifstream in_side(folder / "quant_config.json");
    const nlohmann::json side = nlohmann::json::parse(in_side);
    const nlohmann::json want_side = {{"zero_point", true},
                                      {"q_group_size", 32},
                                      {"w_bit", 4},
                                      {"version", std::string(awq_version_name(version))},
                                      {"modules_to_not_convert", nullptr}};
    EXPECT_EQ(side, want_side);

    const Checkpoint ckpt = Checkpoint::open(folder);
    EXPECT_GT(ckpt.files().size(), 2u);
    for (const auto& f : ckpt.files()) {
      if (f.metadata().contains("format")) EXPECT_EQ(f.metadata().at("format"), "pt") << f.path();
    }
    const QuantizedCheckpoint qc = open_quantized(ckpt);
    EXPECT_EQ(qc.format, version == AwqVersion::Gemm ? "awq" : "awq-gemv");
    std::vector<std::string> want(std::begin(names), std::end(names));
    std::sort(want.begin(), want.end());
    EXPECT_EQ(qc.weights, want);
    EXPECT_EQ(qc.parts.size(), 9u);
    for (const char* name : names) EXPECT_TRUE(same_quantized(qc.load(name), qs[name])) << name;
    EXPECT_TRUE(same_bytes(ckpt.tensor("model.embed_tokens.weight"), embed));
    EXPECT_TRUE(same_bytes(ckpt.tensor("model.layers.0.self_attn.q_proj.bias"), bias));
    error_message(ErrorCode::InvalidArgument, [&] { qc.load("lm_head.weight"); });

    // One config holds one group size.
    std::vector<QuantizedEntry> mixed = entries;
    mixed.push_back({"b.weight", "affine", quantize_minmax(random_weight(32, 128, 1), 4, 64).params});
    EXPECT_TRUE(contains(error_message(ErrorCode::Unsupported, [&] { w.config_json(dir / "config.json", mixed); }),
                         "'b.weight'"));
  }
}

TEST(AwqFormat, WriterRefusesWhatTheLayoutsCannotHold) {
  const Tensor w = random_weight(64, 128, 1);
  auto refuse = [](ErrorCode code, const QuantizedTensor& q, const std::string& part,
                   AwqVersion version = AwqVersion::Gemm) {
    EXPECT_TRUE(contains(error_message(code, [&] { awq_linear_tensors("p", q, version); }), part));
  };
  refuse(ErrorCode::Unsupported, quantize_minmax(w, 3, 32), "4-bit");
  refuse(ErrorCode::Unsupported, quantize_minmax(w, 8, 32), "bits = 8");
  quant::QuantParams absmax = quant::find_method("affine").defaults;
  absmax.bits = 4;
  absmax.group_size = 32;
  absmax.symmetric = true;
  absmax.variant = "absmax:f32";
  refuse(ErrorCode::Unsupported, quant::find_method("affine").quantize(w, absmax), "absmax");
  refuse(ErrorCode::Unsupported, quantize_minmax(w, 4, 0), "group_size 0");
  refuse(ErrorCode::Unsupported, quantize_minmax(random_weight(64, 96, 1), 4, 64), "not a multiple of group_size");
  refuse(ErrorCode::Unsupported, quantize_minmax(random_weight(36, 128, 1), 4, 32), "multiple of 8");
  refuse(ErrorCode::Unsupported, quantize_minmax(random_weight(36, 128, 1), 4, 32), "multiple of 8", AwqVersion::Gemv);
  refuse(ErrorCode::Unsupported, quantize_minmax(random_weight(64, 128, 1), 4, 16), "GEMV", AwqVersion::Gemv);
  refuse(ErrorCode::Unsupported, quantize_minmax(random_weight(64, 132, 1), 4, -1), "k = 132", AwqVersion::Gemv);
  EXPECT_NO_THROW(awq_linear_tensors("p", quantize_minmax(random_weight(64, 128, 1), 4, 16), AwqVersion::Gemm));
  QuantizedTensor act = quantize_minmax(w, 4, 32);
  act.components["g_idx"] = Tensor::zeros({128}, DType::I32);
  refuse(ErrorCode::Unsupported, act, "g_idx");
  // f32 scales: stored when fp16 holds them exactly, refused otherwise.
  QuantizedTensor f32 = quantize_minmax(w, 4, 32);
  f32.params.variant = "minmax:f32";
  f32.components["scales"] = f32.component("scales").to(DType::F32);
  EXPECT_NO_THROW(awq_linear_tensors("p", f32, AwqVersion::Gemm));
  f32.components["scales"].data<float>()[3] = 0.1f;
  refuse(ErrorCode::Unsupported, f32, "not an fp16 number");
  QuantizedTensor other = quantize_minmax(w, 4, 32);
  other.method = "nf4";
  refuse(ErrorCode::InvalidArgument, other, "nf4");
  QuantizedTensor bad = quantize_minmax(w, 4, 32);
  bad.components["zeros"] = Tensor::zeros({64, 3}, DType::U8);
  refuse(ErrorCode::Corrupt, bad, "zeros");
  TempDir dir;
  CheckpointWriter out(dir / "x");
  EXPECT_TRUE(
      contains(error_message(ErrorCode::InvalidArgument,
                             [&] { awq_format_writer(AwqVersion::Gemm).add(out, "model.bias", quantize_minmax(w, 4, 32)); }),
               "'model.bias'"));
}

// ---- corrupt and foreign inputs -------------------------------------------------------------------------

TEST(AwqFormat, CorruptTensorsAreNamed) {
  const QuantizedTensor q = quantize_minmax(random_weight(64, 128, 2), 4, 32);
  for (const AwqVersion version : {AwqVersion::Gemm, AwqVersion::Gemv}) {
    SCOPED_TRACE(awq_version_name(version));
    const TensorMap good = as_map(awq_linear_tensors("L", q, version));
    const AwqConfig config = config_for(32, version);
    auto fails = [&](ErrorCode code, const TensorMap& t, const std::string& part, const AwqConfig& c) {
      EXPECT_TRUE(
          contains(error_message(code, [&] { decode_awq_linear("L", lookup_of(t), c, DType::F16, "file"); }), part));
    };
    TensorMap t = good;
    t.erase("L.scales");
    fails(ErrorCode::Corrupt, t, "'L.scales' is missing", config);
    t = good;
    t.erase("L.qzeros");
    fails(ErrorCode::Corrupt, t, "'L.qzeros' is missing", config);
    t = good;
    t.erase("L.qweight");
    fails(ErrorCode::InvalidArgument, t, "'L.qweight'", config);
    t = good;
    t["L.scales"] = good.at("L.scales").slice(0, 0, 3).contiguous();
    fails(ErrorCode::Corrupt, t, "'L.scales'", config);
    t = good;
    t["L.qzeros"] = good.at("L.qzeros").slice(1, 0, 1).contiguous();
    fails(ErrorCode::Corrupt, t, "'L.qzeros'", config);
    t = good;
    t["L.qweight"] = Tensor::zeros(good.at("L.qweight").shape(), DType::I16);
    fails(ErrorCode::Unsupported, t, "int32", config);
    t = good;
    t["L.scales"] = good.at("L.scales").to(DType::F32);
    fails(ErrorCode::Unsupported, t, "f16 scales", config);
    t = good;
    t["L.qweight"] = Tensor::zeros({64}, DType::I32);
    fails(ErrorCode::Corrupt, t, "'L.qweight'", config);
    // The config's group size must match the tensors.
    fails(ErrorCode::Corrupt, good, "'L.q", config_for(64, version));
    fails(ErrorCode::Corrupt, good, "not a multiple of group_size = 96", config_for(96, version));
    AwqConfig bits = config;
    bits.bits = 3;
    fails(ErrorCode::Unsupported, good, "bits = 3", bits);
  }
}

TEST(AwqFormat, ConfigParsingFollowsTheTools) {
  // AutoAWQ's to_transformers_dict, as in the committed checkpoints.
  std::ifstream in(kDir / "gemm_g32" / "config.json");
  const nlohmann::json doc = nlohmann::json::parse(in);
  const AwqConfig a = parse_awq_config(doc["quantization_config"].dump(), "aa");
  EXPECT_EQ(a.bits, 4);
  EXPECT_EQ(a.group_size, 32);
  EXPECT_TRUE(a.zero_point);
  EXPECT_EQ(a.version, AwqVersion::Gemm);
  EXPECT_TRUE(a.modules_to_not_convert.empty());
  // Older quant_config.json, upper-case version.
  const AwqConfig old =
      parse_awq_config(R"({"zero_point": true, "q_group_size": 64, "w_bit": 4, "version": "GEMV"})", "o");
  EXPECT_EQ(old.group_size, 64);
  EXPECT_EQ(old.version, AwqVersion::Gemv);
  // transformers' AwqConfig.to_dict() with its extra keys; modules_to_not_convert kept; version defaults to gemm.
  const AwqConfig hf = parse_awq_config(
      R"({"quant_method": "AWQ", "bits": 4, "group_size": 128, "zero_point": true, "backend": "autoawq",
          "do_fuse": false, "fuse_max_seq_len": null, "modules_to_fuse": null, "exllama_config": null,
          "modules_to_not_convert": ["mlp.gate"]})",
      "hf");
  EXPECT_EQ(hf.group_size, 128);
  EXPECT_EQ(hf.version, AwqVersion::Gemm);
  EXPECT_EQ(hf.modules_to_not_convert, std::vector<std::string>{"mlp.gate"});
  // What is not AutoAWQ's GEMM or GEMV is refused by name.
  auto refused = [](std::string_view json, const std::string& part, ErrorCode code = ErrorCode::Unsupported) {
    EXPECT_TRUE(contains(error_message(code, [&] { parse_awq_config(json, "f"); }), part));
  };
  refused(R"({"quant_method": "gptq", "bits": 4, "group_size": 128})", "'gptq'");
  refused(R"({"quant_method": "awq", "bits": 4, "version": "gemv_fast"})", "'gemv_fast'");
  refused(R"({"quant_method": "awq", "bits": 4, "version": "marlin"})", "'marlin'");
  refused(R"({"quant_method": "awq", "bits": 4, "version": "exllama"})", "'exllama'");
  refused(R"({"quant_method": "awq", "bits": 4, "backend": "llm-awq"})", "llm-awq");
  refused(R"({"quant_method": "awq", "bits": 3})", "bits = 3");
  refused(R"({"w_bit": 8, "version": "gemm"})", "w_bit = 8");
  refused(R"({"quant_method": "awq", "zero_point": false})", "zero_point = false");
  refused(R"({"quant_method": "awq", "group_size": 0})", "group_size = 0", ErrorCode::Corrupt);
  refused(R"({"quant_method": "awq", "zero_point": "yes"})", "zero_point", ErrorCode::Corrupt);
  refused(R"({"quant_method": "awq", "version": 2})", "version", ErrorCode::Corrupt);
  refused(R"([1, 2])", "not a JSON object", ErrorCode::Corrupt);
  // Our dictionaries parse back.
  AwqConfig ours;
  ours.group_size = -1;
  ours.version = AwqVersion::Gemv;
  ours.modules_to_not_convert = {"lm_head"};
  for (const std::string& text : {awq_quantization_config(ours), awq_quant_config(ours)}) {
    const AwqConfig back = parse_awq_config(text, "ours");
    EXPECT_EQ(back.group_size, -1);
    EXPECT_EQ(back.version, AwqVersion::Gemv);
    EXPECT_EQ(back.modules_to_not_convert, ours.modules_to_not_convert);
  }
}

TEST(AwqFormat, FindsItsConfigOnlyWhereItSaysAwq) {
  TempDir dir;
  const QuantizedTensor q = quantize_minmax(random_weight(32, 64, 1), 4, 32);
  save_safetensors(dir / "model.safetensors", awq_linear_tensors("model.layers.0.mlp.up_proj", q, AwqVersion::Gemm));
  {
    const Checkpoint ckpt = Checkpoint::open(dir.path());
    EXPECT_FALSE(find_awq_config(ckpt).has_value());  // no config at all: not AWQ (gptq then asks for one)
    EXPECT_FALSE(is_awq_checkpoint(ckpt));
  }
  // A GPTQ config beside the weights is not an AWQ config.
  write_text(dir / "quantize_config.json", R"({"bits": 4, "group_size": 32, "sym": true, "desc_act": false})");
  EXPECT_FALSE(find_awq_config(Checkpoint::open(dir.path())).has_value());
  std::filesystem::remove(dir / "quantize_config.json");
  // transformers' form in config.json: the dtype comes from torch_dtype.
  write_text(dir / "config.json", R"({"torch_dtype": "float32", "quantization_config": {"quant_method": "awq",
             "bits": 4, "group_size": 32, "version": "gemm", "zero_point": true}})");
  {
    const Checkpoint ckpt = Checkpoint::open(dir / "model.safetensors");
    const QuantizedCheckpoint qc = open_quantized(ckpt);
    EXPECT_EQ(qc.format, "awq");
    QuantizedTensor want = q;
    want.dtype = DType::F32;
    EXPECT_TRUE(same_quantized(qc.load("model.layers.0.mlp.up_proj.weight"), want));
  }
  // An older quant_config.json alone.
  std::filesystem::remove(dir / "config.json");
  write_text(dir / "quant_config.json", R"({"zero_point": true, "q_group_size": 32, "w_bit": 4, "version": "GEMM"})");
  {
    const Checkpoint ckpt = Checkpoint::open(dir.path());
    EXPECT_EQ(open_quantized(ckpt).format, "awq");
    EXPECT_EQ(read_awq_linear(ckpt, "model.layers.0.mlp.up_proj", *find_awq_config(ckpt)).dtype, DType::F16);
  }
  // An AWQ config whose own values are refused is an error, not "not AWQ".
  write_text(dir / "quant_config.json", R"({"zero_point": true, "q_group_size": 32, "w_bit": 4, "version": "marlin"})");
  EXPECT_TRUE(contains(error_message(ErrorCode::Unsupported, [&] { open_quantized(Checkpoint::open(dir.path())); }),
                       "'marlin'"));
  // GPTQ-shaped tensors (with g_idx) under an AWQ label are refused by name.
  TempDir gptq_dir;
  save_safetensors(gptq_dir / "model.safetensors", gptq_linear_tensors("m.up_proj", q, GptqZeroFormat::V2));
  write_text(gptq_dir / "config.json",
             R"({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 32}})");
  EXPECT_TRUE(contains(
      error_message(ErrorCode::Unsupported, [&] { open_quantized(Checkpoint::open(gptq_dir.path())); }), "'awq'"));
}

}  // namespace
}  // namespace lowbit::io::test
