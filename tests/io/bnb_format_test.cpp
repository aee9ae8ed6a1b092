// io/formats/bnb.hpp: bitsandbytes 4-bit layers. Files transformers + bitsandbytes wrote
// (tests/data/nf4/tiny_llama_*, make_nf4_vectors.py --model) load here and are reproduced byte for byte by
// our writer; our files load in bitsandbytes (tests/interop/test_bnb_load.py, with LOWBIT_PYTHON); every
// variant round-trips; malformed files give errors that name the key.
#include "lowbit/io/formats/bnb.hpp"

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "io/io_test_util.hpp"
#include "lowbit/quant/common.hpp"
#include "lowbit/quant/nf4.hpp"

namespace lowbit::io {
namespace {

using quant::Nf4Type;
using quant::QuantizedTensor;
using test::error_message;
using test::TempDir;

const std::filesystem::path kNf4Data = std::filesystem::path(LOWBIT_TEST_DATA_DIR) / "nf4";
const char* const kLinears[] = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                                "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj",
                                "model.layers.0.mlp.gate_proj",    "model.layers.0.mlp.up_proj",
                                "model.layers.0.mlp.down_proj"};

using test::contains;

std::vector<std::uint8_t> bytes_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  const auto* p = static_cast<const std::uint8_t*>(c.raw_data());
  return {p, p + c.nbytes()};
}

std::vector<float> floats_of(const Tensor& t) {
  const Tensor c = t.to(DType::F32);
  return {c.data<float>(), c.data<float>() + c.numel()};
}

std::string text_of(const Tensor& t) {
  const std::vector<std::uint8_t> b = bytes_of(t);
  return {b.begin(), b.end()};
}

Tensor random_weight(const Shape& shape, DType dtype, std::uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::F32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return t.to(dtype);
}

Tensor blob(std::string_view json) {
  Tensor t = Tensor::empty({static_cast<std::int64_t>(json.size())}, DType::U8);
  std::memcpy(t.raw_data(), json.data(), json.size());
  return t;
}

TEST(BnbFormat, KeysAndPythonFloatRepr) {
  EXPECT_EQ(bnb_4bit_key("model.layers.0.mlp.up_proj", "weight.absmax"), "model.layers.0.mlp.up_proj.weight.absmax");
  EXPECT_EQ(bnb_4bit_key("model.layers.0.mlp.up_proj.", "weight"), "model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(bnb_4bit_key("", "weight.quant_map"), "weight.quant_map");
  // Expected strings printed by Python's repr().
  const std::pair<double, const char*> cases[] = {
      {0.0, "0.0"}, {-0.0, "-0.0"}, {1.0, "1.0"}, {3.0, "3.0"}, {-2.5, "-2.5"}, {0.1, "0.1"}, {1e-05, "1e-05"},
      {1.5e-07, "1.5e-07"}, {0.01233999989926815, "0.01233999989926815"}, {1e+16, "1e+16"},
      {9999999999999998.0, "9999999999999998.0"}, {1000000000000000.0, "1000000000000000.0"},
      {1.2345678901234568e+17, "1.2345678901234568e+17"}, {0.0001, "0.0001"}, {0.00012345, "0.00012345"},
      {100.0, "100.0"}, {5e-324, "5e-324"}, {1.7976931348623157e+308, "1.7976931348623157e+308"},
      {16.558269500732422, "16.558269500732422"}, {9.999999682655225e-21, "9.999999682655225e-21"}, {0.5, "0.5"},
      {12345.678, "12345.678"}};
  for (const auto& [value, expected] : cases) EXPECT_EQ(python_float_repr(value), expected) << value;
  EXPECT_EQ(python_float_repr(std::nan("")), "NaN");
  EXPECT_EQ(python_float_repr(-HUGE_VAL), "-Infinity");
}

// A structurally valid QuantizedTensor of any shape (the JSON needs only the sizes to agree).
QuantizedTensor zero_state(Nf4Type type, const Shape& shape, DType dtype, bool nested, float offset) {
  QuantizedTensor q;
  q.method = type == Nf4Type::NF4 ? "nf4" : "fp4";
  q.shape = shape;
  q.dtype = dtype;
  q.params = {.bits = 4, .block_size = 64, .double_quant = nested, .nested_block_size = nested ? 256 : 0,
              .variant = q.method};
  const std::int64_t n = shape.numel(), nb = (n + 63) / 64;
  q.components["codes"] = Tensor::zeros({(n + 1) / 2}, DType::U8);
  q.components["quant_map"] = Tensor::zeros({16}, DType::F32);
  q.components["absmax"] = Tensor::zeros({nb}, nested ? DType::U8 : DType::F32);
  if (nested) {
    q.components["nested_absmax"] = Tensor::zeros({(nb + 255) / 256}, DType::F32);
    q.components["nested_quant_map"] = Tensor::zeros({256}, DType::F32);
    q.components["nested_offset"] = Tensor::from_values<float>({offset}, {1});
  }
  return q;
}

TEST(BnbFormat, QuantStateJsonIsWhatPythonWrites) {
  // nf4.md 7.2's two examples, byte for byte.
  const std::string nested =
      bnb_4bit_quant_state_json(zero_state(Nf4Type::NF4, {4096, 11008}, DType::BF16, true, 0.01234f));
  EXPECT_EQ(nested,
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 11008], )"
            R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01233999989926815})");
  EXPECT_EQ(nested.size(), 173u);
  const std::string plain = bnb_4bit_quant_state_json(zero_state(Nf4Type::FP4, {8, 8}, DType::F16, false, 0));
  EXPECT_EQ(plain, R"({"quant_type": "fp4", "blocksize": 64, "dtype": "float16", "shape": [8, 8]})");
  EXPECT_EQ(plain.size(), 75u);
  EXPECT_EQ(bnb_4bit_quant_state_json(zero_state(Nf4Type::NF4, {8}, DType::F32, false, 0)),
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [8]})");
}

