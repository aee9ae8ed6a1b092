// io/formats/gptq.hpp: AutoGPTQ/GPTQModel "gptq" checkpoints. The spec's packed-word vectors (gptq.md
// section 8); every width round-trips through write + read with random codes, zeros, odd n and act-order
// g_idx, v1 and v2; checkpoints GPTQModel 7.7.0 quantized and saved itself (tests/data/gptq_format,
// make_gptq_vectors.py) decode to exactly the f16 weights GPTQModel's own TorchLinear unpacks, and our
// writer reproduces their tensors; the writer's sharded output and config files; refusals and corrupt
// inputs named.
#include "lowbit/io/formats/gptq.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "io/io_test_util.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/io/formats.hpp"
#include "lowbit/io/quantized.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/quant/affine.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::io::test {
namespace {

using quant::QuantizedTensor;

const std::filesystem::path kDir = std::filesystem::path(LOWBIT_TEST_DATA_DIR) / "gptq_format";
const char* const kCases[] = {"b4_g32_sym_act", "b3_g32_asym", "b2_g64_asym_v2", "b8_gm1_sym", "b4_g64_asym"};

using test::same_bytes;

// "max |a - b| at [i]" for two tensors of one shape, compared as bits of their dtype.
::testing::AssertionResult bit_identical(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype())
    return ::testing::AssertionFailure() << a.describe() << " vs " << b.describe();
  const Tensor x = a.contiguous(), y = b.contiguous();
  const auto* p = static_cast<const std::uint8_t*>(x.raw_data());
  const auto* q = static_cast<const std::uint8_t*>(y.raw_data());
  const std::size_t size = dtype_size(x.dtype());
  std::int64_t differ = 0, first = -1;
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    if (std::memcmp(p + i * size, q + i * size, size) != 0) {
      if (first < 0) first = i;
      ++differ;
    }
  }
  if (differ == 0) return ::testing::AssertionSuccess();
  const Tensor fx = x.to(DType::F32), fy = y.to(DType::F32);
  return ::testing::AssertionFailure() << differ << " of " << x.numel() << " elements differ; first at " << first
                                       << ": " << fx.data<float>()[first] << " vs " << fy.data<float>()[first];
}

// Replaces codes (and, asymmetric, zeros) by uniform random values so every code and zero of the width
// occurs; zeros start at `min_zero` (1 where v1 must hold them).
void randomize(QuantizedTensor& q, std::uint64_t seed, int min_zero) {
  std::mt19937_64 rng(seed);
  const int maxq = (1 << q.params.bits) - 1;
  std::uniform_int_distribution<int> code(0, maxq), zero(min_zero, maxq);
  Tensor codes = q.component("codes").clone();
  for (std::int64_t i = 0; i < codes.numel(); ++i) codes.data<std::uint8_t>()[i] = static_cast<std::uint8_t>(code(rng));
  q.components["codes"] = codes;
  if (!q.params.symmetric) {
    Tensor zeros = q.component("zeros").clone();
    for (std::int64_t i = 0; i < zeros.numel(); ++i)
      zeros.data<std::uint8_t>()[i] = static_cast<std::uint8_t>(zero(rng));
    q.components["zeros"] = zeros;
  }
}

// Act-order's g_idx: column c belongs to group rank(c) / group_size, rank = position in a random permutation.
Tensor permuted_g_idx(std::int64_t k, std::int64_t group_size, std::uint64_t seed) {
  std::vector<std::int64_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(perm.begin(), perm.end(), rng);
  Tensor g = Tensor::empty({k}, DType::I32);
  for (std::int64_t rank = 0; rank < k; ++rank)
    g.data<std::int32_t>()[perm[static_cast<std::size_t>(rank)]] = static_cast<std::int32_t>(rank / group_size);
  return g;
}

GptqConfig config_for(const QuantizedTensor& q, GptqZeroFormat format) {
  GptqConfig c;
  c.bits = q.params.bits;
  c.group_size = q.params.group_size;
  c.sym = q.params.symmetric;
  c.zero_format = format;
  return c;
}

void expect_same_tensor(const QuantizedTensor& back, const QuantizedTensor& q) {
  EXPECT_EQ(back.method, q.method);
  EXPECT_EQ(back.shape, q.shape);
  EXPECT_EQ(back.dtype, q.dtype);
  EXPECT_EQ(back.params, q.params);
  for (const char* c : {"codes", "scales", "zeros"}) EXPECT_TRUE(same_bytes(back.component(c), q.component(c))) << c;
  EXPECT_EQ(back.has("g_idx"), q.has("g_idx"));
  if (q.has("g_idx") && back.has("g_idx")) EXPECT_TRUE(same_bytes(back.component("g_idx"), q.component("g_idx")));
}

