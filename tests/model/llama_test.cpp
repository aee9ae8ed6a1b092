// model/llama.hpp: the fp32 forward against a naive fp64 forward on tiny random models (GQA, biases, Llama 3
// rope scaling, tied and untied heads, f16/bf16 weights, sharded checkpoints), KV-cache decoding against the
// full forward, the per-layer entry points and the linear-input hook, loader errors on crafted folders, and
// on the real stories15M: logits against transformers (tests/data/model, made by make_stories15m_logits.py)
// and the greedy sample its author publishes.
#include "lowbit/model/llama.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "lowbit/core/parallel.hpp"
#include "lowbit/io/quantized.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/model/generate.hpp"
#include "lowbit/model/tokenizer.hpp"
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

// Tensors as the folder stores them (rounded to spec.dtype), for the naive forward.
TensorMap stored(const TensorMap& t, DType dtype) {
  TensorMap out;
  for (const auto& [name, tensor] : t) out[name] = tensor.to(dtype);
  return out;
}

TEST(LlamaForward, MatchesNaiveFp64OnTinyModels) {
  struct Case {
    const char* label;
    TinySpec spec;
    std::int64_t tokens;
  };
  std::vector<Case> cases;
  cases.push_back({"GQA + biases + llama3 rope + untied head", TinySpec{}, 20});
  TinySpec mha;
  mha.heads = mha.kv_heads = 4;
  mha.attention_bias = mha.mlp_bias = false;
  mha.tie = true;
  mha.llama3_rope = false;
  mha.rope_theta = 10000.0;
  mha.seed = 2;
  cases.push_back({"MHA, no bias, tied head, plain rope", mha, 9});
  TinySpec qwen;
  qwen.model_type = "qwen2";
  qwen.kv_heads = 1;
  qwen.mlp_bias = false;
  qwen.seed = 3;
  cases.push_back({"qwen2: q/k/v bias only, one kv head", qwen, 13});
  TinySpec mistral;
  mistral.model_type = "mistral";
  mistral.attention_bias = mistral.mlp_bias = false;
  mistral.sliding_window = 5;
  mistral.seed = 7;
  cases.push_back({"mistral, sliding window 5", mistral, 13});
  TinySpec mistral_long = mistral;  // the window inside and across attention tasks of 64 rows
  mistral_long.sliding_window = 70;
  mistral_long.max_positions = 256;
  cases.push_back({"mistral, sliding window 70, 150 tokens", mistral_long, 150});
  TinySpec long_seq;  // more query rows than one attention task holds (64)
  long_seq.max_positions = 256;
  long_seq.seed = 4;
  cases.push_back({"150 tokens", long_seq, 150});
  TinySpec f16;
  f16.dtype = DType::F16;
  f16.seed = 5;
  cases.push_back({"f16 weights", f16, 11});
  TinySpec bf16;
  bf16.dtype = DType::BF16;
  bf16.seed = 6;
  cases.push_back({"bf16 weights", bf16, 11});

  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    TempDir dir;
    const TensorMap tensors = write_tiny_model(dir.path(), c.spec);
    const LlamaModel model = LlamaModel::load(dir.path());
    const std::vector<std::int32_t> tokens = random_tokens(c.tokens, c.spec.vocab, c.spec.seed);
    const Tensor logits = model.forward(tokens);
    ASSERT_EQ(logits.shape(), (Shape{c.tokens, c.spec.vocab}));
    const Matrix want = naive_forward(stored(tensors, c.spec.dtype), tiny_config(c.spec), tokens);
    EXPECT_LT(relative_error(logits, want), 2e-5);
  }
}

TEST(LlamaForward, KvCacheDecodingEqualsFullForward) {
  TinySpec llama;
  llama.max_positions = 128;
  TinySpec mistral = llama;
  mistral.model_type = "mistral";
  mistral.sliding_window = 9;
  for (const TinySpec& spec : {llama, mistral}) {
    SCOPED_TRACE(spec.model_type);
    TempDir dir;
    write_tiny_model(dir.path(), spec);
    const LlamaModel model = LlamaModel::load(dir.path());
    const std::vector<std::int32_t> tokens = random_tokens(80, spec.vocab, 9);
    const Tensor full = model.forward(tokens);
    KvCache cache = model.make_cache(80);
    // A prefill of 7, single tokens, then a chunk of 70 (crossing an attention task boundary), then 1 more.
    const std::int64_t steps[] = {7, 1, 1, 70, 1};
    std::int64_t done = 0;
    for (const std::int64_t n : steps) {
      const Tensor part = model.forward(
          std::span(tokens).subspan(static_cast<std::size_t>(done), static_cast<std::size_t>(n)), &cache);
      ASSERT_EQ(cache.length(), done + n);
      for (std::int64_t r = 0; r < n; ++r)
        for (std::int64_t j = 0; j < spec.vocab; ++j)
          ASSERT_NEAR(part.get({r, j}), full.get({done + r, j}), 1e-4) << "position " << done + r << " logit " << j;
      done += n;
    }
    const std::int32_t one[] = {3};
    const std::string m = error_message([&] { model.forward(one, &cache); }, ErrorCode::InvalidArgument);
    EXPECT_NE(m.find("do not fit the kv cache"), std::string::npos) << m;
    cache.truncate(40);  // rewinding and re-running gives the same logits
    const Tensor again = model.forward(std::span(tokens).subspan(40, 5), &cache);
    for (std::int64_t j = 0; j < spec.vocab; ++j) ASSERT_NEAR(again.get({4, j}), full.get({44, j}), 1e-4);
  }
}