// transformers 5.17 + bitsandbytes 0.50.2 on an H100 quantized tiny_llama_dense (bf16) with NF4, double
// quantization, block 64; our writer, given the same dense weights, must produce the same tensors.
TEST(BnbFormat, WritesWhatTransformersWrote) {
  const SafetensorsFile dense = SafetensorsFile::open(kNf4Data / "tiny_llama_dense.safetensors");
  const SafetensorsFile golden = SafetensorsFile::open(kNf4Data / "tiny_llama_nf4" / "model.safetensors");
  std::size_t keys = 0;
  for (const char* layer : kLinears) {
    SCOPED_TRACE(layer);
    const Tensor w = dense.tensor(std::string(layer) + ".weight");
    const QuantizedTensor q = quant::quantize_nf4(w, {Nf4Type::NF4, 64, true});
    for (const auto& [name, t] : bnb_4bit_tensors(layer, q)) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(golden.contains(name));
      const Tensor g = golden.tensor(name);
      EXPECT_EQ(t.dtype(), g.dtype());
      EXPECT_EQ(t.shape(), g.shape());
      EXPECT_EQ(bytes_of(t), bytes_of(g)) << (t.dtype() == DType::U8 && name.find("quant_state") != std::string::npos
                                                   ? text_of(t) + "\nvs\n" + text_of(g)
                                                   : "");
      ++keys;
    }
  }
  EXPECT_EQ(keys, 7u * 6u);
}

TEST(BnbFormat, LoadsTheTransformersCheckpoint) {
  const Checkpoint ckpt = Checkpoint::open(kNf4Data / "tiny_llama_nf4");
  const SafetensorsFile dense = SafetensorsFile::open(kNf4Data / "tiny_llama_dense.safetensors");
  std::vector<std::string> expected(std::begin(kLinears), std::end(kLinears));
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(bnb_4bit_layers(ckpt), expected);
  EXPECT_FALSE(is_bnb_4bit_layer(ckpt, "model.embed_tokens"));
  for (const char* layer : kLinears) {
    SCOPED_TRACE(layer);
    EXPECT_TRUE(is_bnb_4bit_layer(ckpt, layer));
    EXPECT_TRUE(is_bnb_4bit_layer(ckpt.files()[0], std::string(layer) + "."));
    const QuantizedTensor q = load_bnb_4bit(ckpt, layer);
    const Tensor w = dense.tensor(std::string(layer) + ".weight");
    EXPECT_EQ(q.method, "nf4");
    EXPECT_EQ(q.shape, w.shape());
    EXPECT_EQ(q.dtype, DType::BF16);
    EXPECT_EQ(q.params, (quant::QuantParams{.bits = 4, .block_size = 64, .double_quant = true,
                                            .nested_block_size = 256, .variant = "nf4"}));
    const QuantizedTensor ours = quant::quantize_nf4(w, {Nf4Type::NF4, 64, true});
    for (const auto& [name, t] : ours.components) EXPECT_EQ(bytes_of(q.component(name)), bytes_of(t)) << name;
    EXPECT_EQ(floats_of(quant::dequantize_nf4_reference(q)), floats_of(quant::dequantize_nf4_reference(ours)));
    const auto err = quant::error_stats(w, quant::dequantize_nf4_reference(q));
    EXPECT_LT(err.relative_frobenius, 0.12) << "NF4 of a Gaussian weight keeps ~0.1 relative error";
  }
}

