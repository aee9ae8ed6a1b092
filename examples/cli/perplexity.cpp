// lowbit perplexity MODEL --text FILE: perplexity of a model (dense or quantized) on a text, by the papers'
// window protocol or the per-story protocol (include/lowbit/model/perplexity.hpp says which does what).
#include "lowbit/io/atomic_file.hpp"
#include "lowbit/model/perplexity.hpp"

#include <fmt/format.h>

#include <chrono>

#include "cli_util.hpp"
#include "commands.hpp"
#include "lowbit/core/parallel.hpp"

namespace lowbit::cli {
namespace {

struct PerplexityOptions {
  std::string model;
  std::string text;
  std::string protocol = "auto";
  std::int64_t seqlen = 0;
  std::int64_t stride = 0;
  std::int64_t max_tokens = 0;
  bool join_rows = false;
  bool dequantize = false;
  int threads = 0;
};

void run_perplexity(const PerplexityOptions& o) {
  if (o.threads > 0) set_num_threads(o.threads);
  const std::string text = io::read_text_file(o.text, "perplexity");
  std::string protocol = o.protocol;
  if (protocol == "auto") {
    protocol = text.find("\n<|endoftext|>\n") != std::string::npos ? "per-story" : "windows";
  }
  LOWBIT_CHECK(protocol == "per-story" || protocol == "windows", ErrorCode::InvalidArgument,
               "perplexity: --protocol '{}' is not one of auto, per-story, windows", o.protocol);

  const auto t0 = std::chrono::steady_clock::now();
  model::LoadOptions load;
  load.quantized =
      o.dequantize ? model::QuantizedExecution::DequantizeAtLoad : model::QuantizedExecution::ReferenceMatmul;
  const model::LlamaModel m = model::LlamaModel::load(o.model, load);
  const model::Tokenizer tokenizer = model::Tokenizer::load(o.model);
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("model: {} ({} layers, hidden {}, {} weights), loaded in {}; {} threads\n", o.model, m.num_layers(),
             m.hidden_size(), m.weight_format(), human_seconds(load_seconds), num_threads());

  const auto t1 = std::chrono::steady_clock::now();
  model::PerplexityResult r;
  if (protocol == "per-story") {
    model::PerStoryOptions p;
    if (o.max_tokens > 0) p.max_tokens = o.max_tokens;
    fmt::print("protocol: per story (split on '<|endoftext|>' lines, BOS + story, first {} tokens)\n", p.max_tokens);
    r = model::perplexity_per_story(m, tokenizer, text, p, stderr_progress());
  } else {
    model::WindowOptions w;
    w.seqlen = o.seqlen > 0 ? o.seqlen : std::min<std::int64_t>(2048, m.config().max_position_embeddings);
    w.stride = o.stride;
    w.max_tokens = o.max_tokens;
    fmt::print("protocol: windows of {} tokens, stride {}{}{}\n", w.seqlen, w.stride > 0 ? w.stride : w.seqlen,
               o.join_rows ? ", rows joined with \"\\n\\n\"" : "",
               w.max_tokens > 0 ? fmt::format(", first {} tokens", w.max_tokens) : "");
    const std::string joined = o.join_rows ? model::join_rows(text) : std::string();
    r = model::perplexity_windows(m, tokenizer, o.join_rows ? joined : text, w, stderr_progress());
  }
  end_progress();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  fmt::print("text: {} ({} {})\n", o.text, r.sequences, protocol == "per-story" ? "stories" : "windows");
  fmt::print("tokens evaluated: {}\n", with_commas(static_cast<std::uint64_t>(r.tokens)));
  fmt::print("mean NLL: {:.6f}\n", r.mean_nll());
  fmt::print("PPL: {:.4f}\n", r.perplexity());
  fmt::print("time: {} ({:.0f} tokens/s)\n", human_seconds(seconds), static_cast<double>(r.tokens) / seconds);
}

}  // namespace

void register_perplexity(CLI::App& app) {
  auto o = std::make_shared<PerplexityOptions>();
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a Llama-family model (dense or quantized) on a text");
  cmd->add_option("model", o->model, "Model folder (config.json, safetensors, tokenizer.model)")->required();
  cmd->add_option("--text", o->text, "Text file to evaluate")->required();
  cmd->add_option("--protocol", o->protocol,
                  "per-story (split on <|endoftext|> lines, BOS + story, truncated), windows (the papers': "
                  "non-overlapping seqlen windows of the whole text) or auto (per-story when the text has "
                  "<|endoftext|> lines)")
      ->capture_default_str();
  cmd->add_option("--seqlen", o->seqlen, "windows: tokens per window (default: min(2048, model context))");
  cmd->add_option("--stride", o->stride, "windows: start a window every N tokens (default: seqlen, no overlap)");
  cmd->add_option("--max-tokens", o->max_tokens,
                  "windows: use only the first N tokens of the text; per-story: tokens per story (default 256)");
  cmd->add_flag("--join-rows", o->join_rows,
                "windows: the file holds one dataset row per line (WikiText); join rows with \"\\n\\n\" as the "
                "papers do");
  cmd->add_flag("--dequantize", o->dequantize,
                "Quantized weights: dequantize once at load (fast) instead of the reference matmul per call");
  cmd->add_option("--threads", o->threads, "CPU threads (default: all cores)");
  cmd->callback([o] { run_perplexity(*o); });
}

}  // namespace lowbit::cli
