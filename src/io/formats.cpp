#include "lowbit/io/formats.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace lowbit::io {
namespace {

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  LOWBIT_CHECK(in.good(), ErrorCode::IO, "formats: cannot read '{}'", path.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

FormatWriter lowbit_writer() {
  FormatWriter w;
  w.name = "lowbit";
  w.summary = "lowbit's own layout: every method, components as '<weight>.<component>' (docs/formats.md#lowbit)";
  w.add = [](CheckpointWriter& out, const std::string& name, const quant::QuantizedTensor& q) {
    for (const auto& [n, t] : quantized_tensors(name, q)) out.add(n, t);
    const auto [key, value] = quantized_metadata(name, q);
    out.add_metadata(key, value);
  };
  w.config_json = [](const std::filesystem::path& config, const std::vector<QuantizedEntry>&) {
    return read_text(config);  // our layout describes itself in the safetensors metadata
  };
  w.finish = [](CheckpointWriter& out, const std::vector<QuantizedEntry>&) {
    out.add_metadata("format", "lowbit");
    out.add_metadata("lowbit.format_version", std::string(kLowbitFormatVersion));
  };
  return w;
}

}  // namespace

const std::vector<FormatWriter>& format_writers() {
  static const std::vector<FormatWriter> all = [] {
    std::vector<FormatWriter> v;
    v.push_back(lowbit_writer());
    return v;
  }();
  return all;
}

const FormatWriter& find_format_writer(std::string_view format, std::string_view method) {
  for (const auto& w : format_writers()) {
    if (w.name != format) continue;
    if (w.methods.empty() || std::find(w.methods.begin(), w.methods.end(), method) != w.methods.end()) return w;
    LOWBIT_THROW(ErrorCode::Unsupported, "quantize: format '{}' cannot store method '{}'; it stores {}", format, method,
                 fmt::join(w.methods, ", "));
  }
  LOWBIT_THROW(ErrorCode::InvalidArgument, "quantize: unknown format '{}'; available: {}", format,
               describe_format_writers());
}

std::string describe_format_writers() {
  std::string out;
  for (const auto& w : format_writers()) {
    if (!out.empty()) out += ", ";
    out += w.name + (w.methods.empty() ? " (any method)" : fmt::format(" ({})", fmt::join(w.methods, ", ")));
  }
  return out;
}

QuantizedCheckpoint open_quantized(const Checkpoint& checkpoint) {
  QuantizedCheckpoint out;
  out.weights = quantized_names(checkpoint);
  if (!out.weights.empty()) {
    out.format = "lowbit";
    for (const auto& w : out.weights) {
      for (const auto& name : checkpoint.names()) {
        if (name.starts_with(w + ".")) out.parts.insert(name);
      }
    }
    out.load = [&checkpoint](std::string_view weight) { return load_quantized(checkpoint, weight); };
    return out;
  }
  out.format = "dense";
  out.load = [&checkpoint](std::string_view weight) -> quant::QuantizedTensor {
    LOWBIT_THROW(ErrorCode::InvalidArgument, "'{}' holds no quantized weight '{}'", checkpoint.path().string(), weight);
  };
  return out;
}

}  // namespace lowbit::io