TEST(BnbFormat, QuantizationConfigIsTransformers) {
  std::ifstream in(kNf4Data / "tiny_llama_nf4" / "config.json");
  const nlohmann::json golden = nlohmann::json::parse(in)["quantization_config"];
  const std::string ours = bnb_4bit_quantization_config_json(
      {.type = Nf4Type::NF4, .double_quant = true, .compute_dtype = "bfloat16"});
  EXPECT_EQ(nlohmann::json::parse(ours), golden);
  // json.dumps(indent=2, sort_keys=True) of the defaults (BitsAndBytesConfig(load_in_4bit=True).to_dict()).
  const std::string defaults = bnb_4bit_quantization_config_json({.type = Nf4Type::FP4});
  EXPECT_EQ(defaults, R"({
  "_load_in_4bit": true,
  "_load_in_8bit": false,
  "bnb_4bit_compute_dtype": "float32",
  "bnb_4bit_quant_storage": "uint8",
  "bnb_4bit_quant_type": "fp4",
  "bnb_4bit_use_double_quant": false,
  "llm_int8_enable_fp32_cpu_offload": false,
  "llm_int8_has_fp16_weight": false,
  "llm_int8_skip_modules": null,
  "llm_int8_threshold": 6.0,
  "load_in_4bit": true,
  "load_in_8bit": false,
  "quant_method": "bitsandbytes"
})");
  const nlohmann::json skip =
      nlohmann::json::parse(bnb_4bit_quantization_config_json({.skip_modules = {"lm_head", "mlp.gate"}}));
  EXPECT_EQ(skip["llm_int8_skip_modules"], nlohmann::json({"lm_head", "mlp.gate"}));
}

struct Variant {
  Nf4Type type;
  int block_size;
  bool double_quant;
  DType dtype;
  Shape shape;
  DType storage;
};

const Variant kVariants[] = {
    {Nf4Type::NF4, 64, false, DType::F16, {33, 100}, DType::U8},
    {Nf4Type::NF4, 64, true, DType::BF16, {97, 101}, DType::U8},    // odd numel, 2 nested blocks at 32
    {Nf4Type::FP4, 32, true, DType::F32, {97, 101}, DType::U8},
    {Nf4Type::FP4, 128, false, DType::BF16, {7, 37}, DType::U8},
    {Nf4Type::NF4, 4096, true, DType::F32, {3, 1000}, DType::U8},
    {Nf4Type::NF4, 256, false, DType::F16, {2, 3, 40}, DType::U8},  // rank 3
    {Nf4Type::NF4, 64, true, DType::BF16, {64, 96}, DType::BF16},   // FSDP-QLoRA storage
    {Nf4Type::FP4, 512, false, DType::F16, {16, 64}, DType::F32},
};

std::string variant_name(std::size_t i) { return fmt::format("layers.{}.proj", i); }

// Every variant in one file, plus what our reference dequantizes them to.
std::vector<std::pair<std::string, Tensor>> write_variants(std::map<std::string, QuantizedTensor>& qs,
                                                          std::vector<std::pair<std::string, Tensor>>& expected) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (std::size_t i = 0; i < std::size(kVariants); ++i) {
    const Variant& v = kVariants[i];
    const Tensor w = random_weight(v.shape, v.dtype, 100 + i);
    QuantizedTensor q = quant::quantize_nf4(w, {v.type, v.block_size, v.double_quant});
    const Tensor bias = v.shape.rank() == 2 && i % 2 == 0 ? random_weight({v.shape[0]}, v.dtype, 200 + i) : Tensor{};
    for (auto& entry : bnb_4bit_tensors(variant_name(i), q, bias, v.storage)) tensors.push_back(std::move(entry));
    expected.emplace_back(variant_name(i), quant::dequantize_nf4_reference(q));
    qs.emplace(variant_name(i), std::move(q));
  }
  return tensors;
}

