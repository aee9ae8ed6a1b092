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
#include "lowbit/io/atomic_file.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/io/formats.hpp"
#include "lowbit/io/quantized.hpp"
#include "lowbit/model/layerwise.hpp"
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
  // Calibration (the layer-by-layer driver)
  std::string calib;
  std::int64_t nsamples = 128;
  std::int64_t seqlen = 0;  // 0: min(2048, max_position_embeddings)
  std::string calib_split = "windows";
  std::uint64_t seed = 0;
  std::string propagation;  // empty: the method's (full-precision for awq, else quantized)
  bool no_true_sequential = false;
  quant::SolverOptions solver;
  bool act_order = false, static_groups = false, mse = false;
  bool duo_scaling = false, no_clip = false;
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

// What the quantized weights cost, for the closing line.
struct Tally {
  std::uint64_t dense_bytes = 0, quant_bytes = 0;
  double packed_bits = 0;
  std::int64_t weights = 0;
  std::vector<io::QuantizedEntry> done;

  void add(const io::FormatWriter& writer, io::CheckpointWriter& out, const std::string& name,
           const quant::QuantizedTensor& q, std::uint64_t dense) {
    dense_bytes += dense;
    quant_bytes += q.storage_bytes();
    packed_bits += q.packed_bits();
    weights += q.shape.numel();
    writer.add(out, name, q);
    done.push_back({name, q.method, q.params});
  }
  void print(double seconds, const io::CheckpointWriter& out, const std::string& output) const {
    const auto w = static_cast<double>(std::max<std::int64_t>(1, weights));
    fmt::print("quantized {} tensors ({} weights) in {}: {} -> {} ({:.3f} bits per weight; {:.3f} packed), wrote {} "
               "to {}\n",
               done.size(), with_commas(static_cast<std::uint64_t>(weights)), human_seconds(seconds),
               human_bytes(dense_bytes), human_bytes(quant_bytes), static_cast<double>(quant_bytes) * 8.0 / w,
               packed_bits / w, human_bytes(out.bytes_written()), output);
  }
};

// The side files (config.json through the format's writer, tokenizer files), the format's closing entries,
// then the atomic rename of the finished folder.
void finish_output(const std::string& input, const io::FormatWriter& writer, io::CheckpointWriter& out,
                   const std::vector<io::QuantizedEntry>& done) {
  for (const auto& f : side_files(input)) {
    if (f.filename() == "config.json") {
      out.add_text_file("config.json", writer.config_json(f, done));
    } else {
      out.add_file(f, f.filename().string());
    }
  }
  writer.finish(out, done);
  out.finish();
}

// Writes every input tensor that is not quantized and not yet written; `prefix` limits it to names that start so.
void copy_through(const io::Checkpoint& in, io::CheckpointWriter& out, const std::set<std::string>& quantized,
                  std::set<std::string>& written, std::string_view prefix = {}) {
  for (const auto& name : in.names()) {
    if (!name.starts_with(prefix) || quantized.count(name) || written.count(name)) continue;
    out.add(name, in.tensor(name));
    written.insert(name);
  }
}

