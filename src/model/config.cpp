#include "lowbit/model/config.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "lowbit/core/error.hpp"
#include "lowbit/io/atomic_file.hpp"

namespace lowbit::model {
namespace {

template <typename T>
T get_or(const nlohmann::json& j, const char* key, T fallback, std::string_view source) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  try {
    return j[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    LOWBIT_THROW(ErrorCode::Corrupt, "config: {}: '{}' has the wrong type ({})", source, key, j[key].dump());
  }
}

std::int64_t require_positive(const nlohmann::json& j, const char* key, std::string_view source) {
  LOWBIT_CHECK(j.contains(key), ErrorCode::Corrupt, "config: {}: '{}' is missing", source, key);
  const auto v = get_or<std::int64_t>(j, key, 0, source);
  LOWBIT_CHECK(v > 0, ErrorCode::Corrupt, "config: {}: '{}' = {} must be positive", source, key, v);
  return v;
}

}  // namespace

LlamaConfig parse_llama_config(std::string_view text, std::string_view source) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  LOWBIT_CHECK(j.is_object(), ErrorCode::Corrupt, "config: {} is not a JSON object", source);
  LlamaConfig c;
  c.model_type = get_or<std::string>(j, "model_type", "", source);
  bool supported = false;
  for (const auto t : kSupportedModelTypes) supported = supported || c.model_type == t;
  LOWBIT_CHECK(supported, ErrorCode::Unsupported, "config: {}: model_type '{}' is not supported; supported: {}", source,
               c.model_type, fmt::join(kSupportedModelTypes, ", "));
  c.hidden_size = require_positive(j, "hidden_size", source);
  c.intermediate_size = require_positive(j, "intermediate_size", source);
  c.num_hidden_layers = require_positive(j, "num_hidden_layers", source);
  c.num_attention_heads = require_positive(j, "num_attention_heads", source);
  c.num_key_value_heads = j.contains("num_key_value_heads") ? require_positive(j, "num_key_value_heads", source)
                                                             : c.num_attention_heads;
  c.vocab_size = require_positive(j, "vocab_size", source);
  c.max_position_embeddings = get_or<std::int64_t>(j, "max_position_embeddings", 2048, source);
  c.head_dim = get_or<std::int64_t>(j, "head_dim", c.hidden_size / c.num_attention_heads, source);
  LOWBIT_CHECK(j.contains("head_dim") || c.hidden_size % c.num_attention_heads == 0, ErrorCode::Corrupt,
               "config: {}: hidden_size {} is not a multiple of num_attention_heads {}", source, c.hidden_size,
               c.num_attention_heads);
  LOWBIT_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0, ErrorCode::Corrupt, "config: {}: head_dim {} must be even (RoPE)",
               source, c.head_dim);
  LOWBIT_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, ErrorCode::Corrupt,
               "config: {}: num_attention_heads {} is not a multiple of num_key_value_heads {}", source,
               c.num_attention_heads, c.num_key_value_heads);
  c.rms_norm_eps = get_or<double>(j, "rms_norm_eps", 1e-6, source);
  c.rope_theta = get_or<double>(j, "rope_theta", 10000.0, source);
  c.attention_bias = get_or<bool>(j, "attention_bias", c.model_type == "qwen2", source);
  c.mlp_bias = get_or<bool>(j, "mlp_bias", false, source);
  c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false, source);
  if (c.model_type == "mistral") {
    c.sliding_window = get_or<std::int64_t>(j, "sliding_window", 0, source);
    LOWBIT_CHECK(c.sliding_window >= 0, ErrorCode::Corrupt, "config: {}: sliding_window = {} is negative", source,
                 c.sliding_window);
  } else if (c.model_type == "qwen2") {
    // Qwen2 windows only layers from max_window_layers on, and only when asked; its released models do not ask.
    LOWBIT_CHECK(!get_or<bool>(j, "use_sliding_window", false, source), ErrorCode::Unsupported,
                 "config: {}: use_sliding_window = true (Qwen2's per-layer sliding window) is not supported", source);
  }
  c.hidden_act = get_or<std::string>(j, "hidden_act", "silu", source);
  LOWBIT_CHECK(c.hidden_act == "silu", ErrorCode::Unsupported, "config: {}: hidden_act '{}' is not supported (silu is)",
               source, c.hidden_act);
  c.torch_dtype = get_or<std::string>(j, "torch_dtype", "", source);
  c.bos_token_id = get_or<std::int64_t>(j, "bos_token_id", 1, source);
  if (j.contains("eos_token_id") && j["eos_token_id"].is_array()) {
    c.eos_token_ids = get_or<std::vector<std::int64_t>>(j, "eos_token_id", {}, source);
  } else if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    c.eos_token_ids = {get_or<std::int64_t>(j, "eos_token_id", 2, source)};
  }
  if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
    const auto& r = j["rope_scaling"];
    c.rope_scaling.type = get_or<std::string>(r, "rope_type", get_or<std::string>(r, "type", "", source), source);
    c.rope_scaling.factor = get_or<double>(r, "factor", 1.0, source);
    c.rope_scaling.low_freq_factor = get_or<double>(r, "low_freq_factor", 1.0, source);
    c.rope_scaling.high_freq_factor = get_or<double>(r, "high_freq_factor", 4.0, source);
    c.rope_scaling.original_max_position_embeddings =
        get_or<std::int64_t>(r, "original_max_position_embeddings", 8192, source);
    LOWBIT_CHECK(c.rope_scaling.type == "llama3" || c.rope_scaling.type == "linear" || c.rope_scaling.type == "default",
                 ErrorCode::Unsupported, "config: {}: rope_scaling type '{}' is not supported (llama3, linear are)",
                 source, c.rope_scaling.type);
    if (c.rope_scaling.type == "default") c.rope_scaling.type.clear();
  }
  return c;
}

LlamaConfig load_llama_config(const std::filesystem::path& folder_or_file) {
  const auto path = std::filesystem::is_directory(folder_or_file) ? folder_or_file / "config.json" : folder_or_file;
  return parse_llama_config(io::read_text_file(path, "config"), path.string());
}

}  // namespace lowbit::model
