// A Llama-family model on the CPU in fp32: the loader and the reference forward.
//
// Loads a Hugging Face folder (config.json + model.safetensors or shards with model.safetensors.index.json;
// f32, f16 or bf16 weights, tied or untied embeddings, grouped-query attention, Llama 3 rope_scaling,
// attention and MLP biases where config.json says so) or a folder whose linear weights are quantized in any
// layout io::open_quantized() recognises. Tensors are memory-mapped; dense weights are repacked once for
// the CPU kernel (gemm.hpp), f16/bf16 converted to fp32.
//
// The forward is the transformers LlamaForCausalLM one (logits agree to a relative 1e-4 in fp32,
// tests/model/llama_test.cpp):
//
//     h = embed_tokens[tokens]                                                  [T, hidden]
//     per layer:  x = rms_norm(h) * input_layernorm
//                 q, k, v = x Wq^T, x Wk^T, x Wv^T (+ biases); RoPE on q and k (rotate-half pairs (i, i + d/2))
//                 a = softmax(q k^T / sqrt(head_dim) + causal mask) v         per head; kv head = head / group
//                 h = h + a Wo^T
//                 x = rms_norm(h) * post_attention_layernorm
//                 h = h + (silu(x Wgate^T) * (x Wup^T)) Wdown^T
//     logits = (rms_norm(h) * norm) Wlm_head^T                                 lm_head = embed_tokens if tied
//
// Besides the whole forward, each step is an entry point (embed, forward_layer, final_norm, lm_head) so
// that a layer-by-layer quantizer can run one decoder layer at a time, capture the input of every linear
// through a hook, and swap a layer's linears (set_linear) before running the next.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/core/progress.hpp"
#include "lowbit/core/tensor.hpp"
#include "lowbit/model/config.hpp"
#include "lowbit/model/linear.hpp"

namespace lowbit::io {
class Checkpoint;
}

