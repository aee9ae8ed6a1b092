#include "lowbit/model/perplexity.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "lowbit/core/error.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/model/cpu_math.hpp"

namespace lowbit::model {
namespace {

// lm_head rows per step: bounds the logits held at once (64 x vocab floats).
constexpr std::int64_t kHeadRows = 64;

bool is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v'; }

std::string_view strip(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

std::int32_t bos_of(const LlamaModel& model, const Tokenizer& tokenizer) {
  if (tokenizer.bos_id() >= 0) return tokenizer.bos_id();
  return static_cast<std::int32_t>(model.config().bos_token_id);
}

}  // namespace

double PerplexityResult::perplexity() const { return std::exp(mean_nll()); }

double sequence_nll(const LlamaModel& model, std::span<const std::int32_t> tokens, std::int64_t first_target,
                    std::vector<double>* per_token) {
  const auto t = static_cast<std::int64_t>(tokens.size());
  LOWBIT_CHECK(first_target >= 1, ErrorCode::InvalidArgument,
               "perplexity: first_target = {}; the first token has no prediction, so it must be >= 1", first_target);
  if (t <= first_target) return 0.0;
  const Tensor hidden = model.hidden_states(tokens);  // [t, hidden]
  const std::int64_t vocab = model.vocab_size();
  std::vector<double> nll(static_cast<std::size_t>(t - first_target));
  // Prediction at position p scores token p + 1: positions [first_target - 1, t - 1).
  for (std::int64_t p0 = first_target - 1; p0 < t - 1; p0 += kHeadRows) {
    const std::int64_t p1 = std::min(t - 1, p0 + kHeadRows);
    const Tensor logits = model.lm_head(hidden.slice(0, p0, p1));  // [p1 - p0, vocab]
    const float* l = logits.data<float>();
    parallel_for(p1 - p0, 4, [&](std::int64_t r0, std::int64_t r1) {
      for (std::int64_t r = r0; r < r1; ++r) {
        const float* row = l + r * vocab;
        const float max = *std::max_element(row, row + vocab);
        const double sum = sum_exp_shifted(row, vocab, max);
        const std::int32_t target = tokens[static_cast<std::size_t>(p0 + r + 1)];
        nll[static_cast<std::size_t>(p0 + r + 1 - first_target)] =
            static_cast<double>(max) + std::log(sum) - static_cast<double>(row[target]);
      }
    });
  }
  double total = 0;
  for (const double v : nll) total += v;
  if (per_token != nullptr) per_token->insert(per_token->end(), nll.begin(), nll.end());
  return total;
}

std::vector<std::string> split_stories(std::string_view text, std::string_view separator) {
  std::vector<std::string> out;
  std::size_t story_begin = 0;
  std::size_t line_begin = 0;
  const auto finish = [&](std::size_t end) {
    const std::string_view story = strip(text.substr(story_begin, end - story_begin));
    if (!story.empty()) out.emplace_back(story);
  };
  while (line_begin < text.size()) {
    std::size_t line_end = text.find('\n', line_begin);
    if (line_end == std::string_view::npos) line_end = text.size();
    std::string_view line = text.substr(line_begin, line_end - line_begin);
    if (line.ends_with('\r')) line.remove_suffix(1);
    const std::size_t next = std::min(text.size(), line_end + 1);
    if (line == separator) {
      finish(line_begin);
      story_begin = next;
    }
    line_begin = next;
  }
  finish(text.size());
  return out;
}

std::string join_rows(std::string_view text) {
  std::string out;
  out.reserve(text.size() * 2);
  std::size_t begin = 0;
  bool first = true;
  while (begin < text.size()) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    std::string_view row = text.substr(begin, end - begin);
    if (row.ends_with('\r')) row.remove_suffix(1);
    if (!first) out += "\n\n";
    out += row;
    out += '\n';
    first = false;
    begin = end + 1;
  }
  return out;
}

PerplexityResult perplexity_windows(const LlamaModel& model, std::span<const std::int32_t> all_ids,
                                    const WindowOptions& options, const ProgressCallback& progress) {
  const std::int64_t seqlen = options.seqlen;
  const std::int64_t stride = options.stride == 0 ? seqlen : options.stride;
  LOWBIT_CHECK(seqlen >= 2, ErrorCode::InvalidArgument, "perplexity: seqlen = {} must be at least 2", seqlen);
  LOWBIT_CHECK(stride >= 1 && stride <= seqlen, ErrorCode::InvalidArgument,
               "perplexity: stride = {} must be in [1, seqlen = {}]", stride, seqlen);
  std::span<const std::int32_t> ids = all_ids;
  if (options.max_tokens > 0 && static_cast<std::int64_t>(ids.size()) > options.max_tokens) {
    ids = ids.first(static_cast<std::size_t>(options.max_tokens));
  }
  const auto total = static_cast<std::int64_t>(ids.size());
  PerplexityResult result;
  if (stride == seqlen) {
    const std::int64_t windows = total / seqlen;
    LOWBIT_CHECK(windows >= 1, ErrorCode::InvalidArgument,
                 "perplexity: the text has {} tokens, fewer than one window of seqlen = {}; lower --seqlen", total,
                 seqlen);
    ProgressReporter report(progress, "perplexity", windows);
    for (std::int64_t w = 0; w < windows; ++w) {
      const auto window = ids.subspan(static_cast<std::size_t>(w * seqlen), static_cast<std::size_t>(seqlen));
      result.total_nll += sequence_nll(model, window);
      result.tokens += seqlen - 1;
      ++result.sequences;
      report.advance(1, fmt::format("window {}: running PPL {:.4f}", w, result.perplexity()));
    }
    return result;
  }
  LOWBIT_CHECK(total >= 2, ErrorCode::InvalidArgument, "perplexity: the text has {} tokens; at least 2 are needed",
               total);
  // Windows begin at 0, stride, 2 stride, ... until one reaches the last token.
  const std::int64_t windows = total <= seqlen ? 1 : 1 + (total - seqlen + stride - 1) / stride;
  ProgressReporter report(progress, "perplexity", windows);
  std::int64_t scored_end = 0;  // tokens [0, scored_end) are scored (or are the unpredictable first)
  for (std::int64_t begin = 0; scored_end < total; begin += stride) {
    const std::int64_t end = std::min(begin + seqlen, total);
    const std::int64_t first_target = std::max<std::int64_t>(1, scored_end - begin);
    result.total_nll += sequence_nll(
        model, ids.subspan(static_cast<std::size_t>(begin), static_cast<std::size_t>(end - begin)), first_target);
    result.tokens += end - begin - first_target;
    ++result.sequences;
    scored_end = end;
    report.advance(1, fmt::format("window at {}: running PPL {:.4f}", begin, result.perplexity()));
  }
  return result;
}

PerplexityResult perplexity_windows(const LlamaModel& model, const Tokenizer& tokenizer, std::string_view text,
                                    const WindowOptions& options, const ProgressCallback& progress) {
  const std::vector<std::int32_t> ids = tokenizer.encode(text, /*add_special=*/true);
  return perplexity_windows(model, ids, options, progress);
}

PerplexityResult perplexity_per_story(const LlamaModel& model, const Tokenizer& tokenizer, std::string_view text,
                                      const PerStoryOptions& options, const ProgressCallback& progress) {
  LOWBIT_CHECK(options.max_tokens >= 2, ErrorCode::InvalidArgument,
               "perplexity: max_tokens = {} per story must be at least 2", options.max_tokens);
  const std::vector<std::string> stories = split_stories(text, options.separator);
  LOWBIT_CHECK(!stories.empty(), ErrorCode::InvalidArgument,
               "perplexity: the text holds no story (separator line '{}')", options.separator);
  const std::int32_t bos = bos_of(model, tokenizer);
  PerplexityResult result;
  ProgressReporter report(progress, "perplexity", static_cast<std::int64_t>(stories.size()));
  for (std::size_t i = 0; i < stories.size(); ++i) {
    std::vector<std::int32_t> ids{bos};
    const std::vector<std::int32_t> body = tokenizer.encode(stories[i], /*add_special=*/false);
    ids.insert(ids.end(), body.begin(), body.end());
    if (static_cast<std::int64_t>(ids.size()) > options.max_tokens) {
      ids.resize(static_cast<std::size_t>(options.max_tokens));
    }
    result.total_nll += sequence_nll(model, ids);
    result.tokens += static_cast<std::int64_t>(ids.size()) - 1;
    ++result.sequences;
    report.advance(1, fmt::format("story {}: running PPL {:.4f}", i, result.perplexity()));
  }
  return result;
}

}  // namespace lowbit::model
