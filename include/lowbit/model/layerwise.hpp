// Layer-by-layer quantization of a Llama-family model on calibration text: the driver every
// calibration-based method (GPTQ, AWQ, ...) runs under, and that data-free methods can run under too.
//
// The GPTQ reference's procedure (gptq.md section 2, "Layer-by-layer procedure"):
//
//     hidden[s] = embed(sample s)                              for every calibration sample s
//     for layer l = 0 .. L-1:                                  (only layer l's weights are in memory)
//         for each group of linears that are quantized together (true-sequential order below):
//             run layer l on every sample (outputs discarded); the inputs of the group's linears go into
//             one Calibration per distinct input (q/k/v share one, gate/up share one)
//             quantize each linear of the group from its weight and its Calibration; the layer runs the
//             quantized weight from now on
//         hidden[s] = layer l (now quantized) applied to hidden[s]            (Propagation::Quantized)
//
// Groups, true-sequential (the GPTQ reference with --true-sequential, AutoGPTQ and GPTQModel's default):
// [q, k, v], [o], [gate, up], [down]; otherwise one group of all seven linears, every Calibration taken
// from the same full-precision pass. Propagation::FullPrecision instead feeds layer l + 1 with layer l's
// full-precision outputs (AWQ's order, awq.md section 2.2), at the cost of a second activation buffer.
// A data-free method needs no capture pass: its linears are quantized straight from their weights, and
// only the propagation pass runs (so that the report's output errors are measured on the same inputs).
//
// A method that transforms a whole layer (AWQ: scales folded into the norms and into previous linears, so
// the checkpoint must carry changed norm weights and biases) runs as a LayerMethod instead: per layer, after
// the full-precision outputs are taken, it gets the layer's full-precision inputs, quantizes the layer as
// it likes, and leaves the layer in its quantized state (quantized linears running as their dequantized
// weights, norms replaced); the driver hands its quantized weights to on_quantized and the dense tensors
// it replaced to on_replaced. quantize_layerwise picks model/awq_layer.hpp's for the method "awq".
//
// Memory: the model must be loaded with LoadOptions::layers_on_demand. At any time the driver holds one
// decoder layer's weights (full precision, then quantized), the calibration activations (samples x
// seqlen x hidden floats, twice with FullPrecision), one layer's intermediate activations for one sample,
// and the Calibrations of one group (a k x k fp64 Hessian each for GPTQ). The report gives the largest
// sum of these it held and the process's peak resident set.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/core/progress.hpp"
#include "lowbit/model/llama.hpp"
#include "lowbit/model/tokenizer.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::model {

enum class Propagation : std::uint8_t {
  Quantized,      // the next layer sees the quantized layer's outputs (GPTQ)
  FullPrecision,  // the next layer sees the full-precision layer's outputs (AWQ)
};

// What a LayerMethod made of one layer.
struct LayerQuantized {
  std::string weight_name;      // "model.layers.3.mlp.down_proj.weight"
  quant::QuantizedTensor q;
  Tensor reference;             // f32 [n, k]: the full-precision weight q stands for (after any folding)
  std::int64_t calibration_tokens = 0;
};
struct LayerResult {
  std::vector<LayerQuantized> quantized;                // in kLayerLinears order
  std::vector<std::pair<std::string, Tensor>> replaced;  // dense tensors (f32) that replace the checkpoint's
  std::uint64_t held_bytes = 0;                          // the most it held at once beyond the layer's weights
};
// (model, layer, the layer's full-precision inputs one tensor per sample, which of its linears to quantize
// by kLayerLinears index). The layer is loaded and full precision when it is called.
using LayerMethod = std::function<LayerResult(LlamaModel& model, std::int64_t layer, std::span<const Tensor> inputs,
                                              const std::function<bool(int linear)>& selected)>;