// ---- packing -------------------------------------------------------------------------------------------

TEST(GptqPack, SpecPackedWordVectors) {
  // gptq.md section 8: codes of consecutive input channels of one output column.
  EXPECT_EQ(words_of(gptq_pack(u8_row({1, 2, 3, 4, 5, 6, 7, 8}), 4)), std::vector<std::uint32_t>{0x87654321u});
  EXPECT_EQ(static_cast<std::int32_t>(words_of(gptq_pack(u8_row({1, 2, 3, 4, 5, 6, 7, 8}), 4))[0]), -2023406815);
  EXPECT_EQ(words_of(gptq_pack(u8_row({15, 0, 10, 5, 3, 12, 7, 8}), 4)), std::vector<std::uint32_t>{0x87C35A0Fu});
  EXPECT_EQ(words_of(gptq_pack(u8_row({0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}), 2)),
            std::vector<std::uint32_t>{0xE4E4E4E4u});
  EXPECT_EQ(words_of(gptq_pack(u8_row({0x01, 0x80, 0xFF, 0x7F}), 8)), std::vector<std::uint32_t>{0x7FFF8001u});
  std::vector<int> mod8(32), sevens(32, 7), two(32, 0);
  for (int k = 0; k < 32; ++k) mod8[static_cast<std::size_t>(k)] = k % 8;
  two[10] = 5;
  two[21] = 6;
  EXPECT_EQ(words_of(gptq_pack(u8_row(mod8), 3)), (std::vector<std::uint32_t>{0x88FAC688u, 0xC688FAC6u, 0xFAC688FAu}));
  EXPECT_EQ(words_of(gptq_pack(u8_row(sevens), 3)),
            (std::vector<std::uint32_t>{0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}));
  EXPECT_EQ(words_of(gptq_pack(u8_row(two), 3)), (std::vector<std::uint32_t>{0x40000000u, 0x00000001u, 0x00000003u}));
  // And back.
  const Tensor w = gptq_pack(u8_row(mod8), 3);
  const Tensor v = gptq_unpack(w, 3);
  ASSERT_EQ(v.shape(), (Shape{1, 32}));
  for (int k = 0; k < 32; ++k) EXPECT_EQ(v.data<std::uint8_t>()[k], k % 8) << k;
}

TEST(GptqPack, SpecQzerosVectors) {
  // One row of qzeros packs the zero points of consecutive output channels; v1 stores z - 1.
  struct Case {
    int bits;
    int outputs;
    std::vector<std::uint32_t> v2, v1;
  };
  const Case cases[] = {
      {4, 8, {0x88888888u}, {0x77777777u}},
      {2, 16, {0xAAAAAAAAu}, {0x55555555u}},
      {8, 4, {0x80808080u}, {0x7F7F7F7Fu}},
      {3, 32, {0x24924924u, 0x49249249u, 0x92492492u}, {0xDB6DB6DBu, 0xB6DB6DB6u, 0x6DB6DB6Du}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("{} bit", c.bits));
    const int z = 1 << (c.bits - 1);
    EXPECT_EQ(words_of(gptq_pack(u8_row(std::vector<int>(static_cast<std::size_t>(c.outputs), z)), c.bits)), c.v2);
    EXPECT_EQ(words_of(gptq_pack(u8_row(std::vector<int>(static_cast<std::size_t>(c.outputs), z - 1)), c.bits)), c.v1);
  }
  // 4-bit asymmetric z = [0, 5, 8, ...]: v2 word, and v1 per field (0 has no field: -1 masked to 15).
  EXPECT_EQ(words_of(gptq_pack(u8_row({0, 5, 8, 8, 8, 8, 8, 8}), 4)), std::vector<std::uint32_t>{0x88888850u});
  EXPECT_EQ(words_of(gptq_pack(u8_row({15, 4, 7, 7, 7, 7, 7, 7}), 4)), std::vector<std::uint32_t>{0x7777774Fu});
}

