// Helpers of the model tests: tiny random Llama folders, a naive fp64 forward over the same tensors (the
// ground truth of the fp32 forward); test_util.hpp's temporary folder and error expectation.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numbers>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "lowbit/core/error.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/io/safetensors.hpp"
#include "test_util.hpp"

namespace lowbit::model::test {

inline const std::filesystem::path kSharedData = LOWBIT_SHARED_DATA_DIR;
inline const std::filesystem::path kStories15M = kSharedData / "stories15M";

// Skips the test, saying why, where ../shared/data is absent (CI, a fresh clone).
#define LOWBIT_REQUIRE_STORIES15M()                                                           \
  do {                                                                                        \
    if (!std::filesystem::exists(::lowbit::model::test::kStories15M / "model.safetensors")) { \
      GTEST_SKIP() << "no stories15M at " << ::lowbit::model::test::kStories15M.string()      \
                   << " (../shared/data is absent): skipped";                                 \
    }                                                                                         \
  } while (false)

using ::lowbit::test::error_message;
using ::lowbit::test::TempDir;

inline void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// The shape of a tiny Llama; defaults exercise GQA, biases, Llama 3 rope scaling and an untied head.
struct TinySpec {
  std::int64_t hidden = 32;
  std::int64_t inter = 48;
  std::int64_t layers = 2;
  std::int64_t heads = 4;
  std::int64_t kv_heads = 2;
  std::int64_t vocab = 61;
  std::int64_t max_positions = 64;
  bool attention_bias = true;
  bool mlp_bias = true;
  bool tie = false;
  bool llama3_rope = true;
  double rope_theta = 500.0;
  std::string model_type = "llama";
  std::int64_t sliding_window = 0;  // > 0: written to config.json (mistral reads it)
  DType dtype = DType::F32;
  std::uint64_t seed = 1;
};

using TensorMap = std::map<std::string, Tensor>;

inline nlohmann::json tiny_config(const TinySpec& s) {
  nlohmann::json c = {{"architectures", {"LlamaForCausalLM"}},
                      {"model_type", s.model_type},
                      {"hidden_size", s.hidden},
                      {"intermediate_size", s.inter},
                      {"num_hidden_layers", s.layers},
                      {"num_attention_heads", s.heads},
                      {"num_key_value_heads", s.kv_heads},
                      {"vocab_size", s.vocab},
                      {"max_position_embeddings", s.max_positions},
                      {"rms_norm_eps", 1e-5},
                      {"rope_theta", s.rope_theta},
                      {"hidden_act", "silu"},
                      {"attention_bias", s.attention_bias},
                      {"mlp_bias", s.mlp_bias},
                      {"tie_word_embeddings", s.tie},
                      {"bos_token_id", 1},
                      {"eos_token_id", 2}};
  if (s.sliding_window > 0) c["sliding_window"] = s.sliding_window;
  if (s.llama3_rope) {
    // Short original context so that all three frequency bands (kept, interpolated, divided) occur.
    c["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", 8.0},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 32}};
  }
  return c;
}

// Random fp32 tensors of a tiny model (weights ~ N(0, 1/sqrt(k)), norms ~ 1 + N(0, 0.1)), by name.
inline TensorMap tiny_tensors(const TinySpec& s) {
  std::mt19937_64 rng(s.seed);
  TensorMap t;
  const auto random = [&](const Shape& shape, double stddev, double mean = 0.0) {
    std::normal_distribution<double> dist(mean, stddev);
    Tensor out = Tensor::empty(shape, DType::F32);
    float* p = out.data<float>();
    for (std::int64_t i = 0; i < out.numel(); ++i) p[i] = static_cast<float>(dist(rng));
    return out;
  };
  const std::int64_t d = s.hidden / s.heads;
  const std::int64_t qw = s.heads * d;
  const std::int64_t kvw = s.kv_heads * d;
  t["model.embed_tokens.weight"] = random({s.vocab, s.hidden}, 1.0);
  for (std::int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const auto lin = [&](const std::string& name, std::int64_t n, std::int64_t k, bool bias) {
      t[p + name + ".weight"] = random({n, k}, 1.0 / std::sqrt(static_cast<double>(k)));
      if (bias) t[p + name + ".bias"] = random({n}, 0.1);
    };
    lin("self_attn.q_proj", qw, s.hidden, s.attention_bias);
    lin("self_attn.k_proj", kvw, s.hidden, s.attention_bias);
    lin("self_attn.v_proj", kvw, s.hidden, s.attention_bias);
    lin("self_attn.o_proj", s.hidden, qw, s.attention_bias && s.model_type != "qwen2");
    lin("mlp.gate_proj", s.inter, s.hidden, s.mlp_bias);
    lin("mlp.up_proj", s.inter, s.hidden, s.mlp_bias);
    lin("mlp.down_proj", s.hidden, s.inter, s.mlp_bias);
    t[p + "input_layernorm.weight"] = random({s.hidden}, 0.1, 1.0);
    t[p + "post_attention_layernorm.weight"] = random({s.hidden}, 0.1, 1.0);
  }
  t["model.norm.weight"] = random({s.hidden}, 0.1, 1.0);
  if (!s.tie) t["lm_head.weight"] = random({s.vocab, s.hidden}, 1.0 / std::sqrt(static_cast<double>(s.hidden)));
  return t;
}

