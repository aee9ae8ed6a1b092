// AutoAWQ "awq" checkpoints, GEMM and GEMV layouts (docs/methods awq.md section 4): read into and written
// from QuantizedTensors of method "affine" (quant/affine.hpp), with config.json's "quantization_config"
// and quant_config.json.
//
// One linear "P" (e.g. "model.layers.0.mlp.down_proj"; its weight is "P.weight") with n outputs, k inputs,
// group size gs (k for -1) and G = k / gs groups. Codes are 4-bit; AutoAWQ stores the zero point as it is
// (no -1 offset, unlike GPTQ's v1), and both layouts decode
//
//     w[o][i] = scale(g, o) * (code(i, o) - zero(g, o)),   g = i / gs   (no g_idx, no act-order)
//
// GEMM (version "gemm", AutoAWQ's WQLinear_GEMM), packed along the OUTPUT dimension with an interleave:
//
//     P.qweight   i32 [k, n/8]    word c of row i holds outputs 8c .. 8c+7 of input i
//     P.qzeros    i32 [G, n/8]    the same packing of the zero points of group g
//     P.scales    f16 [G, n]      not interleaved
//     P.bias      f16 [n]         a dense tensor, copied through; only when the linear has one
//
//   Nibble j (bits [4j, 4j+4), LSB first) of word c holds output 8c + kAwqOrder[j]; equivalently output
//   8c + m sits in nibble kAwqReverseOrder[m]:
//
//     word:  | o7 | o5 | o3 | o1 | o6 | o4 | o2 | o0 |      (bit 31 ... bit 0)
//
//   Codes 0..7 of outputs 0..7 pack to 0x75316420; codes 1..8 to 0x86427531.
//
// GEMV (version "gemv", AutoAWQ's WQLinear_GEMV), packed along the INPUT dimension, natural order:
//
//     P.qweight   i32 [n, k/8]    nibble j of word c holds input 8c + j (codes 1..8 -> 0x87654321)
//     P.qzeros    i32 [n, Zw]     nibble j of word c holds the zero point of group 8c + j; 0 past G
//     P.scales    f16 [n, 8 Zw]   scale of group g at column g; 0 past G
//
//   Zw = awq_gemv_zeros_width(k, gs) = ceil(ceil(G / 8) / m) * m with m = 1 for gs >= 128, 2 for 64, 4 for
//   32 (AutoAWQ's calculate_zeros_width; other group sizes have no GEMV kernel and are refused). The
//   padding columns are written as AutoAWQ writes them (0) and ignored on reading.
//
// Config (awq.md 4.4): AutoAWQ writes config.json "quantization_config" = {"quant_method": "awq",
// "zero_point": true, "group_size": 128, "bits": 4, "version": "gemm", "modules_to_not_convert": null};
// older AutoAWQ and third-party folders have quant_config.json {"zero_point", "q_group_size", "w_bit",
// "version" (possibly upper case)}. lowbit writes both (the latter in AutoAWQ's to_dict form) and reads
// either, config.json first as AutoAWQ does. Unknown keys (transformers' backend, do_fuse, ...) are ignored.
//
// Writer rules: 4-bit affine min-max tensors with whole groups (k % gs == 0; gs -1 is one group of k),
// n % 8 == 0, fp16 scales (f32 only where fp16 holds them exactly), no g_idx; GEMV also needs k % 8 == 0
// and gs in {32, 64} or >= 128. Symmetric tensors are stored with their zero point 2^(bits-1) = 8 and read
// back as asymmetric (AWQ has no symmetric flag); the dequantized weights are the same.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lowbit/core/tensor.hpp"
#include "lowbit/io/checkpoint.hpp"
#include "lowbit/io/formats.hpp"
#include "lowbit/io/formats/gptq.hpp"  // TensorLookup, and the bit packing both formats share
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::io {

inline constexpr int kAwqBits = 4;  // AutoAWQ packs 4-bit codes only
// GEMM interleave: nibble j of a word holds output 8c + kAwqOrder[j]; output 8c + m is nibble kAwqReverseOrder[m].
inline constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};
inline constexpr int kAwqReverseOrder[8] = {0, 4, 1, 5, 2, 6, 3, 7};

enum class AwqVersion : std::uint8_t { Gemm, Gemv };
// "gemm" / "gemv": the value of "version".
std::string_view awq_version_name(AwqVersion version);

// ---- packing -------------------------------------------------------------------------------------------

// GEMM words: every row of `values` (u8 [rows, count], count % 8 == 0, each < 16) as i32 [rows, count / 8]
// with the interleave above (qweight from codes transposed to [k, n], qzeros from zeros [G, n]). Throws
// InvalidArgument for count not a multiple of 8, a value > 15 (naming row and column) or a non-u8 2-D input.
Tensor awq_gemm_pack(const Tensor& values);
// The inverse: i32 or u32 [rows, words] -> u8 [rows, 8 * words] in natural output order.
Tensor awq_gemm_unpack(const Tensor& words);
// GEMV's qzeros width Zw (above) for k inputs in groups of gs (k for -1). Throws Unsupported for a group
// size AutoAWQ's GEMV does not support (not 32, 64 or >= 128), InvalidArgument for k <= 0.
std::int64_t awq_gemv_zeros_width(std::int64_t k, std::int64_t group_size);

