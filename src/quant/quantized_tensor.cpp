#include "lowbit/quant/quantized_tensor.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace lowbit::quant {

const Tensor& QuantizedTensor::component(std::string_view name) const {
  const auto it = components.find(std::string(name));
  if (it == components.end()) {
    std::string present;
    for (const auto& [key, _] : components) present += (present.empty() ? "" : ", ") + key;
    LOWBIT_THROW(ErrorCode::InvalidArgument, "{}: quantized tensor has no component '{}' (present: {})", method, name,
                 present.empty() ? "none" : present);
  }
  return it->second;
}

std::uint64_t QuantizedTensor::storage_bytes() const {
  std::uint64_t total = 0;
  for (const auto& [_, t] : components) total += t.nbytes();
  return total;
}

double QuantizedTensor::packed_bits() const {
  double bits = 0;
  for (const auto& [name, t] : components) {
    const bool unpacked_codes = name == "codes" && t.dtype() == DType::U8 && params.bits > 0 && params.bits < 8 &&
                                t.numel() == shape.numel();
    bits += unpacked_codes ? static_cast<double>(t.numel()) * params.bits : static_cast<double>(t.nbytes()) * 8.0;
  }
  return bits;
}

double QuantizedTensor::packed_bits_per_weight() const {
  const std::int64_t n = shape.numel();
  return n == 0 ? 0.0 : packed_bits() / static_cast<double>(n);
}

double QuantizedTensor::bits_per_weight() const {
  const std::int64_t n = shape.numel();
  return n == 0 ? 0.0 : static_cast<double>(storage_bytes()) * 8.0 / static_cast<double>(n);
}

std::string QuantizedTensor::describe() const {
  std::string out = fmt::format("{} {} ({})", method, shape.to_string(), params_to_json(params));
  for (const auto& [key, t] : components) out += fmt::format(" {}:{}{}", key, dtype_name(t.dtype()), t.shape().to_string());
  return out;
}

std::string params_to_json(const QuantParams& p) {
  nlohmann::json j;
  j["bits"] = p.bits;
  j["group_size"] = p.group_size;
  j["block_size"] = p.block_size;
  j["axis"] = p.axis;
  j["symmetric"] = p.symmetric;
  j["double_quant"] = p.double_quant;
  j["nested_block_size"] = p.nested_block_size;
  j["threshold"] = p.threshold;
  j["variant"] = p.variant;
  return j.dump();
}

QuantParams params_from_json(std::string_view text, std::string_view context) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  LOWBIT_CHECK(j.is_object(), ErrorCode::Corrupt, "{}: quantization parameters are not a JSON object: '{}'", context,
               text.substr(0, 200));
  QuantParams p;
  for (const auto& [key, value] : j.items()) {
    try {
      if (key == "bits") p.bits = value.get<int>();
      else if (key == "group_size") p.group_size = value.get<std::int64_t>();
      else if (key == "block_size") p.block_size = value.get<std::int64_t>();
      else if (key == "axis") p.axis = value.get<int>();
      else if (key == "symmetric") p.symmetric = value.get<bool>();
      else if (key == "double_quant") p.double_quant = value.get<bool>();
      else if (key == "nested_block_size") p.nested_block_size = value.get<std::int64_t>();
      else if (key == "threshold") p.threshold = value.get<double>();
      else if (key == "variant") p.variant = value.get<std::string>();
      else LOWBIT_THROW(ErrorCode::Corrupt, "{}: unknown quantization parameter '{}'", context, key);
    } catch (const nlohmann::json::exception& e) {
      LOWBIT_THROW(ErrorCode::Corrupt, "{}: quantization parameter '{}' has the wrong type ({})", context, key,
                   value.dump());
    }
  }
  return p;
}

}  // namespace lowbit::quant