struct LayerwiseOptions {
  const quant::MethodInfo* method = nullptr;  // required
  quant::QuantParams params;
  quant::SolverOptions solver;
  bool true_sequential = true;
  Propagation propagation = Propagation::Quantized;
  // Which linears to quantize, by weight name ("model.layers.3.mlp.down_proj.weight"); empty: all seven of
  // every layer. A linear left out stays full precision and is not passed to on_quantized.
  std::function<bool(const std::string& weight_name)> select;
  // Called with each quantized weight as soon as it is made (write it out; it is not kept).
  std::function<void(const std::string& weight_name, const quant::QuantizedTensor& q)> on_quantized;
  // Whole-layer methods: empty picks the method's own (AWQ) or none (linear-by-linear methods).
  LayerMethod layer_method;
  // Called with each dense tensor a LayerMethod replaced (norm weights, folded biases), f32, to be written
  // instead of the checkpoint's.
  std::function<void(const std::string& name, const Tensor& value)> on_replaced;
  // Called after layer l is done and released (its other tensors can be written out then).
  std::function<void(std::int64_t layer)> on_layer_done;
  // Stage "quantize"; one step per group of each layer; item "layer 3/32 mlp.gate_proj+up_proj".
  ProgressCallback progress;
};

struct LinearReport {
  std::string name;              // weight name
  std::int64_t n = 0, k = 0;
  double seconds = 0;            // quantizing it (the method's solve)
  double weight_error = 0;       // ||W - W_hat||_F / ||W||_F
  double bits_per_weight = 0;
  std::int64_t calibration_tokens = 0;  // rows its Calibration saw (0 for data-free methods)
};

struct LayerwiseReport {
  std::vector<LinearReport> linears;
  // Per layer: relative error ||y_q - y_fp||_F / ||y_fp||_F of the layer's output (the hidden-state
  // update it adds) on the calibration samples, the quantized layer against the full-precision layer,
  // both on the same inputs.
  std::vector<double> layer_output_error;
  std::int64_t samples = 0;
  std::int64_t tokens = 0;               // calibration tokens per pass
  std::uint64_t peak_held_bytes = 0;     // the driver's own accounting (see the header comment)
  std::uint64_t activation_bytes = 0;    // of that: calibration activations
  std::uint64_t layer_weight_bytes = 0;  // of that: the largest layer (full precision, repacked)
  std::uint64_t peak_rss_bytes = 0;      // the process's high-water mark (getrusage), 0 where unknown
  double seconds = 0;
};

// Calibration samples from text: `nsamples` token windows of `seqlen` (BOS first where the tokenizer adds
// one). Split::Windows: the GPTQ reference's wikitext2 loader: the text tokenized once, windows at random
// starts in [0, tokens - seqlen] drawn with `seed` (std::mt19937_64); fewer tokens than seqlen give one
// window of all of them. Split::Documents: AWQ's loader: the text split into documents on lines that are
// exactly `separator` (or, with no such line, on empty lines), each encoded on its own and truncated to
// seqlen tokens, the first nsamples non-empty ones in order. Throws InvalidArgument for nsamples or
// seqlen < 1 and for text that gives no token.
enum class CalibrationSplit : std::uint8_t { Windows, Documents };
struct CalibrationTextOptions {
  std::int64_t nsamples = 128;
  std::int64_t seqlen = 2048;
  CalibrationSplit split = CalibrationSplit::Windows;
  std::uint64_t seed = 0;
  std::string separator = "<|endoftext|>";
};
std::vector<std::vector<std::int32_t>> calibration_samples(const Tokenizer& tokenizer, std::string_view text,
                                                           const CalibrationTextOptions& options);

// Quantizes the model's decoder layers one at a time: each is loaded, calibrated, quantized (a quantized
// linear then runs as its dequantized weight, dense: the fastest exact way to run it on the CPU), run to
// make the next layer's inputs, and released; the quantized weights leave through on_quantized. The model
// must have been loaded with layers_on_demand and have no layer loaded. Output errors are measured on the
// first min(8, samples) samples. Throws InvalidArgument (no method, no or an empty sample, a model with a
// layer loaded, a linear that is already quantized), and whatever the method throws, prefixed with the
// weight's name.
LayerwiseReport quantize_layerwise(LlamaModel& model, std::span<const std::vector<std::int32_t>> samples,
                                   const LayerwiseOptions& options);

}  // namespace lowbit::model
