// AutoGPTQ / GPTQModel "gptq" checkpoints (docs/methods gptq.md section 5): read into and written from
// QuantizedTensors of method "affine" (quant/affine.hpp), with quantize_config.json and config.json's
// "quantization_config".
//
// One linear "P" (e.g. "model.layers.0.self_attn.q_proj"; its weight is "P.weight") with n outputs, k
// inputs, G = ceil(k / group_size) groups (1 for group_size -1) is stored as:
//
//     P.qweight   i32 [k*bits/32, n]   codes c[k][n], packed along the INPUT dimension
//     P.qzeros    i32 [G, n*bits/32]   zero-point fields, packed along the OUTPUT dimension
//     P.scales    f16 [G, n]           scale of group g, output n
//     P.g_idx     i32 [k]              group of every input channel
//     P.bias      [n]                  a dense tensor (copied through as it is); only when the linear has one
//
//     w[n][c] = scales[g][n] * (code[c][n] - z[g][n]),   g = g_idx[c]
//
// Packing (every width): a column of qweight (a row of qzeros) is one little-endian bit stream of
// `bits`-bit fields, field j at bits [bits*j, bits*j + bits) of the stream, word i holding stream bits
// [32i, 32i + 32). For 2/4/8 bits that is 32/bits whole fields per word, field 0 in the lowest bits:
//
//     4 bit word:  | c7 | c6 | c5 | c4 | c3 | c2 | c1 | c0 |      (bit 31 ... bit 0)
//
// For 3 bits, 32 fields fill 3 words and fields 10 and 21 straddle a word boundary:
//
//     w0: | c10 low 2 | c9 ... c0 (bits 29..0) |
//     w1: | c21 low 1 | c20 ... c11 (bits 30..1) | c10 high 1 |
//     w2: | c31 ... c22 (bits 31..2) | c21 high 2 |
//
// Zero points (the checkpoint's "checkpoint_format"): "gptq" (v1, AutoGPTQ, transformers, every kernel)
// stores z - 1 and readers add 1 back without wrapping; "gptq_v2" (GPTQModel) stores z. Symmetric grids
// have z = 2^(bits-1) everywhere, so their v1 fields are 2^(bits-1) - 1.
//
// Writer rules (lowbit's choice, gptq.md 5.3): symmetric tensors are written v1 ("gptq"), which every
// loader reads; asymmetric ones v2 ("gptq_v2"), because a zero point of 0 has no v1 field (AutoGPTQ's
// packer overflows into the neighbouring fields, GPTQModel refuses to load asymmetric v1 it did not
// write). gptq_linear_tensors() can still write v1 for asymmetric tensors and refuses one with a zero
// of 0. The writer needs k % 32 == 0 and n % 32 == 0 (AutoGPTQ allocates k / 32 * bits rows and silently
// drops a remainder), whole groups (k % group_size == 0), fp16 scales and the min-max grid.
//
// Reader rules: bits 2, 3, 4, 8; int32 words; k * bits and n * bits multiples of 32; v1 decodes
// z = field + 1 (a field of 2^bits - 1 then exceeds the grid: Unsupported, AutoGPTQ's asymmetric
// overflow), or with GPTQModel's exact inverse when GPTQModel wrote the file (GptqConfig::
// v1_from_gptqmodel); a symmetric file labelled v1 whose fields all equal 2^(bits-1) is read as v2
// (reported for GPTQModel v5+); symmetric files must decode to z = 2^(bits-1) everywhere. A g_idx equal
// to c / group_size is dropped (the tensor is plain affine), any other is kept as the affine "g_idx"
// component (act-order). bf16/f32 scales are read as f32 (exact).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/core/tensor.hpp"
#include "lowbit/io/checkpoint.hpp"
#include "lowbit/io/formats.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::io {

inline constexpr int kGptqBits[] = {2, 3, 4, 8};

