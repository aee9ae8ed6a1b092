// bitsandbytes LLM.int8() checkpoints (Linear8bitLt with has_fp16_weights=False, transformers
// load_in_8bit): the tensors of one quantized linear layer, and the QuantizedTensor ("llm_int8",
// quant/llm_int8.hpp) they hold.
//
// For a layer whose module name is P ("model.layers.0.mlp.down_proj"), Linear8bitLt._save_to_state_dict
// writes (byte layout: docs/formats.md#llm-int8):
//
//     P.weight         int8  [n, k]  CB, row-major ("row" format)
//     P.SCB            f32   [n]     absmax of each row of the fp16 weight
//     P.weight_format  u8    []      0 = "row" (since bitsandbytes 0.43.1; absent before, meaning row)
//     P.bias           model dtype [n], unquantized, when the layer has one
//
// Formats 1..3 ("col32", "col_turing", "col_ampere") are tiled layouts that bitsandbytes <= 0.44 could
// save after a forward pass on a GPU; current bitsandbytes refuses them, and so do we (Unsupported).
// A prefix may be given with or without its trailing '.'; an empty prefix means bare keys ("weight").
// The outlier threshold is not stored in the tensors (it is config.json's quantization_config
// llm_int8_threshold), so the loaders take it as an argument.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowbit/core/tensor.hpp"
#include "lowbit/io/checkpoint.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::io {

// bitsandbytes' LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING (utils.py): row = 0, col32 = 1, col_turing = 2,
// col_ampere = 3.
inline constexpr int kBnbInt8FormatRow = 0;

// "P.leaf" (or "leaf" for an empty prefix; a prefix ending in '.' is used as is).
std::string bnb_int8_key(std::string_view prefix, std::string_view leaf);

// The tensors that store `q` (an "llm_int8" QuantizedTensor) as bitsandbytes does: P.weight (CB),
// P.SCB, P.weight_format (u8 scalar 0), and P.bias when `bias` is defined (written as given: bitsandbytes
// keeps the model's dtype). Tensors are views of q's components, not copies.
// Throws what quant::check_llm_int8 throws, and ShapeMismatch for a bias that is not [n].
std::vector<std::pair<std::string, Tensor>> bnb_int8_tensors(std::string_view prefix, const quant::QuantizedTensor& q,
                                                             const Tensor& bias = {});

// True when the file / checkpoint holds P.SCB, the key that marks an LLM.int8() layer.
bool is_bnb_int8_layer(const SafetensorsFile& file, std::string_view prefix);
bool is_bnb_int8_layer(const Checkpoint& checkpoint, std::string_view prefix);
// Module names P of every LLM.int8() layer (every "P.SCB" key), sorted.
std::vector<std::string> bnb_int8_layers(const Checkpoint& checkpoint);

// Rebuilds the layer's QuantizedTensor: method "llm_int8", shape [n, k], dtype f16 (bitsandbytes always
// quantized the fp16 weight; a bf16 or f32 model is rounded to fp16 first), params.threshold = threshold.
// Components are zero-copy views of the mapped file. Throws:
//   InvalidArgument  neither P.weight nor P.SCB exists, or P.weight is a float weight with no P.SCB (not
//                    an LLM.int8() layer), or threshold < 0 / not finite;
//   Corrupt          P.SCB without P.weight, P.weight int8 without P.SCB (transformers: "Missing
//                    quantization component `SCB`"), P.weight not int8 [n, k], P.SCB not f32 [n], an SCB
//                    value that is negative, NaN or Inf, P.weight_format not a one-element integer tensor
//                    or not one of 0..3;
//   Unsupported      P.weight_format 1, 2 or 3 (tiled layouts).
quant::QuantizedTensor load_bnb_int8(const SafetensorsFile& file, std::string_view prefix, double threshold = 6.0);
quant::QuantizedTensor load_bnb_int8(const Checkpoint& checkpoint, std::string_view prefix, double threshold = 6.0);

}  // namespace lowbit::io
