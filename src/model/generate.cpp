#include "lowbit/model/generate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "lowbit/core/error.hpp"

namespace lowbit::model {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Sampler::Sampler(const SamplingOptions& options)
    : temperature_(options.temperature), top_p_(options.top_p), rng_(options.seed) {
  LOWBIT_CHECK(std::isfinite(temperature_) && temperature_ >= 0.0f, ErrorCode::InvalidArgument,
               "generate: temperature = {} must be finite and >= 0 (0: greedy)", temperature_);
  LOWBIT_CHECK(top_p_ > 0.0f && top_p_ <= 1.0f, ErrorCode::InvalidArgument, "generate: top_p = {} must be in (0, 1]",
               top_p_);
}

std::int32_t Sampler::next(std::span<const float> logits) {
  LOWBIT_CHECK(!logits.empty(), ErrorCode::InvalidArgument, "generate: no logits to sample from");
  const auto argmax = static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  if (temperature_ == 0.0f) return argmax;
  // softmax(logits / T), most likely first; the nucleus is the shortest prefix whose mass reaches top_p.
  const float max = logits[static_cast<std::size_t>(argmax)];
  order_.resize(logits.size());
  double total = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    const float p = std::exp((logits[i] - max) / temperature_);
    order_[i] = {p, static_cast<std::int32_t>(i)};
    total += p;
  }
  std::sort(order_.begin(), order_.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  std::size_t keep = order_.size();
  double mass = 0;
  if (top_p_ < 1.0f) {
    for (std::size_t i = 0; i < order_.size(); ++i) {
      mass += order_[i].first / total;
      if (mass >= top_p_) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (std::size_t i = 0; i < keep; ++i) kept += order_[i].first;
  // A uniform double in [0, 1) from the top 53 bits: the same on every platform (std distributions are not).
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * kept;
  double acc = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    acc += order_[i].first;
    if (u < acc) return order_[i].second;
  }
  return order_[keep - 1].second;
}

double GenerationResult::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? static_cast<double>(prompt_tokens) / prefill_seconds : 0.0;
}

double GenerationResult::decode_tokens_per_second() const {
  return decode_seconds > 0 ? static_cast<double>(decode_steps) / decode_seconds : 0.0;
}

GenerationResult generate(const LlamaModel& model, std::span<const std::int32_t> prompt, const SamplingOptions& options,
                          const TokenCallback& on_token) {
  const LlamaConfig& c = model.config();
  const auto prompt_len = static_cast<std::int64_t>(prompt.size());
  LOWBIT_CHECK(prompt_len > 0, ErrorCode::InvalidArgument, "generate: the prompt is empty");
  LOWBIT_CHECK(prompt_len < c.max_position_embeddings, ErrorCode::InvalidArgument,
               "generate: the prompt has {} tokens; the model's context is {} (max_position_embeddings)", prompt_len,
               c.max_position_embeddings);
  LOWBIT_CHECK(options.max_new_tokens >= 0, ErrorCode::InvalidArgument, "generate: max_new_tokens = {} is negative",
               options.max_new_tokens);
  Sampler sampler(options);
  GenerationResult result;
  result.prompt_tokens = prompt_len;
  result.stop_reason = "max_new_tokens";
  if (options.max_new_tokens == 0) return result;
  const std::int64_t capacity = std::min(c.max_position_embeddings, prompt_len + options.max_new_tokens);
  KvCache cache = model.make_cache(capacity);
  const std::int64_t vocab = model.vocab_size();

  auto start = std::chrono::steady_clock::now();
  Tensor logits = model.forward(prompt, &cache);
  result.prefill_seconds = seconds_since(start);
  start = std::chrono::steady_clock::now();
  for (;;) {
    const float* last = logits.data<float>() + (logits.size(0) - 1) * vocab;
    const std::int32_t token = sampler.next(std::span<const float>(last, static_cast<std::size_t>(vocab)));
    const bool is_eos = options.stop_at_eos && std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(),
                                                         static_cast<std::int64_t>(token)) != c.eos_token_ids.end();
    const bool go_on = !on_token || on_token(token);
    if (is_eos) {
      result.stop_reason = "eos";
      break;
    }
    result.tokens.push_back(token);
    if (!go_on) {
      result.stop_reason = "callback";
      break;
    }
    if (static_cast<std::int64_t>(result.tokens.size()) >= options.max_new_tokens) break;
    if (cache.length() >= c.max_position_embeddings) {
      result.stop_reason = "context";
      break;
    }
    const std::int32_t step[1] = {token};
    logits = model.forward(step, &cache);
    ++result.decode_steps;
  }
  result.decode_seconds = seconds_since(start);
  return result;
}

}  // namespace lowbit::model
