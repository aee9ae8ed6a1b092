// lowbit's own on-disk form of quantized weights (docs/formats.md#lowbit), and a checkpoint writer.
//
// A quantized weight "W" (e.g. "model.layers.0.mlp.up_proj.weight") is stored as one safetensors tensor
// per component, "W.<component>" (e.g. "...up_proj.weight.codes"), and one metadata entry
// "lowbit.quant.W" holding JSON {"method", "shape", "dtype", "params"}. The file's metadata also holds
// "format": "lowbit" and "lowbit.format_version": "1". Dense tensors sit beside them under their own names.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "lowbit/io/checkpoint.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::io {

inline constexpr std::string_view kQuantMetadataPrefix = "lowbit.quant.";
inline constexpr std::string_view kLowbitFormatVersion = "1";

// The tensors and the metadata entry that store `q` under `name`.
std::vector<std::pair<std::string, Tensor>> quantized_tensors(const std::string& name,
                                                              const quant::QuantizedTensor& q);
std::pair<std::string, std::string> quantized_metadata(const std::string& name, const quant::QuantizedTensor& q);

// Names of the quantized weights a checkpoint holds in our form (from its files' metadata), sorted.
std::vector<std::string> quantized_names(const Checkpoint& checkpoint);
// Rebuilds one; throws InvalidArgument if `name` is not a quantized weight there, Corrupt if its metadata
// or components disagree (a missing component, a shape that contradicts the metadata).
quant::QuantizedTensor load_quantized(const Checkpoint& checkpoint, std::string_view name);

// Writes a checkpoint folder: tensors go into shards of at most `max_shard_bytes` (a tensor larger than
// that gets a shard of its own); finish() writes model.safetensors (one shard) or
// model-0000i-of-0000N.safetensors + model.safetensors.index.json, plus any extra files given.
// Everything is written into a temporary folder beside the target, which replaces the target only when
// complete: a failure at any point leaves the target as it was.
class CheckpointWriter {
 public:
  explicit CheckpointWriter(std::filesystem::path folder, std::uint64_t max_shard_bytes = 4ull << 30);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Adds a tensor; a full shard is written out before the tensor that would overflow it.
  void add(const std::string& name, const Tensor& tensor);
  // Goes into the shard being filled and every later one: set it before the first add() for every shard to
  // carry it (readers of our layout take the union over the shards).
  void add_metadata(const std::string& key, const std::string& value);
  // A file copied (or text written) into the folder: config.json, tokenizer files.
  void add_file(const std::filesystem::path& source, const std::string& name);
  void add_text_file(const std::string& name, const std::string& text);
  void finish();

  std::uint64_t bytes_written() const noexcept { return bytes_written_; }

 private:
  void flush_shard();

  std::filesystem::path folder_;
  std::filesystem::path temp_;
  std::uint64_t max_shard_bytes_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::pair<std::string, Tensor>> pending_;
  std::uint64_t pending_bytes_ = 0;
  std::vector<std::vector<std::string>> shard_names_;  // tensor names of each written shard
  std::uint64_t bytes_written_ = 0;
  bool finished_ = false;
};

}  // namespace lowbit::io