TEST(LlamaForward, LayerEntryPointsComposeAndHookSeesEveryLinearInput) {
  TempDir dir;
  const TinySpec spec;
  write_tiny_model(dir.path(), spec);
  const LlamaModel model = LlamaModel::load(dir.path());
  const std::vector<std::int32_t> tokens = random_tokens(12, spec.vocab, 11);

  std::vector<std::string> names;
  std::vector<std::vector<float>> inputs;
  const LinearInputHook hook = [&](std::string_view name, const Tensor& input) {
    names.emplace_back(name);
    const float* p = input.data<float>();
    inputs.emplace_back(p, p + input.numel());
    EXPECT_EQ(input.size(0), 12);
    EXPECT_EQ(input.size(1), model.linear(name).k()) << name;
  };
  Tensor hidden = model.embed(tokens);
  for (std::int64_t l = 0; l < model.num_layers(); ++l) model.forward_layer(l, hidden, LayerOptions{0, nullptr, &hook});
  const Tensor logits = model.lm_head(model.final_norm(hidden));
  const Tensor full = model.forward(tokens);
  for (std::int64_t i = 0; i < full.numel(); ++i)
    ASSERT_EQ(logits.data<float>()[i], full.data<float>()[i]) << "element " << i;

  std::vector<std::string> want;
  for (std::int64_t l = 0; l < spec.layers; ++l)
    for (const auto linear : kLayerLinears) want.push_back(fmt::format("model.layers.{}.{}", l, linear));
  EXPECT_EQ(names, want);
  EXPECT_EQ(inputs[0], inputs[1]);  // q, k and v share their input, as gate and up do
  EXPECT_EQ(inputs[0], inputs[2]);
  EXPECT_EQ(inputs[4], inputs[5]);
  EXPECT_NE(inputs[0], inputs[4]);

  // forward() with a hook reports lm_head's input too.
  names.clear();
  model.forward(tokens, nullptr, &hook);
  ASSERT_EQ(names.size(), want.size() + 1);
  EXPECT_EQ(names.back(), "lm_head");
}

TEST(LlamaForward, SetLinearSwapsOneWeight) {
  TempDir dir;
  const TinySpec spec;
  const TensorMap tensors = write_tiny_model(dir.path(), spec);
  LlamaModel model = LlamaModel::load(dir.path());
  const std::vector<std::int32_t> tokens = random_tokens(6, spec.vocab, 12);
  const std::string name = "model.layers.1.mlp.down_proj";
  EXPECT_NE(model.linear(name + ".weight").describe().find("dense f32 [32, 48] + bias"), std::string::npos)
      << model.linear(name).describe();
  model.set_linear(name, std::make_unique<DenseLinear>(Tensor::zeros({spec.hidden, spec.inter}, DType::F32)));
  const Tensor after = model.forward(tokens);
  TensorMap changed = tensors;
  changed[name + ".weight"] = Tensor::zeros({spec.hidden, spec.inter}, DType::F32);
  changed.erase(name + ".bias");
  EXPECT_LT(relative_error(after, naive_forward(changed, tiny_config(spec), tokens)), 2e-5);
  EXPECT_GT(relative_error(after, naive_forward(tensors, tiny_config(spec), tokens)), 1e-3);

  std::string m = error_message(
      [&] {
        model.set_linear(name, std::make_unique<DenseLinear>(Tensor::zeros({spec.hidden, 7}, DType::F32)));
      },
      ErrorCode::ShapeMismatch);
  EXPECT_NE(m.find("[32, 7] but the layer is [32, 48]"), std::string::npos) << m;
  m = error_message([&] { model.linear("model.layers.2.mlp.up_proj"); }, ErrorCode::InvalidArgument);
  EXPECT_NE(m.find("no linear named 'model.layers.2.mlp.up_proj'"), std::string::npos) << m;
}