namespace lowbit::model {

// The seven linears of a decoder layer, in the order the forward runs them.
inline constexpr std::string_view kLayerLinears[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                     "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                     "mlp.down_proj"};

// Called with a linear's module name ("model.layers.3.self_attn.q_proj") and its input, f32 [tokens, k],
// just before the linear runs. The tensor is valid only during the call (copy what you keep). q, k and v
// get the same input, as do gate and up.
using LinearInputHook = std::function<void(std::string_view name, const Tensor& input)>;

// Keys and values of past positions, per layer, for incremental decoding.
class KvCache {
 public:
  KvCache() = default;
  // Room for `capacity` positions of a model with this configuration (2 * layers * capacity * kv_heads *
  // head_dim floats).
  KvCache(const LlamaConfig& config, std::int64_t capacity);

  std::int64_t length() const noexcept { return length_; }  // positions held
  std::int64_t capacity() const noexcept { return capacity_; }
  void clear() noexcept { length_ = 0; }
  // Keeps the first `length` positions (<= length()). Throws InvalidArgument otherwise.
  void truncate(std::int64_t length);
  // Marks `tokens` more positions as held (after every layer has written them). Throws InvalidArgument
  // past capacity().
  void advance(std::int64_t tokens);

  // Row `position` of layer `layer`: kv_heads * head_dim floats.
  float* keys(std::int64_t layer, std::int64_t position) noexcept;
  float* values(std::int64_t layer, std::int64_t position) noexcept;
  std::int64_t row_width() const noexcept { return width_; }

 private:
  std::int64_t layers_ = 0;
  std::int64_t capacity_ = 0;
  std::int64_t width_ = 0;
  std::int64_t length_ = 0;
  std::vector<float> keys_;    // [layers, capacity, width]
  std::vector<float> values_;  // [layers, capacity, width]
};

struct LayerOptions {
  // Position of the first of the hidden states' tokens (RoPE, causal mask). With a cache, keys and values
  // of positions [position, position + T) are written into it and attention covers [0, position + T);
  // without, attention covers the T tokens given and `position` only shifts RoPE.
  std::int64_t position = 0;
  KvCache* cache = nullptr;
  const LinearInputHook* hook = nullptr;
};

struct DecoderLayer {
  // In kLayerLinears order: q, k, v, o, gate, up, down.
  std::unique_ptr<Linear> linears[7];
  std::vector<float> input_layernorm;           // [hidden]
  std::vector<float> post_attention_layernorm;  // [hidden]
};

struct LoadOptions {
  QuantizedExecution quantized = QuantizedExecution::ReferenceMatmul;
  CpuKernel kernel = best_cpu_kernel();  // for dense weights
  ProgressCallback progress;             // stage "load", one step per decoder layer
  // Build no decoder layer and no output head at load: load_layer() / release_layer() / load_head() do,
  // so that a layer-by-layer quantizer holds one layer's weights at a time.
  bool layers_on_demand = false;
};

class LlamaModel {
 public:
  // Throws IO (missing folder or file), Corrupt (bad config or checkpoint), Unsupported (another
  // architecture), InvalidArgument naming the folder and the tensor when one is missing, ShapeMismatch
  // naming the tensor, its shape and the one config.json implies.
  static LlamaModel load(const std::filesystem::path& folder, const LoadOptions& options = {});

  LlamaModel(LlamaModel&&) noexcept;
  LlamaModel& operator=(LlamaModel&&) noexcept;
  ~LlamaModel();

  const LlamaConfig& config() const noexcept { return config_; }
  const std::filesystem::path& folder() const noexcept { return folder_; }
  std::int64_t num_layers() const noexcept { return static_cast<std::int64_t>(layers_.size()); }
  std::int64_t hidden_size() const noexcept { return config_.hidden_size; }
  std::int64_t vocab_size() const noexcept { return config_.vocab_size; }
  // "dense" or the quantized layout io::open_quantized recognised ("lowbit", "bitsandbytes", ...).
  const std::string& weight_format() const noexcept { return weight_format_; }

  // ---- whole forward ----
  // Logits f32 [T, vocab] of `tokens`. With a cache, the tokens continue the cached positions and the
  // cache grows by T. Throws InvalidArgument for an id outside the vocabulary or a full cache.
  Tensor forward(std::span<const std::int32_t> tokens, KvCache* cache = nullptr,
                 const LinearInputHook* hook = nullptr) const;
  // The final-normed hidden states f32 [T, hidden] (lm_head's input), same rules as forward().
  Tensor hidden_states(std::span<const std::int32_t> tokens, KvCache* cache = nullptr,
                       const LinearInputHook* hook = nullptr) const;
  KvCache make_cache(std::int64_t capacity) const { return KvCache(config_, capacity); }

  // ---- per-layer entry points ----
  Tensor embed(std::span<const std::int32_t> tokens) const;  // f32 [T, hidden]
  // Runs decoder layer `layer` on hidden states f32 [T, hidden] (contiguous), in place.
  void forward_layer(std::int64_t layer, Tensor& hidden, const LayerOptions& options = {}) const;
  Tensor final_norm(const Tensor& hidden) const;  // f32 [T, hidden]
  // forward_layer in its pieces, as AWQ inspects them (awq.md section 2.4):
  //     forward_layer(h) = h' + mlp(layer_norm(PostAttention, h')),  h' = h + attention(layer_norm(Input, h))
  // layer_norm: rms_norm(hidden) * the norm's weight. attention: the self-attention block's output a Wo^T
  // (q/k/v, RoPE, causal softmax, o; no residual) on normed inputs; mlp: (silu(x Wgate^T) * x Wup^T)
  // Wdown^T. All f32 [T, hidden] in and out (contiguous); the hook sees the linears' inputs as in
  // forward_layer. attention() takes no cache (options.cache must be null).
  enum class LayerNorm : std::uint8_t { Input, PostAttention };
  Tensor layer_norm(std::int64_t layer, LayerNorm which, const Tensor& hidden) const;
  Tensor attention(std::int64_t layer, const Tensor& normed, const LayerOptions& options = {}) const;
  Tensor mlp(std::int64_t layer, const Tensor& normed, const LayerOptions& options = {}) const;
  Tensor lm_head(const Tensor& normed) const;     // f32 [T, vocab]

  // ---- weights ----
  // Throws InvalidArgument for an index out of range or a layer not loaded.
  const DecoderLayer& layer(std::int64_t index) const;
  // Layers on demand (LoadOptions::layers_on_demand; a fully loaded model has every layer and the head):
  bool layer_loaded(std::int64_t index) const;
  void load_layer(std::int64_t index);     // builds it from the checkpoint; no-op when loaded
  void release_layer(std::int64_t index);  // frees its weights (set_linear replacements too)
  void load_head();                        // lm_head(), forward() need it
  // Bytes of weights the model holds itself: embeddings in fp32, loaded layers' repacked or quantized
  // linears, norms, the head (memory-mapped checkpoint pages are not counted).
  std::uint64_t resident_bytes() const;
  // "model.layers.3.mlp.down_proj" (with or without ".weight"), or "lm_head".
  const Linear& linear(std::string_view name) const;
  // Replaces one linear (a quantized one for a dense one, say); n and k must stay. Throws
  // InvalidArgument for an unknown name, ShapeMismatch for other dimensions.
  void set_linear(std::string_view name, std::unique_ptr<Linear> linear);
  // Replaces a loaded layer's norm weight ([hidden]; AWQ folds its scales into it). Throws InvalidArgument
  // for a layer not loaded, ShapeMismatch for another length.
  void set_layer_norm(std::int64_t layer, LayerNorm which, std::vector<float> weight);
  // The checkpoint the model was loaded from (its tensors stay memory-mapped).
  const io::Checkpoint& checkpoint() const noexcept { return *checkpoint_; }

 private:
  LlamaModel() = default;
  std::unique_ptr<Linear>& linear_slot(std::string_view name);
  void rms_norm(const float* x, std::int64_t rows, const std::vector<float>& weight, float* y) const;
  void check_hidden(const Tensor& hidden, std::string_view operation) const;
  void run_linear(std::int64_t layer, int linear, const float* input, std::int64_t t, float* output,
                  const LayerOptions& options) const;
  void attention_into(std::int64_t layer, const float* x, std::int64_t t, float* out, const LayerOptions& options) const;
  void mlp_into(std::int64_t layer, const float* x, std::int64_t t, float* out, const LayerOptions& options) const;
  void rope(float* x, std::int64_t rows, std::int64_t heads, std::int64_t row_stride, std::int64_t position) const;

  LlamaConfig config_;
  std::filesystem::path folder_;
  std::string weight_format_ = "dense";
  std::shared_ptr<const io::Checkpoint> checkpoint_;
  Tensor embed_tokens_;  // f32 [vocab, hidden]
  std::vector<DecoderLayer> layers_;
  std::vector<float> norm_;  // [hidden]
  std::unique_ptr<Linear> lm_head_;
  std::vector<float> inv_freq_;  // [head_dim / 2], RoPE frequencies after rope_scaling
  CpuKernel kernel_ = CpuKernel{};
  std::function<void(std::int64_t, DecoderLayer&)> build_layer_;
  std::function<std::unique_ptr<Linear>()> build_head_;
};

}  // namespace lowbit::model
