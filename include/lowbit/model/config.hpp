// The Llama-family configuration, read from a Hugging Face config.json.
//
// Supported: model_type "llama" (LlamaForCausalLM) and the same architecture under "mistral" and "qwen2"
// names where their config uses only the fields below. Anything else is Unsupported, naming the model type
// and listing what is supported.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace lowbit::model {

// Llama 3's RoPE frequency scaling (config "rope_scaling": {"rope_type": "llama3", ...}).
struct RopeScaling {
  std::string type;  // "" (none), "llama3", "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  std::string model_type = "llama";
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;  // < num_attention_heads: grouped-query attention
  std::int64_t head_dim = 0;             // hidden_size / num_attention_heads unless config says otherwise
  std::int64_t vocab_size = 0;
  std::int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool attention_bias = false;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  std::int64_t sliding_window = 0;  // Mistral's attention window (keys within this many positions); 0: none
  std::string hidden_act = "silu";
  std::string torch_dtype;
  std::int64_t bos_token_id = 1;
  std::vector<std::int64_t> eos_token_ids;  // config may give one id or a list
};

inline constexpr std::string_view kSupportedModelTypes[] = {"llama", "mistral", "qwen2"};

// Parses and checks config.json text; `source` labels messages. Throws Corrupt (bad JSON, wrong types,
// missing or inconsistent sizes) or Unsupported (another architecture, another activation).
LlamaConfig parse_llama_config(std::string_view json, std::string_view source);
// Reads `folder`/config.json (or the file itself when given one).
LlamaConfig load_llama_config(const std::filesystem::path& folder_or_file);

}  // namespace lowbit::model