// qzeros convention: V1 stores z - 1 ("gptq"), V2 stores z ("gptq_v2").
enum class GptqZeroFormat : std::uint8_t { V1, V2 };
// "gptq" / "gptq_v2": the value of "checkpoint_format".
std::string_view gptq_checkpoint_format(GptqZeroFormat format);

// ---- packing -------------------------------------------------------------------------------------------

// Packs every row of `values` (u8 [rows, count], each < 2^bits) into one bit stream of i32 words:
// i32 [rows, count * bits / 32]. Throws InvalidArgument for bits outside 2/3/4/8, count * bits not a
// multiple of 32, a value >= 2^bits (naming row, column and value) or a non-u8 2-D input.
Tensor gptq_pack(const Tensor& values, int bits);
// The inverse: i32 or u32 [rows, words] -> u8 [rows, words * 32 / bits]. Throws InvalidArgument for bad
// bits, words * 32 not a multiple of bits, or another dtype.
Tensor gptq_unpack(const Tensor& words, int bits);

// ---- configuration ------------------------------------------------------------------------------------

// GPTQModel's per-module override ("dynamic"): a regex matched at the start of the module name (Python
// re.match); "-:" rules skip the module (it stays dense), "+:" or unprefixed rules override fields. The
// first rule that matches decides.
struct GptqDynamicRule {
  std::string pattern;  // without its "+:" / "-:" prefix
  bool skip = false;
  std::optional<int> bits;
  std::optional<std::int64_t> group_size;
  std::optional<bool> sym;
};

// The keys of quantize_config.json (and config.json's quantization_config) that decide the layout.
struct GptqConfig {
  int bits = 4;                   // 2, 3, 4 or 8
  std::int64_t group_size = 128;  // input channels per group; -1: one group per output channel
  bool sym = true;                // zero points fixed at 2^(bits-1); missing in a file: true, as AutoGPTQ
  bool desc_act = false;          // act-order: g_idx may be permuted (loaders then honour g_idx)
  bool lm_head = false;           // lm_head is quantized too (GPTQModel)
  GptqZeroFormat zero_format = GptqZeroFormat::V1;
  // meta.quantizer names gptqmodel: its v1 fields were made from v2 words by subtracting 0x55555555 /
  // 0x11111111 / 0x01010101 (2/4/8 bits; a zero point of 0 borrows from the next field) or 1 per field
  // modulo 8 (3 bits), and are read with the exact inverse, as GPTQModel (and transformers through it)
  // reads them. Other v1 files are read field + 1, as AutoGPTQ and the kernels do; the two agree on
  // every file with no zero point of 0, every symmetric one among them.
  bool v1_from_gptqmodel = false;
  std::vector<GptqDynamicRule> dynamic;
};

// The settings of one module after the dynamic rules; nullopt when a "-:" rule skips it. Throws
// Unsupported for a pattern std::regex cannot compile.
std::optional<GptqConfig> gptq_module_config(const GptqConfig& config, std::string_view module);

// The dictionary GPTQModel writes (quantize_config.json, and config.json's quantization_config), as JSON
// text: bits, group_size, desc_act, sym, lm_head, quant_method "gptq", checkpoint_format, pack_dtype
// "int32", meta {quantizer}. (Calibration settings such as damp_percent are not part of the layout and
// are not written.) Throws InvalidArgument for bits or group_size GPTQ cannot hold.
std::string gptq_quantization_config(const GptqConfig& config);
// Parses such a dictionary, also AutoGPTQ's older forms (w_bit, q_group_size, "format"). Unknown keys are
// ignored. Throws Unsupported naming the key for another quant_method (awq, ...), a checkpoint format
// other than gptq / gptq_v2 (marlin, ...), a pack_dtype other than int32 or bits outside 2/3/4/8, and
// Corrupt for text that is not a JSON object or values of the wrong type. `source` labels messages.
GptqConfig parse_gptq_config(std::string_view json, std::string_view source);
// The GPTQ config beside a checkpoint (its folder, or the folder of a single file), looked for where
// AutoGPTQ looks: quantize_config.json, quant_config.json, then config.json's "quantization_config".
// nullopt when there is none; throws what parse_gptq_config throws, so a config of another quant_method
// (AWQ, bitsandbytes, ...) is an Unsupported error naming it.
std::optional<GptqConfig> find_gptq_config(const Checkpoint& checkpoint);

