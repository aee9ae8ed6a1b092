// A model whose linears are quantized (by every registered method, stored in lowbit's layout) runs through the
// forward exactly like the dense model made of the dequantized weights: bit-identically when dequantized at
// load, and within the method's matmul rounding through its reference matmul.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "lowbit/io/formats.hpp"
#include "lowbit/io/quantized.hpp"
#include "lowbit/model/llama.hpp"
#include "lowbit/quant/registry.hpp"
#include "model/model_test_util.hpp"

namespace lowbit::model {
namespace {

using namespace test;  // NOLINT: the helpers of this folder

double max_relative_difference(const Tensor& a, const Tensor& b) {
  double diff = 0, scale = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(a.data<float>()[i] - b.data<float>()[i])));
    scale = std::max(scale, static_cast<double>(std::abs(b.data<float>()[i])));
  }
  return diff / scale;
}

quant::Calibration random_calibration(std::int64_t k, const quant::CalibrationNeeds& needs) {
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Tensor x = Tensor::empty({64, k}, DType::F32);
  for (std::int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = dist(rng) * (i % k < 3 ? 20.0f : 1.0f);
  quant::Calibration c(k, needs);
  c.add(x, 4);
  return c;
}

TEST(QuantizedForward, EveryMethodEqualsItsDequantizedWeights) {
  if (quant::methods().empty()) GTEST_SKIP() << "no quantization method is registered (quant::methods() is empty)";
  TinySpec spec;  // k = 64 and 128: every method's default group or block size fits
  spec.hidden = 64;
  spec.inter = 128;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.vocab = 50;
  const TensorMap tensors = tiny_tensors(spec);
  const std::vector<std::int32_t> tokens = {1, 7, 3, 49, 0, 12, 12, 30, 2, 8, 41};
  int tested = 0;
  for (const quant::MethodInfo& method : quant::methods()) {
    SCOPED_TRACE(method.name);
    if (method.layer_level) continue;  // whole-layer methods (AWQ): tests/model/awq_layer_test.cpp
    TempDir quantized_dir;
    TempDir dense_dir;
    TensorMap dequantized = tensors;
    std::string stored_method;  // what the QuantizedTensor says (gptq stores affine tensors)
    try {
      io::CheckpointWriter out(quantized_dir.path());
      const io::FormatWriter& format = io::find_format_writer("lowbit", method.name);
      std::vector<io::QuantizedEntry> entries;
      for (const auto& [name, t] : tensors) {
        const bool linear = name.ends_with("proj.weight");
        if (!linear) {
          out.add(name, t);
          continue;
        }
        // A calibration-based method gets the Hessian of random inputs with a few loud channels.
        const quant::QuantizedTensor q = method.quantize_calibrated
                                             ? method.quantize_calibrated(t, method.defaults,
                                                                          random_calibration(t.size(1), method.needs),
                                                                          quant::SolverOptions{})
                                             : method.quantize(t, method.defaults);
        stored_method = q.method;
        dequantized[name] = method.dequantize(q);
        format.add(out, name, q);
        entries.push_back({name, q.method, q.params});
      }
      format.finish(out, entries);
      out.add_text_file("config.json", tiny_config(spec).dump());
      out.finish();
    } catch (const Error& e) {
      ADD_FAILURE() << method.name << " could not quantize the tiny model with its defaults: " << e.what();
      continue;
    }
    write_tiny_model(dense_dir.path(), spec, dequantized, tiny_config(spec));

    const LlamaModel dense = LlamaModel::load(dense_dir.path());
    LoadOptions at_load;
    at_load.quantized = QuantizedExecution::DequantizeAtLoad;
    const LlamaModel dequantized_at_load = LlamaModel::load(quantized_dir.path(), at_load);
    const LlamaModel reference = LlamaModel::load(quantized_dir.path());
    EXPECT_EQ(reference.weight_format(), "lowbit");
    EXPECT_NE(reference.linear("model.layers.0.mlp.up_proj").describe().find(stored_method), std::string::npos);

    const Tensor want = dense.forward(tokens);
    const Tensor a = dequantized_at_load.forward(tokens);
    for (std::int64_t i = 0; i < want.numel(); ++i) ASSERT_EQ(a.data<float>()[i], want.data<float>()[i]) << i;
    // The reference matmul may order its sums differently; LLM.int8() also rounds activations to int8
    // (outside its outlier columns), which moves logits by about a percent.
    const double tolerance = method.name == "llm_int8" ? 5e-2 : 1e-4;
    const double difference = max_relative_difference(reference.forward(tokens), want);
    EXPECT_LT(difference, tolerance);
    std::printf("%s: reference matmul vs dequantized weights, max relative logit difference %.3g\n",
                method.name.c_str(), difference);
    ++tested;
  }
  RecordProperty("methods_tested", tested);
}

}  // namespace
}  // namespace lowbit::model
