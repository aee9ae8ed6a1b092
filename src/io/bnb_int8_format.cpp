#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "lowbit/io/formats/bnb_int8.hpp"
#include "lowbit/quant/llm_int8.hpp"

namespace lowbit::io {
namespace {

constexpr std::string_view kFormatNames[] = {"row", "col32", "col_turing", "col_ampere"};

// What the loader needs of a SafetensorsFile or a Checkpoint.
struct Source {
  std::string label;  // the file or checkpoint path, for messages
  std::function<bool(std::string_view)> contains;
  std::function<Tensor(std::string_view)> tensor;
};

std::string display_prefix(std::string_view prefix) {
  if (!prefix.empty() && prefix.back() == '.') prefix.remove_suffix(1);
  return prefix.empty() ? std::string("(root)") : std::string(prefix);
}

quant::QuantizedTensor load(const Source& src, std::string_view prefix, double threshold) {
  constexpr std::string_view op = "load_bnb_int8";
  LOWBIT_CHECK(std::isfinite(threshold) && threshold >= 0.0, ErrorCode::InvalidArgument,
               "{}: threshold = {} is not allowed; use a finite value >= 0 (config.json's llm_int8_threshold, "
               "6.0 by default)",
               op, threshold);
  const std::string layer = display_prefix(prefix);
  const std::string weight_key = bnb_int8_key(prefix, "weight");
  const std::string scb_key = bnb_int8_key(prefix, "SCB");
  const std::string format_key = bnb_int8_key(prefix, "weight_format");
  const bool has_weight = src.contains(weight_key);
  const bool has_scb = src.contains(scb_key);

  LOWBIT_CHECK(has_weight || has_scb, ErrorCode::InvalidArgument, "{}: '{}' has no layer '{}' (neither '{}' nor '{}')",
               op, src.label, layer, weight_key, scb_key);
  LOWBIT_CHECK(has_weight, ErrorCode::Corrupt, "{}: '{}': layer '{}' has '{}' but no '{}' (the int8 codes)", op,
               src.label, layer, scb_key, weight_key);
  const Tensor cb = src.tensor(weight_key);
  if (!has_scb) {
    LOWBIT_CHECK(cb.dtype() != DType::I8, ErrorCode::Corrupt,
                 "{}: '{}': layer '{}' has int8 '{}' {} but no '{}' (missing quantization component `SCB`)", op,
                 src.label, layer, weight_key, cb.describe(), scb_key);
    LOWBIT_THROW(ErrorCode::InvalidArgument,
                 "{}: '{}': layer '{}' is not an LLM.int8() layer: '{}' is {} and there is no '{}'", op, src.label,
                 layer, weight_key, cb.describe(), scb_key);
  }
  LOWBIT_CHECK(cb.dtype() == DType::I8 && cb.rank() == 2, ErrorCode::Corrupt,
               "{}: '{}': '{}' is {}; an LLM.int8() weight is int8 [n, k] (bitsandbytes' CB)", op, src.label,
               weight_key, cb.describe());
  const Tensor scb = src.tensor(scb_key);
  const std::int64_t n = cb.size(0);
  LOWBIT_CHECK(scb.dtype() == DType::F32 && scb.rank() == 1 && scb.size(0) == n, ErrorCode::Corrupt,
               "{}: '{}': '{}' is {}; expected f32[{}], one absmax per row of '{}' {}", op, src.label, scb_key,
               scb.describe(), n, weight_key, cb.describe());
  const float* absmax = scb.contiguous().data<float>();
  for (std::int64_t o = 0; o < n; ++o) {
    LOWBIT_CHECK(std::isfinite(absmax[o]) && absmax[o] >= 0.0f, ErrorCode::Corrupt,
                 "{}: '{}': '{}'[{}] = {}; a row absmax is finite and >= 0", op, src.label, scb_key, o, absmax[o]);
  }

  if (src.contains(format_key)) {
    const Tensor f = src.tensor(format_key);
    LOWBIT_CHECK(is_signed_integer(f.dtype()) || f.dtype() == DType::U8 || f.dtype() == DType::U16 ||
                     f.dtype() == DType::U32 || f.dtype() == DType::U64,
                 ErrorCode::Corrupt, "{}: '{}': '{}' is {}; expected a u8 scalar (0 = row)", op, src.label, format_key,
                 f.describe());
    LOWBIT_CHECK(f.numel() == 1 && !is_packed(f.dtype()), ErrorCode::Corrupt,
                 "{}: '{}': '{}' is {}; expected a u8 scalar (0 = row)", op, src.label, format_key, f.describe());
    const double code = f.contiguous().reshape({1}).get({0});
    LOWBIT_CHECK(code >= 0 && code <= 3, ErrorCode::Corrupt,
                 "{}: '{}': '{}' = {} is not a bitsandbytes weight format (0 row, 1 col32, 2 col_turing, 3 col_ampere)",
                 op, src.label, format_key, code);
    const int format = static_cast<int>(code);
    LOWBIT_CHECK(format == kBnbInt8FormatRow, ErrorCode::Unsupported,
                 "{}: '{}': '{}' = {} ('{}'), a tiled layout that bitsandbytes <= 0.44 saved after a GPU forward "
                 "pass; only 'row' (0) is supported; load and save the model again with bitsandbytes >= 0.45",
                 op, src.label, format_key, format, kFormatNames[format]);
  }

  quant::QuantizedTensor q;
  q.method = "llm_int8";
  q.shape = cb.shape();
  q.dtype = DType::F16;
  q.params.bits = 8;
  q.params.group_size = -1;
  q.params.symmetric = true;
  q.params.threshold = threshold;
  q.components.emplace("CB", cb);
  q.components.emplace("SCB", scb);
  return q;
}

}  // namespace

std::string bnb_int8_key(std::string_view prefix, std::string_view leaf) {
  if (prefix.empty()) return std::string(leaf);
  if (prefix.back() == '.') return fmt::format("{}{}", prefix, leaf);
  return fmt::format("{}.{}", prefix, leaf);
}

std::vector<std::pair<std::string, Tensor>> bnb_int8_tensors(std::string_view prefix, const quant::QuantizedTensor& q,
                                                             const Tensor& bias) {
  quant::check_llm_int8(q, "bnb_int8_tensors");
  std::vector<std::pair<std::string, Tensor>> out;
  out.emplace_back(bnb_int8_key(prefix, "weight"), q.component("CB"));
  out.emplace_back(bnb_int8_key(prefix, "SCB"), q.component("SCB"));
  const std::uint8_t row = kBnbInt8FormatRow;
  out.emplace_back(bnb_int8_key(prefix, "weight_format"),
                   Tensor::from_values(std::span<const std::uint8_t>(&row, 1), Shape()));
  if (bias.defined()) {
    LOWBIT_CHECK(bias.rank() == 1 && bias.size(0) == q.shape[0], ErrorCode::ShapeMismatch,
                 "bnb_int8_tensors: bias of '{}' is {}; expected [{}]", display_prefix(prefix), bias.describe(),
                 q.shape[0]);
    out.emplace_back(bnb_int8_key(prefix, "bias"), bias);
  }
  return out;
}

bool is_bnb_int8_layer(const SafetensorsFile& file, std::string_view prefix) {
  return file.contains(bnb_int8_key(prefix, "SCB"));
}

bool is_bnb_int8_layer(const Checkpoint& checkpoint, std::string_view prefix) {
  return checkpoint.contains(bnb_int8_key(prefix, "SCB"));
}

std::vector<std::string> bnb_int8_layers(const Checkpoint& checkpoint) {
  std::vector<std::string> layers;
  constexpr std::string_view kLeaf = "SCB";
  for (const std::string& name : checkpoint.names()) {
    if (name == kLeaf) {
      layers.emplace_back();
    } else if (name.size() > kLeaf.size() + 1 && name.ends_with(kLeaf) && name[name.size() - kLeaf.size() - 1] == '.') {
      layers.push_back(name.substr(0, name.size() - kLeaf.size() - 1));
    }
  }
  std::sort(layers.begin(), layers.end());
  return layers;
}

quant::QuantizedTensor load_bnb_int8(const SafetensorsFile& file, std::string_view prefix, double threshold) {
  const Source src{file.path().string(), [&](std::string_view name) { return file.contains(name); },
                   [&](std::string_view name) { return file.tensor(name); }};
  return load(src, prefix, threshold);
}

quant::QuantizedTensor load_bnb_int8(const Checkpoint& checkpoint, std::string_view prefix, double threshold) {
  const Source src{checkpoint.path().string(), [&](std::string_view name) { return checkpoint.contains(name); },
                   [&](std::string_view name) { return checkpoint.tensor(name); }};
  return load(src, prefix, threshold);
}

}  // namespace lowbit::io
