// HQQ checkpoints: HQQLinear.state_dict()s saved by hqq 0.2.8.post1 (tests/data/make_hqq_vectors.py) read
// back, dequantized bit-identically to HQQLinear.dequantize(), re-made by our quantizer, and written back
// byte for byte; config.json's quantization_config; every unsupported form refused by name.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "io/io_test_util.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/io/formats/hqq.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/quant/common.hpp"
#include "lowbit/quant/hqq.hpp"

namespace lowbit::io::test {
namespace {

const std::filesystem::path kDir = std::filesystem::path(LOWBIT_TEST_DATA_DIR) / "hqq";

nlohmann::json sidecar() {
  std::ifstream in(kDir / "hqq_linear.json");
  return nlohmann::json::parse(in);
}

DType torch_dtype(const std::string& name) {
  if (name == "torch.float16") return DType::F16;
  if (name == "torch.bfloat16") return DType::BF16;
  return DType::F32;
}

using test::same_bytes;

// The golden layers as a mutable map, to corrupt one key at a time.
std::map<std::string, Tensor> golden_tensors() {
  const auto file = SafetensorsFile::open(kDir / "hqq_linear.safetensors");
  std::map<std::string, Tensor> out;
  for (const auto& name : file.names()) out[name] = file.tensor(name).clone();
  return out;
}

HqqLinear decode_from(const std::map<std::string, Tensor>& tensors, std::string_view layer) {
  const TensorLookup lookup = [&](const std::string& name) -> std::optional<Tensor> {
    const auto it = tensors.find(name);
    if (it == tensors.end()) return std::nullopt;
    return it->second;
  };
  return decode_hqq_linear(layer, lookup, "test");
}

TEST(HqqFormat, FindsEveryLayerOfTheGoldenCheckpoint) {
  const Checkpoint ckpt = Checkpoint::open(kDir / "hqq_linear.safetensors");
  std::vector<std::string> want;
  const nlohmann::json doc = sidecar();
  for (const auto& [name, _] : doc.at("layers").items()) want.push_back(name);
  std::sort(want.begin(), want.end());
  EXPECT_EQ(hqq_layers(ckpt), want);
  EXPECT_TRUE(is_hqq_checkpoint(ckpt));
  // Every key HQQLinear wrote is one we know, and we know which ones a layer has.
  for (const auto& [name, layer] : doc.at("layers").items()) {
    for (const auto& key : layer.at("keys")) {
      EXPECT_NE(std::find(std::begin(kHqqStateKeys), std::end(kHqqStateKeys), key.get<std::string>()),
                std::end(kHqqStateKeys))
          << key;
    }
    EXPECT_EQ(layer.at("keys").size(), layer.at("bias").get<bool>() ? 20u : 19u) << name;
  }
}

TEST(HqqFormat, ReadsHqqLinearAndDequantizesBitIdentically) {
  const Checkpoint ckpt = Checkpoint::open(kDir / "hqq_linear.safetensors");
  const auto source = SafetensorsFile::open(kDir / "hqq_linear_source.safetensors");
  const nlohmann::json doc = sidecar();
  for (const auto& [name, want] : doc.at("layers").items()) {
    SCOPED_TRACE(name);
    const HqqLinear layer = read_hqq_linear(ckpt, name);
    const quant::QuantizedTensor& q = layer.weight;
    EXPECT_EQ(q.method, "hqq");
    EXPECT_EQ(q.shape, (Shape{want.at("out_features"), want.at("in_features")}));
    EXPECT_EQ(q.params.bits, want.at("nbits").get<int>());
    EXPECT_EQ(q.params.group_size, want.at("group_size").get<std::int64_t>());
    EXPECT_EQ(q.params.axis, want.at("axis").get<int>());
    const DType compute = torch_dtype(want.at("compute_dtype"));
    EXPECT_EQ(q.component("scale").dtype(), compute);
    EXPECT_EQ(q.dtype, compute);
    EXPECT_EQ(layer.view_as_float, want.at("view_as_float").get<bool>());
    EXPECT_EQ(q.component("W_q").dtype(), quant::hqq_packing_dtype(quant::hqq_packing_for_bits(q.params.bits)));
    EXPECT_EQ(layer.round_zero, want.at("round_zero").get<bool>());
    EXPECT_TRUE(layer.optimize);
    EXPECT_EQ(layer.bias.defined(), want.at("bias").get<bool>());
    if (layer.bias.defined()) {
      EXPECT_TRUE(same_bytes(layer.bias.to(DType::F32), source.tensor(name + ".bias").to(compute).to(DType::F32)));
    }
    // hqq's own arithmetic in the compute dtype: identical bits to HQQLinear.dequantize() on CPU.
    const Tensor deq = quant::dequantize_hqq(q);
    const Tensor want_deq = source.tensor(name + ".dequant");
    ASSERT_EQ(deq.dtype(), want_deq.dtype());
    EXPECT_TRUE(same_bytes(deq, want_deq));
    // The fp32 reference is within the two compute-dtype roundings of it and close to the original.
    const quant::ErrorStats err = quant::error_stats(source.tensor(name + ".weight"), quant::dequantize_hqq_reference(q));
    EXPECT_LT(err.relative_frobenius, q.params.bits >= 4 ? 0.15 : 0.9);
  }
}

TEST(HqqFormat, OurQuantizerRemakesHqqLinearsTensors) {
  const Checkpoint ckpt = Checkpoint::open(kDir / "hqq_linear.safetensors");
  const auto source = SafetensorsFile::open(kDir / "hqq_linear_source.safetensors");
  const nlohmann::json doc = sidecar();
  for (const auto& [name, want] : doc.at("layers").items()) {
    SCOPED_TRACE(name);
    quant::HqqConfig c;  // BaseQuantizeConfig(nbits, group_size, axis): round_zero = nbits == 4
    c.bits = want.at("nbits");
    c.group_size = want.at("group_size");
    c.axis = want.at("axis");
    c.compute_dtype = torch_dtype(want.at("compute_dtype"));
    const quant::QuantizedTensor ours = quant::quantize_hqq(source.tensor(name + ".weight"), c);
    const quant::QuantizedTensor theirs = read_hqq_linear(ckpt, name).weight;
    EXPECT_TRUE(same_bytes(ours.component("W_q"), theirs.component("W_q")));
    EXPECT_TRUE(same_bytes(ours.component("scale"), theirs.component("scale")));
    // The zero is a mean; its summation order may move the last bits (1 bit runs all 20 iterations here).
    const Tensor z = ours.component("zero").to(DType::F32), zt = theirs.component("zero").to(DType::F32);
    for (std::int64_t i = 0; i < z.numel(); ++i) {
      const float a = z.data<float>()[i], b = zt.data<float>()[i];
      EXPECT_LE(std::fabs(a - b), 2e-6f * std::max(1.0f, std::fabs(b))) << "zero " << i;
    }
  }
}

TEST(HqqFormat, WritesTheGoldenFileBackByteForByte) {
  const Checkpoint ckpt = Checkpoint::open(kDir / "hqq_linear.safetensors");
  std::vector<std::pair<std::string, Tensor>> all;
  for (const std::string& layer : hqq_layers(ckpt)) {
    for (auto& t : hqq_state_dict(layer, read_hqq_linear(ckpt, layer))) all.push_back(std::move(t));
  }
  EXPECT_EQ(all.size(), ckpt.names().size());
  TempDir dir;
  save_safetensors(dir / "out.safetensors", all, {{"format", "pt"}});
  EXPECT_EQ(read_bytes(dir / "out.safetensors"), read_bytes(kDir / "hqq_linear.safetensors"));
}

TEST(HqqFormat, SpecVectorDEncodedScalars) {
  quant::HqqConfig c;
  c.group_size = 64;
  HqqLinear layer;
  layer.weight = quant::quantize_hqq(Tensor::zeros({4096, 64}, DType::F16), c);
  layer.round_zero = true;
  const auto t = as_map(hqq_state_dict("m", layer));
  auto bytes = [&](const std::string& key) {
    const Tensor& x = t.at("m." + key);
    const auto* p = static_cast<const std::uint8_t*>(x.raw_data());
    return std::vector<int>(p, p + x.nbytes());
  };
  EXPECT_EQ(t.at("m.nbits").dtype(), DType::I32);
  EXPECT_EQ(t.at("m.nbits").rank(), 0);
  EXPECT_EQ(bytes("nbits"), (std::vector<int>{4, 0, 0, 0}));
  EXPECT_EQ(bytes("packing"), (std::vector<int>{0x34, 0x62, 0x69, 0x74, 0x5f, 0x75, 0x38}));
  EXPECT_EQ(t.at("m.shape").dtype(), DType::I64);
  EXPECT_EQ(t.at("m.shape").get({0}), 4096);
  EXPECT_EQ(t.at("m.shape").get({1}), 64);
  EXPECT_EQ(bytes("round_zero"), (std::vector<int>{1}));
  EXPECT_EQ(t.at("m.round_zero").rank(), 0);
  EXPECT_EQ(bytes("encoded_state_dict"), (std::vector<int>{1}));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(t.at("m.compute_dtype").raw_data()), 13), "torch.float16");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(t.at("m.unpack_view_dtype").raw_data()), 11), "torch.uint8");
  EXPECT_EQ(t.size(), 19u);  // no bias
}