// ---- configuration ------------------------------------------------------------------------------------

struct AwqConfig {
  int bits = 4;                   // 4 only (AutoAWQ raises NotImplementedError for others)
  std::int64_t group_size = 128;  // input channels per group; -1: one group of k
  bool zero_point = true;         // false has no AutoAWQ export (its packers need zeros): refused
  AwqVersion version = AwqVersion::Gemm;
  std::vector<std::string> modules_to_not_convert;  // modules left dense (e.g. MoE routers); informational
};

// config.json's "quantization_config" as AutoAWQ's to_transformers_dict writes it (JSON text): quant_method,
// zero_point, group_size, bits, version (lower case), modules_to_not_convert (null when empty).
std::string awq_quantization_config(const AwqConfig& config);
// quant_config.json as AutoAWQ's to_dict writes it: zero_point, q_group_size, w_bit, version,
// modules_to_not_convert.
std::string awq_quant_config(const AwqConfig& config);
// Parses either form (keys bits | w_bit, group_size | q_group_size; version any case, missing: "gemm",
// transformers' default; missing bits 4, group 128, zero_point true, AutoAWQ's defaults). Unknown keys are
// ignored. Throws Unsupported naming the value for another quant_method (gptq, ...), a version other than
// gemm / gemv (gemv_fast, marlin, exllama, ipex: other layouts or kernels), transformers' backend "llm-awq"
// (TinyChat's layout), bits other than 4 or zero_point false; Corrupt for text that is not a JSON object,
// values of the wrong type and group sizes other than -1 or >= 1. `source` labels messages.
AwqConfig parse_awq_config(std::string_view json, std::string_view source);
// The AWQ config beside a checkpoint (its folder, or the folder of a single file), where AutoAWQ and vLLM
// look: config.json's "quantization_config" when its quant_method is "awq", then quant_config.json and
// quantize_config.json when they say quant_method "awq" or (without a quant_method) carry AutoAWQ's keys
// "version" or "zero_point". nullopt when none of them is an AWQ config (a GPTQ config is not an error
// here); throws what parse_awq_config throws for a malformed AWQ one.
std::optional<AwqConfig> find_awq_config(const Checkpoint& checkpoint);

// ---- one linear ---------------------------------------------------------------------------------------

// The tensors that store `q` (method "affine", [n, k]) as module `module` ("P.qweight", "P.qzeros",
// "P.scales") in layout `version`. Throws InvalidArgument for another method; Unsupported for what the
// layout cannot hold: bits other than 4, the absmax grid, per-tensor groups (group_size 0), a shorter last
// group, n not a multiple of 8, a g_idx (act-order), f32 scales fp16 does not hold exactly, and (GEMV) k
// not a multiple of 8 or a group size without a GEMV kernel; Corrupt for components that contradict the
// shape and params.
std::vector<std::pair<std::string, Tensor>> awq_linear_tensors(std::string_view module, const quant::QuantizedTensor& q,
                                                               AwqVersion version);

// Decodes module `module` into an affine QuantizedTensor [n, k] of dtype `dtype` (the original weight's).
// Throws InvalidArgument when "P.qweight" is missing; Unsupported for bits other than 4, words that are not
// int32, non-f16 scales; Corrupt naming the tensor for a missing qzeros / scales and any shape that
// contradicts qweight, the version and group_size (e.g. k not a multiple of the group size).
quant::QuantizedTensor decode_awq_linear(std::string_view module, const TensorLookup& lookup, const AwqConfig& config,
                                         DType dtype, std::string_view source);
// The same from a checkpoint, the dtype from config.json's torch_dtype (f16 without one).
quant::QuantizedTensor read_awq_linear(const Checkpoint& checkpoint, std::string_view module, const AwqConfig& config);

// For io/formats.cpp: writer "awq" (GEMM, what AutoAWQ and transformers default to) or "awq-gemv". Both store
// methods "affine" and "awq" (whose tensors are affine): weights "<P>.weight" become the tensors above;
// every weight of one checkpoint must share group_size (one config holds one setting: Unsupported
// otherwise); config.json gets the quantization_config, finish() writes quant_config.json, and every
// shard has metadata format "pt" as AutoAWQ's saver writes it.
FormatWriter awq_format_writer(AwqVersion version);
// A checkpoint with "*.qweight" tensors and an AWQ config (find_awq_config).
bool is_awq_checkpoint(const Checkpoint& checkpoint);
// Format "awq" (GEMM) or "awq-gemv", the writers' names; weights "<P>.weight"; parts qweight, qzeros, scales. Throws
// Unsupported naming quant_method 'awq' when the checkpoint holds "*.g_idx" tensors (GPTQ's layout under
// an AWQ label), and what find_awq_config throws.
QuantizedCheckpoint open_awq(const Checkpoint& checkpoint);

}  // namespace lowbit::io