TEST(LlamaLoad, ShardedCheckpointLoadsLikeOneFile) {
  TempDir one;
  TempDir sharded;
  TinySpec spec;
  spec.dtype = DType::BF16;
  const TensorMap tensors = write_tiny_model(one.path(), spec);
  {
    io::CheckpointWriter out(sharded.path(), /*max_shard_bytes=*/8192);
    for (const auto& [name, t] : tensors) out.add(name, t.to(DType::BF16));
    out.add_text_file("config.json", tiny_config(spec).dump());
    out.finish();
  }
  ASSERT_TRUE(std::filesystem::exists(sharded.path() / "model.safetensors.index.json"));
  const std::vector<std::int32_t> tokens = random_tokens(10, spec.vocab, 13);
  const Tensor a = LlamaModel::load(one.path()).forward(tokens);
  const Tensor b = LlamaModel::load(sharded.path()).forward(tokens);
  for (std::int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]);
}

TEST(LlamaLoad, ErrorsNameTheTensorTheFolderAndTheShapes) {
  const TinySpec spec;
  const TensorMap tensors = tiny_tensors(spec);
  const nlohmann::json config = tiny_config(spec);
  const auto folder_with = [&](const TempDir& dir, TensorMap t, const nlohmann::json& c) {
    write_tiny_model(dir.path(), spec, t, c);
    return dir.path();
  };
  {
    TempDir dir;
    TensorMap t = tensors;
    t.erase("model.layers.1.mlp.up_proj.weight");
    const auto path = folder_with(dir, t, config);
    const std::string m = error_message([&] { LlamaModel::load(path); }, ErrorCode::InvalidArgument);
    EXPECT_NE(m.find("has no tensor 'model.layers.1.mlp.up_proj.weight'"), std::string::npos) << m;
    EXPECT_NE(m.find(path.string()), std::string::npos) << m;
  }
  {
    TempDir dir;
    TensorMap t = tensors;
    t["model.layers.0.self_attn.k_proj.weight"] = Tensor::zeros({32, 32}, DType::F32);  // GQA: [16, 32]
    const auto path = folder_with(dir, t, config);
    const std::string m = error_message([&] { LlamaModel::load(path); }, ErrorCode::ShapeMismatch);
    EXPECT_NE(m.find("tensor 'model.layers.0.self_attn.k_proj.weight' is [32, 32] but config.json implies [16, 32]"),
              std::string::npos)
        << m;
  }
  {
    TempDir dir;
    TensorMap t = tensors;
    t.erase("model.layers.0.self_attn.q_proj.bias");  // attention_bias: true
    const auto path = folder_with(dir, t, config);
    const std::string m = error_message([&] { LlamaModel::load(path); }, ErrorCode::InvalidArgument);
    EXPECT_NE(m.find("has no tensor 'model.layers.0.self_attn.q_proj.bias'"), std::string::npos) << m;
  }
  {
    TempDir dir;
    TensorMap t = tensors;
    t.erase("lm_head.weight");  // and tie_word_embeddings: false
    const auto path = folder_with(dir, t, config);
    const std::string m = error_message([&] { LlamaModel::load(path); }, ErrorCode::InvalidArgument);
    EXPECT_NE(m.find("has no tensor 'lm_head.weight'"), std::string::npos) << m;
  }
  {
    TempDir dir;
    TensorMap t = tensors;
    t["model.norm.weight"] = Tensor::zeros({32}, DType::I32);
    const auto path = folder_with(dir, t, config);
    const std::string m = error_message([&] { LlamaModel::load(path); }, ErrorCode::DTypeMismatch);
    EXPECT_NE(m.find("tensor 'model.norm.weight' is i32"), std::string::npos) << m;
  }
  {
    TempDir dir;
    nlohmann::json c = config;
    c["model_type"] = "gpt2";
    const auto path = folder_with(dir, tensors, c);
    const std::string m = error_message([&] { LlamaModel::load(path); }, ErrorCode::Unsupported);
    EXPECT_NE(m.find("model_type 'gpt2' is not supported"), std::string::npos) << m;
  }
  {
    TempDir dir;
    const std::string m = error_message([&] { LlamaModel::load(dir.path() / "absent"); }, ErrorCode::IO);
    EXPECT_NE(m.find("is not a folder"), std::string::npos) << m;
  }
}

