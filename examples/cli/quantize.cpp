// lowbit quantize / dequantize / compare: whole checkpoints, one tensor at a time.
#include <chrono>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli_util.hpp"
#include "commands.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/io/formats.hpp"
#include "lowbit/io/quantized.hpp"
#include "lowbit/quant/common.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::cli {
namespace {

// CLI method names: the registry's, plus the common names users know, each with the settings it implies.
struct MethodAlias {
  const char* cli;
  const char* method;
  void (*adjust)(quant::QuantParams&);
  const char* summary;
};
constexpr MethodAlias kAliases[] = {
    {"rtn", "affine", [](quant::QuantParams& p) { p.bits = 4; p.group_size = 128; p.symmetric = false; },
     "round-to-nearest k-bit, zero-point per group (the baseline; default 4 bits, group 128)"},
    {"int8", "affine",
     [](quant::QuantParams& p) { p.bits = 8; p.group_size = -1; p.symmetric = true; p.variant = "absmax:f32"; },
     "absmax int8, one scale per output row"},
    {"llm-int8", "llm_int8", [](quant::QuantParams&) {}, "LLM.int8(): row-wise int8 weights, outliers at run time"},
};

struct QuantizeOptions {
  std::string method;
  std::string input;
  std::string output;
  std::optional<int> bits;
  std::optional<std::int64_t> group_size;
  std::optional<std::int64_t> block_size;
  std::optional<int> axis;
  std::optional<bool> symmetric;
  std::optional<bool> double_quant;
  std::optional<double> threshold;
  std::optional<std::string> variant;
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  std::string format = "lowbit";
  int threads = 0;
  double max_shard_gib = 4.0;
};

// Default selection: every 2-D "*.weight" but embeddings and the output head.
const char* kDefaultInclude = R"(.*\.weight$)";
const char* kDefaultExclude = R"((^|\.)(embed_tokens|embed|wte|wpe|lm_head|output)\.weight$)";

std::pair<const quant::MethodInfo*, quant::QuantParams> resolve_method(const QuantizeOptions& o) {
  const quant::MethodInfo* info = nullptr;
  quant::QuantParams params;
  for (const auto& a : kAliases) {
    if (o.method == a.cli) {
      info = &quant::find_method(a.method);
      params = info->defaults;
      a.adjust(params);
    }
  }
  if (info == nullptr) {
    info = &quant::find_method(o.method);
    params = info->defaults;
  }
  if (o.bits) params.bits = *o.bits;
  if (o.group_size) params.group_size = *o.group_size;
  if (o.block_size) params.block_size = *o.block_size;
  if (o.axis) params.axis = *o.axis;
  if (o.symmetric) params.symmetric = *o.symmetric;
  if (o.double_quant) params.double_quant = *o.double_quant;
  if (o.threshold) params.threshold = *o.threshold;
  if (o.variant) params.variant = *o.variant;
  return {info, params};
}

std::vector<std::regex> compile(const std::vector<std::string>& patterns, const char* fallback, const char* flag) {
  std::vector<std::regex> out;
  const std::vector<std::string> list = patterns.empty() ? std::vector<std::string>{fallback} : patterns;
  for (const auto& p : list) {
    try {
      out.emplace_back(p, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      LOWBIT_THROW(ErrorCode::InvalidArgument, "quantize: {} pattern '{}' is not a valid regular expression ({})", flag,
                   p, e.what());
    }
  }
  return out;
}

bool matches_any(const std::string& name, const std::vector<std::regex>& patterns) {
  for (const auto& r : patterns)
    if (std::regex_search(name, r)) return true;
  return false;
}

// Files of a model folder that travel with the weights (config, tokenizer, generation settings).
std::vector<std::filesystem::path> side_files(const std::filesystem::path& input) {
  std::vector<std::filesystem::path> out;
  if (!std::filesystem::is_directory(input)) return out;
  for (const auto& entry : std::filesystem::directory_iterator(input)) {
    const auto name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.ends_with(".safetensors") || name == "model.safetensors.index.json") continue;
    if (name.ends_with(".json") || name.ends_with(".model") || name.ends_with(".txt") || name.ends_with(".tiktoken"))
      out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void run_quantize(const QuantizeOptions& o) {
  if (o.threads > 0) set_num_threads(o.threads);
  const auto [info, params] = resolve_method(o);
  const io::FormatWriter& writer = io::find_format_writer(o.format, info->name);
  const io::Checkpoint in = io::Checkpoint::open(o.input);
  const auto include = compile(o.include, kDefaultInclude, "--include");
  const auto exclude = compile(o.exclude, kDefaultExclude, "--exclude");

  std::vector<std::string> selected;
  for (const auto& name : in.names()) {
    const auto& t = in.info(name);
    if (t.shape.rank() == 2 && is_floating(t.dtype) && matches_any(name, include) && !matches_any(name, exclude))
      selected.push_back(name);
  }
  LOWBIT_CHECK(!selected.empty(), ErrorCode::InvalidArgument,
               "quantize: no tensor of '{}' matches (2-D float, --include {}, --exclude {})", o.input,
               o.include.empty() ? kDefaultInclude : fmt::format("{}", fmt::join(o.include, " ")),
               o.exclude.empty() ? kDefaultExclude : fmt::format("{}", fmt::join(o.exclude, " ")));
  const std::set<std::string> to_quantize(selected.begin(), selected.end());

  fmt::print(stderr, "quantize: {} with {} {} -> {} ({} format), {} of {} tensors, {} threads\n", o.input, info->name,
             quant::params_to_json(params), o.output, o.format, selected.size(), in.names().size(), num_threads());
  const auto start = std::chrono::steady_clock::now();
  io::CheckpointWriter out(o.output, static_cast<std::uint64_t>(o.max_shard_gib * (1ull << 30)));
  ProgressReporter progress(stderr_progress(), "quantize", static_cast<std::int64_t>(selected.size()));
  std::uint64_t dense_bytes = 0, quant_bytes = 0;
  std::int64_t weights = 0;
  std::vector<io::QuantizedEntry> done;
  for (const auto& name : in.names()) {
    const Tensor t = in.tensor(name);
    if (!to_quantize.count(name)) {
      out.add(name, t);
      continue;
    }
    quant::QuantizedTensor q;
    try {
      q = info->quantize(t, params);
    } catch (const Error& e) {
      throw Error(e.code(), fmt::format("quantize '{}': {}", name, e.what()));
    }
    dense_bytes += t.nbytes();
    quant_bytes += q.storage_bytes();
    weights += t.numel();
    writer.add(out, name, q);
    done.push_back({name, q.method, q.params});
    progress.advance(1, name);
  }
  end_progress();
  for (const auto& f : side_files(o.input)) {
    if (f.filename() == "config.json") {
      out.add_text_file("config.json", writer.config_json(f, done));
    } else {
      out.add_file(f, f.filename().string());
    }
  }
  writer.finish(out, done);
  out.finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print("quantized {} tensors ({} weights) in {}: {} -> {} ({:.3f} bits per weight), wrote {} to {}\n",
             selected.size(), with_commas(static_cast<std::uint64_t>(weights)), human_seconds(seconds),
             human_bytes(dense_bytes), human_bytes(quant_bytes),
             static_cast<double>(quant_bytes) * 8.0 / static_cast<double>(weights), human_bytes(out.bytes_written()),
             o.output);
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto o = std::make_shared<QuantizeOptions>();
  std::string methods_help = "Method:";
  for (const auto& m : quant::methods()) methods_help += fmt::format("\n  {:<9} {}", m.name, m.summary);
  for (const auto& a : kAliases) methods_help += fmt::format("\n  {:<9} {}", a.cli, a.summary);
  CLI::App* cmd = app.add_subcommand("quantize", "Quantize every 2-D linear weight of a checkpoint");
  cmd->add_option("--method", o->method, methods_help)->required();
  cmd->add_option("input", o->input, "Checkpoint folder or .safetensors file")->required();
  cmd->add_option("output", o->output, "Output folder (replaced atomically when complete)")->required();
  cmd->add_option("--bits", o->bits, "Bits per code (method default if omitted)");
  cmd->add_option("--group-size", o->group_size, "Elements per scale along k; -1 per row, 0 per tensor");
  cmd->add_option("--block-size", o->block_size, "bitsandbytes formats: elements per absmax block");
  cmd->add_option("--axis", o->axis, "HQQ: axis the groups run along (0 or 1)");
  // Flags into plain counters: CLI11 2.1 gives an std::optional<bool> flag a value even when it is absent.
  auto* sym = cmd->add_flag("--sym,--symmetric")->description("Symmetric codes (zero fixed at 2^(bits-1))");
  auto* asym = cmd->add_flag("--asym,--asymmetric")->description("Zero-point codes")->excludes(sym);
  auto* dq = cmd->add_flag("--double-quant")->description("NF4/FP4: quantize the absmax too (bitsandbytes' compress_statistics)");
  auto* no_dq = cmd->add_flag("--no-double-quant")->description("NF4/FP4: keep the absmax in fp32")->excludes(dq);
  cmd->parse_complete_callback([o, sym, asym, dq, no_dq] {
    if (sym->count() > 0) o->symmetric = true;
    if (asym->count() > 0) o->symmetric = false;
    if (dq->count() > 0) o->double_quant = true;
    if (no_dq->count() > 0) o->double_quant = false;
  });
  cmd->add_option("--threshold", o->threshold, "LLM.int8(): outlier threshold on |x|");
  cmd->add_option("--variant", o->variant, "Method-specific variant (e.g. bnb8: dynamic or linear)");
  cmd->add_option("--include", o->include, fmt::format("Regex of tensor names to quantize (default {})", kDefaultInclude));
  cmd->add_option("--exclude", o->exclude, fmt::format("Regex of tensor names to keep dense (default {})", kDefaultExclude));
  cmd->add_option("--format", o->format, "Output layout: " + io::describe_format_writers());
  cmd->add_option("--threads", o->threads, "CPU threads (default: all cores, or LOWBIT_NUM_THREADS)");
  cmd->add_option("--max-shard-gib", o->max_shard_gib, "Largest shard of the output, GiB")->capture_default_str();
  cmd->callback([o] { run_quantize(*o); });
}

}  // namespace lowbit::cli