TEST(HqqFormat, ViewAsFloatRoundTrips) {
  HqqLinear layer;
  quant::HqqConfig c;
  c.bits = 3;
  c.group_size = 32;
  layer.weight = quant::quantize_hqq(Tensor::zeros({16, 64}, DType::F32), c);
  layer.view_as_float = true;
  const auto t = as_map(hqq_state_dict("", layer));
  EXPECT_EQ(t.at("W_q").dtype(), DType::F16);  // i32 words seen as pairs of fp16
  EXPECT_EQ(t.at("W_q").size(1), 64);
  const HqqLinear back = decode_from(t, "");
  EXPECT_TRUE(back.view_as_float);
  EXPECT_TRUE(same_bytes(back.weight.component("W_q"), layer.weight.component("W_q")));
}

TEST(HqqFormat, RefusesUnsupportedAndContradictoryLayers) {
  const std::string layer = "model.layers.0.self_attn.q_proj";
  auto expect_error = [&](ErrorCode code, std::string_view needle, auto edit) {
    auto t = golden_tensors();
    edit(t);
    const std::string m = error_message(code, [&] { decode_from(t, layer); });
    EXPECT_NE(m.find(needle), std::string::npos) << m;
  };
  const std::string p = layer + ".";
  expect_error(ErrorCode::InvalidArgument, "W_q", [&](auto& t) { t.erase(p + "W_q"); });
  expect_error(ErrorCode::Unsupported, "quant_zero", [&](auto& t) {
    t[p + "quant_zero"] = Tensor::from_values<std::uint8_t>({1}, Shape{});
  });
  expect_error(ErrorCode::Unsupported, "offload_meta", [&](auto& t) {
    t[p + "offload_meta"] = Tensor::from_values<std::uint8_t>({1}, Shape{});
  });
  expect_error(ErrorCode::Unsupported, "zero_scale", [&](auto& t) { t[p + "zero_scale"] = t[p + "zero"]; });
  expect_error(ErrorCode::Unsupported, "encoded_state_dict", [&](auto& t) { t.erase(p + "encoded_state_dict"); });
  expect_error(ErrorCode::Unsupported, "1.58", [&](auto& t) {
    t[p + "nbits"] = Tensor::from_values<float>({1.58f}, Shape{});
  });
  expect_error(ErrorCode::Unsupported, "nbits = 7", [&](auto& t) {
    t[p + "nbits"] = Tensor::from_values<std::int32_t>({7}, Shape{});
  });
  expect_error(ErrorCode::Corrupt, "packing '4bit_u8' does not match nbits = 2", [&](auto& t) {
    t[p + "nbits"] = Tensor::from_values<std::int32_t>({2}, Shape{});
  });
  expect_error(ErrorCode::Corrupt, "compute_dtype", [&](auto& t) {
    const std::string s = "torch.float64x";
    t[p + "compute_dtype"] = Tensor::from_values<std::uint8_t>(
        std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(s.data()), s.size()),
        {static_cast<std::int64_t>(s.size())});
  });
  expect_error(ErrorCode::Corrupt, "W_q", [&](auto& t) { t[p + "W_q"] = t[p + "W_q"].slice(0, 0, 4).contiguous(); });
  expect_error(ErrorCode::Corrupt, "group_size", [&](auto& t) {
    t[p + "group_size"] = Tensor::from_values<std::int32_t>({48}, Shape{});
  });
  expect_error(ErrorCode::Corrupt, "axis", [&](auto& t) { t[p + "axis"] = Tensor::from_values<std::int32_t>({2}, Shape{}); });
  expect_error(ErrorCode::Corrupt, "scale", [&](auto& t) { t.erase(p + "scale"); });
  // A different float dtype for scale/zero is cast to the compute dtype, as HQQLinear does on load.
  auto t = golden_tensors();
  t[p + "zero"] = t[p + "zero"].to(DType::F32);
  EXPECT_EQ(decode_from(t, layer).weight.component("zero").dtype(), DType::F16);
}

