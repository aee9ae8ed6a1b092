// AWQ on decoder layers (model/awq_layer.hpp) and the driver's whole-layer path: the sub-block entry points
// compose to forward_layer, folding any positive scales leaves the full-precision layer unchanged, AWQ's
// layer output error is below RTN's on a block with outlier channels, and the driver hands out quantized
// weights and folded norms/biases that reproduce the layer it ran.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>

#include "lowbit/model/awq_layer.hpp"
#include "lowbit/model/layerwise.hpp"
#include "lowbit/quant/affine.hpp"
#include "lowbit/quant/awq.hpp"
#include "lowbit/quant/registry.hpp"
#include "io/io_test_util.hpp"
#include "model/model_test_util.hpp"

namespace lowbit::model {
namespace {

using namespace test;  // NOLINT: the helpers of this folder

Tensor random_hidden(std::int64_t t, std::int64_t h, std::mt19937_64& rng, const std::vector<int>& outliers = {}) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Tensor x = Tensor::empty({t, h}, DType::F32);
  for (std::int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = dist(rng);
  for (int c : outliers)
    for (std::int64_t r = 0; r < t; ++r) x.data<float>()[r * h + c] *= 30.0f;
  return x;
}

double relative(const Tensor& a, const Tensor& b) {
  double d = 0, n = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.data<float>()[i], y = b.data<float>()[i];
    d += (x - y) * (x - y);
    n += y * y;
  }
  return std::sqrt(d / n);
}

std::string name_of(std::int64_t l, int j) { return fmt::format("model.layers.{}.{}", l, kLayerLinears[j]); }

Tensor dense_weight(const LlamaModel& m, std::int64_t l, int j) {
  return dynamic_cast<const DenseLinear&>(*m.layer(l).linears[j]).weight().to(DType::F32).clone();
}

TEST(AwqLayer, SubBlocksComposeToForwardLayer) {
  std::mt19937_64 rng(std::random_device{}());
  TempDir dir;
  write_tiny_model(dir.path(), TinySpec{.seed = rng()});
  const LlamaModel model = LlamaModel::load(dir.path());
  for (std::int64_t l = 0; l < model.num_layers(); ++l) {
    const Tensor h = random_hidden(19, model.hidden_size(), rng);
    Tensor y = h.clone();
    model.forward_layer(l, y);
    Tensor h1 = model.attention(l, model.layer_norm(l, LlamaModel::LayerNorm::Input, h));
    for (std::int64_t i = 0; i < h1.numel(); ++i) h1.data<float>()[i] += h.data<float>()[i];
    Tensor y2 = model.mlp(l, model.layer_norm(l, LlamaModel::LayerNorm::PostAttention, h1));
    for (std::int64_t i = 0; i < y2.numel(); ++i) y2.data<float>()[i] += h1.data<float>()[i];
    for (std::int64_t i = 0; i < y.numel(); ++i) ASSERT_EQ(y.data<float>()[i], y2.data<float>()[i]) << i;
  }
}

TEST(AwqLayer, FoldingLeavesTheFullPrecisionLayerUnchanged) {
  std::mt19937_64 rng(std::random_device{}());
  TempDir dir;
  // No GQA, so that all four groups (v -> o too) fold; biases, so that the previous linears' biases fold.
  const TinySpec spec{.hidden = 32, .inter = 48, .heads = 4, .kv_heads = 4, .seed = rng()};
  write_tiny_model(dir.path(), spec);
  LlamaModel model = LlamaModel::load(dir.path());
  const std::int64_t l = 1, h = spec.hidden, inter = spec.inter;
  const Tensor x = random_hidden(23, h, rng);
  Tensor before = x.clone();
  model.forward_layer(l, before);

  std::uniform_real_distribution<float> log_s(std::log(0.25f), std::log(4.0f));
  const auto scales = [&](std::int64_t k) {
    std::vector<float> s(static_cast<std::size_t>(k));
    for (float& v : s) v = std::exp(log_s(rng));
    return s;
  };
  const std::vector<float> s1 = scales(h), s2 = scales(h), s3 = scales(h), s4 = scales(inter);
  Tensor W[7], B[7];
  for (int j = 0; j < 7; ++j) {
    W[j] = dense_weight(model, l, j);
    B[j] = model.layer(l).linears[j]->bias().clone();
  }
  std::vector<float> ln1 = model.layer(l).input_layernorm, ln2 = model.layer(l).post_attention_layernorm;
  for (std::int64_t i = 0; i < h; ++i) {
    ln1[static_cast<std::size_t>(i)] /= s1[static_cast<std::size_t>(i)];
    ln2[static_cast<std::size_t>(i)] /= s3[static_cast<std::size_t>(i)];
  }
  const auto cols = [&](int j, const std::vector<float>& s) {
    quant::awq_scale_columns(W[j].data<float>(), W[j].size(0), W[j].size(1), s);
  };
  for (int j : {0, 1, 2}) cols(j, s1);
  quant::awq_divide_rows(W[2].data<float>(), W[2].size(0), W[2].size(1), B[2].data<float>(), s2);
  cols(3, s2);
  for (int j : {4, 5}) cols(j, s3);
  quant::awq_divide_rows(W[5].data<float>(), W[5].size(0), W[5].size(1), B[5].data<float>(), s4);
  cols(6, s4);
  for (int j = 0; j < 7; ++j) model.set_linear(name_of(l, j), std::make_unique<DenseLinear>(W[j], B[j]));
  model.set_layer_norm(l, LlamaModel::LayerNorm::Input, ln1);
  model.set_layer_norm(l, LlamaModel::LayerNorm::PostAttention, ln2);
  Tensor after = x.clone();
  model.forward_layer(l, after);
  EXPECT_LT(relative(after, before), 2e-6);
  EXPECT_THROW(model.set_layer_norm(l, LlamaModel::LayerNorm::Input, std::vector<float>(5, 1.0f)), Error);
}

TEST(AwqLayer, OutputErrorBelowRtnOnABlockWithOutlierChannels) {
  std::mt19937_64 rng(std::random_device{}());
  TempDir dir;
  const TinySpec spec{.hidden = 64, .inter = 128, .heads = 4, .kv_heads = 4, .seed = rng()};
  write_tiny_model(dir.path(), spec);
  const std::int64_t l = 0;
  std::vector<Tensor> inputs;
  const std::vector<int> outliers = {3, 17, 40, 58};
  for (std::int64_t t : {40, 33, 47}) inputs.push_back(random_hidden(t, spec.hidden, rng, outliers));
  const auto layer_error = [&](const LlamaModel& m, const LlamaModel& fp) {
    double d = 0, n = 0;
    for (const Tensor& x : inputs) {
      Tensor a = x.clone(), b = x.clone();
      m.forward_layer(l, a);
      fp.forward_layer(l, b);
      for (std::int64_t i = 0; i < a.numel(); ++i) {
        const double u = a.data<float>()[i] - b.data<float>()[i];
        const double v = b.data<float>()[i] - x.data<float>()[i];
        d += u * u;
        n += v * v;
      }
    }
    return std::sqrt(d / n);
  };
  const LlamaModel fp = LlamaModel::load(dir.path());
  for (int bits : {3, 4}) {
    quant::AwqConfig config;
    config.bits = bits;
    config.group_size = 32;
    // RTN on the same grid: no scales, no clipping.
    LlamaModel rtn = LlamaModel::load(dir.path());
    for (int j = 0; j < 7; ++j) {
      Tensor w = dense_weight(rtn, l, j);
      quant::awq_pseudo_quantize(w.data<float>(), w.size(0), w.size(1), bits, 32);
      rtn.set_linear(name_of(l, j), std::make_unique<DenseLinear>(w, rtn.layer(l).linears[j]->bias()));
    }
    LlamaModel awq = LlamaModel::load(dir.path());
    AwqLayerTrace trace;
    const LayerResult result = quantize_awq_layer(awq, l, inputs, config, {}, &trace);
    ASSERT_EQ(result.quantized.size(), 7u);
    for (const auto& q : result.quantized) EXPECT_EQ(q.q.method, "affine");
    std::map<std::string, Tensor> replaced(result.replaced.begin(), result.replaced.end());
    EXPECT_EQ(replaced.size(), 4u);  // both norms, v's and up's biases
    EXPECT_TRUE(replaced.count("model.layers.0.self_attn.v_proj.bias"));
    EXPECT_TRUE(replaced.count("model.layers.0.mlp.up_proj.bias"));
    for (int g = 0; g < 4; ++g) {
      EXPECT_GE(trace.alpha[g], 0.0) << g;
      ASSERT_EQ(trace.losses[g].size(), 20u);
      EXPECT_LE(trace.loss[g], trace.losses[g][0]) << g;  // never worse than alpha 0 (= RTN)
    }
    const double e_awq = layer_error(awq, fp), e_rtn = layer_error(rtn, fp);
    EXPECT_LT(e_awq, e_rtn) << bits << " bits";
    // The returned weights are the ones the layer now runs.
    for (const auto& q : result.quantized) {
      const int j = static_cast<int>(&q - result.quantized.data());
      const Tensor w = quant::dequantize_affine_reference(q.q);
      const Tensor running = dense_weight(awq, l, j);
      for (std::int64_t i = 0; i < w.numel(); ++i) ASSERT_EQ(w.data<float>()[i], running.data<float>()[i]);
    }
  }
}

TEST(AwqLayer, DriverHandsOutWeightsAndFoldedTensorsThatReproduceTheLayers) {
  std::mt19937_64 rng(std::random_device{}());
  TempDir dir;
  const TinySpec spec{.seed = rng()};  // GQA: v -> o is skipped
  write_tiny_model(dir.path(), spec);
  std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(spec.vocab) - 1);
  std::vector<std::vector<std::int32_t>> samples;
  for (int len : {13, 9, 17}) {
    samples.emplace_back();
    for (int i = 0; i < len; ++i) samples.back().push_back(token(rng));
  }
  const quant::MethodInfo& method = quant::find_method("awq");
  LayerwiseOptions options;
  options.method = &method;
  options.params = method.defaults;
  options.params.group_size = 16;
  options.propagation = Propagation::FullPrecision;
  std::map<std::string, quant::QuantizedTensor> quantized;
  std::map<std::string, Tensor> replaced;
  options.on_quantized = [&](const std::string& name, const quant::QuantizedTensor& q) { quantized[name] = q; };
  options.on_replaced = [&](const std::string& name, const Tensor& t) { replaced[name] = t.clone(); };
  options.select = [](const std::string& name) { return name.find("layers.1.mlp.down_proj") == std::string::npos; };
  LlamaModel model = LlamaModel::load(dir.path(), {.layers_on_demand = true});
  const LayerwiseReport report = quantize_layerwise(model, samples, options);
  EXPECT_EQ(quantized.size(), 13u);  // 2 x 7 but the one left out
  EXPECT_FALSE(quantized.count("model.layers.1.mlp.down_proj.weight"));
  EXPECT_FALSE(replaced.count("model.layers.0.self_attn.v_proj.bias"));  // GQA: not folded
  EXPECT_TRUE(replaced.count("model.layers.0.mlp.up_proj.bias"));
  EXPECT_FALSE(replaced.count("model.layers.1.mlp.up_proj.bias"));  // down left out: group 4 not scaled
  EXPECT_TRUE(replaced.count("model.layers.1.input_layernorm.weight"));
  ASSERT_EQ(report.layer_output_error.size(), 2u);

