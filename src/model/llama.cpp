#include "lowbit/model/llama.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <set>

#include "lowbit/core/error.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/io/checkpoint.hpp"
#include "lowbit/io/formats.hpp"
#include "lowbit/model/cpu_math.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::model {
namespace {

// Query rows one attention task owns (a task: one head, these rows, the keys they see).
constexpr std::int64_t kAttentionRows = 64;

std::vector<float> to_float_vector(const Tensor& t) {
  const Tensor f = t.dtype() == DType::F32 ? t.contiguous() : t.to(DType::F32);
  const float* p = f.data<float>();
  return std::vector<float>(p, p + f.numel());
}

// RoPE inverse frequencies as transformers computes them (modeling_rope_utils.py), including the Llama 3
// and linear rope_scaling rules; computed in double, rounded to fp32 as transformers keeps them.
std::vector<float> rope_inv_freq(const LlamaConfig& c) {
  const std::int64_t half = c.head_dim / 2;
  std::vector<float> out(static_cast<std::size_t>(half));
  const RopeScaling& s = c.rope_scaling;
  for (std::int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(c.head_dim));
    if (s.type == "linear") {
      f /= s.factor;
    } else if (s.type == "llama3") {
      const double old_context = static_cast<double>(s.original_max_position_embeddings);
      const double low_freq_wavelen = old_context / s.low_freq_factor;
      const double high_freq_wavelen = old_context / s.high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_freq_wavelen) {
        f /= s.factor;
      } else if (wavelen >= high_freq_wavelen) {  // between the two: interpolate
        const double smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
    out[static_cast<std::size_t>(i)] = static_cast<float>(f);
  }
  return out;
}

std::string linear_name(std::int64_t layer, int linear) {
  return fmt::format("model.layers.{}.{}", layer, kLayerLinears[linear]);
}

}  // namespace

// ---- KvCache -------------------------------------------------------------------------------------------------

KvCache::KvCache(const LlamaConfig& config, std::int64_t capacity)
    : layers_(config.num_hidden_layers), capacity_(capacity), width_(config.num_key_value_heads * config.head_dim) {
  LOWBIT_CHECK(capacity >= 0, ErrorCode::InvalidArgument, "kv cache: capacity {} is negative", capacity);
  const auto size = static_cast<std::size_t>(layers_ * capacity_ * width_);
  keys_.assign(size, 0.0f);
  values_.assign(size, 0.0f);
}

void KvCache::truncate(std::int64_t length) {
  LOWBIT_CHECK(length >= 0 && length <= length_, ErrorCode::InvalidArgument,
               "kv cache: cannot truncate to {} positions; it holds {}", length, length_);
  length_ = length;
}

void KvCache::advance(std::int64_t tokens) {
  LOWBIT_CHECK(tokens >= 0 && length_ + tokens <= capacity_, ErrorCode::InvalidArgument,
               "kv cache: {} more positions do not fit ({} held, capacity {})", tokens, length_, capacity_);
  length_ += tokens;
}

float* KvCache::keys(std::int64_t layer, std::int64_t position) noexcept {
  return keys_.data() + (layer * capacity_ + position) * width_;
}
float* KvCache::values(std::int64_t layer, std::int64_t position) noexcept {
  return values_.data() + (layer * capacity_ + position) * width_;
}

// ---- loading -------------------------------------------------------------------------------------------------

LlamaModel::LlamaModel(LlamaModel&&) noexcept = default;
LlamaModel& LlamaModel::operator=(LlamaModel&&) noexcept = default;
LlamaModel::~LlamaModel() = default;