TEST(GptqPack, UnpackInvertsPackForEveryWidth) {
  std::mt19937_64 rng(11);
  for (const int bits : kGptqBits) {
    for (const std::int64_t count : {32, 96, 160, 4128}) {
      SCOPED_TRACE(fmt::format("bits {} count {}", bits, count));
      std::uniform_int_distribution<int> value(0, (1 << bits) - 1);
      Tensor v = Tensor::empty({5, count}, DType::U8);
      for (std::int64_t i = 0; i < v.numel(); ++i) v.data<std::uint8_t>()[i] = static_cast<std::uint8_t>(value(rng));
      const Tensor w = gptq_pack(v, bits);
      EXPECT_EQ(w.shape(), (Shape{5, count * bits / 32}));
      EXPECT_TRUE(same_bytes(gptq_unpack(w, bits), v));
      // Each field at bits [bits*j, bits*j + bits) of the row's stream, checked one bit at a time.
      const auto words = words_of(w);
      const std::int64_t nw = count * bits / 32;
      for (std::int64_t j = 0; j < count; j += 7) {
        int field = 0;
        for (int b = 0; b < bits; ++b) {
          const std::int64_t bit = j * bits + b;
          field |= static_cast<int>((words[static_cast<std::size_t>(2 * nw + bit / 32)] >> (bit % 32)) & 1u) << b;
        }
        EXPECT_EQ(field, v.data<std::uint8_t>()[2 * count + j]) << j;
      }
    }
  }
  error_message(ErrorCode::InvalidArgument, [] { gptq_pack(u8_row({16, 0, 0, 0, 0, 0, 0, 0}), 4); });
  error_message(ErrorCode::InvalidArgument, [] { gptq_pack(u8_row({1, 2, 3}), 4); });
  error_message(ErrorCode::InvalidArgument, [] { gptq_pack(u8_row({1, 2, 3, 4}), 5); });
}

// ---- one linear: write + read --------------------------------------------------------------------------

TEST(GptqFormat, EveryWidthRoundTripsWithRandomCodesV1AndV2) {
  struct Shape2 {
    std::int64_t n, k;
  };
  const Shape2 shapes[] = {{96, 128}, {160, 256}};
  std::uint64_t seed = 100;
  for (const int bits : kGptqBits) {
    for (const bool sym : {true, false}) {
      for (const std::int64_t group_size : {32, 64, 128, -1}) {
        for (const Shape2 s : shapes) {
          for (const GptqZeroFormat format : {GptqZeroFormat::V1, GptqZeroFormat::V2}) {
            ++seed;
            SCOPED_TRACE(fmt::format("bits {} {} group {} n {} k {} {} seed {}", bits, sym ? "sym" : "asym", group_size,
                                     s.n, s.k, gptq_checkpoint_format(format), seed));
            QuantizedTensor q = quantize_minmax(random_weight(s.n, s.k, seed), bits, group_size, sym);
            q.dtype = DType::BF16;
            randomize(q, seed, format == GptqZeroFormat::V1 ? 1 : 0);
            const TensorMap tensors = as_map(gptq_linear_tensors("m.layers.0.q_proj", q, format));
            const std::int64_t groups = group_size > 0 ? s.k / group_size : 1;
            ASSERT_EQ(tensors.at("m.layers.0.q_proj.qweight").shape(), (Shape{s.k * bits / 32, s.n}));
            ASSERT_EQ(tensors.at("m.layers.0.q_proj.qzeros").shape(), (Shape{groups, s.n * bits / 32}));
            ASSERT_EQ(tensors.at("m.layers.0.q_proj.scales").shape(), (Shape{groups, s.n}));
            ASSERT_EQ(tensors.at("m.layers.0.q_proj.scales").dtype(), DType::F16);
            const Tensor& g_idx = tensors.at("m.layers.0.q_proj.g_idx");
            ASSERT_EQ(g_idx.shape(), (Shape{s.k}));
            for (std::int64_t c = 0; c < s.k; c += 17)
              EXPECT_EQ(g_idx.data<std::int32_t>()[c], group_size > 0 ? c / group_size : 0);
            const QuantizedTensor back =
                decode_gptq_linear("m.layers.0.q_proj", lookup_of(tensors), config_for(q, format), DType::BF16, "test");
            expect_same_tensor(back, q);
          }
        }
      }
    }
  }
}

TEST(GptqFormat, ActOrderGidxIsKeptAndTrivialOneDropped) {
  for (const int bits : kGptqBits) {
    SCOPED_TRACE(fmt::format("bits {}", bits));
    QuantizedTensor q = quantize_minmax(random_weight(64, 256, 7 + bits), bits, 64, false);
    q.components["g_idx"] = permuted_g_idx(256, 64, 3 + bits);
    const TensorMap tensors = as_map(gptq_linear_tensors("p", q, GptqZeroFormat::V2));
    EXPECT_TRUE(same_bytes(tensors.at("p.g_idx"), q.component("g_idx")));
    const QuantizedTensor back =
        decode_gptq_linear("p", lookup_of(tensors), config_for(q, GptqZeroFormat::V2), DType::F32, "test");
    expect_same_tensor(back, q);
    EXPECT_TRUE(bit_identical(quant::dequantize_affine(back, DType::F16), quant::dequantize_affine(q, DType::F16)));

    // A g_idx that is c / group_size (static groups with act-order) reads back as plain affine.
    QuantizedTensor trivial = quantize_minmax(random_weight(32, 128, 9 + bits), bits, 32, true);
    const QuantizedTensor plain = trivial;
    Tensor g = Tensor::empty({128}, DType::I32);
    for (int c = 0; c < 128; ++c) g.data<std::int32_t>()[c] = c / 32;
    trivial.components["g_idx"] = g;
    const TensorMap t2 = as_map(gptq_linear_tensors("p", trivial, GptqZeroFormat::V1));
    const QuantizedTensor back2 =
        decode_gptq_linear("p", lookup_of(t2), config_for(plain, GptqZeroFormat::V1), DType::F32, "test");
    EXPECT_FALSE(back2.has("g_idx"));
    expect_same_tensor(back2, plain);
  }
}