  // Rebuild each layer from what the driver handed out and compare its output on the FP inputs with the
  // driver's own measurement: the same layer, so the same error.
  const LlamaModel fp = LlamaModel::load(dir.path());
  LlamaModel rebuilt = LlamaModel::load(dir.path());
  for (std::int64_t l = 0; l < 2; ++l) {
    for (int j = 0; j < 7; ++j) {
      const std::string name = name_of(l, j);
      const std::string bias_name = name + ".bias";
      const Tensor bias = replaced.count(bias_name) ? replaced.at(bias_name) : rebuilt.layer(l).linears[j]->bias();
      const Tensor w = quantized.count(name + ".weight") ? quant::dequantize_affine_reference(quantized.at(name + ".weight"))
                                                         : dense_weight(rebuilt, l, j);
      rebuilt.set_linear(name, std::make_unique<DenseLinear>(w, bias));
    }
    const auto norm = [&](const std::string& n) {
      const Tensor& t = replaced.at(fmt::format("model.layers.{}.{}.weight", l, n));
      return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
    };
    rebuilt.set_layer_norm(l, LlamaModel::LayerNorm::Input, norm("input_layernorm"));
    rebuilt.set_layer_norm(l, LlamaModel::LayerNorm::PostAttention, norm("post_attention_layernorm"));
  }
  std::vector<Tensor> hidden;
  for (const auto& s : samples) hidden.push_back(fp.embed(s));
  for (std::int64_t l = 0; l < 2; ++l) {
    double d = 0, n = 0;
    for (Tensor& h : hidden) {
      Tensor a = h.clone(), b = h.clone();
      rebuilt.forward_layer(l, a);
      fp.forward_layer(l, b);
      for (std::int64_t i = 0; i < a.numel(); ++i) {
        const double u = a.data<float>()[i] - b.data<float>()[i];
        const double v = b.data<float>()[i] - h.data<float>()[i];
        d += u * u;
        n += v * v;
      }
      h = b;  // full-precision propagation
    }
    EXPECT_NEAR(std::sqrt(d / n), report.layer_output_error[static_cast<std::size_t>(l)], 1e-6) << l;
    EXPECT_GT(report.layer_output_error[static_cast<std::size_t>(l)], 0.0);
    EXPECT_LT(report.layer_output_error[static_cast<std::size_t>(l)], 0.5);
  }
}

}  // namespace
}  // namespace lowbit::model