// ---- one linear ---------------------------------------------------------------------------------------

// The tensors that store `q` (method "affine", [n, k]) as module `module` ("P.qweight", "P.qzeros",
// "P.scales", "P.g_idx"). Without a g_idx component, g_idx = c / group_size (0 for -1) as the tools
// write it. Throws Unsupported for what the format cannot hold: the absmax grid, per-tensor groups
// (group_size 0), a shorter last group, n or k not a multiple of 32, f32 scales that fp16 does not hold
// exactly, and (V1) a zero point of 0; InvalidArgument for another method or a symmetric tensor whose
// zeros are not 2^(bits-1); what open_affine throws (Corrupt) for inconsistent components.
std::vector<std::pair<std::string, Tensor>> gptq_linear_tensors(std::string_view module,
                                                                const quant::QuantizedTensor& q, GptqZeroFormat format);

// Returns the tensor stored under a full name, or nullopt.
using TensorLookup = std::function<std::optional<Tensor>(const std::string& name)>;

// Decodes module `module` with the module's config into an affine QuantizedTensor of shape [n, k] and
// dtype `dtype` (the original weight's, e.g. config.json's torch_dtype). `source` labels messages.
// Throws InvalidArgument when "P.qweight" is missing, Unsupported for bits or word dtypes the format
// does not define (and v1 zero fields that overflow the grid), Corrupt naming the tensor for a missing
// qzeros/scales, any shape that contradicts qweight, bits and group_size, g_idx values outside
// [0, G), or a symmetric file whose zero points are not 2^(bits-1).
quant::QuantizedTensor decode_gptq_linear(std::string_view module, const TensorLookup& lookup, const GptqConfig& config,
                                          DType dtype, std::string_view source);
// The same from a checkpoint, with `config`'s dynamic rules applied to the module (Corrupt when they skip
// a module that has a qweight) and the dtype from config.json's torch_dtype (f16 without one).
quant::QuantizedTensor read_gptq_linear(const Checkpoint& checkpoint, std::string_view module,
                                        const GptqConfig& config);

// Every module "P" with a "P.qweight" tensor, sorted.
std::vector<std::string> gptq_modules(const Checkpoint& checkpoint);

// ---- shared with the other packed affine layouts (io/formats/awq.hpp) -------------------------------------

// The components of an affine tensor against its shape and params, with `groups` groups per row (as
// dequantize_affine_reference checks them, without making the dense weight): Corrupt naming the first that
// is wrong, prefixed by `what`.
void check_packed_affine_components(const quant::QuantizedTensor& q, std::int64_t groups, std::string_view what);
// The original weights' dtype: config.json's torch_dtype (or dtype) beside the checkpoint, f16 without one.
DType packed_checkpoint_dtype(const Checkpoint& checkpoint);

// For io/formats.cpp. The "gptq" writer stores methods "affine" and "gptq" (whose tensors are affine):
// weights "<P>.weight" become the tensors above; every weight of one checkpoint must share bits,
// group_size and sym (one quantization_config holds one setting: Unsupported otherwise); config.json
// gets the quantization_config and finish() writes quantize_config.json with the same dictionary.
// desc_act is true when any weight carried a permuted g_idx.
FormatWriter gptq_format_writer();
// A checkpoint holding "*.qweight" tensors: GPTQ's layout, or another that open_gptq refuses by name.
bool is_gptq_checkpoint(const Checkpoint& checkpoint);
// Format "gptq" (v1) or "gptq_v2"; weights "<P>.weight"; parts: qweight, qzeros, scales, g_idx. Throws
// InvalidArgument when no GPTQ config is found beside the weights, and what find_gptq_config throws.
QuantizedCheckpoint open_gptq(const Checkpoint& checkpoint);

}  // namespace lowbit::io