LlamaModel LlamaModel::load(const std::filesystem::path& folder, const LoadOptions& options) {
  LOWBIT_CHECK(std::filesystem::is_directory(folder), ErrorCode::IO, "load_llama: '{}' is not a folder",
               folder.string());
  LlamaModel model;
  model.folder_ = folder;
  model.config_ = load_llama_config(folder);
  const LlamaConfig& c = model.config_;
  auto checkpoint = std::make_shared<io::Checkpoint>(io::Checkpoint::open(folder));
  model.checkpoint_ = checkpoint;
  const io::Checkpoint& ckpt = *checkpoint;
  const io::QuantizedCheckpoint quantized = io::open_quantized(ckpt);
  const std::set<std::string> quantized_weights(quantized.weights.begin(), quantized.weights.end());
  if (!quantized_weights.empty()) model.weight_format_ = quantized.format;
  const std::string where = folder.string();

  const auto check_shape = [where](const std::string& name, const Shape& actual, const Shape& expected) {
    LOWBIT_CHECK(actual == expected, ErrorCode::ShapeMismatch,
                 "load_llama: '{}': tensor '{}' is {} but config.json implies {}", where, name, actual.to_string(),
                 expected.to_string());
  };
  const auto dense = [where, check_shape, &ckpt](const std::string& name, const Shape& expected) -> Tensor {
    LOWBIT_CHECK(ckpt.contains(name), ErrorCode::InvalidArgument, "load_llama: '{}' has no tensor '{}'", where, name);
    const auto& info = ckpt.info(name);
    check_shape(name, info.shape, expected);
    LOWBIT_CHECK(info.dtype == DType::F32 || info.dtype == DType::F16 || info.dtype == DType::BF16,
                 ErrorCode::DTypeMismatch,
                 "load_llama: '{}': tensor '{}' is {}; dense weights must be f32, f16 or bf16 (a quantized layout "
                 "lowbit does not recognise?)",
                 where, name, dtype_name(info.dtype));
    return ckpt.tensor(name);
  };
  const auto optional_bias = [dense, &ckpt](const std::string& module, std::int64_t n, bool required) -> Tensor {
    const std::string name = module + ".bias";
    if (!required && !ckpt.contains(name)) return {};
    return dense(name, {n});
  };
  // A linear: quantized where the checkpoint quantized it, dense otherwise.
  auto quantized_ptr = std::make_shared<io::QuantizedCheckpoint>(quantized);
  const auto linear = [=, &ckpt](const std::string& module, std::int64_t n, std::int64_t k,
                                 bool bias_required) -> std::unique_ptr<Linear> {
    const std::string name = module + ".weight";
    const Tensor bias = optional_bias(module, n, bias_required);
    if (quantized_weights.contains(name)) {
      quant::QuantizedTensor q = quantized_ptr->load(name);
      check_shape(name, q.shape, {n, k});
      return make_linear(std::move(q), bias, options.quantized);
    }
    return std::make_unique<DenseLinear>(dense(name, {n, k}), bias, options.kernel);
  };

  const std::int64_t hidden = c.hidden_size;
  const std::int64_t q_width = c.num_attention_heads * c.head_dim;
  const std::int64_t kv_width = c.num_key_value_heads * c.head_dim;
  const std::int64_t inter = c.intermediate_size;

  Tensor embed;
  if (quantized_weights.contains("model.embed_tokens.weight")) {
    quant::QuantizedTensor q = quantized.load("model.embed_tokens.weight");
    check_shape("model.embed_tokens.weight", q.shape, {c.vocab_size, hidden});
    embed = quant::find_method(q.method).dequantize(q);
  } else {
    embed = dense("model.embed_tokens.weight", {c.vocab_size, hidden});
  }
  model.embed_tokens_ = embed.dtype() == DType::F32 ? embed.contiguous() : embed.to(DType::F32);

  const bool o_bias = c.attention_bias && c.model_type != "qwen2";  // Qwen2 biases q, k, v only
  // The builders capture the checkpoint by reference: it lives on the heap, owned by the model.
  model.build_layer_ = [=](std::int64_t l, DecoderLayer& layer) {
    const std::string p = fmt::format("model.layers.{}.", l);
    const std::int64_t n_of[7] = {q_width, kv_width, kv_width, hidden, inter, inter, hidden};
    const std::int64_t k_of[7] = {hidden, hidden, hidden, q_width, hidden, hidden, inter};
    const bool bias_of[7] = {c.attention_bias, c.attention_bias, c.attention_bias, o_bias,
                             c.mlp_bias,       c.mlp_bias,       c.mlp_bias};
    DecoderLayer built;
    for (int j = 0; j < 7; ++j) built.linears[j] = linear(p + std::string(kLayerLinears[j]), n_of[j], k_of[j], bias_of[j]);
    built.input_layernorm = to_float_vector(dense(p + "input_layernorm.weight", {hidden}));
    built.post_attention_layernorm = to_float_vector(dense(p + "post_attention_layernorm.weight", {hidden}));
    layer = std::move(built);
  };
  model.norm_ = to_float_vector(dense("model.norm.weight", {hidden}));
  const bool has_head = ckpt.contains("lm_head.weight") || quantized_weights.contains("lm_head.weight");
  if (c.tie_word_embeddings || !has_head) {
    LOWBIT_CHECK(c.tie_word_embeddings, ErrorCode::InvalidArgument,
                 "load_llama: '{}' has no tensor 'lm_head.weight' and config.json does not tie it to the embeddings "
                 "(tie_word_embeddings is false)",
                 where);
  }
  const bool tied = c.tie_word_embeddings || !has_head;
  model.build_head_ = [=]() -> std::unique_ptr<Linear> {
    if (tied) return nullptr;  // made from embed_tokens_ by load_head()
    return linear("lm_head", c.vocab_size, hidden, false);
  };
  model.kernel_ = options.kernel;

  model.layers_.resize(static_cast<std::size_t>(c.num_hidden_layers));
  if (!options.layers_on_demand) {
    ProgressReporter progress(options.progress, "load", c.num_hidden_layers);
    for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
      model.load_layer(l);
      progress.advance(1, fmt::format("layer {}", l));
    }
    model.load_head();
  }
  model.inv_freq_ = rope_inv_freq(c);
  return model;
}