TEST(Sampler, GreedyTopPAndSeeds) {
  const std::vector<float> logits = {0.5f, 2.0f, 2.0f, -1.0f, 1.9f};
  Sampler greedy(SamplingOptions{});
  EXPECT_EQ(greedy.next(logits), 1);  // lowest id among ties, as torch.argmax
  SamplingOptions narrow;
  narrow.temperature = 1.0f;
  narrow.top_p = 0.01f;  // the nucleus is the single most likely token
  Sampler nucleus(narrow);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(nucleus.next(logits), 1);
  SamplingOptions hot;
  hot.temperature = 1.0f;
  hot.seed = 42;
  Sampler a(hot), b(hot);
  std::vector<int> counts(5, 0);
  for (int i = 0; i < 2000; ++i) {
    const std::int32_t x = a.next(logits);
    ASSERT_EQ(x, b.next(logits));
    ++counts[static_cast<std::size_t>(x)];
  }
  for (int c : counts) EXPECT_GT(c, 0);  // every token has mass
  EXPECT_GT(counts[1], counts[0]);
  SamplingOptions bad;
  bad.top_p = 0.0f;
  EXPECT_THROW(Sampler{bad}, Error);
  bad.top_p = 1.0f;
  bad.temperature = -1.0f;
  EXPECT_THROW(Sampler{bad}, Error);
}

// ---- the real model ----------------------------------------------------------------------------------------

TEST(Stories15M, LogitsMatchTransformers) {
  LOWBIT_REQUIRE_STORIES15M();
  const io::SafetensorsFile ref = io::SafetensorsFile::open(std::filesystem::path(LOWBIT_TEST_DATA_DIR) / "model" /
                                                            "stories15m_logits.safetensors");
  const Tensor ids_t = ref.tensor("ids");
  const std::vector<std::int32_t> ids(ids_t.data<std::int32_t>(), ids_t.data<std::int32_t>() + ids_t.numel());
  const LlamaModel model = LlamaModel::load(kStories15M);
  const Tensor logits = model.forward(ids);  // [64, 32000]
  const std::int64_t t = logits.size(0);
  const std::int64_t vocab = logits.size(1);
  ASSERT_EQ(t, 64);
  const float* l = logits.data<float>();

  // Every compared logit: |ours - transformers| <= 1e-4 * max |transformers logit| of its position.
  const Tensor slice_ids = ref.tensor("slice_ids");
  const Tensor slice = ref.tensor("slice");
  const Tensor top_ids = ref.tensor("top_ids");
  const Tensor top_values = ref.tensor("top_values");
  const Tensor lse = ref.tensor("lse");
  const Tensor last = ref.tensor("last");
  double worst = 0;
  for (std::int64_t r = 0; r < t; ++r) {
    const double scale = std::abs(top_values.get({r, 0}));
    const auto rel = [&](double ours, double theirs) { return std::abs(ours - theirs) / scale; };
    for (std::int64_t j = 0; j < slice_ids.numel(); ++j) {
      const auto id = static_cast<std::int64_t>(slice_ids.get({j}));
      worst = std::max(worst, rel(l[r * vocab + id], slice.get({r, j})));
    }
    for (std::int64_t j = 0; j < top_ids.size(1); ++j) {
      const auto id = static_cast<std::int64_t>(top_ids.get({r, j}));
      worst = std::max(worst, rel(l[r * vocab + id], top_values.get({r, j})));
    }
    EXPECT_EQ(std::max_element(l + r * vocab, l + (r + 1) * vocab) - (l + r * vocab), top_ids.get({r, 0}))
        << "argmax at position " << r;
    double max = -1e30, sum = 0;
    for (std::int64_t j = 0; j < vocab; ++j) max = std::max(max, static_cast<double>(l[r * vocab + j]));
    for (std::int64_t j = 0; j < vocab; ++j) sum += std::exp(l[r * vocab + j] - max);
    worst = std::max(worst, rel(max + std::log(sum), lse.get({r})));
  }
  for (std::int64_t j = 0; j < vocab; ++j)
    worst = std::max(worst, std::abs(l[(t - 1) * vocab + j] - last.get({j})) / std::abs(top_values.get({t - 1, 0})));
  EXPECT_LT(worst, 1e-4);
  RecordProperty("worst_relative_error", fmt::format("{:.3g}", worst));
  std::printf("stories15M vs transformers: worst relative logit error %.3g\n", worst);
}

TEST(Stories15M, GreedyContinuationIsTheAuthorsSample) {
  LOWBIT_REQUIRE_STORIES15M();
  const LlamaModel model = LlamaModel::load(kStories15M);
  const Tokenizer tokenizer = Tokenizer::load(kStories15M);
  const std::vector<std::int32_t> prompt = tokenizer.encode("Once upon a time, there was a little");
  SamplingOptions options;
  options.max_new_tokens = 40;
  const GenerationResult r = generate(model, prompt, options);
  std::vector<std::int32_t> all = prompt;
  all.insert(all.end(), r.tokens.begin(), r.tokens.end());
  const std::string text = tokenizer.decode(all);
  const std::string sample =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine. One day, she "
      "saw a big, red ball in the sky. It was the sun!";
  EXPECT_EQ(text.substr(0, sample.size()), sample) << text;
  EXPECT_EQ(r.stop_reason, "max_new_tokens");
  EXPECT_EQ(r.tokens.size(), 40u);
}

}  // namespace
}  // namespace lowbit::model
