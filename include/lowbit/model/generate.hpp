// Text generation with the reference forward: prefill the prompt once, then one token at a time through a
// KV cache; greedy by default, or temperature + top-p (nucleus) sampling with a seeded generator.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "lowbit/model/llama.hpp"

namespace lowbit::model {

struct SamplingOptions {
  std::int64_t max_new_tokens = 256;  // generation also stops at the model's context (max_position_embeddings)
  float temperature = 0.0f;           // 0: greedy (argmax, lowest id on ties); > 0: sample softmax(logits / T)
  float top_p = 1.0f;                 // in (0, 1]: sample only from the most likely tokens whose mass reaches it
  std::uint64_t seed = 0;             // of the sampler's generator (mt19937_64)
  bool stop_at_eos = true;            // stop at any of config.json's eos_token_id
};

// Picks the next token from logits; deterministic for a given seed and sequence of calls.
class Sampler {
 public:
  // Throws InvalidArgument for a negative or non-finite temperature, or top_p outside (0, 1].
  explicit Sampler(const SamplingOptions& options);
  std::int32_t next(std::span<const float> logits);

 private:
  float temperature_;
  float top_p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, std::int32_t>> order_;  // scratch
};

struct GenerationResult {
  std::vector<std::int32_t> tokens;  // the new tokens (an EOS that stopped generation is not included)
  std::string stop_reason;           // "eos", "max_new_tokens", "context", "callback"
  std::int64_t prompt_tokens = 0;
  double prefill_seconds = 0;  // forward over the prompt
  double decode_seconds = 0;   // every one-token forward after it
  std::int64_t decode_steps = 0;
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;
};

// Called with each new token as soon as it is chosen (EOS included); return false to stop.
using TokenCallback = std::function<bool(std::int32_t token)>;

// Throws InvalidArgument for an empty prompt or one longer than the model's context.
GenerationResult generate(const LlamaModel& model, std::span<const std::int32_t> prompt,
                          const SamplingOptions& options = {}, const TokenCallback& on_token = {});

}  // namespace lowbit::model
