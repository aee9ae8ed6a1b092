#include "lowbit/model/layerwise.hpp"

#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <random>

#include "lowbit/core/error.hpp"
#include "lowbit/model/awq_layer.hpp"
#include "lowbit/model/perplexity.hpp"
#include "lowbit/quant/common.hpp"

namespace lowbit::model {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Which Calibration a linear's input goes to: q/k/v read the normed hidden states, o the attention
// output, gate/up the normed hidden states after attention, down the SwiGLU product.
constexpr int kInputOf[7] = {0, 0, 0, 1, 2, 2, 3};

// Samples whose output errors the report measures.
constexpr std::int64_t kErrorSamples = 8;

std::uint64_t peak_rss_bytes() {
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<std::uint64_t>(usage.ru_maxrss) * 1024u;  // KiB on Linux
}

std::string short_name(int j) {
  std::string_view n = kLayerLinears[j];
  return std::string(n.substr(n.find('.') + 1));
}

std::string group_label(const std::vector<int>& group) {
  std::string out;
  for (int j : group) {
    if (!out.empty()) out += "+";
    out += short_name(j);
  }
  return out;
}

// Adds ||a - b||^2 to diff2 and ||b - base||^2 to ref2 (b: the reference output, base: the layer's input).
void difference_norms(const Tensor& a, const Tensor& b, const Tensor& base, double& diff2, double& ref2) {
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  const float* px = base.data<float>();
  const std::int64_t count = a.numel();
  for (std::int64_t i = 0; i < count; ++i) {
    const double d = static_cast<double>(pa[i]) - pb[i];
    const double r = static_cast<double>(pb[i]) - px[i];
    diff2 += d * d;
    ref2 += r * r;
  }
}

// The whole-layer procedure of a method that has one.
LayerMethod default_layer_method(const quant::MethodInfo& method, const quant::QuantParams& params,
                                 const quant::SolverOptions& solver) {
  if (method.name == "awq") return awq_layer_method(awq_config_from(params, solver));
  LOWBIT_CHECK(!method.layer_level, ErrorCode::Unsupported,
               "quantize_layerwise: method '{}' transforms whole layers but the driver knows no layer procedure for it",
               method.name);
  return {};
}

}  // namespace

std::vector<std::vector<std::int32_t>> calibration_samples(const Tokenizer& tokenizer, std::string_view text,
                                                           const CalibrationTextOptions& o) {
  LOWBIT_CHECK(o.nsamples >= 1 && o.seqlen >= 1, ErrorCode::InvalidArgument,
               "calibration: nsamples = {} and seqlen = {} must both be at least 1", o.nsamples, o.seqlen);
  LOWBIT_CHECK(text.find_first_not_of(" \t\r\n") != std::string_view::npos, ErrorCode::InvalidArgument,
               "calibration: the text is empty");
  std::vector<std::vector<std::int32_t>> out;
  if (o.split == CalibrationSplit::Windows) {
    const std::vector<std::int32_t> ids = tokenizer.encode(text);
    LOWBIT_CHECK(!ids.empty(), ErrorCode::InvalidArgument, "calibration: the text gives no token");
    const auto total = static_cast<std::int64_t>(ids.size());
    if (total <= o.seqlen) {
      out.push_back(ids);
      return out;
    }
    std::mt19937_64 rng(o.seed);
    std::uniform_int_distribution<std::int64_t> start(0, total - o.seqlen);
    for (std::int64_t s = 0; s < o.nsamples; ++s) {
      const std::int64_t b = start(rng);
      out.emplace_back(ids.begin() + b, ids.begin() + b + o.seqlen);
    }
    return out;
  }
  std::vector<std::string> documents = split_stories(text, o.separator);
  if (documents.size() <= 1 && text.find(o.separator) == std::string_view::npos) {
    documents.clear();  // no separator lines: paragraphs separated by empty lines
    std::string current;
    std::size_t pos = 0;
    while (pos <= text.size()) {
      const std::size_t end = std::min(text.find('\n', pos), text.size());
      std::string_view line = text.substr(pos, end - pos);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.find_first_not_of(" \t") == std::string_view::npos) {
        if (!current.empty()) documents.push_back(std::move(current));
        current.clear();
      } else {
        if (!current.empty()) current += '\n';
        current += line;
      }
      pos = end + 1;
    }
    if (!current.empty()) documents.push_back(std::move(current));
  }
  for (const auto& doc : documents) {
    if (static_cast<std::int64_t>(out.size()) == o.nsamples) break;
    std::vector<std::int32_t> ids = tokenizer.encode(doc);
    if (ids.empty()) continue;
    if (static_cast<std::int64_t>(ids.size()) > o.seqlen) ids.resize(static_cast<std::size_t>(o.seqlen));
    out.push_back(std::move(ids));
  }
  LOWBIT_CHECK(!out.empty(), ErrorCode::InvalidArgument, "calibration: the text gives no document with a token");
  return out;
}

