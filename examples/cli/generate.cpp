// lowbit generate MODEL --prompt TEXT: continue a prompt with a model (dense or quantized), greedy by default,
// printing the text as it comes and the speed at the end.
#include "lowbit/model/generate.hpp"

#include <fmt/format.h>

#include <cstdio>

#include "cli_util.hpp"
#include "commands.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/model/tokenizer.hpp"

namespace lowbit::cli {
namespace {

struct GenerateOptions {
  std::string model;
  std::string prompt;
  std::int64_t max_tokens = 256;
  float temperature = 0.0f;
  float top_p = 1.0f;
  std::uint64_t seed = 0;
  bool dequantize = false;
  int threads = 0;
};

// The text is re-decoded from all ids at each step, because SentencePiece decodes a piece differently at the
// start of a text (no leading space) and a character split over byte tokens is whole only at its last byte.
class TextStream {
 public:
  TextStream(const model::Tokenizer& tokenizer, std::vector<std::int32_t> prompt)
      : tokenizer_(tokenizer), ids_(std::move(prompt)), printed_(tokenizer_.decode(ids_).size()) {}

  void push(std::int32_t id) {
    ids_.push_back(id);
    const std::string text = tokenizer_.decode(ids_);
    if (text.size() <= printed_ || text.ends_with("\xEF\xBF\xBD")) return;  // nothing new, or half a character
    std::fwrite(text.data() + printed_, 1, text.size() - printed_, stdout);
    std::fflush(stdout);
    printed_ = text.size();
  }

 private:
  const model::Tokenizer& tokenizer_;
  std::vector<std::int32_t> ids_;
  std::size_t printed_;
};

void run_generate(const GenerateOptions& o) {
  if (o.threads > 0) set_num_threads(o.threads);
  model::LoadOptions load;
  load.quantized =
      o.dequantize ? model::QuantizedExecution::DequantizeAtLoad : model::QuantizedExecution::ReferenceMatmul;
  const model::LlamaModel m = model::LlamaModel::load(o.model, load);
  const model::Tokenizer tokenizer = model::Tokenizer::load(o.model);
  const std::vector<std::int32_t> prompt = tokenizer.encode(o.prompt, /*add_special=*/true);
  model::SamplingOptions s;
  s.max_new_tokens = o.max_tokens;
  s.temperature = o.temperature;
  s.top_p = o.top_p;
  s.seed = o.seed;

  fmt::print("{}", tokenizer.decode(prompt));
  std::fflush(stdout);
  TextStream stream(tokenizer, prompt);
  const model::GenerationResult r = model::generate(m, prompt, s, [&](std::int32_t id) {
    stream.push(id);
    return true;
  });
  fmt::print("\n");
  std::fflush(stdout);
  fmt::print(stderr,
             "prompt: {} tokens in {:.1f} ms ({:.0f} tokens/s); generated {} tokens, {:.0f} tokens/s ({}); "
             "stop: {}; {} threads\n",
             r.prompt_tokens, 1e3 * r.prefill_seconds, r.prefill_tokens_per_second(), r.tokens.size(),
             r.decode_tokens_per_second(), m.weight_format(), r.stop_reason, num_threads());
}

}  // namespace

void register_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "Continue a prompt with a Llama-family model (dense or quantized)");
  cmd->add_option("model", o->model, "Model folder (config.json, safetensors, tokenizer.model)")->required();
  cmd->add_option("--prompt", o->prompt, "Text to continue")->required();
  cmd->add_option("--max-tokens", o->max_tokens, "New tokens at most (also stops at EOS and the model's context)")
      ->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "0: greedy; > 0: sample softmax(logits / T)")->capture_default_str();
  cmd->add_option("--top-p", o->top_p, "Sample only from the most likely tokens whose probability reaches P")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the sampler")->capture_default_str();
  cmd->add_flag("--dequantize", o->dequantize,
                "Quantized weights: dequantize once at load (fast) instead of the reference matmul per call");
  cmd->add_option("--threads", o->threads, "CPU threads (default: all cores)");
  cmd->callback([o] { run_generate(*o); });
}

}  // namespace lowbit::cli