// ---- names -----------------------------------------------------------------------------------------------

std::unique_ptr<Linear>& LlamaModel::linear_slot(std::string_view name) {
  std::string_view n = name;
  if (n.ends_with(".weight")) n.remove_suffix(7);
  if (n == "lm_head") return lm_head_;
  constexpr std::string_view prefix = "model.layers.";
  if (n.starts_with(prefix)) {
    n.remove_prefix(prefix.size());
    std::int64_t layer = 0;
    std::size_t digits = 0;
    while (digits < n.size() && n[digits] >= '0' && n[digits] <= '9') {
      layer = layer * 10 + (n[digits] - '0');
      ++digits;
      if (layer > num_layers()) break;
    }
    if (digits > 0 && digits < n.size() && n[digits] == '.' && layer < num_layers()) {
      const std::string_view rest = n.substr(digits + 1);
      for (int j = 0; j < 7; ++j) {
        if (rest == kLayerLinears[j]) return layers_[static_cast<std::size_t>(layer)].linears[j];
      }
    }
  }
  LOWBIT_THROW(ErrorCode::InvalidArgument,
               "llama: no linear named '{}'; names are model.layers.<0..{}>.<self_attn.q_proj|...|mlp.down_proj> "
               "and lm_head",
               name, num_layers() - 1);
}

const Linear& LlamaModel::linear(std::string_view name) const {
  const std::unique_ptr<Linear>& slot = const_cast<LlamaModel*>(this)->linear_slot(name);
  LOWBIT_CHECK(slot != nullptr, ErrorCode::InvalidArgument, "llama: linear '{}' is not loaded (layers_on_demand)",
               name);
  return *slot;
}

void LlamaModel::set_linear(std::string_view name, std::unique_ptr<Linear> linear) {
  LOWBIT_CHECK(linear != nullptr, ErrorCode::InvalidArgument, "llama: set_linear('{}') was given no linear", name);
  std::unique_ptr<Linear>& slot = linear_slot(name);
  LOWBIT_CHECK(slot != nullptr, ErrorCode::InvalidArgument, "llama: set_linear('{}'): its layer is not loaded", name);
  LOWBIT_CHECK(slot->n() == linear->n() && slot->k() == linear->k(), ErrorCode::ShapeMismatch,
               "llama: set_linear('{}'): the new linear is [{}, {}] but the layer is [{}, {}]", name, linear->n(),
               linear->k(), slot->n(), slot->k());
  slot = std::move(linear);
}

const DecoderLayer& LlamaModel::layer(std::int64_t index) const {
  LOWBIT_CHECK(index >= 0 && index < num_layers(), ErrorCode::InvalidArgument,
               "llama: layer {} does not exist (the model has {})", index, num_layers());
  const DecoderLayer& L = layers_[static_cast<std::size_t>(index)];
  LOWBIT_CHECK(L.linears[0] != nullptr, ErrorCode::InvalidArgument,
               "llama: layer {} is not loaded (the model was opened with layers_on_demand; call load_layer({}))", index,
               index);
  return L;
}