TEST(GptqFormat, SymmetricFileLabelledV1WithV2ZerosIsReadAsV2) {
  QuantizedTensor q = quantize_minmax(random_weight(32, 64, 5), 4, 32, true);
  const TensorMap v2 = as_map(gptq_linear_tensors("p", q, GptqZeroFormat::V2));
  EXPECT_EQ(words_of(v2.at("p.qzeros"))[0], 0x88888888u);
  const QuantizedTensor back =
      decode_gptq_linear("p", lookup_of(v2), config_for(q, GptqZeroFormat::V1), DType::F32, "t");
  expect_same_tensor(back, q);
}

// ---- checkpoints GPTQModel wrote -------------------------------------------------------------------------

TEST(GptqFormat, GptqModelCheckpointsDecodeToItsOwnWeights) {
  for (const char* name : kCases) {
    SCOPED_TRACE(name);
    const Checkpoint ckpt = Checkpoint::open(kDir / name / "model.safetensors");
    ASSERT_TRUE(is_gptq_checkpoint(ckpt));
    const QuantizedCheckpoint qc = open_quantized(ckpt);
    const auto config = find_gptq_config(ckpt);
    ASSERT_TRUE(config.has_value());
    EXPECT_TRUE(config->v1_from_gptqmodel);
    EXPECT_EQ(qc.format, std::string(name).ends_with("_v2") ? "gptq_v2" : "gptq");
    ASSERT_EQ(qc.weights.size(), 7u);
    EXPECT_EQ(qc.parts.size(), 28u);
    EXPECT_FALSE(qc.parts.contains("model.embed_tokens.weight"));
    const SafetensorsFile expected = SafetensorsFile::open(kDir / name / "expected.safetensors");
    EXPECT_EQ(expected.names(), qc.weights);
    for (const std::string& weight : qc.weights) {
      SCOPED_TRACE(weight);
      const QuantizedTensor q = qc.load(weight);
      EXPECT_EQ(q.params.bits, config->bits);
      EXPECT_EQ(q.params.symmetric, config->sym);
      EXPECT_EQ(q.dtype, DType::BF16);  // GPTQModel wrote "dtype": "bfloat16" into config.json
      EXPECT_TRUE(bit_identical(quant::dequantize_affine(q, DType::F16), expected.tensor(weight)));
    }
  }
  // Act-order: GPTQModel's permuted g_idx is kept (a one-group g_idx is trivial and dropped).
  const Checkpoint act_ckpt = Checkpoint::open(kDir / "b4_g32_sym_act" / "model.safetensors");
  const QuantizedCheckpoint act = open_quantized(act_ckpt);
  EXPECT_TRUE(act.load("model.layers.0.self_attn.q_proj.weight").has("g_idx"));
  const Checkpoint v2_ckpt = Checkpoint::open(kDir / "b2_g64_asym_v2" / "model.safetensors");
  const QuantizedCheckpoint v2 = open_quantized(v2_ckpt);
  EXPECT_FALSE(v2.load("model.layers.0.self_attn.q_proj.weight").has("g_idx"));  // k = 64 = one group
  EXPECT_TRUE(v2.load("model.layers.0.mlp.down_proj.weight").has("g_idx"));
}

TEST(GptqFormat, OurWriterReproducesGptqModelsTensors) {
  // Symmetric v1 and asymmetric v2 files hold one encoding of each tensor: reading and writing back must
  // give GPTQModel's bytes. (Asymmetric v1 is written v2 by our writer, so it differs by design.)
  for (const char* name : {"b4_g32_sym_act", "b8_gm1_sym", "b2_g64_asym_v2"}) {
    SCOPED_TRACE(name);
    const Checkpoint ckpt = Checkpoint::open(kDir / name / "model.safetensors");
    const QuantizedCheckpoint qc = open_quantized(ckpt);
    for (const std::string& weight : qc.weights) {
      const std::string module = weight.substr(0, weight.size() - 7);
      const QuantizedTensor q = qc.load(weight);
      const GptqZeroFormat format = q.params.symmetric ? GptqZeroFormat::V1 : GptqZeroFormat::V2;
      for (const auto& [tensor, value] : gptq_linear_tensors(module, q, format))
        EXPECT_TRUE(same_bytes(value, ckpt.tensor(tensor))) << tensor;
    }
  }
}

