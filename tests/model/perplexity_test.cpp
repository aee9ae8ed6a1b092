// model/perplexity.hpp: both protocols on a tiny random model against NLL computed from a naive fp64
// forward, story splitting and row joining, and the per-story reference perplexity of stories15M
// (shared/data/README.md: calib 2.9167 over 11,885 tokens).
#include "lowbit/model/perplexity.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>
#include <sstream>

#include "model/model_test_util.hpp"

namespace lowbit::model {
namespace {

using namespace test;  // NOLINT: the helpers of this folder

std::vector<std::int32_t> random_tokens(std::int64_t count, std::int64_t vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> dist(0, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::int32_t> out(static_cast<std::size_t>(count));
  for (auto& t : out) t = dist(rng);
  return out;
}

// -log softmax(logits[p])[tokens[p + 1]] in fp64 from the naive forward of one window, positions p >= from - 1.
double naive_nll(const TensorMap& t, const nlohmann::json& config, const std::vector<std::int32_t>& window,
                 std::size_t first_target = 1) {
  const Matrix logits = naive_forward(t, config, window);
  double total = 0;
  for (std::size_t p = first_target - 1; p + 1 < window.size(); ++p) {
    double max = -1e300, sum = 0;
    for (double v : logits[p]) max = std::max(max, v);
    for (double v : logits[p]) sum += std::exp(v - max);
    total += max + std::log(sum) - logits[p][static_cast<std::size_t>(window[p + 1])];
  }
  return total;
}

TEST(Perplexity, WindowsEqualNaiveNll) {
  TempDir dir;
  TinySpec spec;
  spec.max_positions = 32;
  const TensorMap tensors = write_tiny_model(dir.path(), spec);
  const nlohmann::json config = tiny_config(spec);
  const LlamaModel model = LlamaModel::load(dir.path());
  const std::vector<std::int32_t> ids = random_tokens(53, spec.vocab, 21);

  // Non-overlapping windows of 16: 3 windows (the last 5 tokens dropped), 15 predictions each.
  WindowOptions w;
  w.seqlen = 16;
  int progress_calls = 0;
  const PerplexityResult r = perplexity_windows(model, ids, w, [&](const ProgressEvent& e) {
    ++progress_calls;
    EXPECT_EQ(e.total, 3);
  });
  EXPECT_EQ(progress_calls, 3);
  EXPECT_EQ(r.sequences, 3);
  EXPECT_EQ(r.tokens, 45);
  double want = 0;
  for (int i = 0; i < 3; ++i)
    want += naive_nll(tensors, config, std::vector<std::int32_t>(ids.begin() + 16 * i, ids.begin() + 16 * (i + 1)));
  EXPECT_NEAR(r.total_nll, want, 1e-5 * want);
  EXPECT_NEAR(r.perplexity(), std::exp(want / 45), 1e-5 * std::exp(want / 45));

  // max_tokens keeps the first 40 ids: 2 windows.
  w.max_tokens = 40;
  EXPECT_EQ(perplexity_windows(model, ids, w).sequences, 2);

  // Strided: windows of 16 every 6 tokens; each scores only what no earlier window scored, so every token
  // but the first is scored once, with as much context as its window gives.
  w.max_tokens = 0;
  w.stride = 6;
  const PerplexityResult s = perplexity_windows(model, ids, w);
  EXPECT_EQ(s.tokens, 52);
  double strided = 0;
  std::int64_t scored_end = 0, windows = 0;
  for (std::int64_t begin = 0; scored_end < 53; begin += 6, ++windows) {
    const std::int64_t end = std::min<std::int64_t>(begin + 16, 53);
    const std::vector<std::int32_t> window(ids.begin() + begin, ids.begin() + end);
    strided +=
        naive_nll(tensors, config, window, static_cast<std::size_t>(std::max<std::int64_t>(1, scored_end - begin)));
    scored_end = end;
  }
  EXPECT_EQ(s.sequences, windows);
  EXPECT_NEAR(s.total_nll, strided, 1e-5 * strided);

  std::string m = error_message([&] { perplexity_windows(model, std::span(ids).first(10), WindowOptions{16}); },
                                ErrorCode::InvalidArgument);
  EXPECT_NE(m.find("fewer than one window of seqlen = 16"), std::string::npos) << m;
  m = error_message([&] { perplexity_windows(model, ids, WindowOptions{16, 17}); }, ErrorCode::InvalidArgument);
  EXPECT_NE(m.find("stride = 17"), std::string::npos) << m;
}

TEST(Perplexity, SequenceNllPerToken) {
  TempDir dir;
  const TinySpec spec;
  const TensorMap tensors = write_tiny_model(dir.path(), spec);
  const LlamaModel model = LlamaModel::load(dir.path());
  const std::vector<std::int32_t> ids = random_tokens(9, spec.vocab, 22);
  std::vector<double> per_token;
  const double total = sequence_nll(model, ids, 3, &per_token);
  ASSERT_EQ(per_token.size(), 6u);
  double sum = 0;
  for (double v : per_token) sum += v;
  EXPECT_DOUBLE_EQ(sum, total);
  EXPECT_NEAR(total, naive_nll(tensors, tiny_config(spec), ids, 3), 1e-5 * total);
  EXPECT_EQ(sequence_nll(model, std::span(ids).first(1)), 0.0);
  EXPECT_THROW(sequence_nll(model, ids, 0), Error);
}

TEST(Perplexity, SplitStoriesAndJoinRows) {
  const std::string text =
      "  first story\nline two \n<|endoftext|>\n\n<|endoftext|>\r\nsecond<|endoftext|>x\n<|endoftext|>";
  const std::vector<std::string> stories = split_stories(text);
  ASSERT_EQ(stories.size(), 2u);
  EXPECT_EQ(stories[0], "first story\nline two");
  EXPECT_EQ(stories[1], "second<|endoftext|>x");  // only whole lines separate
  EXPECT_EQ(join_rows(" = Title = \r\n Body .\r\n"), " = Title = \n\n\n Body .\n");
  EXPECT_EQ(join_rows("a\nb"), "a\n\n\nb\n");
}

TEST(Stories15M, PerStoryPerplexityMatchesReference) {
  LOWBIT_REQUIRE_STORIES15M();
  const LlamaModel model = LlamaModel::load(kStories15M);
  const Tokenizer tokenizer = Tokenizer::load(kStories15M);
  std::ifstream in(kSharedData / "text" / "tinystories-calib.txt", std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  const PerplexityResult r = perplexity_per_story(model, tokenizer, text.str());
  EXPECT_EQ(r.sequences, 64);
  EXPECT_EQ(r.tokens, 11885);
  EXPECT_NEAR(r.mean_nll(), 1.07047, 1e-5);
  EXPECT_NEAR(r.perplexity(), 2.9167, 1e-4);  // shared/data/README.md, 4 significant digits
  std::printf("stories15M calib per-story: %lld tokens, mean NLL %.6f, PPL %.5f\n", static_cast<long long>(r.tokens),
              r.mean_nll(), r.perplexity());
}

}  // namespace
}  // namespace lowbit::model
