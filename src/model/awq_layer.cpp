#include "lowbit/model/awq_layer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "lowbit/core/error.hpp"
#include "lowbit/quant/affine.hpp"

namespace lowbit::model {
namespace {

// The captured inputs: q (k, v read it too), o, gate (up too), down; linear j reads kSlotOf[j].
constexpr int kSlotOf[7] = {0, 0, 0, 1, 2, 2, 3};
constexpr int kSlotLinear[4] = {0, 3, 4, 6};  // the linear whose hook call fills each slot

std::string module_name(std::int64_t layer, int j) { return fmt::format("model.layers.{}.{}", layer, kLayerLinears[j]); }

// Mean over tokens of |x| per channel, over every sample (fp64 sums).
std::vector<float> mean_abs(const std::vector<Tensor>& xs) {
  const std::int64_t k = xs.front().size(1);
  std::vector<double> sum(static_cast<std::size_t>(k), 0.0);
  std::int64_t tokens = 0;
  for (const Tensor& x : xs) {
    const float* p = x.data<float>();
    for (std::int64_t r = 0; r < x.size(0); ++r)
      for (std::int64_t j = 0; j < k; ++j) sum[static_cast<std::size_t>(j)] += std::abs(p[r * k + j]);
    tokens += x.size(0);
  }
  std::vector<float> out(static_cast<std::size_t>(k));
  for (std::int64_t j = 0; j < k; ++j)
    out[static_cast<std::size_t>(j)] = static_cast<float>(sum[static_cast<std::size_t>(j)] / static_cast<double>(tokens));
  return out;
}

// Mean over all elements of (a - b)^2, summed over the samples' tensors.
struct MeanSquare {
  double sum = 0;
  std::int64_t count = 0;
  void add(const Tensor& a, const Tensor& b) {
    const float* pa = a.data<float>();
    const float* pb = b.data<float>();
    for (std::int64_t i = 0; i < a.numel(); ++i) {
      const double d = static_cast<double>(pa[i]) - pb[i];
      sum += d * d;
    }
    count += a.numel();
  }
  double value() const { return count > 0 ? sum / static_cast<double>(count) : 0.0; }
};

// Rows 0, step, 2 step, ... of the concatenated samples (step = max(1, T / n_sample_token)): the clip
// search's input_feat[:, 0::step], gathered without concatenating everything.
Tensor sampled_rows(const std::vector<Tensor>& xs, std::int64_t n_sample_token) {
  std::int64_t total = 0;
  for (const Tensor& x : xs) total += x.size(0);
  const std::int64_t k = xs.front().size(1);
  const std::int64_t step = std::max<std::int64_t>(1, total / std::max<std::int64_t>(1, n_sample_token));
  const std::int64_t rows = (total + step - 1) / step;
  Tensor out = Tensor::empty({rows, k}, DType::F32);
  float* dst = out.data<float>();
  std::int64_t global = 0, taken = 0;
  for (const Tensor& x : xs) {
    for (std::int64_t r = 0; r < x.size(0); ++r, ++global) {
      if (global % step != 0) continue;
      std::copy(x.data<float>() + r * k, x.data<float>() + (r + 1) * k, dst + taken * k);
      ++taken;
    }
  }
  return out;
}

}  // namespace

quant::AwqConfig awq_config_from(const quant::QuantParams& params, const quant::SolverOptions& solver) {
  LOWBIT_CHECK(!params.symmetric, ErrorCode::InvalidArgument,
               "awq: the grid is zero-point (AWQ's zero_point = True); a symmetric grid is not supported");
  LOWBIT_CHECK(params.group_size != 0, ErrorCode::InvalidArgument,
               "awq: group_size 0 (one scale per tensor) is not an AWQ grid; use a group size or -1 (per row)");
  quant::AwqConfig c;
  c.bits = params.bits;
  c.group_size = params.group_size;
  c.duo_scaling = solver.duo_scaling;
  c.clip = solver.clip;
  return c;
}

LayerResult quantize_awq_layer(LlamaModel& model, std::int64_t l, std::span<const Tensor> inputs,
                               const quant::AwqConfig& config, const std::function<bool(int)>& selected_fn,
                               AwqLayerTrace* trace) {
  LOWBIT_CHECK(!inputs.empty(), ErrorCode::InvalidArgument, "awq layer {}: no calibration input", l);
  const auto selected = [&](int j) { return !selected_fn || selected_fn(j); };
  LayerResult result;

  // Full-precision weights (owned f32 copies, folded in place below) and biases.
  Tensor W[7], B[7];
  for (int j = 0; j < 7; ++j) {
    const Linear& current = *model.layer(l).linears[j];
    const auto* dense = dynamic_cast<const DenseLinear*>(&current);
    LOWBIT_CHECK(dense != nullptr, ErrorCode::InvalidArgument,
                 "awq: '{}' is already quantized ({}); start from a full-precision checkpoint", module_name(l, j),
                 current.describe());
    W[j] = dense->weight().to(DType::F32).contiguous().clone();
    if (dense->has_bias()) B[j] = dense->bias().clone();
  }
  std::vector<float> ln[2] = {model.layer(l).input_layernorm, model.layer(l).post_attention_layernorm};

  // 1. Inputs of q, o, gate, down on every sample.
  std::vector<Tensor> x[4];
  std::uint64_t captured = 0;
  {
    const LinearInputHook hook = [&](std::string_view name, const Tensor& input) {
      for (int slot = 0; slot < 4; ++slot) {
        if (name.ends_with(kLayerLinears[kSlotLinear[slot]])) {
          x[slot].push_back(input.clone());
          captured += input.nbytes();
        }
      }
    };
    for (const Tensor& h : inputs) {
      Tensor y = h.clone();
      model.forward_layer(l, y, LayerOptions{0, nullptr, &hook});
    }
  }
  std::int64_t tokens = 0;
  for (const Tensor& t : x[0]) tokens += t.size(0);

  const auto set_dense = [&](int j, const Tensor& w) {
    model.set_linear(module_name(l, j), std::make_unique<DenseLinear>(w, B[j]));
  };
  // Reference outputs of a module on its inputs, and a module's loss against them.
  const auto run_module = [&](int group, std::size_t s) -> Tensor {
    switch (group) {
      case 0: return model.attention(l, x[0][s]);
      case 1: return model.layer(l).linears[3]->forward(x[1][s]);
      case 2: return model.mlp(l, x[2][s]);
      default: return model.layer(l).linears[6]->forward(x[3][s]);
    }
  };

  // 2. Scale search, every group on the original weights and inputs.
  struct Group {
    std::vector<int> scaled;
    int prev_linear;  // -1: a norm
    int slot;         // its inputs
  };
  const Group groups[4] = {{{0, 1, 2}, -1, 0}, {{3}, 2, 1}, {{4, 5}, -1, 2}, {{6}, 5, 3}};
  std::vector<float> scales[4];
  std::uint64_t reference_bytes = 0;
  for (int gi = 0; gi < 4; ++gi) {
    const Group& g = groups[gi];
    bool all = g.prev_linear < 0 || selected(g.prev_linear);
    for (int j : g.scaled) all = all && selected(j);
    if (gi == 1) all = all && W[2].shape() == W[3].shape();  // v -> o only without GQA (awq.md 2.4)
    if (!all) continue;
    std::vector<Tensor> y_ref;
    reference_bytes = 0;
    for (std::size_t s = 0; s < x[g.slot].size(); ++s) {
      y_ref.push_back(run_module(gi, s));
      reference_bytes += y_ref.back().nbytes();
    }
    const std::vector<float> x_mean = mean_abs(x[g.slot]);
    std::vector<float> w_mean;
    if (config.duo_scaling) {
      std::vector<Tensor> ws;
      for (int j : g.scaled) ws.push_back(W[j]);
      w_mean = quant::awq_weight_mean(ws, config.group_size);
    }
    const auto loss = [&](std::span<const float> s) -> double {
      for (int j : g.scaled) {
        Tensor w = W[j].clone();
        const std::int64_t n = w.size(0), k = w.size(1);
        quant::awq_scale_columns(w.data<float>(), n, k, s);
        quant::awq_pseudo_quantize(w.data<float>(), n, k, config.bits, config.group_size);
        quant::awq_divide_columns(w.data<float>(), n, k, s);
        set_dense(j, w);
      }
      MeanSquare ms;
      for (std::size_t i = 0; i < y_ref.size(); ++i) ms.add(run_module(gi, i), y_ref[i]);
      return ms.value();
    };
    quant::AwqScaleSearch found = quant::awq_search_scale(x_mean, w_mean, config, loss);
    for (int j : g.scaled) set_dense(j, W[j]);  // restore
    if (trace != nullptr) {
      trace->alpha[gi] = found.alpha;
      trace->loss[gi] = found.loss;
      trace->losses[gi] = found.losses;
    }
    scales[gi] = std::move(found.scales);
  }
  result.held_bytes = captured + reference_bytes;

  // 3. Fold the scales; divide each captured input once.
  bool bias_changed[7] = {};
  for (int gi = 0; gi < 4; ++gi) {
    const std::vector<float>& s = scales[gi];
    if (s.empty()) continue;
    const Group& g = groups[gi];
    if (g.prev_linear < 0) {
      std::vector<float>& weight = ln[gi == 0 ? 0 : 1];
      for (std::size_t i = 0; i < weight.size(); ++i) weight[i] /= s[i];
    } else {
      Tensor& p = W[g.prev_linear];
      quant::awq_divide_rows(p.data<float>(), p.size(0), p.size(1),
                             B[g.prev_linear].defined() ? B[g.prev_linear].data<float>() : nullptr, s);
      bias_changed[g.prev_linear] = B[g.prev_linear].defined();
    }
    for (int j : g.scaled) quant::awq_scale_columns(W[j].data<float>(), W[j].size(0), W[j].size(1), s);
    for (Tensor& t : x[g.slot]) quant::awq_divide_columns(t.data<float>(), t.size(0), t.size(1), s);
  }

  // 4-5. Clip search (not q, k), then quantization of every selected linear.
  for (int j = 0; j < 7; ++j) {
    if (!selected(j)) {
      set_dense(j, W[j]);  // unchanged: no group that touches it was scaled
      continue;
    }
    Tensor clip;
    if (config.clip && j >= 2) clip = quant::awq_search_clip(W[j], sampled_rows(x[kSlotOf[j]], config.n_sample_token), config);
    LayerQuantized lq;
    lq.weight_name = module_name(l, j) + ".weight";
    lq.q = quant::quantize_awq(W[j], config.bits, config.group_size, clip);
    lq.reference = W[j];
    lq.calibration_tokens = tokens;
    set_dense(j, quant::dequantize_affine_reference(lq.q));
    result.quantized.push_back(std::move(lq));
  }
  for (int j = 0; j < 7; ++j) {
    if (bias_changed[j]) result.replaced.emplace_back(module_name(l, j) + ".bias", B[j]);
  }
  const std::int64_t h = model.hidden_size();
  const auto norm_tensor = [h](const std::vector<float>& v) {
    Tensor t = Tensor::empty({h}, DType::F32);
    std::copy(v.begin(), v.end(), t.data<float>());
    return t;
  };
  result.replaced.emplace_back(fmt::format("model.layers.{}.input_layernorm.weight", l), norm_tensor(ln[0]));
  result.replaced.emplace_back(fmt::format("model.layers.{}.post_attention_layernorm.weight", l), norm_tensor(ln[1]));
  model.set_layer_norm(l, LlamaModel::LayerNorm::Input, std::move(ln[0]));
  model.set_layer_norm(l, LlamaModel::LayerNorm::PostAttention, std::move(ln[1]));
  return result;
}

LayerMethod awq_layer_method(const quant::AwqConfig& config) {
  return [config](LlamaModel& model, std::int64_t layer, std::span<const Tensor> inputs,
                  const std::function<bool(int)>& selected) {
    return quantize_awq_layer(model, layer, inputs, config, selected);
  };
}

}  // namespace lowbit::model
