// Quantized checkpoint layouts by name: lowbit's own and the ecosystem's (bitsandbytes, HQQ, ...), for
// writing (the CLI's --format) and for reading any quantized checkpoint lowbit understands.
#pragma once

#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/io/checkpoint.hpp"
#include "lowbit/io/quantized.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::io {

// A weight that was quantized, as a format writer needs to know it when writing config files.
struct QuantizedEntry {
  std::string name;
  std::string method;
  quant::QuantParams params;
};

struct FormatWriter {
  std::string name;                  // "lowbit", "bitsandbytes", "hqq"
  std::vector<std::string> methods;  // methods it can store; empty: every method
  std::string summary;
  // Adds the tensors (and metadata) that store q under `name`.
  std::function<void(CheckpointWriter& out, const std::string& name, const quant::QuantizedTensor& q)> add;
  // The output's config.json made from the input's (e.g. with a quantization_config added).
  std::function<std::string(const std::filesystem::path& config, const std::vector<QuantizedEntry>& entries)>
      config_json;
  // Called once after the last tensor: files and metadata that depend on all entries.
  std::function<void(CheckpointWriter& out, const std::vector<QuantizedEntry>& entries)> finish;
};

const std::vector<FormatWriter>& format_writers();
// Throws InvalidArgument naming the unknown format or the method it cannot store, and what is available.
const FormatWriter& find_format_writer(std::string_view format, std::string_view method);
// "lowbit (any method), bitsandbytes (nf4, fp4, llm_int8), ..."
std::string describe_format_writers();

// The quantized weights of a checkpoint in any layout lowbit reads.
struct QuantizedCheckpoint {
  std::string format;                // which layout was recognised
  std::vector<std::string> weights;  // names of the quantized weights ("...q_proj.weight"), sorted
  std::set<std::string> parts;       // tensors that belong to those weights (not dense tensors)
  std::function<quant::QuantizedTensor(std::string_view weight)> load;
};
// Recognises the layout from metadata and tensor names; a checkpoint with no quantized weight gives an
// empty `weights` list and format "dense".
QuantizedCheckpoint open_quantized(const Checkpoint& checkpoint);

}  // namespace lowbit::io