// The layer-by-layer driver on calibration text: --calib, and every calibration-based method.
void run_calibrated(const QuantizeOptions& o, const quant::MethodInfo& info, const quant::QuantParams& params,
                    const io::FormatWriter& writer, const io::Checkpoint& in, const std::set<std::string>& to_quantize) {
  LOWBIT_CHECK(!o.calib.empty(), ErrorCode::InvalidArgument,
               "quantize: method '{}' needs calibration text: --calib FILE (e.g. ../shared/data/text/c4-sample.txt)",
               info.name);
  LOWBIT_CHECK(std::filesystem::is_directory(o.input), ErrorCode::InvalidArgument,
               "quantize --calib: '{}' is a file; calibration needs a model folder (config.json, tokenizer)", o.input);
  for (const auto& name : to_quantize) {
    LOWBIT_CHECK(name.starts_with("model.layers."), ErrorCode::InvalidArgument,
                 "quantize --calib: '{}' is not a linear of a decoder layer, which is all the layer-by-layer driver "
                 "quantizes; leave it out with --exclude",
                 name);
  }
  const auto start = std::chrono::steady_clock::now();
  model::LoadOptions load;
  load.layers_on_demand = true;
  model::LlamaModel model = model::LlamaModel::load(o.input, load);
  const model::Tokenizer tokenizer = model::Tokenizer::load(o.input);
  model::CalibrationTextOptions text_options;
  text_options.nsamples = o.nsamples;
  text_options.seqlen = o.seqlen > 0 ? o.seqlen : std::min<std::int64_t>(2048, model.config().max_position_embeddings);
  text_options.seed = o.seed;
  if (o.calib_split == "windows") {
    text_options.split = model::CalibrationSplit::Windows;
  } else if (o.calib_split == "documents") {
    text_options.split = model::CalibrationSplit::Documents;
  } else {
    LOWBIT_THROW(ErrorCode::InvalidArgument, "quantize: --calib-split '{}' is not one of: windows, documents",
                 o.calib_split);
  }
  const auto samples = model::calibration_samples(tokenizer, io::read_text_file(o.calib, "quantize"), text_options);

  model::LayerwiseOptions options;
  options.method = &info;
  options.params = params;
  options.solver = o.solver;
  options.solver.act_order = o.act_order;
  options.solver.static_groups = o.static_groups;
  options.solver.mse = o.mse;
  options.solver.duo_scaling = o.duo_scaling;
  options.solver.clip = !o.no_clip;
  options.true_sequential = !o.no_true_sequential;
  const std::string propagation = !o.propagation.empty() ? o.propagation
                                  : info.name == "awq"   ? "full-precision"
                                                         : "quantized";
  if (propagation == "quantized") {
    options.propagation = model::Propagation::Quantized;
  } else if (propagation == "full-precision") {
    options.propagation = model::Propagation::FullPrecision;
  } else {
    LOWBIT_THROW(ErrorCode::InvalidArgument, "quantize: --propagation '{}' is not one of: quantized, full-precision",
                 propagation);
  }
  options.select = [&](const std::string& name) { return to_quantize.count(name) > 0; };

  std::int64_t tokens = 0;
  for (const auto& s : samples) tokens += static_cast<std::int64_t>(s.size());
  fmt::print(stderr,
             "quantize: {} with {} {} -> {} ({} format), {} of {} tensors, layer by layer on {} calibration samples "
             "({} tokens) of {}, {} threads\n",
             o.input, info.name, quant::params_to_json(params), o.output, o.format, to_quantize.size(),
             in.names().size(), samples.size(), with_commas(static_cast<std::uint64_t>(tokens)), o.calib,
             num_threads());

  io::CheckpointWriter out(o.output, static_cast<std::uint64_t>(o.max_shard_gib * (1ull << 30)));
  std::set<std::string> written;
  Tally tally;
  // Tensors outside the decoder layers first (embeddings, final norm, head), then each layer as it finishes:
  // shards fill and leave in order.
  for (const auto& name : in.names()) {
    if (!name.starts_with("model.layers.") && !to_quantize.count(name)) {
      out.add(name, in.tensor(name));
      written.insert(name);
    }
  }
  options.on_quantized = [&](const std::string& name, const quant::QuantizedTensor& q) {
    tally.add(writer, out, name, q, in.info(name).nbytes());
    written.insert(name);
  };
  // Dense tensors a whole-layer method changed (AWQ's folded norms and biases) replace the checkpoint's,
  // in its dtype.
  options.on_replaced = [&](const std::string& name, const Tensor& value) {
    const DType dtype = in.contains(name) ? in.info(name).dtype : value.dtype();
    out.add(name, value.dtype() == dtype ? value : value.to(dtype));
    written.insert(name);
  };
  options.on_layer_done = [&](std::int64_t layer) {
    copy_through(in, out, to_quantize, written, fmt::format("model.layers.{}.", layer));
  };
  options.progress = stderr_progress();
  const model::LayerwiseReport report = model::quantize_layerwise(model, samples, options);
  end_progress();
  copy_through(in, out, to_quantize, written);
  finish_output(o.input, writer, out, tally.done);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  double error_sum = 0, error_max = 0;
  for (double e : report.layer_output_error) {
    error_sum += e;
    error_max = std::max(error_max, e);
  }
  fmt::print("layer output error (||y_q - y||/||y - x|| on the calibration samples): mean {:.4e}, max {:.4e}; by layer:",
             error_sum / static_cast<double>(std::max<std::size_t>(1, report.layer_output_error.size())), error_max);
  for (double e : report.layer_output_error) fmt::print(" {:.3e}", e);
  fmt::print("\n");
  fmt::print("memory: held at most {} (calibration activations {}, largest layer {}); peak resident set {}\n",
             human_bytes(report.peak_held_bytes), human_bytes(report.activation_bytes),
             human_bytes(report.layer_weight_bytes), human_bytes(report.peak_rss_bytes));
  tally.print(seconds, out, o.output);
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
  if (!o.calib.empty() || info->calibrated()) {
    run_calibrated(o, *info, params, writer, in, to_quantize);
    return;
  }

  fmt::print(stderr, "quantize: {} with {} {} -> {} ({} format), {} of {} tensors, {} threads\n", o.input, info->name,
             quant::params_to_json(params), o.output, o.format, selected.size(), in.names().size(), num_threads());
  const auto start = std::chrono::steady_clock::now();
  io::CheckpointWriter out(o.output, static_cast<std::uint64_t>(o.max_shard_gib * (1ull << 30)));
  ProgressReporter progress(stderr_progress(), "quantize", static_cast<std::int64_t>(selected.size()));
  Tally tally;
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
    tally.add(writer, out, name, q, t.nbytes());
    progress.advance(1, name);
  }
  end_progress();
  finish_output(o.input, writer, out, tally.done);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  tally.print(seconds, out, o.output);
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
  cmd->add_option("--calib", o->calib,
                  "Calibration text: quantize layer by layer, each layer on the outputs of the quantized layers "
                  "before it (required by calibration-based methods)");
  cmd->add_option("--nsamples", o->nsamples, "Calibration samples")->capture_default_str();
  cmd->add_option("--seqlen", o->seqlen, "Tokens per calibration sample (default min(2048, model context))");
  cmd->add_option("--calib-split", o->calib_split,
                  "windows: random seqlen windows of the tokenized text (GPTQ); documents: one sample per document "
                  "(<|endoftext|> lines or blank lines), truncated (AWQ)")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the calibration windows")->capture_default_str();
  cmd->add_option("--propagation", o->propagation,
                  "Inputs of the next layer: quantized (GPTQ) or full-precision (AWQ) outputs (default: "
                  "full-precision for awq, quantized otherwise)");
  cmd->add_flag("--no-true-sequential", o->no_true_sequential,
                "Calibrate all seven linears of a layer on one full-precision pass (default: q/k/v, o, gate/up, down "
                "in turn, each on the outputs of the ones quantized before it)");
  cmd->add_option("--damp", o->solver.damp, "GPTQ: fraction of mean(diag H) added to the diagonal")
      ->capture_default_str();
  cmd->add_flag("--act-order,--desc-act", o->act_order, "GPTQ: columns in order of decreasing diag(H)");
  cmd->add_flag("--static-groups", o->static_groups, "GPTQ: group grids fixed before the act-order solve");
  cmd->add_flag("--duo-scaling", o->duo_scaling,
                "AWQ: AutoAWQ's scale x_mean^a / (w_mean^(1-a) + 1e-4) (default: llm-awq's x_mean^a)");
  cmd->add_flag("--no-clip", o->no_clip, "AWQ: skip the clip search");
  cmd->add_flag("--mse", o->mse, "GPTQ: the quantizer's MSE grid search for each group's range");
  cmd->callback([o] { run_quantize(*o); });
}

}  // namespace lowbit::cli