TEST(BnbFormat, EveryVariantRoundTrips) {
  TempDir dir;
  std::map<std::string, QuantizedTensor> qs;
  std::vector<std::pair<std::string, Tensor>> expected;
  save_safetensors(dir / "layers.safetensors", write_variants(qs, expected));
  const SafetensorsFile file = SafetensorsFile::open(dir / "layers.safetensors");
  for (std::size_t i = 0; i < std::size(kVariants); ++i) {
    SCOPED_TRACE(variant_name(i));
    const QuantizedTensor& q = qs.at(variant_name(i));
    EXPECT_EQ(file.info(variant_name(i) + ".weight").dtype, kVariants[i].storage);
    const QuantizedTensor back = load_bnb_4bit(file, variant_name(i));
    EXPECT_EQ(back.method, q.method);
    EXPECT_EQ(back.shape, q.shape);
    EXPECT_EQ(back.dtype, q.dtype);
    EXPECT_EQ(back.params, q.params);
    ASSERT_EQ(back.components.size(), q.components.size());
    for (const auto& [name, t] : q.components) {
      EXPECT_EQ(back.component(name).dtype(), t.dtype()) << name;
      EXPECT_EQ(back.component(name).shape(), t.shape()) << name;
      EXPECT_EQ(bytes_of(back.component(name)), bytes_of(t)) << name;
    }
    EXPECT_EQ(floats_of(quant::dequantize_nf4_reference(back)), floats_of(expected[i].second));
  }
}

// bitsandbytes' older code paths store the packed weight transposed, [1, ceil(n/2)]: the same bytes.
TEST(BnbFormat, AcceptsATransposedPackedWeight) {
  TempDir dir;
  const QuantizedTensor q = quant::quantize_nf4(random_weight({9, 31}, DType::F16, 5), {Nf4Type::NF4, 64, false});
  auto tensors = bnb_4bit_tensors("p", q);
  tensors[0].second = tensors[0].second.reshape({1, 140});
  save_safetensors(dir / "t.safetensors", tensors);
  const QuantizedTensor back = load_bnb_4bit(SafetensorsFile::open(dir / "t.safetensors"), "p");
  EXPECT_EQ(bytes_of(back.component("codes")), bytes_of(q.component("codes")));
  EXPECT_EQ(back.component("codes").shape(), (Shape{140}));
}

// Builds a valid nested NF4 layer "p", lets `mutate` spoil it, writes it and returns the load error.
template <typename Mutate>
std::string load_error(ErrorCode code, Mutate&& mutate) {
  TempDir dir;
  const QuantizedTensor q = quant::quantize_nf4(random_weight({4, 96}, DType::F16, 9), {Nf4Type::NF4, 64, true});
  std::map<std::string, Tensor> tensors;
  for (auto& [name, t] : bnb_4bit_tensors("p", q)) tensors[name] = t;
  mutate(tensors);
  save_safetensors(dir / "bad.safetensors", {tensors.begin(), tensors.end()});
  const SafetensorsFile file = SafetensorsFile::open(dir / "bad.safetensors");
  return error_message(code, [&] { load_bnb_4bit(file, "p"); });
}

constexpr const char* kBlobKey = "p.weight.quant_state.bitsandbytes__nf4";

std::string with_json(std::map<std::string, Tensor>& t, const std::string& from, const std::string& to) {
  std::string json = text_of(t[kBlobKey]);
  const std::size_t at = json.find(from);
  EXPECT_NE(at, std::string::npos) << json;
  json.replace(at, from.size(), to);
  t[kBlobKey] = blob(json);
  return json;
}