bool LlamaModel::layer_loaded(std::int64_t index) const {
  return index >= 0 && index < num_layers() && layers_[static_cast<std::size_t>(index)].linears[0] != nullptr;
}

void LlamaModel::load_layer(std::int64_t index) {
  LOWBIT_CHECK(index >= 0 && index < num_layers(), ErrorCode::InvalidArgument,
               "llama: layer {} does not exist (the model has {})", index, num_layers());
  if (layer_loaded(index)) return;
  build_layer_(index, layers_[static_cast<std::size_t>(index)]);
}

void LlamaModel::release_layer(std::int64_t index) {
  LOWBIT_CHECK(index >= 0 && index < num_layers(), ErrorCode::InvalidArgument,
               "llama: layer {} does not exist (the model has {})", index, num_layers());
  layers_[static_cast<std::size_t>(index)] = DecoderLayer{};
}

void LlamaModel::load_head() {
  if (lm_head_ != nullptr) return;
  lm_head_ = build_head_();
  if (lm_head_ == nullptr) lm_head_ = std::make_unique<DenseLinear>(embed_tokens_, Tensor{}, kernel_);
}

std::uint64_t LlamaModel::resident_bytes() const {
  std::uint64_t total = embed_tokens_.nbytes() + norm_.size() * sizeof(float);
  if (lm_head_ != nullptr) total += lm_head_->resident_bytes();
  for (const DecoderLayer& L : layers_) {
    if (L.linears[0] == nullptr) continue;
    for (const auto& linear : L.linears) total += linear->resident_bytes();
    total += (L.input_layernorm.size() + L.post_attention_layernorm.size()) * sizeof(float);
  }
  return total;
}

// ---- forward pieces ----------------------------------------------------------------------------------------

void LlamaModel::rms_norm(const float* x, std::int64_t rows, const std::vector<float>& weight, float* y) const {
  const std::int64_t h = config_.hidden_size;
  const double eps = config_.rms_norm_eps;
  parallel_for(rows, std::max<std::int64_t>(1, 16384 / h), [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * h;
      float* yr = y + r * h;
      double sum = 0;
      for (std::int64_t i = 0; i < h; ++i) sum += static_cast<double>(xr[i]) * xr[i];
      // transformers: x * rsqrt(mean(x^2) + eps) in fp32, then * weight.
      const auto inv = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(h) + eps));
      for (std::int64_t i = 0; i < h; ++i) yr[i] = weight[static_cast<std::size_t>(i)] * (xr[i] * inv);
    }
  });
}

