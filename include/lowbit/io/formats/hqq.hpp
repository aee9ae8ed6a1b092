// HQQ checkpoints: the encoded HQQLinear.state_dict() that transformers saves (hqq >= 0.2.1; hqq.md
// section 7.1), read into and written from QuantizedTensors of method "hqq" (quant/hqq.hpp), and the
// quantization_config transformers puts in config.json.
//
// One layer "P" (e.g. "model.layers.0.self_attn.q_proj") is ~20 tensors "P.<key>":
//     P.W_q                 u8 (i32 for 3 bit; the compute dtype when view_as_float)  packed codes
//     P.scale, P.zero       compute dtype, [R, 1] (axis 1) / [1, C] (axis 0)
//     P.bias                compute dtype [n], only if the layer has one
//     P.nbits P.group_size P.axis           i32 []     (nbits f32 [] for 1.58: refused)
//     P.shape                               i64 [2]    [n, k]
//     P.packing P.unpack_view_dtype P.compute_dtype   u8 [len], ASCII ("4bit_u8", "torch.uint8", "torch.float16")
//     P.view_as_float P.quant_scale P.quant_zero P.offload_meta P.encoded_state_dict
//     P.stores_quant_config P.channel_wise P.optimize P.round_zero     u8 [] 0/1
// Byte layout: docs/formats.md#hqq. hqq's pickled qmodel.pt (section 7.2) is not read: it is not
// safetensors, and unpickling runs code. Quantized scales/zeros and offloaded meta (quant_scale,
// quant_zero, offload_meta, zero_scale, zero_q, ...) are refused with Unsupported: hqq >= 0.2.2 no longer
// makes them and cannot serialize them in this form.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/io/checkpoint.hpp"
#include "lowbit/io/formats.hpp"
#include "lowbit/quant/hqq.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::io {

// Key suffixes of one layer, in HQQLinear.state_dict()'s order ("bias" only when the layer has one).
inline constexpr std::string_view kHqqStateKeys[] = {
    "W_q",          "nbits",        "group_size",        "shape",        "scale",
    "zero",         "axis",         "packing",           "unpack_view_dtype", "view_as_float",
    "quant_scale",  "quant_zero",   "compute_dtype",     "bias",         "offload_meta",
    "encoded_state_dict", "stores_quant_config", "channel_wise", "optimize", "round_zero"};

// One HQQLinear as stored.
struct HqqLinear {
  quant::QuantizedTensor weight;  // method "hqq"; W_q in its integer view; scale, zero in the compute dtype
  Tensor bias;                    // undefined when the layer has none
  bool view_as_float = false;     // W_q is (or is to be) stored reinterpreted as the compute dtype
  // The quant config the layer records (stores_quant_config); informational, decoding does not need it.
  bool channel_wise = true;
  bool optimize = true;
  bool round_zero = false;
};

// The encoded state_dict of one layer: tensors "<layer>.<key>" ("<key>" when `layer` is empty), exactly
// as HQQLinear.state_dict() encodes them. Throws what quant::dequantize_hqq would for an inconsistent
// weight, and InvalidArgument when view_as_float cannot reinterpret W_q's rows.
std::vector<std::pair<std::string, Tensor>> hqq_state_dict(std::string_view layer, const HqqLinear& linear);

// Returns the tensor stored under a full name, or nullopt.
using TensorLookup = std::function<std::optional<Tensor>(const std::string& name)>;

// Decodes one layer from its tensors; `source` (a file or folder) labels messages. Throws
// InvalidArgument when "<layer>.W_q" is missing, Unsupported for the forms named above or 1.58 bits,
// Corrupt for keys that contradict each other (packing vs nbits, W_q / scale / zero shapes vs shape,
// group_size and axis, an unknown dtype name).
HqqLinear decode_hqq_linear(std::string_view layer, const TensorLookup& lookup, std::string_view source);
HqqLinear read_hqq_linear(const Checkpoint& checkpoint, std::string_view layer);
// Every layer "P" with a "P.W_q" tensor, sorted ("" for a bare state_dict with "W_q").
std::vector<std::string> hqq_layers(const Checkpoint& checkpoint);

// transformers' HqqConfig(nbits, group_size, axis=axis).to_dict() as JSON text, for config.json's
// "quantization_config" (round_zero = nbits == 4 and optimize = true, as BaseQuantizeConfig sets them).
std::string hqq_quantization_config(const quant::HqqConfig& config,
                                     const std::vector<std::string>& skip_modules = {"lm_head"});
// transformers' layer tag: the name without "model", "layers" and numbers ("self_attn.q_proj").
std::string hqq_linear_tag(std::string_view layer);

// For io/formats.cpp: the "hqq" writer (method "hqq" only; weights "<P>.weight" become "<P>.<key>";
// config.json gets quantization_config, one quant_config for all layers when they agree, else one per
// layer tag), and the reader of such checkpoints (format "hqq", weights "<P>.weight").
FormatWriter hqq_format_writer();
bool is_hqq_checkpoint(const Checkpoint& checkpoint);
QuantizedCheckpoint open_hqq(const Checkpoint& checkpoint);

}  // namespace lowbit::io
