// The layer-by-layer driver and Calibration: what each linear's Calibration saw is recomputed independently
// (the whole model loaded at once, the recorded quantized weights swapped in, inputs captured through the
// forward's hook, the Hessian summed naively in fp64), and the driver never holds more than one layer.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "lowbit/model/layerwise.hpp"
#include "lowbit/quant/affine.hpp"
#include "lowbit/quant/calibration.hpp"
#include "lowbit/quant/registry.hpp"
#include "io/io_test_util.hpp"
#include "model/model_test_util.hpp"

namespace lowbit::model {
namespace {

using namespace test;  // NOLINT: the helpers of this folder

Tensor random_rows(std::int64_t rows, std::int64_t k, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Tensor t = Tensor::empty({rows, k}, DType::F32);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(rng) * (1.0f + static_cast<float>(i % k) / 8);
  return t;
}

double max_abs_difference(const Tensor& a, const std::vector<double>& b) {
  double m = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::abs(a.data<double>()[i] - b[static_cast<std::size_t>(i)]));
  return m;
}

// ---- Calibration -------------------------------------------------------------------------------------------

TEST(Calibration, RunningAverageEqualsTwoOverSequencesTimesTheSumOfOuterProducts) {
  std::mt19937_64 rng(std::random_device{}());
  const std::int64_t k = 37;
  quant::Calibration calibration(k, {.hessian = true, .channel_stats = true, .sample_rows = 5});
  std::vector<double> sum(static_cast<std::size_t>(k * k), 0.0);
  std::vector<double> abs_sum(static_cast<std::size_t>(k), 0.0), abs_max(static_cast<std::size_t>(k), 0.0);
  std::int64_t sequences = 0, tokens = 0;
  std::vector<float> first_rows;
  const std::int64_t batches[][2] = {{3, 1}, {17, 2}, {1, 1}, {64, 4}};  // {rows, sequences}
  for (const auto& [rows, seqs] : batches) {
    const Tensor x = random_rows(rows, k, rng);
    std::vector<std::uint8_t> keep(static_cast<std::size_t>(rows), 1);
    if (rows > 2) keep[1] = 0;  // a padded row
    calibration.add(x, seqs, keep);
    sequences += seqs;
    for (std::int64_t r = 0; r < rows; ++r) {
      if (!keep[static_cast<std::size_t>(r)]) continue;
      ++tokens;
      const float* row = x.data<float>() + r * k;
      if (static_cast<std::int64_t>(first_rows.size()) < 5 * k) first_rows.insert(first_rows.end(), row, row + k);
      for (std::int64_t i = 0; i < k; ++i) {
        abs_sum[static_cast<std::size_t>(i)] += std::abs(row[i]);
        abs_max[static_cast<std::size_t>(i)] = std::max<double>(abs_max[static_cast<std::size_t>(i)], std::abs(row[i]));
        for (std::int64_t j = 0; j < k; ++j) sum[static_cast<std::size_t>(i * k + j)] += double(row[i]) * row[j];
      }
    }
  }
  for (auto& v : sum) v *= 2.0 / static_cast<double>(sequences);
  EXPECT_EQ(calibration.sequences(), sequences);
  EXPECT_EQ(calibration.tokens(), tokens);
  const Tensor h = calibration.hessian();
  ASSERT_EQ(h.shape(), (Shape{k, k}));
  double scale = 0;
  for (double v : sum) scale = std::max(scale, std::abs(v));
  EXPECT_LT(max_abs_difference(h, sum), 1e-12 * scale);
  const Tensor mean = calibration.mean_abs(), max = calibration.max_abs();
  for (std::int64_t i = 0; i < k; ++i) {
    EXPECT_NEAR(mean.data<float>()[i], abs_sum[static_cast<std::size_t>(i)] / static_cast<double>(tokens), 1e-5);
    EXPECT_EQ(max.data<float>()[i], static_cast<float>(abs_max[static_cast<std::size_t>(i)]));
  }
  const Tensor samples = calibration.samples();
  ASSERT_EQ(samples.shape(), (Shape{5, k}));
  for (std::int64_t i = 0; i < samples.numel(); ++i) EXPECT_EQ(samples.data<float>()[i], first_rows[static_cast<std::size_t>(i)]);
}

TEST(Calibration, BadInputIsAClearError) {
  quant::Calibration calibration(4, {.hessian = true});
  Tensor x = Tensor::zeros({2, 4}, DType::F32);
  x.data<float>()[5] = std::nanf("");
  EXPECT_NE(error_message([&] { calibration.add(x); }, ErrorCode::Numerical).find("row 1 column 1"), std::string::npos);
  EXPECT_EQ(calibration.tokens(), 0);  // nothing of the bad batch was kept
  EXPECT_NE(error_message([&] { calibration.add(Tensor::zeros({2, 5}, DType::F32)); }, ErrorCode::ShapeMismatch)
                .find("[tokens, 4]"),
            std::string::npos);
  error_message([&] { (void)calibration.mean_abs(); }, ErrorCode::InvalidArgument);
  error_message([&] { quant::Calibration(0, {}); }, ErrorCode::InvalidArgument);
}

// ---- the driver --------------------------------------------------------------------------------------------

struct Recorded {
  std::string name;
  quant::QuantizedTensor q;
  Tensor hessian;  // what its Calibration held (calibrated runs)
};

// The affine RTN method under another name, calibrated: records the Hessian it is given.
quant::MethodInfo recording_method(std::vector<Tensor>& hessians) {
  quant::MethodInfo m = quant::find_method("affine");
  m.name = "recording";
  m.needs.hessian = true;
  m.quantize_calibrated = [&hessians](const Tensor& w, const quant::QuantParams& p, const quant::Calibration& c,
                                      const quant::SolverOptions&) {
    hessians.push_back(c.hessian());
    return quant::quantize_affine(w, quant::affine_config_from_params(p));
  };
  return m;
}

std::vector<std::vector<std::int32_t>> random_samples(std::int64_t vocab, std::mt19937_64& rng) {
  std::vector<std::vector<std::int32_t>> samples;
  std::uniform_int_distribution<std::int32_t> id(0, static_cast<std::int32_t>(vocab - 1));
  for (const std::int64_t length : {9, 1, 16, 5}) {
    std::vector<std::int32_t> s(static_cast<std::size_t>(length));
    for (auto& t : s) t = id(rng);
    samples.push_back(s);
  }
  return samples;
}

// Runs the driver with the recording method and checks every linear's Hessian against inputs captured from a
// fully loaded model in which the layers quantized before it (in the driver's order) run their recorded weights.
void check_calibration_inputs(Propagation propagation, bool true_sequential) {
  std::mt19937_64 rng(std::random_device{}());
  TempDir dir;
  TinySpec spec;
  spec.layers = 3;
  spec.seed = rng();
  const TensorMap tensors = write_tiny_model(dir.path(), spec);
  const auto samples = random_samples(spec.vocab, rng);

  std::vector<Tensor> hessians;
  const quant::MethodInfo method = recording_method(hessians);
  LayerwiseOptions options;
  options.method = &method;
  options.params = method.defaults;
  options.params.bits = 2;  // coarse, so that quantized and full-precision inputs differ clearly
  options.params.group_size = 16;
  options.propagation = propagation;
  options.true_sequential = true_sequential;
  std::vector<Recorded> recorded;
  options.on_quantized = [&](const std::string& name, const quant::QuantizedTensor& q) {
    recorded.push_back({name, q, {}});
  };
  LlamaModel model = LlamaModel::load(dir.path(), {.layers_on_demand = true});
  const LayerwiseReport report = quantize_layerwise(model, samples, options);
  ASSERT_EQ(recorded.size(), 7u * 3u);
  ASSERT_EQ(hessians.size(), recorded.size());
  EXPECT_EQ(report.tokens, 31);
  ASSERT_EQ(report.layer_output_error.size(), 3u);
  for (double e : report.layer_output_error) EXPECT_GT(e, 0.0);

  // Replay: the order of `recorded` is the driver's; before the i-th weight's inputs are captured, the weights
  // that precede it are quantized, except (one group, or FullPrecision) those of its own pass.
  LlamaModel reference = LlamaModel::load(dir.path());
  const std::vector<std::vector<int>> groups = true_sequential
                                                   ? std::vector<std::vector<int>>{{0, 1, 2}, {3}, {4, 5}, {6}}
                                                   : std::vector<std::vector<int>>{{0, 1, 2, 3, 4, 5, 6}};
  std::size_t next = 0;
  for (std::int64_t l = 0; l < 3; ++l) {
    for (const auto& group : groups) {
      // Full precision propagation: earlier layers run full precision; the current layer's earlier groups
      // are quantized.
      LlamaModel replay = LlamaModel::load(dir.path());
      for (std::size_t i = 0; i < next; ++i) {
        const std::string& name = recorded[i].name;
        const bool earlier_layer = !name.starts_with(fmt::format("model.layers.{}.", l));
        if (earlier_layer && propagation == Propagation::FullPrecision) continue;
        replay.set_linear(name, std::make_unique<DenseLinear>(quant::find_method("affine").dequantize(recorded[i].q),
                                                              replay.linear(name).bias()));
      }
      for (int j : group) {
        const std::string module = fmt::format("model.layers.{}.{}", l, kLayerLinears[j]);
        ASSERT_EQ(recorded[next].name, module + ".weight");
        const std::int64_t k = replay.linear(module).k();
        std::vector<double> h(static_cast<std::size_t>(k * k), 0.0);
        const LinearInputHook hook = [&](std::string_view name, const Tensor& x) {
          if (name != module) return;
          for (std::int64_t r = 0; r < x.size(0); ++r) {
            const float* row = x.data<float>() + r * k;
            for (std::int64_t a = 0; a < k; ++a)
              for (std::int64_t b = 0; b < k; ++b) h[static_cast<std::size_t>(a * k + b)] += double(row[a]) * row[b];
          }
        };
        for (const auto& s : samples) (void)replay.hidden_states(s, nullptr, &hook);
        double scale = 0;
        for (auto& v : h) {
          v *= 2.0 / static_cast<double>(samples.size());
          scale = std::max(scale, std::abs(v));
        }
        EXPECT_LT(max_abs_difference(hessians[next], h), 1e-5 * scale) << module;
        ++next;
      }
    }
  }
  // The driver's weights are the method's on the original weights (RTN does not depend on the inputs).
  for (const Recorded& r : recorded) {
    const quant::QuantizedTensor direct = method.quantize(tensors.at(r.name), options.params);
    EXPECT_TRUE(io::test::same_quantized(direct, r.q)) << r.name;
  }
}

TEST(Layerwise, TrueSequentialCalibratesOnQuantizedOutputs) { check_calibration_inputs(Propagation::Quantized, true); }
TEST(Layerwise, OneGroupPerLayerCalibratesOnOnePass) { check_calibration_inputs(Propagation::Quantized, false); }
TEST(Layerwise, FullPrecisionPropagationFeedsFullPrecisionOutputs) {
  check_calibration_inputs(Propagation::FullPrecision, true);
}

TEST(Layerwise, HoldsOneLayerAtATime) {
  std::mt19937_64 rng(std::random_device{}());
  TempDir dir;
  TinySpec spec;
  spec.layers = 6;
  spec.seed = rng();
  write_tiny_model(dir.path(), spec);
  const auto samples = random_samples(spec.vocab, rng);
  LlamaModel full = LlamaModel::load(dir.path());
  std::uint64_t one_layer = 0;
  for (const auto& linear : full.layer(2).linears) one_layer += linear->resident_bytes();

  LlamaModel model = LlamaModel::load(dir.path(), {.layers_on_demand = true});
  const std::uint64_t base = model.resident_bytes();
  std::vector<Tensor> hessians;
  const quant::MethodInfo method = recording_method(hessians);
  LayerwiseOptions options;
  options.method = &method;
  options.params = method.defaults;
  options.params.group_size = 16;
  int calls = 0, layers_done = 0;
  options.on_quantized = [&](const std::string&, const quant::QuantizedTensor&) {
    ++calls;
    int loaded = 0;
    for (std::int64_t l = 0; l < model.num_layers(); ++l) loaded += model.layer_loaded(l) ? 1 : 0;
    EXPECT_EQ(loaded, 1);
    EXPECT_LE(model.resident_bytes(), base + one_layer + one_layer / 2);  // one layer, part of it requantized
  };
  options.on_layer_done = [&](std::int64_t l) {
    EXPECT_EQ(l, layers_done++);
    EXPECT_FALSE(model.layer_loaded(l));
  };
  std::vector<ProgressEvent> events;
  std::vector<std::string> items;  // an event's item is valid only during the call
  options.progress = [&](const ProgressEvent& e) {
    events.push_back(e);
    items.emplace_back(e.item);
  };
  const LayerwiseReport report = quantize_layerwise(model, samples, options);
  EXPECT_EQ(calls, 42);
  EXPECT_EQ(layers_done, 6);
  EXPECT_EQ(model.resident_bytes(), base);  // every layer released
  ASSERT_EQ(events.size(), 24u);            // 6 layers x 4 groups
  EXPECT_EQ(events.back().done, 24);
  EXPECT_EQ(events.back().total, 24);
  EXPECT_EQ(items[5], "layer 2/6 o_proj");
  EXPECT_EQ(items[0], "layer 1/6 q_proj+k_proj+v_proj");
  // The accounting: activations of all samples, one layer, the Hessians of one group; not six layers.
  EXPECT_GE(report.peak_held_bytes, base + report.activation_bytes + one_layer);
  EXPECT_LT(report.peak_held_bytes, base + report.activation_bytes * 3 + one_layer * 2 + 64 * 64 * 8 * 2 + 65536);
  EXPECT_GT(report.peak_rss_bytes, 0u);
}

TEST(Layerwise, DataFreeMethodSelectsAndSkips) {
  std::mt19937_64 rng(std::random_device{}());
  TempDir dir;
  TinySpec spec;
  spec.seed = rng();
  const TensorMap tensors = write_tiny_model(dir.path(), spec);
  LlamaModel model = LlamaModel::load(dir.path(), {.layers_on_demand = true});
  LayerwiseOptions options;
  options.method = &quant::find_method("nf4");
  options.params = options.method->defaults;
  options.params.block_size = 32;
  options.select = [](const std::string& name) { return name.find("mlp") != std::string::npos; };
  std::vector<std::string> names;
  options.on_quantized = [&](const std::string& name, const quant::QuantizedTensor& q) {
    names.push_back(name);
    EXPECT_TRUE(io::test::same_quantized(options.method->quantize(tensors.at(name), options.params), q)) << name;
  };
  const auto report = quantize_layerwise(model, random_samples(spec.vocab, rng), options);
  EXPECT_EQ(names, (std::vector<std::string>{"model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
                                             "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.gate_proj.weight",
                                             "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"}));
  for (const auto& l : report.linears) {
    EXPECT_EQ(l.calibration_tokens, 0);
    EXPECT_GT(l.weight_error, 0.0);
    EXPECT_LT(l.weight_error, 0.2);
  }
}

TEST(Layerwise, RefusesALoadedModelAndEmptySamples) {
  TempDir dir;
  write_tiny_model(dir.path());
  LayerwiseOptions options;
  options.method = &quant::find_method("affine");
  LlamaModel loaded = LlamaModel::load(dir.path());
  const std::vector<std::vector<std::int32_t>> samples = {{1, 2, 3}};
  EXPECT_NE(error_message([&] { (void)quantize_layerwise(loaded, samples, options); }, ErrorCode::InvalidArgument)
                .find("layers_on_demand"),
            std::string::npos);
  LlamaModel lazy = LlamaModel::load(dir.path(), {.layers_on_demand = true});
  error_message([&] { (void)quantize_layerwise(lazy, {}, options); }, ErrorCode::InvalidArgument);
  const std::vector<std::vector<std::int32_t>> empty = {{}};
  error_message([&] { (void)quantize_layerwise(lazy, empty, options); }, ErrorCode::InvalidArgument);
  EXPECT_NE(error_message([&] { (void)lazy.forward(std::vector<std::int32_t>{1}); }, ErrorCode::InvalidArgument)
                .find("load_layer(0)"),
            std::string::npos);
}

TEST(CalibrationSamples, WindowsAreSeededSlicesAndDocumentsAreTruncated) {
  LOWBIT_REQUIRE_STORIES15M();
  const Tokenizer tokenizer = Tokenizer::load(kStories15M);
  std::string text;
  for (int i = 0; i < 30; ++i) text += fmt::format("Story {} about a cat and a dog.\n<|endoftext|>\n", i);
  const std::vector<std::int32_t> all = tokenizer.encode(text);
  const auto a = calibration_samples(tokenizer, text, {.nsamples = 5, .seqlen = 16, .seed = 7});
  const auto b = calibration_samples(tokenizer, text, {.nsamples = 5, .seqlen = 16, .seed = 7});
  const auto c = calibration_samples(tokenizer, text, {.nsamples = 5, .seqlen = 16, .seed = 8});
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  ASSERT_EQ(a.size(), 5u);
  for (const auto& w : a) {
    ASSERT_EQ(w.size(), 16u);
    EXPECT_NE(std::search(all.begin(), all.end(), w.begin(), w.end()), all.end());
  }
  const auto docs = calibration_samples(
      tokenizer, text, {.nsamples = 4, .seqlen = 6, .split = CalibrationSplit::Documents});
  ASSERT_EQ(docs.size(), 4u);
  std::vector<std::int32_t> second = tokenizer.encode("Story 1 about a cat and a dog.");
  ASSERT_GT(second.size(), 6u);
  second.resize(6);
  EXPECT_EQ(docs[1], second);
  const auto paragraphs = calibration_samples(tokenizer, "first one\nstill first\n\n\nsecond\n",
                                              {.nsamples = 9, .seqlen = 64, .split = CalibrationSplit::Documents});
  ASSERT_EQ(paragraphs.size(), 2u);
  EXPECT_EQ(paragraphs[0], tokenizer.encode("first one\nstill first"));
  EXPECT_EQ(paragraphs[1], tokenizer.encode("second"));
  error_message([&] { (void)calibration_samples(tokenizer, "", {}); }, ErrorCode::InvalidArgument);
}

}  // namespace
}  // namespace lowbit::model