void LlamaModel::rope(float* x, std::int64_t rows, std::int64_t heads, std::int64_t row_stride,
                      std::int64_t position) const {
  const std::int64_t d = config_.head_dim;
  const std::int64_t half = d / 2;
  std::vector<float> cos_sin(static_cast<std::size_t>(2 * half));
  for (std::int64_t r = 0; r < rows; ++r) {
    // transformers: angle = fp32(position) * inv_freq in fp32, cos and sin of that fp32 angle.
    const auto pos = static_cast<float>(position + r);
    for (std::int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq_[static_cast<std::size_t>(i)];
      cos_sin[static_cast<std::size_t>(i)] = static_cast<float>(std::cos(static_cast<double>(angle)));
      cos_sin[static_cast<std::size_t>(half + i)] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
    for (std::int64_t hd = 0; hd < heads; ++hd) {
      float* v = x + r * row_stride + hd * d;
      for (std::int64_t i = 0; i < half; ++i) {
        const float c = cos_sin[static_cast<std::size_t>(i)];
        const float s = cos_sin[static_cast<std::size_t>(half + i)];
        const float a = v[i];
        const float b = v[i + half];
        v[i] = a * c - b * s;  // q * cos + rotate_half(q) * sin, rotate_half(q) = (-q2, q1)
        v[i + half] = b * c + a * s;
      }
    }
  }
}

Tensor LlamaModel::embed(std::span<const std::int32_t> tokens) const {
  const std::int64_t h = config_.hidden_size;
  const auto t = static_cast<std::int64_t>(tokens.size());
  Tensor out = Tensor::empty({t, h}, DType::F32);
  const float* table = embed_tokens_.data<float>();
  float* dst = out.data<float>();
  for (std::int64_t i = 0; i < t; ++i) {
    const std::int32_t id = tokens[static_cast<std::size_t>(i)];
    LOWBIT_CHECK(id >= 0 && id < config_.vocab_size, ErrorCode::InvalidArgument,
                 "llama: token {} (at {}) is outside the vocabulary (size {})", id, i, config_.vocab_size);
    std::memcpy(dst + i * h, table + static_cast<std::int64_t>(id) * h, static_cast<std::size_t>(h) * sizeof(float));
  }
  return out;
}

void LlamaModel::check_hidden(const Tensor& hidden, std::string_view operation) const {
  const std::int64_t h = config_.hidden_size;
  LOWBIT_CHECK(hidden.rank() == 2 && hidden.size(1) == h && hidden.dtype() == DType::F32 && hidden.is_contiguous(),
               ErrorCode::ShapeMismatch, "llama: {} needs contiguous f32 [tokens, {}] hidden states, got {}", operation,
               h, hidden.describe());
}

void LlamaModel::run_linear(std::int64_t index, int j, const float* input, std::int64_t t, float* output,
                            const LayerOptions& options) const {
  const Linear& linear = *layers_[static_cast<std::size_t>(index)].linears[j];
  if (options.hook != nullptr && *options.hook) {
    const Tensor view = Tensor::wrap(const_cast<float*>(input), {t, linear.k()}, DType::F32);
    (*options.hook)(linear_name(index, j), view);
  }
  linear.forward(input, t, output);
}

void LlamaModel::attention_into(std::int64_t index, const float* x, std::int64_t t, float* out,
                                const LayerOptions& options) const {
  const LlamaConfig& c = config_;
  const std::int64_t pos0 = options.position;
  KvCache* cache = options.cache;
  const std::int64_t d = c.head_dim;
  const std::int64_t nq = c.num_attention_heads;
  const std::int64_t nkv = c.num_key_value_heads;
  const std::int64_t qw = nq * d;
  const std::int64_t kvw = nkv * d;
  std::vector<float> q(static_cast<std::size_t>(t * qw));
  std::vector<float> attn(static_cast<std::size_t>(t * qw));
  std::vector<float> k_local;
  std::vector<float> v_local;
  float* kbuf = nullptr;
  float* vbuf = nullptr;
  if (cache != nullptr) {
    kbuf = cache->keys(index, pos0);  // rows of this call, written in place
    vbuf = cache->values(index, pos0);
  } else {
    k_local.resize(static_cast<std::size_t>(t * kvw));
    v_local.resize(static_cast<std::size_t>(t * kvw));
    kbuf = k_local.data();
    vbuf = v_local.data();
  }
  run_linear(index, 0, x, t, q.data(), options);
  run_linear(index, 1, x, t, kbuf, options);
  run_linear(index, 2, x, t, vbuf, options);
  rope(q.data(), t, nq, qw, pos0);
  rope(kbuf, t, nkv, kvw, pos0);

  // Keys [0, s_total): the cache's rows up to this call's last, or this call's rows alone.
  const float* keys = cache != nullptr ? cache->keys(index, 0) : kbuf;
  const float* values = cache != nullptr ? cache->values(index, 0) : vbuf;
  const std::int64_t past = cache != nullptr ? pos0 : 0;  // keys before this call's first query
  const std::int64_t group = nq / nkv;
  const std::int64_t window = c.sliding_window;
  const auto scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const std::int64_t row_blocks = (t + kAttentionRows - 1) / kAttentionRows;
  parallel_for(nq * row_blocks, 1, [&](std::int64_t task0, std::int64_t task1) {
    std::vector<float> scores;
    for (std::int64_t task = task0; task < task1; ++task) {
      const std::int64_t head = task / row_blocks;
      const std::int64_t r0 = (task % row_blocks) * kAttentionRows;
      const std::int64_t rows = std::min(kAttentionRows, t - r0);
      const std::int64_t kv_head = head / group;
      const std::int64_t s_end = past + r0 + rows;  // keys [0, s_end) are the most any row here sees
      const std::int64_t s_begin = window > 0 ? std::max<std::int64_t>(0, past + r0 - window + 1) : 0;
      const std::int64_t s = s_end - s_begin;
      const PackedMatrix kp = PackedMatrix::pack(keys + s_begin * kvw + kv_head * d, s, d, kvw);
      const PackedMatrix vp = PackedMatrix::pack_transposed(values + s_begin * kvw + kv_head * d, s, d, kvw);
      scores.resize(static_cast<std::size_t>(rows * s));
      gemm(q.data() + r0 * qw + head * d, rows, qw, kp, scores.data(), s);
      for (std::int64_t i = 0; i < rows; ++i) {
        float* row = scores.data() + i * s;
        const std::int64_t query = past + r0 + i;  // absolute position of this query
        const std::int64_t lo = window > 0 ? std::max<std::int64_t>(0, query - window + 1) - s_begin : 0;
        const std::int64_t hi = query - s_begin + 1;  // keys [lo, hi) are visible
        float max = -std::numeric_limits<float>::infinity();
        for (std::int64_t j = lo; j < hi; ++j) {
          row[j] *= scale;
          max = std::max(max, row[j]);
        }
        const auto inv = static_cast<float>(1.0 / exp_shifted(row + lo, hi - lo, max));
        for (std::int64_t j = 0; j < lo; ++j) row[j] = 0.0f;
        for (std::int64_t j = lo; j < hi; ++j) row[j] *= inv;
        for (std::int64_t j = hi; j < s; ++j) row[j] = 0.0f;
      }
      gemm(scores.data(), rows, s, vp, attn.data() + r0 * qw + head * d, qw);
    }
  });
  run_linear(index, 3, attn.data(), t, out, options);
}

void LlamaModel::mlp_into(std::int64_t index, const float* x, std::int64_t t, float* out,
                          const LayerOptions& options) const {
  const std::int64_t inter = config_.intermediate_size;
  std::vector<float> gate(static_cast<std::size_t>(t * inter));
  std::vector<float> up(static_cast<std::size_t>(t * inter));
  run_linear(index, 4, x, t, gate.data(), options);
  run_linear(index, 5, x, t, up.data(), options);
  parallel_for(t * inter, 16384, [&](std::int64_t i0, std::int64_t i1) {
    silu_mul(gate.data() + i0, up.data() + i0, i1 - i0);
  });
  run_linear(index, 6, gate.data(), t, out, options);
}

void LlamaModel::forward_layer(std::int64_t index, Tensor& hidden, const LayerOptions& options) const {
  const DecoderLayer& L = layer(index);
  const LlamaConfig& c = config_;
  const std::int64_t h = c.hidden_size;
  check_hidden(hidden, "forward_layer");
  const std::int64_t t = hidden.size(0);
  const std::int64_t pos0 = options.position;
  LOWBIT_CHECK(pos0 >= 0, ErrorCode::InvalidArgument, "llama: position {} is negative", pos0);
  KvCache* cache = options.cache;
  if (cache != nullptr) {
    LOWBIT_CHECK(pos0 + t <= cache->capacity() && cache->row_width() == c.num_key_value_heads * c.head_dim,
                 ErrorCode::InvalidArgument,
                 "llama: positions [{}, {}) do not fit the kv cache (capacity {}, row width {}, model needs {})", pos0,
                 pos0 + t, cache->capacity(), cache->row_width(), c.num_key_value_heads * c.head_dim);
  }
  if (t == 0) return;
  float* hs = hidden.data<float>();
  std::vector<float> x(static_cast<std::size_t>(t * h));
  std::vector<float> y(static_cast<std::size_t>(t * h));
  rms_norm(hs, t, L.input_layernorm, x.data());
  attention_into(index, x.data(), t, y.data(), options);
  for (std::int64_t i = 0; i < t * h; ++i) hs[i] += y[static_cast<std::size_t>(i)];
  rms_norm(hs, t, L.post_attention_layernorm, x.data());
  mlp_into(index, x.data(), t, y.data(), options);
  for (std::int64_t i = 0; i < t * h; ++i) hs[i] += y[static_cast<std::size_t>(i)];
}

Tensor LlamaModel::layer_norm(std::int64_t index, LayerNorm which, const Tensor& hidden) const {
  const DecoderLayer& L = layer(index);
  check_hidden(hidden, "layer_norm");
  Tensor out = Tensor::empty(hidden.shape(), DType::F32);
  rms_norm(hidden.data<float>(), hidden.size(0),
           which == LayerNorm::Input ? L.input_layernorm : L.post_attention_layernorm, out.data<float>());
  return out;
}

Tensor LlamaModel::attention(std::int64_t index, const Tensor& normed, const LayerOptions& options) const {
  layer(index);
  check_hidden(normed, "attention");
  LOWBIT_CHECK(options.cache == nullptr && options.position >= 0, ErrorCode::InvalidArgument,
               "llama: attention() takes no kv cache and a position >= 0 (got {})", options.position);
  const std::int64_t t = normed.size(0);
  Tensor out = Tensor::empty({t, config_.hidden_size}, DType::F32);
  if (t > 0) attention_into(index, normed.data<float>(), t, out.data<float>(), options);
  return out;
}

Tensor LlamaModel::mlp(std::int64_t index, const Tensor& normed, const LayerOptions& options) const {
  layer(index);
  check_hidden(normed, "mlp");
  const std::int64_t t = normed.size(0);
  Tensor out = Tensor::empty({t, config_.hidden_size}, DType::F32);
  if (t > 0) mlp_into(index, normed.data<float>(), t, out.data<float>(), options);
  return out;
}

void LlamaModel::set_layer_norm(std::int64_t index, LayerNorm which, std::vector<float> weight) {
  layer(index);
  LOWBIT_CHECK(static_cast<std::int64_t>(weight.size()) == config_.hidden_size, ErrorCode::ShapeMismatch,
               "llama: set_layer_norm({}): {} weights, the model's hidden size is {}", index, weight.size(),
               config_.hidden_size);
  DecoderLayer& L = layers_[static_cast<std::size_t>(index)];
  (which == LayerNorm::Input ? L.input_layernorm : L.post_attention_layernorm) = std::move(weight);
}

Tensor LlamaModel::final_norm(const Tensor& hidden) const {
  const std::int64_t h = config_.hidden_size;
  LOWBIT_CHECK(hidden.rank() == 2 && hidden.size(1) == h, ErrorCode::ShapeMismatch,
               "llama: final_norm needs [tokens, {}] hidden states, got {}", h, hidden.describe());
  const Tensor x = hidden.dtype() == DType::F32 ? hidden.contiguous() : hidden.to(DType::F32);
  Tensor out = Tensor::empty(x.shape(), DType::F32);
  rms_norm(x.data<float>(), x.size(0), norm_, out.data<float>());
  return out;
}

Tensor LlamaModel::lm_head(const Tensor& normed) const {
  LOWBIT_CHECK(lm_head_ != nullptr, ErrorCode::InvalidArgument,
               "llama: the output head is not loaded (the model was opened with layers_on_demand; call load_head())");
  return lm_head_->forward(normed);
}

Tensor LlamaModel::hidden_states(std::span<const std::int32_t> tokens, KvCache* cache,
                                 const LinearInputHook* hook) const {
  const auto t = static_cast<std::int64_t>(tokens.size());
  const std::int64_t position = cache != nullptr ? cache->length() : 0;
  if (cache != nullptr) {
    LOWBIT_CHECK(position + t <= cache->capacity(), ErrorCode::InvalidArgument,
                 "llama: {} more tokens do not fit the kv cache ({} held, capacity {})", t, position,
                 cache->capacity());
  }
  Tensor hidden = embed(tokens);
  for (std::int64_t l = 0; l < num_layers(); ++l) {
    forward_layer(l, hidden, LayerOptions{position, cache, hook});
  }
  if (cache != nullptr) cache->advance(t);
  return final_norm(hidden);
}

Tensor LlamaModel::forward(std::span<const std::int32_t> tokens, KvCache* cache, const LinearInputHook* hook) const {
  const Tensor normed = hidden_states(tokens, cache, hook);
  if (hook != nullptr && *hook) (*hook)("lm_head", normed);
  return lm_head(normed);
}

}  // namespace lowbit::model
