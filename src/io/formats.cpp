#include "lowbit/io/formats.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "lowbit/io/formats/awq.hpp"
#include "lowbit/io/formats/bnb.hpp"
#include "lowbit/io/formats/bnb_int8.hpp"
#include "lowbit/io/formats/gptq.hpp"
#include "lowbit/io/formats/hqq.hpp"
#include "lowbit/io/atomic_file.hpp"

namespace lowbit::io {
namespace {

std::string read_text(const std::filesystem::path& path) { return read_text_file(path, "formats"); }

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

// "model.layers.0.mlp.up_proj.weight" -> "model.layers.0.mlp.up_proj": bitsandbytes keys hang off the module.
std::string module_of(const std::string& weight) {
  constexpr std::string_view kSuffix = ".weight";
  LOWBIT_CHECK(weight.ends_with(kSuffix), ErrorCode::InvalidArgument,
               "bitsandbytes layout: '{}' is not a '<module>.weight' tensor", weight);
  return weight.substr(0, weight.size() - kSuffix.size());
}

// config.json with "quantization_config" set, written as transformers writes it (indent 2, sorted keys).
std::string with_quantization_config(const std::filesystem::path& config, const std::string& quantization_config) {
  nlohmann::json j = nlohmann::json::parse(read_text(config), nullptr, /*allow_exceptions=*/false);
  LOWBIT_CHECK(j.is_object(), ErrorCode::Corrupt, "formats: '{}' is not a JSON object", config.string());
  j["quantization_config"] = nlohmann::json::parse(quantization_config);
  return j.dump(2) + "\n";
}

FormatWriter bitsandbytes_writer() {
  FormatWriter w;
  w.name = "bitsandbytes";
  w.methods = {"nf4", "fp4", "llm_int8"};
  w.summary = "transformers/bitsandbytes layout: Linear4bit quant_state keys, or Linear8bitLt CB/SCB";
  w.add = [](CheckpointWriter& out, const std::string& name, const quant::QuantizedTensor& q) {
    const std::string module = module_of(name);
    const auto tensors = q.method == "llm_int8" ? bnb_int8_tensors(module, q) : bnb_4bit_tensors(module, q);
    for (const auto& [n, t] : tensors) out.add(n, t);
  };
  w.config_json = [](const std::filesystem::path& config, const std::vector<QuantizedEntry>& entries) {
    LOWBIT_CHECK(!entries.empty(), ErrorCode::InvalidArgument, "bitsandbytes layout: nothing was quantized");
    const QuantizedEntry& e = entries.front();
    for (const auto& other : entries) {
      LOWBIT_CHECK(other.method == e.method && other.params == e.params, ErrorCode::Unsupported,
                   "bitsandbytes layout: one quantization_config holds one setting, but '{}' and '{}' differ",
                   e.name, other.name);
    }
    if (e.method == "llm_int8") {
      nlohmann::json q = {{"quant_method", "bitsandbytes"},          {"load_in_8bit", true},
                          {"load_in_4bit", false},                   {"llm_int8_threshold", e.params.threshold},
                          {"llm_int8_has_fp16_weight", false},       {"llm_int8_skip_modules", nullptr},
                          {"llm_int8_enable_fp32_cpu_offload", false}};
      return with_quantization_config(config, q.dump());
    }
    Bnb4bitQuantizationConfig c;
    c.type = e.method == "fp4" ? quant::Nf4Type::FP4 : quant::Nf4Type::NF4;
    c.double_quant = e.params.double_quant;
    return with_quantization_config(config, bnb_4bit_quantization_config_json(c));
  };
  w.finish = [](CheckpointWriter& out, const std::vector<QuantizedEntry>&) { out.add_metadata("format", "pt"); };
  return w;
}

// llm_int8_threshold from config.json's quantization_config, 6.0 (bitsandbytes' default) without one.
double int8_threshold(const Checkpoint& checkpoint) {
  const auto folder = std::filesystem::is_directory(checkpoint.path()) ? checkpoint.path()
                                                                         : checkpoint.path().parent_path();
  const auto config = folder / "config.json";
  if (!std::filesystem::exists(config)) return 6.0;
  const nlohmann::json j = nlohmann::json::parse(read_text(config), nullptr, false);
  if (j.is_object() && j.contains("quantization_config") && j["quantization_config"].is_object() &&
      j["quantization_config"].contains("llm_int8_threshold") &&
      j["quantization_config"]["llm_int8_threshold"].is_number())
    return j["quantization_config"]["llm_int8_threshold"].get<double>();
  return 6.0;
}

}  // namespace

const std::vector<FormatWriter>& format_writers() {
  static const std::vector<FormatWriter> all = [] {
    std::vector<FormatWriter> v;
    v.push_back(lowbit_writer());
    v.push_back(bitsandbytes_writer());
    v.push_back(hqq_format_writer());
    v.push_back(gptq_format_writer());
    v.push_back(awq_format_writer(AwqVersion::Gemm));
    v.push_back(awq_format_writer(AwqVersion::Gemv));
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
  const auto four_bit = bnb_4bit_layers(checkpoint);
  const auto eight_bit = bnb_int8_layers(checkpoint);
  if (!four_bit.empty() || !eight_bit.empty()) {
    out.format = "bitsandbytes";
    const std::set<std::string> int8_modules(eight_bit.begin(), eight_bit.end());
    for (const auto& m : four_bit) out.weights.push_back(m + ".weight");
    for (const auto& m : eight_bit) out.weights.push_back(m + ".weight");
    std::sort(out.weights.begin(), out.weights.end());
    for (const auto& name : checkpoint.names()) {
      for (const auto& w : out.weights) {
        const std::string module = w.substr(0, w.size() - 7);
        if (name == w || name.starts_with(w + ".") || name == module + ".SCB" || name == module + ".weight_format")
          out.parts.insert(name);
      }
    }
    const double threshold = int8_threshold(checkpoint);
    out.load = [&checkpoint, int8_modules, threshold](std::string_view weight) {
      const std::string module = module_of(std::string(weight));
      return int8_modules.count(module) ? load_bnb_int8(checkpoint, module, threshold)
                                        : load_bnb_4bit(checkpoint, module);
    };
    return out;
  }
  if (is_hqq_checkpoint(checkpoint)) return open_hqq(checkpoint);
  if (is_awq_checkpoint(checkpoint)) return open_awq(checkpoint);  // before gptq: both hold "*.qweight"
  if (is_gptq_checkpoint(checkpoint)) return open_gptq(checkpoint);
  out.format = "dense";
  out.load = [&checkpoint](std::string_view weight) -> quant::QuantizedTensor {
    LOWBIT_THROW(ErrorCode::InvalidArgument, "'{}' holds no quantized weight '{}'", checkpoint.path().string(), weight);
  };
  return out;
}

}  // namespace lowbit::io
