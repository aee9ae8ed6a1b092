// AWQ's per-block procedure on one Llama decoder layer (awq.md section 2.2 steps c-f), run by the
// layer-by-layer driver (layerwise.hpp) with the layer's full-precision inputs.
//
//   1. capture the inputs of q (= k, v), o, gate (= up) and down on every calibration sample;
//      x_mean per input channel over all tokens (fp64 sums)
//   2. search a scale for each group, all on the ORIGINAL weights and inputs (awq.md 2.4, 2.6):
//        # | prev op (gets 1/s)        | scaled (get *s) | loss: mean (y - y_ref)^2 of
//        1 | input_layernorm           | q, k, v         | attention(x)   (LlamaModel::attention, no residual)
//        2 | v_proj (its output rows)  | o               | o alone        (only if v and o are both [h, h])
//        3 | post_attention_layernorm  | gate, up        | mlp(x)         (LlamaModel::mlp)
//        4 | up_proj (its output rows) | down            | down alone
//      each candidate runs the module with W <- Q(W diag(s)) diag(s)^-1 for the scaled linears only
//   3. fold every chosen s (norm weight / s, previous linear's rows and bias / s, columns * s) and divide
//      each distinct cached input by its s once (q/k/v share one copy, gate/up one: the references keep a
//      copy per linear and divide each once, which is the same)
//   4. clip search on v, o, gate, up, down (not q, k) with the scaled weights and inputs (awq.md 2.8)
//   5. quantize every selected linear: Q(clamp(W diag(s))) on the AWQ grid, method "affine"
// A group one of whose linears is not selected is not scaled (so an unselected linear is never changed).
// The layer is left in its quantized state: linears as their dequantized weights, norms folded.
//
// Memory beyond the layer's weights: the captured inputs, tokens x (3 hidden + intermediate) floats, plus
// one module's reference outputs (tokens x hidden floats) during a search.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "lowbit/model/layerwise.hpp"
#include "lowbit/model/llama.hpp"
#include "lowbit/quant/awq.hpp"

namespace lowbit::model {

// What the search chose for one layer (for tests and reports).
struct AwqLayerTrace {
  double alpha[4] = {-1, -1, -1, -1};  // per scaling group (1..4 above); -1 where the group was skipped
  double loss[4] = {0, 0, 0, 0};       // its loss
  std::vector<double> losses[4];       // every grid point's
};

// Runs steps 1-5 on layer `layer` (loaded, full precision) of `model`. Throws InvalidArgument for a linear
// that is already quantized or no input, whatever the search throws (Numerical when no scale candidate
// gives a finite loss).
LayerResult quantize_awq_layer(LlamaModel& model, std::int64_t layer, std::span<const Tensor> inputs,
                               const quant::AwqConfig& config, const std::function<bool(int linear)>& selected = {},
                               AwqLayerTrace* trace = nullptr);

// The LayerMethod the driver runs for "awq".
LayerMethod awq_layer_method(const quant::AwqConfig& config);
// QuantParams (bits, group_size) and SolverOptions (duo_scaling, clip) -> AwqConfig. Throws
// InvalidArgument for a symmetric grid (AWQ's is zero-point) or a group_size of 0.
quant::AwqConfig awq_config_from(const quant::QuantParams& params, const quant::SolverOptions& solver);

}  // namespace lowbit::model