TEST(HqqFormat, QuantizationConfigIsTransformersDict) {
  const nlohmann::json want = sidecar().at("quantization_config");
  EXPECT_EQ(nlohmann::json::parse(hqq_quantization_config(quant::HqqConfig{})), want);
  quant::HqqConfig c;
  c.bits = 3;
  c.axis = 0;
  const nlohmann::json three = nlohmann::json::parse(hqq_quantization_config(c));
  EXPECT_EQ(three["quant_config"]["weight_quant_params"]["round_zero"], false);
  EXPECT_EQ(three["quant_config"]["weight_quant_params"]["axis"], 0);
  EXPECT_EQ(hqq_linear_tag("model.layers.31.self_attn.k_proj"), "self_attn.k_proj");
  EXPECT_EQ(hqq_linear_tag("lm_head"), "lm_head");
}

TEST(HqqFormat, FormatWriterMakesACheckpointOpenHqqReads) {
  TempDir dir;
  write_text(dir / "config.json", R"({"model_type": "llama", "hidden_size": 64})");
  const FormatWriter w = hqq_format_writer();
  EXPECT_EQ(w.name, "hqq");
  quant::HqqConfig c4;
  quant::HqqConfig c3;
  c3.bits = 3;
  c3.axis = 0;
  const quant::QuantizedTensor a = quant::quantize_hqq(Tensor::zeros({32, 64}, DType::F32), c4);
  quant::QuantizedTensor b = quant::quantize_hqq(Tensor::zeros({16, 64}, DType::F32), c3);
  {
    CheckpointWriter out(dir / "ckpt");
    w.add(out, "model.layers.0.self_attn.q_proj.weight", a);
    w.add(out, "model.layers.0.mlp.down_proj.weight", b);
    out.add("model.layers.0.mlp.down_proj.bias", Tensor::zeros({16}, DType::F16));
    const std::vector<QuantizedEntry> entries = {{"model.layers.0.self_attn.q_proj.weight", "hqq", a.params},
                                                 {"model.layers.0.mlp.down_proj.weight", "hqq", b.params}};
    out.add_text_file("config.json", w.config_json(dir / "config.json", entries));
    w.finish(out, entries);
    out.finish();
  }
  std::ifstream in(dir / "ckpt" / "config.json");
  const nlohmann::json config = nlohmann::json::parse(in);
  EXPECT_EQ(config["hidden_size"], 64);
  EXPECT_EQ(config["quantization_config"]["quant_method"], "hqq");
  EXPECT_EQ(config["quantization_config"]["quant_config"]["self_attn.q_proj"]["weight_quant_params"]["nbits"], 4);
  EXPECT_EQ(config["quantization_config"]["quant_config"]["mlp.down_proj"]["weight_quant_params"]["nbits"], 3);

  const Checkpoint ckpt = Checkpoint::open(dir / "ckpt");
  EXPECT_TRUE(is_hqq_checkpoint(ckpt));
  const QuantizedCheckpoint qc = open_hqq(ckpt);
  EXPECT_EQ(qc.format, "hqq");
  EXPECT_EQ(qc.weights, (std::vector<std::string>{"model.layers.0.mlp.down_proj.weight",
                                                  "model.layers.0.self_attn.q_proj.weight"}));
  EXPECT_FALSE(qc.parts.contains("model.layers.0.mlp.down_proj.bias"));
  EXPECT_TRUE(qc.parts.contains("model.layers.0.mlp.down_proj.W_q"));
  EXPECT_EQ(qc.parts.size(), 38u);
  const quant::QuantizedTensor back = qc.load("model.layers.0.mlp.down_proj.weight");
  EXPECT_EQ(back.params, b.params);
  for (const char* component : {"W_q", "scale", "zero"}) {
    EXPECT_TRUE(same_bytes(back.component(component), b.component(component))) << component;
  }
  EXPECT_EQ(read_hqq_linear(ckpt, "model.layers.0.self_attn.q_proj").weight.params, a.params);
  error_message(ErrorCode::InvalidArgument, [&] { qc.load("lm_head.weight"); });
}

}  // namespace
}  // namespace lowbit::io::test