// Writes config.json + model.safetensors (tensors converted to s.dtype) into `folder`.
inline void write_tiny_model(const std::filesystem::path& folder, const TinySpec& s, const TensorMap& tensors,
                             const nlohmann::json& config) {
  std::filesystem::create_directories(folder);
  write_text(folder / "config.json", config.dump(2));
  std::vector<std::pair<std::string, Tensor>> list;
  for (const auto& [name, tensor] : tensors)
    list.emplace_back(name, is_floating(tensor.dtype()) ? tensor.to(s.dtype) : tensor);
  io::save_safetensors(folder / "model.safetensors", list);
}

inline TensorMap write_tiny_model(const std::filesystem::path& folder, const TinySpec& s = {}) {
  TensorMap t = tiny_tensors(s);
  write_tiny_model(folder, s, t, tiny_config(s));
  return t;
}

// ---- naive fp64 forward: plain loops over the tensors, written from transformers' modeling_llama.py ----------

using Matrix = std::vector<std::vector<double>>;  // [rows][cols]

inline std::vector<double> values(const Tensor& t) {
  const Tensor f = t.to(DType::F64).contiguous();
  const double* p = f.data<double>();
  return std::vector<double>(p, p + f.numel());
}

inline Matrix linear(const Matrix& x, const TensorMap& t, const std::string& name) {
  const Tensor& w = t.at(name + ".weight");
  const std::int64_t n = w.size(0);
  const std::int64_t k = w.size(1);
  const std::vector<double> wv = values(w);
  std::vector<double> b(static_cast<std::size_t>(n), 0.0);
  if (t.count(name + ".bias")) b = values(t.at(name + ".bias"));
  Matrix y(x.size(), std::vector<double>(static_cast<std::size_t>(n)));
  for (std::size_t r = 0; r < x.size(); ++r) {
    for (std::int64_t j = 0; j < n; ++j) {
      double sum = b[static_cast<std::size_t>(j)];
      for (std::int64_t i = 0; i < k; ++i)
        sum += x[r][static_cast<std::size_t>(i)] * wv[static_cast<std::size_t>(j * k + i)];
      y[r][static_cast<std::size_t>(j)] = sum;
    }
  }
  return y;
}

inline Matrix rms_norm(const Matrix& x, const Tensor& weight, double eps) {
  const std::vector<double> w = values(weight);
  Matrix y = x;
  for (auto& row : y) {
    double ss = 0;
    for (double v : row) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(row.size()) + eps);
    for (std::size_t i = 0; i < row.size(); ++i) row[i] = row[i] * inv * w[i];
  }
  return y;
}

// Llama 3 scaling as in transformers' _compute_llama3_parameters.
inline std::vector<double> naive_inv_freq(const nlohmann::json& config, std::int64_t d) {
  std::vector<double> f(static_cast<std::size_t>(d / 2));
  const double theta = config["rope_theta"].get<double>();
  for (std::int64_t i = 0; i < d / 2; ++i) f[static_cast<std::size_t>(i)] = 1.0 / std::pow(theta, 2.0 * i / d);
  if (config.contains("rope_scaling")) {
    const auto& r = config["rope_scaling"];
    const double factor = r["factor"], low = r["low_freq_factor"], high = r["high_freq_factor"];
    const double old_len = r["original_max_position_embeddings"];
    for (double& v : f) {
      const double wavelen = 2 * std::numbers::pi / v;
      const double scaled = wavelen > old_len / low ? v / factor : v;
      const double smooth = (old_len / wavelen - low) / (high - low);
      const bool medium = !(wavelen < old_len / high) && !(wavelen > old_len / low);
      v = medium ? (1 - smooth) * scaled / factor + smooth * scaled : scaled;
    }
  }
  return f;
}

