// bitsandbytes 4-bit checkpoints (Linear4bit / Params4bit, transformers load_in_4bit): the tensors of one
// quantized linear layer, the QuantizedTensor ("nf4" or "fp4", quant/nf4.hpp) they hold, and the
// quantization_config transformers puts into config.json. Byte layout: docs/formats.md#nf4.
//
// For a layer whose module name is P ("model.layers.0.mlp.down_proj"), Linear4bit._save_to_state_dict
// writes the weight, the bias and QuantState.as_dict(packed=True) under P.weight.:
//
//     P.weight                                  u8 [ceil(numel/2), 1]  packed codes (our "codes" component);
//                                               another dtype when quant_storage is not uint8: the same
//                                               bytes reinterpreted, [bytes / itemsize, 1]
//     P.weight.absmax                           f32 [nb], or u8 [nb] when double quantized
//     P.weight.quant_map                        f32 [16]
//     P.weight.nested_absmax                    f32 [ceil(nb/256)]     double quantized only
//     P.weight.nested_quant_map                 f32 [256]              double quantized only
//     P.weight.quant_state.bitsandbytes__nf4    u8 [len]   (__fp4 for FP4) UTF-8 JSON, Python json.dumps:
//         {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 11008],
//          "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01233999989926815}
//         (the last three keys only when double quantized; nested_offset is our "nested_offset" component)
//     P.bias                                    model dtype [n], unquantized, when the layer has one
//
// A prefix may be given with or without its trailing '.'; an empty prefix means bare keys ("weight").
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowbit/core/tensor.hpp"
#include "lowbit/io/checkpoint.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/quant/nf4.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::io {

// "P.leaf" (or "leaf" for an empty prefix; a prefix ending in '.' is used as is).
std::string bnb_4bit_key(std::string_view prefix, std::string_view leaf);

// The JSON text of the quant_state blob for q, byte-identical to what bitsandbytes writes (Python
// json.dumps defaults: ", " and ": " separators, keys in QuantState.as_dict order, nested_offset as
// Python's repr of the fp32 value widened to double). Throws what quant::validate_nf4 throws.
std::string bnb_4bit_quant_state_json(const quant::QuantizedTensor& q);

// The tensors that store q (an "nf4" or "fp4" QuantizedTensor) as bitsandbytes does, in state_dict order:
// P.weight, P.bias (when `bias` is defined; written as given), then the quant_state items. Tensors are views
// of q's components where the layout allows. `quant_storage` is the dtype of P.weight (transformers'
// bnb_4bit_quant_storage; U8 by default). Throws what validate_nf4 throws; ShapeMismatch for a bias that is
// not [n] of a 2-D weight; InvalidArgument when the packed byte count is not a multiple of quant_storage's
// size (bitsandbytes would allocate (numel+1) / (2 * itemsize) elements and lose the tail) or when
// quant_storage is a packed dtype.
std::vector<std::pair<std::string, Tensor>> bnb_4bit_tensors(std::string_view prefix, const quant::QuantizedTensor& q,
                                                            const Tensor& bias = {}, DType quant_storage = DType::U8);

// True when the file / checkpoint holds P.weight.quant_state.bitsandbytes__nf4 or __fp4, the key that marks
// a 4-bit layer.
bool is_bnb_4bit_layer(const SafetensorsFile& file, std::string_view prefix);
bool is_bnb_4bit_layer(const Checkpoint& checkpoint, std::string_view prefix);
// Module names P (no trailing '.') of every 4-bit layer in the checkpoint, sorted.
std::vector<std::string> bnb_4bit_layers(const Checkpoint& checkpoint);

// Rebuilds the layer's QuantizedTensor: method = the blob's quant_type, shape and dtype from the blob,
// params {bits 4, block_size = blocksize, double_quant, nested_block_size}. Components are zero-copy views of
// the mapped file where possible ("codes" reinterprets P.weight's bytes whatever its dtype or shape, as
// bitsandbytes does); nested_offset is the blob's number rounded to fp32. Throws:
//   InvalidArgument  no quant_state blob for P (not a 4-bit layer);
//   Corrupt          a missing key (P.weight, P.weight.absmax, P.weight.quant_map, the nested tensors when the
//                    blob has nested_* keys, or nested_* tensors without them), both an __nf4 and an __fp4
//                    blob, a blob that is not a u8 vector or not a JSON object, a missing, mistyped or unknown
//                    JSON field (bitsandbytes' QuantState.from_dict accepts only its own), quant_type not
//                    matching the key, a tensor whose dtype or element count contradicts the blob (P.weight
//                    must hold exactly ceil(numel/2) bytes);
//   Unsupported      a blocksize or nested_blocksize outside bitsandbytes' sizes, a dtype other than
//                    float16/bfloat16/float32, nested_dtype other than float32, a shape of rank > 4, or a
//                    quant_map that is not bitsandbytes' table (its CUDA dequantize ignores the stored map
//                    while its batch-1 kernel uses it, so such a file means two different weights).
quant::QuantizedTensor load_bnb_4bit(const SafetensorsFile& file, std::string_view prefix);
quant::QuantizedTensor load_bnb_4bit(const Checkpoint& checkpoint, std::string_view prefix);

// config.json's "quantization_config" for a model whose linear layers were stored as above: transformers'
// BitsAndBytesConfig.to_dict() with load_in_4bit, written as transformers writes config.json (indent 2,
// keys sorted). The block size is not part of it (transformers always uses 64; each layer's blob has its
// own).
struct Bnb4bitQuantizationConfig {
  quant::Nf4Type type = quant::Nf4Type::NF4;
  bool double_quant = false;
  std::string compute_dtype = "float32";  // bnb_4bit_compute_dtype: "float32" (default), "bfloat16", ...
  std::string quant_storage = "uint8";    // bnb_4bit_quant_storage
  // llm_int8_skip_modules: modules kept unquantized; empty writes null (transformers then skips the output
  // head and tied modules by itself).
  std::vector<std::string> skip_modules;
};
std::string bnb_4bit_quantization_config_json(const Bnb4bitQuantizationConfig& config);

// Python's repr() of a double ("0.01233999989926815", "1e-05", "3.0", "-0.0"): the shortest digits that
// round-trip, in fixed notation when the decimal exponent is in [-4, 16), else d.ddde+XX. NaN and the
// infinities give json.dumps' tokens NaN, Infinity, -Infinity.
std::string python_float_repr(double value);

}  // namespace lowbit::io