TEST(GptqFormat, GptqModelAsymmetricV1ZerosBorrowAndWrap) {
  // The 4-bit file holds zero points of 0, which GPTQModel's word-level v1 conversion turns into a field of
  // 15 and a borrow from the next field; the 3-bit one holds fields of 7 (per field modulo 8).
  for (const auto& [name, bits] : {std::pair{"b4_g64_asym", 4}, std::pair{"b3_g32_asym", 3}}) {
    SCOPED_TRACE(name);
    const Checkpoint ckpt = Checkpoint::open(kDir / name / "model.safetensors");
    const Tensor fields = gptq_unpack(ckpt.tensor("model.layers.0.mlp.down_proj.qzeros"), bits);
    const auto* f = fields.data<std::uint8_t>();
    EXPECT_TRUE(std::any_of(f, f + fields.numel(), [&](std::uint8_t v) { return v == (1 << bits) - 1; }));
    const QuantizedTensor q = read_gptq_linear(ckpt, "model.layers.0.mlp.down_proj", *find_gptq_config(ckpt));
    const Tensor& z = q.component("zeros");
    EXPECT_TRUE(
        std::any_of(z.data<std::uint8_t>(), z.data<std::uint8_t>() + z.numel(), [](std::uint8_t v) { return v == 0; }));
    // Without the producer's name the file reads as AutoGPTQ's would: field + 1 = 2^bits does not fit.
    GptqConfig c = *find_gptq_config(ckpt);
    c.v1_from_gptqmodel = false;
    EXPECT_TRUE(contains(
        error_message(ErrorCode::Unsupported, [&] { read_gptq_linear(ckpt, "model.layers.0.mlp.down_proj", c); }),
        "overflow"));
  }
}

// ---- the writer ----------------------------------------------------------------------------------------