// Logits [T][vocab] of `tokens` at positions 0..T-1.
inline Matrix naive_forward(const TensorMap& t, const nlohmann::json& config, const std::vector<std::int32_t>& tokens) {
  const std::int64_t hidden = config["hidden_size"], heads = config["num_attention_heads"];
  const std::int64_t kv_heads = config["num_key_value_heads"], layers = config["num_hidden_layers"];
  const double eps = config["rms_norm_eps"];
  // Mistral's window: query r sees keys c with r - c < window.
  const std::size_t window = config.value("model_type", "") == "mistral" && config.contains("sliding_window")
                                 ? config["sliding_window"].get<std::size_t>()
                                 : 0;
  const std::int64_t d = hidden / heads;
  const std::vector<double> inv_freq = naive_inv_freq(config, d);
  const std::vector<double> embed = values(t.at("model.embed_tokens.weight"));
  const std::size_t T = tokens.size();
  Matrix h(T, std::vector<double>(static_cast<std::size_t>(hidden)));
  for (std::size_t r = 0; r < T; ++r)
    for (std::int64_t i = 0; i < hidden; ++i)
      h[r][static_cast<std::size_t>(i)] = embed[static_cast<std::size_t>(tokens[r] * hidden + i)];
  const auto rope = [&](Matrix& m, std::int64_t nh) {
    for (std::size_t r = 0; r < T; ++r)
      for (std::int64_t hd = 0; hd < nh; ++hd)
        for (std::int64_t i = 0; i < d / 2; ++i) {
          const double angle = static_cast<double>(r) * inv_freq[static_cast<std::size_t>(i)];
          double& a = m[r][static_cast<std::size_t>(hd * d + i)];
          double& b = m[r][static_cast<std::size_t>(hd * d + i + d / 2)];
          const double a0 = a, b0 = b;
          a = a0 * std::cos(angle) - b0 * std::sin(angle);
          b = b0 * std::cos(angle) + a0 * std::sin(angle);
        }
  };
  for (std::int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Matrix x = rms_norm(h, t.at(p + "input_layernorm.weight"), eps);
    Matrix q = linear(x, t, p + "self_attn.q_proj");
    Matrix k = linear(x, t, p + "self_attn.k_proj");
    Matrix v = linear(x, t, p + "self_attn.v_proj");
    rope(q, heads);
    rope(k, kv_heads);
    Matrix a(T, std::vector<double>(static_cast<std::size_t>(heads * d), 0.0));
    for (std::int64_t hd = 0; hd < heads; ++hd) {
      const std::int64_t g = hd / (heads / kv_heads);
      for (std::size_t r = 0; r < T; ++r) {
        std::vector<double> s(r + 1, 0.0);
        const std::size_t first = window > 0 && r + 1 > window ? r + 1 - window : 0;
        double max = -1e300;
        for (std::size_t c = first; c <= r; ++c) {
          double dot = 0;
          for (std::int64_t i = 0; i < d; ++i)
            dot += q[r][static_cast<std::size_t>(hd * d + i)] * k[c][static_cast<std::size_t>(g * d + i)];
          s[c] = dot / std::sqrt(static_cast<double>(d));
          max = std::max(max, s[c]);
        }
        double sum = 0;
        for (std::size_t c = first; c <= r; ++c) sum += (s[c] = std::exp(s[c] - max));
        for (std::size_t c = first; c <= r; ++c)
          for (std::int64_t i = 0; i < d; ++i)
            a[r][static_cast<std::size_t>(hd * d + i)] += s[c] / sum * v[c][static_cast<std::size_t>(g * d + i)];
      }
    }
    const Matrix o = linear(a, t, p + "self_attn.o_proj");
    for (std::size_t r = 0; r < T; ++r)
      for (std::size_t i = 0; i < h[r].size(); ++i) h[r][i] += o[r][i];
    x = rms_norm(h, t.at(p + "post_attention_layernorm.weight"), eps);
    Matrix gate = linear(x, t, p + "mlp.gate_proj");
    const Matrix up = linear(x, t, p + "mlp.up_proj");
    for (std::size_t r = 0; r < T; ++r)
      for (std::size_t i = 0; i < gate[r].size(); ++i) gate[r][i] = gate[r][i] / (1 + std::exp(-gate[r][i])) * up[r][i];
    const Matrix down = linear(gate, t, p + "mlp.down_proj");
    for (std::size_t r = 0; r < T; ++r)
      for (std::size_t i = 0; i < h[r].size(); ++i) h[r][i] += down[r][i];
  }
  const Matrix x = rms_norm(h, t.at("model.norm.weight"), eps);
  TensorMap head;
  head["lm_head.weight"] = t.count("lm_head.weight") ? t.at("lm_head.weight") : t.at("model.embed_tokens.weight");
  return linear(x, head, "lm_head");
}

// max |a - b| / max |b| over all elements of logits [T, vocab] against a naive [T][vocab].
inline double relative_error(const Tensor& a, const Matrix& b) {
  double max_diff = 0, max_ref = 0;
  for (std::size_t r = 0; r < b.size(); ++r)
    for (std::size_t j = 0; j < b[r].size(); ++j) {
      max_diff =
          std::max(max_diff, std::abs(a.get({static_cast<std::int64_t>(r), static_cast<std::int64_t>(j)}) - b[r][j]));
      max_ref = std::max(max_ref, std::abs(b[r][j]));
    }
  return max_diff / max_ref;
}

}  // namespace lowbit::model::test