TEST(BnbFormat, MalformedFilesNameTheKey) {
  using T = std::map<std::string, Tensor>;
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { t.erase("p.weight.absmax"); }), "'p.weight.absmax'"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { t.erase("p.weight.quant_map"); }), "quant_map"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { t.erase("p.weight"); }), "'p.weight'"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { t.erase("p.weight.nested_absmax"); }),
                       "'p.weight.nested_absmax'"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { t.erase("p.weight.nested_quant_map"); }),
                       "nested_quant_map"));
  EXPECT_TRUE(contains(load_error(ErrorCode::InvalidArgument, [](T& t) { t.erase(kBlobKey); }), "no 4-bit layer 'p'"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { t[kBlobKey] = blob("{\"quant_type\": \"nf4\""); }),
                       "not a JSON object"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { with_json(t, "\"nested_offset\": ", "\"nested_offset\": NaN, \"x\": "); }),
                       "not a JSON object"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { with_json(t, "\"blocksize\"", "\"packing\": 1, \"blocksize\""); }),
                       "field 'packing'"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { with_json(t, "\"blocksize\": 64, ", ""); }),
                       "no field 'blocksize'"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { with_json(t, "\"blocksize\": 64", "\"blocksize\": \"64\""); }),
                       "expected an integer"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { with_json(t, "\"nf4\"", "\"fp4\""); }),
                       "says quant_type 'fp4'"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { t["p.weight.quant_state.bitsandbytes__fp4"] = t[kBlobKey]; }),
                       "has both"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { with_json(t, "[4, 96]", "[4, 98]"); }),
                       "needs ceil(392 / 2) = 196 bytes"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { t["p.weight.absmax"] = Tensor::zeros({7}, DType::U8); }),
                       "'p.weight.absmax' is u8[7]"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) { t[kBlobKey] = t[kBlobKey].to(DType::F32); }),
                       "u8 vector"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Corrupt, [](T& t) {
                         t[kBlobKey] = blob(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [4, 96]})");
                       }),
                       "nested tensors but"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Unsupported, [](T& t) { with_json(t, "\"blocksize\": 64", "\"blocksize\": 48"); }),
                       "blocksize 48"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Unsupported, [](T& t) { with_json(t, "\"float16\"", "\"float64\""); }),
                       "dtype 'float64'"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Unsupported, [](T& t) { with_json(t, "\"float32\"", "\"float16\""); }),
                       "nested_dtype 'float16'"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Unsupported, [](T& t) { with_json(t, "\"nested_blocksize\": 256", "\"nested_blocksize\": 100"); }),
                       "nested_blocksize 100"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Unsupported, [](T& t) {
                         Tensor m = t["p.weight.quant_map"].clone();
                         m.set({3}, 0.5);
                         t["p.weight.quant_map"] = m;
                       }),
                       "entry 3"));
  EXPECT_TRUE(contains(load_error(ErrorCode::Unsupported, [](T& t) { with_json(t, "[4, 96]", "[1, 1, 1, 4, 96]"); }),
                       "rank 5"));
}

TEST(BnbFormat, WriterRefusesWhatBitsandbytesCannotHold) {
  const QuantizedTensor q = quant::quantize_nf4(random_weight({3, 5}, DType::F16, 3), {});  // 8 bytes of codes
  EXPECT_EQ(bnb_4bit_tensors("p", q, {}, DType::I32).front().second.shape(), (Shape{2, 1}));
  const QuantizedTensor odd = quant::quantize_nf4(random_weight({3, 6}, DType::F16, 3), {});  // 9 bytes
  EXPECT_TRUE(contains(error_message(ErrorCode::InvalidArgument, [&] { bnb_4bit_tensors("p", odd, {}, DType::BF16); }),
                       "lose the tail"));
  error_message(ErrorCode::InvalidArgument, [&] { bnb_4bit_tensors("p", q, {}, DType::U4); });
  error_message(ErrorCode::ShapeMismatch, [&] { bnb_4bit_tensors("p", q, Tensor::zeros({5}, DType::F16)); });
  QuantizedTensor f64 = q;
  f64.dtype = DType::F64;
  error_message(ErrorCode::InvalidArgument, [&] { bnb_4bit_tensors("p", f64); });
}

// Our files in bitsandbytes itself: QuantState.from_dict + dequantize_4bit must give our values exactly.
TEST(BnbFormat, BitsandbytesLoadsOurFiles) {
  const char* python = std::getenv("LOWBIT_PYTHON");
  if (python == nullptr || *python == '\0') {
    GTEST_SKIP() << "set LOWBIT_PYTHON to a Python with torch and bitsandbytes to run tests/interop/test_bnb_load.py";
  }
  TempDir dir;
  std::map<std::string, QuantizedTensor> qs;
  std::vector<std::pair<std::string, Tensor>> expected;
  save_safetensors(dir / "layers.safetensors", write_variants(qs, expected));
  save_safetensors(dir / "expected.safetensors", expected);
  const auto script = std::filesystem::path(LOWBIT_TEST_DATA_DIR).parent_path() / "interop" / "test_bnb_load.py";
  const std::string command = fmt::format("'{}' '{}' --file '{}' --expected '{}' > '{}' 2>&1", python, script.string(),
                                          (dir / "layers.safetensors").string(),
                                          (dir / "expected.safetensors").string(), (dir / "log.txt").string());
  const int status = std::system(command.c_str());
  std::ifstream log(dir / "log.txt");
  const std::string output((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(WIFEXITED(status)) << command;
  if (WEXITSTATUS(status) == 77) GTEST_SKIP() << output;
  EXPECT_EQ(WEXITSTATUS(status), 0) << output;
  std::cout << output;
}

}  // namespace
}  // namespace lowbit::io