TEST(GptqFormat, WriterMakesAShardedCheckpointWithConfigsThatReadsBack) {
  TempDir dir;
  write_text(dir / "config.json", R"({"model_type": "llama", "hidden_size": 96, "torch_dtype": "float16"})");
  const FormatWriter& w = find_format_writer("gptq", "gptq");
  EXPECT_EQ(&w, &find_format_writer("gptq", "affine"));
  error_message(ErrorCode::Unsupported, [] { find_format_writer("gptq", "nf4"); });

  const char* const names[] = {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
                               "model.layers.1.self_attn.q_proj.weight"};
  std::map<std::string, QuantizedTensor> qs;
  qs[names[0]] = quantize_minmax(random_weight(96, 128, 1), 3, 32, false);
  qs[names[1]] = quantize_minmax(random_weight(96, 256, 2), 3, 32, false);
  qs[names[1]].components["g_idx"] = permuted_g_idx(256, 32, 5);
  qs[names[2]] = quantize_minmax(random_weight(96, 128, 3), 3, 32, false);
  for (auto& [_, q] : qs) q.dtype = DType::F16;
  const Tensor embed = random_weight(64, 96, 4).to(DType::F16);
  const Tensor bias = random_weight(1, 96, 6).reshape({96}).to(DType::F16);
  std::vector<QuantizedEntry> entries;
  {
    CheckpointWriter out(dir / "ckpt", /*max_shard_bytes=*/8192);
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
  EXPECT_TRUE(std::filesystem::exists(dir / "ckpt" / "model.safetensors.index.json"));
  std::ifstream in_config(dir / "ckpt" / "config.json");
  const nlohmann::json config = nlohmann::json::parse(in_config);
  std::ifstream in_qc(dir / "ckpt" / "quantize_config.json");
  const nlohmann::json qc_file = nlohmann::json::parse(in_qc);
  EXPECT_EQ(config["hidden_size"], 96);
  EXPECT_EQ(config["quantization_config"], qc_file);
  EXPECT_EQ(qc_file["quant_method"], "gptq");
  EXPECT_EQ(qc_file["checkpoint_format"], "gptq_v2");  // asymmetric
  EXPECT_EQ(qc_file["bits"], 3);
  EXPECT_EQ(qc_file["group_size"], 32);
  EXPECT_EQ(qc_file["sym"], false);
  EXPECT_EQ(qc_file["desc_act"], true);  // down_proj carries a permuted g_idx
  EXPECT_EQ(qc_file["lm_head"], false);
  EXPECT_EQ(qc_file["pack_dtype"], "int32");

  const Checkpoint ckpt = Checkpoint::open(dir / "ckpt");
  EXPECT_GT(ckpt.files().size(), 2u);
  for (const auto& f : ckpt.files()) {  // shards written before the first quantized weight may have none
    if (f.metadata().contains("format")) EXPECT_EQ(f.metadata().at("format"), "pt") << f.path();
  }
  const QuantizedCheckpoint qc = open_quantized(ckpt);
  EXPECT_EQ(qc.format, "gptq_v2");
  std::vector<std::string> want(std::begin(names), std::end(names));
  std::sort(want.begin(), want.end());
  EXPECT_EQ(qc.weights, want);
  EXPECT_EQ(qc.parts.size(), 12u);
  EXPECT_FALSE(qc.parts.contains("model.layers.0.self_attn.q_proj.bias"));
  for (const char* name : names) expect_same_tensor(qc.load(name), qs[name]);
  EXPECT_TRUE(same_bytes(ckpt.tensor("model.embed_tokens.weight"), embed));
  EXPECT_TRUE(same_bytes(ckpt.tensor("model.layers.0.self_attn.q_proj.bias"), bias));
  error_message(ErrorCode::InvalidArgument, [&] { qc.load("lm_head.weight"); });

  // Symmetric, no act-order: v1, desc_act false; settings that differ cannot share one config.
  const std::vector<QuantizedEntry> sym = {
      {"a.weight", "affine", quantize_minmax(random_weight(32, 64, 1), 4, 32, true).params}};
  const nlohmann::json s = nlohmann::json::parse(w.config_json(dir / "config.json", sym))["quantization_config"];
  EXPECT_EQ(s["checkpoint_format"], "gptq");
  EXPECT_EQ(s["desc_act"], false);
  std::vector<QuantizedEntry> mixed = sym;
  mixed.push_back({"b.weight", "affine", quantize_minmax(random_weight(32, 64, 1), 8, 32, true).params});
  EXPECT_TRUE(contains(error_message(ErrorCode::Unsupported, [&] { w.config_json(dir / "config.json", mixed); }),
                       "'b.weight'"));
}

TEST(GptqFormat, WriterRefusesWhatTheFormatCannotHold) {
  const Tensor w = random_weight(64, 128, 1);
  auto refuse = [](ErrorCode code, const QuantizedTensor& q, const std::string& part,
                   GptqZeroFormat format = GptqZeroFormat::V2) {
    EXPECT_TRUE(contains(error_message(code, [&] { gptq_linear_tensors("p", q, format); }), part));
  };
  quant::QuantParams absmax = quant::find_method("affine").defaults;
  absmax.bits = 8;
  absmax.group_size = -1;
  absmax.symmetric = true;
  absmax.variant = "absmax:f32";
  refuse(ErrorCode::Unsupported, quant::find_method("affine").quantize(w, absmax), "absmax");
  refuse(ErrorCode::Unsupported, quantize_minmax(w, 4, 0, false), "group_size 0");
  refuse(ErrorCode::Unsupported, quantize_minmax(random_weight(64, 96, 1), 4, 64, false), "not a multiple of group_size");
  refuse(ErrorCode::Unsupported, quantize_minmax(random_weight(40, 128, 1), 4, 32, false), "multiples of 32");
  refuse(ErrorCode::Unsupported, quantize_minmax(random_weight(64, 48, 1), 4, 16, false), "multiples of 32");
  // f32 scales: stored when fp16 holds them exactly, refused otherwise.
  QuantizedTensor f32 = quantize_minmax(w, 4, 32, false);
  f32.params.variant = "minmax:f32";
  f32.components["scales"] = f32.component("scales").to(DType::F32);
  EXPECT_NO_THROW(gptq_linear_tensors("p", f32, GptqZeroFormat::V2));
  f32.components["scales"].data<float>()[3] = 0.1f;
  refuse(ErrorCode::Unsupported, f32, "not an fp16 number");
  // v1 has no field for a zero point of 0.
  QuantizedTensor zero0 = quantize_minmax(w, 4, 32, false);
  zero0.components["zeros"] = zero0.component("zeros").clone();
  zero0.components["zeros"].data<std::uint8_t>()[5] = 0;
  refuse(ErrorCode::Unsupported, zero0, "gptq_v2", GptqZeroFormat::V1);
  EXPECT_NO_THROW(gptq_linear_tensors("p", zero0, GptqZeroFormat::V2));
  // Not affine, or symmetric with a zero point that is not 2^(bits-1).
  QuantizedTensor other = quantize_minmax(w, 4, 32, true);
  other.method = "nf4";
  refuse(ErrorCode::InvalidArgument, other, "nf4");
  QuantizedTensor bad_sym = quantize_minmax(w, 4, 32, true);
  bad_sym.components["zeros"] = bad_sym.component("zeros").clone();
  bad_sym.components["zeros"].data<std::uint8_t>()[0] = 7;
  refuse(ErrorCode::InvalidArgument, bad_sym, "symmetric");
  QuantizedTensor bad_gidx = quantize_minmax(w, 4, 32, true);
  bad_gidx.components["g_idx"] = Tensor::zeros({128}, DType::I32);
  bad_gidx.components["g_idx"].data<std::int32_t>()[9] = 4;
  refuse(ErrorCode::Corrupt, bad_gidx, "g_idx[9] = 4");
  // The writer needs "<module>.weight".
  TempDir dir;
  CheckpointWriter out(dir / "x");
  EXPECT_TRUE(contains(error_message(ErrorCode::InvalidArgument,
                                     [&] { gptq_format_writer().add(out, "model.bias", quantize_minmax(w, 4, 32, true)); }),
                       "'model.bias'"));
}

// ---- corrupt and foreign inputs -------------------------------------------------------------------------

TEST(GptqFormat, CorruptTensorsAreNamed) {
  const QuantizedTensor q = quantize_minmax(random_weight(64, 128, 2), 4, 32, true);
  const TensorMap good = as_map(gptq_linear_tensors("L", q, GptqZeroFormat::V1));
  const GptqConfig config = config_for(q, GptqZeroFormat::V1);
  auto fails = [&](ErrorCode code, const TensorMap& t, const std::string& part, const GptqConfig& c) {
    EXPECT_TRUE(
        contains(error_message(code, [&] { decode_gptq_linear("L", lookup_of(t), c, DType::F16, "file"); }), part));
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
  t["L.qweight"] = good.at("L.qweight").slice(0, 0, 15).contiguous();  // 15 rows for k = 128 from g_idx
  fails(ErrorCode::Corrupt, t, "'L.qweight' is i32[15, 64]", config);
  t = good;
  t["L.g_idx"] = good.at("L.g_idx").clone();
  t["L.g_idx"].data<std::int32_t>()[77] = 4;
  fails(ErrorCode::Corrupt, t, "'L.g_idx'[77] = 4", config);
  t["L.g_idx"].data<std::int32_t>()[77] = -1;
  fails(ErrorCode::Corrupt, t, "'L.g_idx'[77] = -1", config);
  t = good;
  t["L.scales"] = good.at("L.scales").slice(0, 0, 3).contiguous();
  fails(ErrorCode::Corrupt, t, "'L.scales' is f16[3, 64]", config);
  t = good;
  t["L.qzeros"] = good.at("L.qzeros").slice(1, 0, 4).contiguous();
  fails(ErrorCode::Corrupt, t, "'L.qzeros'", config);
  t = good;
  t["L.qweight"] = Tensor::zeros({16, 64}, DType::I16);
  fails(ErrorCode::Unsupported, t, "int32", config);
  // The config's group size must match the tensors' groups.
  GptqConfig wrong_group = config;
  wrong_group.group_size = 64;
  fails(ErrorCode::Corrupt, good, "'L.scales'", wrong_group);
  // A symmetric file whose zero points are not 2^(bits-1).
  t = good;
  t["L.qzeros"] = gptq_pack(Tensor::from_values<std::uint8_t>(std::vector<std::uint8_t>(4 * 64, 6), {4, 64}), 4);
  fails(ErrorCode::Corrupt, t, "symmetric", config);
  GptqConfig bad_bits = config;
  bad_bits.bits = 5;
  fails(ErrorCode::Unsupported, good, "bits = 5", bad_bits);
}

TEST(GptqFormat, ConfigParsingFollowsTheTools) {
  // GPTQModel's file as it wrote it.
  std::ifstream in(kDir / "b4_g32_sym_act" / "quantize_config.json");
  const std::string gqm((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const GptqConfig g = parse_gptq_config(gqm, "gqm");
  EXPECT_EQ(g.bits, 4);
  EXPECT_EQ(g.group_size, 32);
  EXPECT_TRUE(g.sym);
  EXPECT_TRUE(g.desc_act);
  EXPECT_TRUE(g.v1_from_gptqmodel);
  EXPECT_EQ(g.zero_format, GptqZeroFormat::V1);
  // AutoGPTQ's: no quant_method, no checkpoint_format (v1), calibration keys at the top level; synonyms.
  const GptqConfig a = parse_gptq_config(
      R"({"bits": 3, "group_size": -1, "damp_percent": 0.01, "desc_act": false, "static_groups": false,
          "true_sequential": true, "model_name_or_path": null, "model_file_base_name": "model"})",
      "agq");
  EXPECT_EQ(a.bits, 3);
  EXPECT_EQ(a.group_size, -1);
  EXPECT_TRUE(a.sym);  // missing: AutoGPTQ assumes true
  EXPECT_FALSE(a.v1_from_gptqmodel);
  EXPECT_EQ(a.zero_format, GptqZeroFormat::V1);
  const GptqConfig s =
      parse_gptq_config(R"({"w_bit": 8, "q_group_size": 64, "sym": false, "checkpoint_format": "gptq_v2"})", "s");
  EXPECT_EQ(s.bits, 8);
  EXPECT_EQ(s.group_size, 64);
  EXPECT_FALSE(s.sym);
  EXPECT_EQ(s.zero_format, GptqZeroFormat::V2);
  // What is not the gptq layout is refused by name.
  auto refused = [](std::string_view json, const std::string& part, ErrorCode code = ErrorCode::Unsupported) {
    EXPECT_TRUE(contains(error_message(code, [&] { parse_gptq_config(json, "f"); }), part));
  };
  refused(R"({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"})", "'awq'");
  refused(R"({"bits": 4, "group_size": 128, "checkpoint_format": "marlin"})", "'marlin'");
  refused(R"({"bits": 4, "group_size": 128, "format": "gptq_p"})", "'gptq_p'");
  refused(R"({"bits": 4, "group_size": 128, "is_marlin_format": true})", "is_marlin_format");
  refused(R"({"bits": 4, "group_size": 128, "pack_dtype": "int16"})", "int16");
  refused(R"({"bits": 6, "group_size": 128})", "bits = 6");
  refused(R"({"bits": 4, "group_size": 0})", "group_size = 0", ErrorCode::Corrupt);
  refused(R"({"group_size": 128})", "no 'bits'", ErrorCode::Corrupt);
  refused(R"([1, 2])", "not a JSON object", ErrorCode::Corrupt);

  // Our dictionary parses back to the same settings; dynamic rules: first match, "-:" skips.
  GptqConfig ours;
  ours.bits = 2;
  ours.group_size = 64;
  ours.sym = false;
  ours.desc_act = true;
  ours.zero_format = GptqZeroFormat::V2;
  ours.dynamic = {{R"(.*\.down_proj)", false, 8, 32, std::nullopt}, {R"(model\.layers\.1\.)", true, {}, {}, {}}};
  const GptqConfig back = parse_gptq_config(gptq_quantization_config(ours), "ours");
  EXPECT_EQ(back.bits, 2);
  EXPECT_EQ(back.group_size, 64);
  EXPECT_FALSE(back.sym);
  EXPECT_TRUE(back.desc_act);
  EXPECT_EQ(back.zero_format, GptqZeroFormat::V2);
  ASSERT_EQ(back.dynamic.size(), 2u);
  const auto down = gptq_module_config(back, "model.layers.0.mlp.down_proj");
  ASSERT_TRUE(down.has_value());
  EXPECT_EQ(down->bits, 8);
  EXPECT_EQ(down->group_size, 32);
  EXPECT_FALSE(down->sym);
  EXPECT_FALSE(gptq_module_config(back, "model.layers.1.mlp.up_proj").has_value());
  EXPECT_EQ(gptq_module_config(back, "model.layers.0.mlp.up_proj")->bits, 2);
  EXPECT_EQ(gptq_module_config(back, "x.model.layers.1.mlp.up_proj")->bits, 2);  // anchored at the start
}

TEST(GptqFormat, ForeignOrConfiglessPackedCheckpointsAreRefusedByName) {
  TempDir dir;
  const QuantizedTensor q = quantize_minmax(random_weight(32, 64, 1), 4, 32, true);
  save_safetensors(dir / "model.safetensors", gptq_linear_tensors("model.layers.0.mlp.up_proj", q, GptqZeroFormat::V1));
  EXPECT_TRUE(contains(error_message(ErrorCode::InvalidArgument, [&] { open_quantized(Checkpoint::open(dir.path())); }),
                       "quantize_config.json"));
  write_text(dir / "config.json", R"({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}})");
  EXPECT_TRUE(
      contains(error_message(ErrorCode::Unsupported, [&] { open_quantized(Checkpoint::open(dir.path())); }), "'awq'"));
  // transformers' form: only config.json's quantization_config.
  write_text(dir / "config.json",
             R"({"torch_dtype": "float32", "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 32,
                 "sym": true, "desc_act": false}})");
  const Checkpoint ckpt = Checkpoint::open(dir / "model.safetensors");
  const QuantizedCheckpoint qc = open_quantized(ckpt);
  EXPECT_EQ(qc.format, "gptq");
  QuantizedTensor want = q;
  want.dtype = DType::F32;
  expect_same_tensor(qc.load("model.layers.0.mlp.up_proj.weight"), want);
}

}  // namespace
}  // namespace lowbit::io::test
