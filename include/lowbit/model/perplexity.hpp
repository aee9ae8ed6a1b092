// Perplexity of a model on a text, by the two protocols lowbit reports.
//
// "windows" (the GPTQ/AWQ papers' protocol, shared/methods/evaluation.md section 1): tokenize the whole text
//   once (one BOS at the start, as the tokenizer's configuration adds it), cut the ids into consecutive
//   windows of seqlen tokens (the tail shorter than seqlen is dropped), run each window on its own (fresh
//   context, positions from 0) and score the seqlen - 1 predictions of each.
//   stride < seqlen: the strided evaluation of transformers' "perplexity of fixed-length models" guide:
//   windows start every `stride` tokens (the last may be shorter) and each scores only the tokens no
//   earlier window scored (the first scores all it predicts), seeing up to seqlen - 1 tokens of context.
// "per story" (the stories15M reference, shared/data/README.md): split the text on lines that are exactly
//   `<|endoftext|>`, strip each story of surrounding whitespace (empty ones are skipped), encode it,
//   prepend BOS, keep the first max_tokens ids, and score every prediction.
//
// Both sum the natural-log negative log-likelihood (log-softmax of the fp32 logits, summed in fp64) over
// all predicted tokens: PPL = exp(total NLL / predicted tokens).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/core/progress.hpp"
#include "lowbit/model/llama.hpp"
#include "lowbit/model/tokenizer.hpp"

namespace lowbit::model {

struct PerplexityResult {
  std::int64_t sequences = 0;  // windows or stories run
  std::int64_t tokens = 0;     // predicted (scored) tokens
  double total_nll = 0;        // natural log
  double mean_nll() const noexcept { return tokens > 0 ? total_nll / static_cast<double>(tokens) : 0.0; }
  double perplexity() const;  // exp(mean_nll())
};

struct WindowOptions {
  std::int64_t seqlen = 2048;
  std::int64_t stride = 0;      // 0: seqlen (non-overlapping windows); else 1..seqlen
  std::int64_t max_tokens = 0;  // > 0: keep only the first max_tokens ids of the text (quick runs)
};

struct PerStoryOptions {
  std::string separator = "<|endoftext|>";  // a line holding exactly this ends a story
  std::int64_t max_tokens = 256;            // ids per story, BOS included
};

// Sum of the NLL of tokens[first_target ..] (first_target >= 1), each given the tokens before it, from one
// forward pass over `tokens` (fresh context, positions from 0). Appends each scored token's NLL to
// `per_token` when given.
double sequence_nll(const LlamaModel& model, std::span<const std::int32_t> tokens, std::int64_t first_target = 1,
                    std::vector<double>* per_token = nullptr);

// Stories of a per-story file: split on separator lines, whitespace-stripped, empty ones dropped.
std::vector<std::string> split_stories(std::string_view text, std::string_view separator = "<|endoftext|>");
// WikiText-style rows (one per line, CR LF or LF) joined as the papers join the dataset's rows: each row
// keeps its own "\n" and rows are joined with "\n\n".
std::string join_rows(std::string_view text);

// Progress: stage "perplexity", one step per window or story.
PerplexityResult perplexity_windows(const LlamaModel& model, const Tokenizer& tokenizer, std::string_view text,
                                    const WindowOptions& options = {}, const ProgressCallback& progress = {});
PerplexityResult perplexity_windows(const LlamaModel& model, std::span<const std::int32_t> ids,
                                    const WindowOptions& options = {}, const ProgressCallback& progress = {});
PerplexityResult perplexity_per_story(const LlamaModel& model, const Tokenizer& tokenizer, std::string_view text,
                                      const PerStoryOptions& options = {}, const ProgressCallback& progress = {});

}  // namespace lowbit::model