LayerwiseReport quantize_layerwise(LlamaModel& model, std::span<const std::vector<std::int32_t>> samples,
                                   const LayerwiseOptions& o) {
  LOWBIT_CHECK(o.method != nullptr, ErrorCode::InvalidArgument, "quantize_layerwise: no method given");
  LOWBIT_CHECK(!samples.empty(), ErrorCode::InvalidArgument, "quantize_layerwise: no calibration sample");
  const std::int64_t layers = model.num_layers();
  for (std::int64_t l = 0; l < layers; ++l) {
    LOWBIT_CHECK(!model.layer_loaded(l), ErrorCode::InvalidArgument,
                 "quantize_layerwise: layer {} is loaded; load the model with layers_on_demand so that one layer "
                 "at a time is in memory",
                 l);
  }
  for (std::size_t s = 0; s < samples.size(); ++s) {
    LOWBIT_CHECK(!samples[s].empty(), ErrorCode::InvalidArgument, "quantize_layerwise: calibration sample {} is empty",
                 s);
  }
  const quant::MethodInfo& method = *o.method;
  const bool calibrated = static_cast<bool>(method.quantize_calibrated);
  const auto start = Clock::now();
  const auto selected = [&](const std::string& weight) { return !o.select || o.select(weight); };

  LayerwiseReport report;
  report.samples = static_cast<std::int64_t>(samples.size());
  const std::uint64_t base_bytes = model.resident_bytes();  // embeddings, final norm

  // Calibration activations: the inputs of the current layer, one tensor per sample.
  std::vector<Tensor> hidden;
  hidden.reserve(samples.size());
  for (const auto& sample : samples) {
    hidden.push_back(model.embed(sample));
    report.tokens += static_cast<std::int64_t>(sample.size());
    report.activation_bytes += hidden.back().nbytes();
  }
  const bool full_precision = o.propagation == Propagation::FullPrecision;
  if (full_precision) report.activation_bytes *= 2;
  const auto error_samples = std::min<std::int64_t>(kErrorSamples, report.samples);
  std::uint64_t reference_bytes = 0, scratch_bytes = 0;
  for (std::int64_t s = 0; s < report.samples; ++s) {
    if (s < error_samples) reference_bytes += hidden[static_cast<std::size_t>(s)].nbytes();
    scratch_bytes = std::max<std::uint64_t>(scratch_bytes, hidden[static_cast<std::size_t>(s)].nbytes());
  }
  // A layer's intermediate activations for one sample: q, k, v, attention, gate, up (the forward's own).
  const LlamaConfig& c = model.config();
  std::int64_t longest = 0;
  for (const auto& sample : samples) longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(sample.size()));
  scratch_bytes += static_cast<std::uint64_t>(longest) * sizeof(float) *
                   static_cast<std::uint64_t>(2 * c.num_attention_heads * c.head_dim +
                                              2 * c.num_key_value_heads * c.head_dim + 2 * c.intermediate_size);
  const auto hold = [&](std::uint64_t bytes) {
    report.peak_held_bytes = std::max(report.peak_held_bytes, bytes);
  };

  const LayerMethod layer_method = o.layer_method ? o.layer_method : default_layer_method(method, o.params, o.solver);
  const std::vector<std::vector<int>> groups =
      layer_method ? std::vector<std::vector<int>>{}
      : o.true_sequential ? std::vector<std::vector<int>>{{0, 1, 2}, {3}, {4, 5}, {6}}
                          : std::vector<std::vector<int>>{{0, 1, 2, 3, 4, 5, 6}};
  ProgressReporter progress(o.progress, "quantize",
                            layers * std::max<std::int64_t>(1, static_cast<std::int64_t>(groups.size())));

  for (std::int64_t l = 0; l < layers; ++l) {
    model.load_layer(l);
    const std::uint64_t layer_bytes = model.resident_bytes() - base_bytes;
    report.layer_weight_bytes = std::max(report.layer_weight_bytes, layer_bytes);
    const std::uint64_t steady = base_bytes + report.activation_bytes + reference_bytes + layer_bytes + scratch_bytes;
    hold(steady);

    // Full-precision outputs: of the error samples (the report), and of every sample with FullPrecision.
    std::vector<Tensor> reference;
    std::vector<Tensor> next;
    for (std::int64_t s = 0; s < report.samples; ++s) {
      if (s >= error_samples && !full_precision) break;
      Tensor y = hidden[static_cast<std::size_t>(s)].clone();
      model.forward_layer(l, y);
      if (s < error_samples) reference.push_back(y);
      if (full_precision) next.push_back(std::move(y));
    }

    if (layer_method) {
      const auto t0 = Clock::now();
      const auto selected_linear = [&](int j) {
        return selected(fmt::format("model.layers.{}.{}.weight", l, kLayerLinears[j]));
      };
      LayerResult result;
      try {
        result = layer_method(model, l, hidden, selected_linear);
      } catch (const Error& e) {
        throw Error(e.code(), fmt::format("quantize layer {}: {}", l, e.what()));
      }
      hold(steady + result.held_bytes);
      const double seconds = seconds_since(t0) / static_cast<double>(std::max<std::size_t>(1, result.quantized.size()));
      for (const LayerQuantized& lq : result.quantized) {
        LinearReport lr;
        lr.name = lq.weight_name;
        lr.n = lq.q.shape[0];
        lr.k = lq.q.shape[1];
        lr.seconds = seconds;
        lr.weight_error =
            quant::error_stats(lq.reference, quant::find_method(lq.q.method).dequantize(lq.q)).relative_frobenius;
        lr.bits_per_weight = lq.q.bits_per_weight();
        lr.calibration_tokens = lq.calibration_tokens;
        report.linears.push_back(lr);
        if (o.on_quantized) o.on_quantized(lq.weight_name, lq.q);
      }
      for (const auto& [name, value] : result.replaced) {
        if (o.on_replaced) o.on_replaced(name, value);
      }
      progress.advance(1, fmt::format("layer {}/{} {}", l + 1, layers, method.name));
    }

    for (const auto& group : groups) {
      std::vector<int> todo;
      for (int j : group) {
        if (selected(fmt::format("model.layers.{}.{}.weight", l, kLayerLinears[j]))) todo.push_back(j);
      }
      const std::string label = fmt::format("layer {}/{} {}", l + 1, layers, group_label(group));
      if (todo.empty()) {
        progress.advance(1, label);
        continue;
      }
      // Capture: one Calibration per distinct input of the group's selected linears.
      std::map<int, quant::Calibration> calibration;
      std::vector<int> collectors;  // the first linear of each distinct input: its hook call feeds it
      std::uint64_t calibration_bytes = 0;
      if (calibrated && method.needs.any()) {
        for (int j : todo) {
          const int input = kInputOf[j];
          if (calibration.count(input)) continue;
          collectors.push_back(j);
          const std::int64_t k = model.layer(l).linears[j]->k();
          calibration.emplace(input, quant::Calibration(k, method.needs));
          calibration_bytes += static_cast<std::uint64_t>(
              (method.needs.hessian ? k * k * 8 : 0) + (method.needs.channel_stats ? k * 12 : 0) +
              std::min(method.needs.sample_rows, report.tokens) * k * 4);
        }
        hold(steady + calibration_bytes);
        // q, k and v (gate and up) report the same input one after another: it is taken once.
        const LinearInputHook hook = [&](std::string_view name, const Tensor& input) {
          for (int j : collectors) {
            if (name.ends_with(kLayerLinears[j])) calibration.at(kInputOf[j]).add(input, 1);
          }
        };
        for (const Tensor& h : hidden) {
          Tensor x = h.clone();
          model.forward_layer(l, x, LayerOptions{0, nullptr, &hook});
        }
      }
      for (int j : todo) {
        const std::string name = fmt::format("model.layers.{}.{}", l, kLayerLinears[j]);
        const std::string weight_name = name + ".weight";
        const Linear& current = *model.layer(l).linears[j];
        const auto* dense = dynamic_cast<const DenseLinear*>(&current);
        LOWBIT_CHECK(dense != nullptr, ErrorCode::InvalidArgument,
                     "quantize_layerwise: '{}' is already quantized ({}); start from a full-precision checkpoint",
                     weight_name, current.describe());
        const Tensor weight = dense->weight();
        const Tensor bias = dense->bias();
        const auto t0 = Clock::now();
        quant::QuantizedTensor q;
        try {
          q = calibrated ? method.quantize_calibrated(weight, o.params, calibration.at(kInputOf[j]), o.solver)
                         : method.quantize(weight, o.params);
        } catch (const Error& e) {
          throw Error(e.code(), fmt::format("quantize '{}': {}", weight_name, e.what()));
        }
        LinearReport lr;
        lr.name = weight_name;
        lr.n = current.n();
        lr.k = current.k();
        lr.seconds = seconds_since(t0);
        const Tensor w_hat = quant::find_method(q.method).dequantize(q);
        lr.weight_error = quant::error_stats(weight, w_hat).relative_frobenius;
        lr.bits_per_weight = q.bits_per_weight();
        if (calibrated && calibration.count(kInputOf[j])) lr.calibration_tokens = calibration.at(kInputOf[j]).tokens();
        report.linears.push_back(lr);
        if (o.on_quantized) o.on_quantized(weight_name, q);
        model.set_linear(name, std::make_unique<DenseLinear>(w_hat, bias));
      }
      progress.advance(1, label);
    }

    // The quantized layer's outputs: the next layer's inputs (or, with FullPrecision, only the report's).
    double diff2 = 0, ref2 = 0;
    for (std::int64_t s = 0; s < report.samples; ++s) {
      Tensor& h = hidden[static_cast<std::size_t>(s)];
      if (full_precision) {
        if (s >= error_samples) break;
        Tensor y = h.clone();
        model.forward_layer(l, y);
        difference_norms(y, reference[static_cast<std::size_t>(s)], h, diff2, ref2);
        continue;
      }
      if (s < error_samples) {
        const Tensor x = h.clone();
        model.forward_layer(l, h);
        difference_norms(h, reference[static_cast<std::size_t>(s)], x, diff2, ref2);
      } else {
        model.forward_layer(l, h);
      }
    }
    if (full_precision) hidden = std::move(next);
    report.layer_output_error.push_back(ref2 > 0 ? std::sqrt(diff2 / ref2) : 0.0);
    model.release_layer(l);
    if (o.on_layer_done) o.on_layer_done(l);
  }
  report.peak_rss_bytes = peak_rss_bytes();
  report.seconds = seconds_since(start);
  return report;
}

}  // namespace lowbit::model
