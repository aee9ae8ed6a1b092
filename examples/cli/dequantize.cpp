// lowbit dequantize IN OUT: a dense checkpoint from a quantized one (any layout lowbit reads).
// lowbit compare REF OTHER: per-tensor relative Frobenius error and SNR of OTHER against REF, and a total.
#include <cmath>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli_util.hpp"
#include "commands.hpp"
#include "lowbit/io/atomic_file.hpp"
#include "lowbit/io/formats.hpp"
#include "lowbit/quant/common.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::cli {
namespace {

struct DequantizeOptions {
  std::string input;
  std::string output;
  std::string dtype;  // empty: each weight's original dtype
};

void run_dequantize(const DequantizeOptions& o) {
  const io::Checkpoint in = io::Checkpoint::open(o.input);
  const io::QuantizedCheckpoint qc = io::open_quantized(in);
  LOWBIT_CHECK(!qc.weights.empty(), ErrorCode::InvalidArgument,
               "dequantize: '{}' holds no quantized weight that lowbit recognises", o.input);
  std::optional<DType> dtype;
  if (!o.dtype.empty()) {
    dtype = dtype_from_name(o.dtype);
    LOWBIT_CHECK(dtype && is_floating(*dtype), ErrorCode::InvalidArgument,
                 "dequantize: --dtype '{}' is not one of f32, f16, bf16", o.dtype);
  }
  io::CheckpointWriter out(o.output);
  ProgressReporter progress(stderr_progress(), "dequantize", static_cast<std::int64_t>(qc.weights.size()));
  for (const auto& name : in.names()) {
    if (!qc.parts.count(name)) out.add(name, in.tensor(name));
  }
  for (const auto& name : qc.weights) {
    const quant::QuantizedTensor q = qc.load(name);
    const Tensor w = quant::find_method(q.method).dequantize(q);
    out.add(name, w.to(dtype.value_or(q.dtype)));
    progress.advance(1, name);
  }
  end_progress();
  // Side files travel, but not what says the weights are quantized: loaders (transformers) would read the dense
  // output as GPTQ/bitsandbytes/HQQ again.
  if (std::filesystem::is_directory(o.input)) {
    for (const auto& entry : std::filesystem::directory_iterator(o.input)) {
      const auto file = entry.path().filename().string();
      if (!entry.is_regular_file() || file.ends_with(".safetensors") || file == "model.safetensors.index.json" ||
          file == "quantize_config.json" || file == "quant_config.json")
        continue;
      if (file == "config.json") {
        nlohmann::json config = nlohmann::json::parse(io::read_text_file(entry.path(), "dequantize"), nullptr, false);
        if (config.is_object() && config.contains("quantization_config")) {
          config.erase("quantization_config");
          out.add_text_file(file, config.dump(2) + "\n");
          continue;
        }
      }
      out.add_file(entry.path(), file);
    }
  }
  out.finish();
  fmt::print("dequantized {} weights ({} layout) into {}\n", qc.weights.size(), qc.format, o.output);
}

struct CompareOptions {
  std::string reference;
  std::string other;
  bool json = false;
};

void run_compare(const CompareOptions& o) {
  const io::Checkpoint ref = io::Checkpoint::open(o.reference);
  const io::Checkpoint other = io::Checkpoint::open(o.other);
  const io::QuantizedCheckpoint qc = io::open_quantized(other);
  const std::set<std::string> quantized(qc.weights.begin(), qc.weights.end());

  struct Row {
    std::string name;
    std::string how;
    quant::ErrorStats stats;
    double bits_per_weight;
  };
  std::vector<Row> rows;
  double signal = 0, noise = 0, q_signal = 0, q_noise = 0;
  std::uint64_t weights = 0, stored_bytes = 0, q_weights = 0, q_bytes = 0;
  for (const auto& name : ref.names()) {
    const auto& info = ref.info(name);
    if (!is_floating(info.dtype)) continue;
    Tensor approx;
    std::string how;
    double bpw = 0;
    if (quantized.count(name)) {
      const quant::QuantizedTensor q = qc.load(name);
      approx = quant::find_method(q.method).dequantize(q);
      how = q.method;
      bpw = q.bits_per_weight();
      stored_bytes += q.storage_bytes();
    } else if (other.contains(name)) {
      approx = other.tensor(name);
      how = std::string(dtype_name(approx.dtype()));
      bpw = dtype_bits(approx.dtype());
      stored_bytes += approx.nbytes();
    } else {
      continue;
    }
    const Tensor a = ref.tensor(name);
    LOWBIT_CHECK(a.shape() == approx.shape(), ErrorCode::ShapeMismatch, "compare: '{}' is {} in '{}' but {} in '{}'",
                 name, a.shape().to_string(), o.reference, approx.shape().to_string(), o.other);
    const quant::ErrorStats s = quant::error_stats(a, approx);
    // Totals: sums of squares, so the total is the relative error of all compared weights together.
    const Tensor af = a.to(DType::F32);
    double sig = 0;
    for (std::int64_t i = 0; i < af.numel(); ++i) sig += static_cast<double>(af.data<float>()[i]) * af.data<float>()[i];
    signal += sig;
    noise += s.relative_frobenius * s.relative_frobenius * sig;
    weights += static_cast<std::uint64_t>(a.numel());
    if (quantized.count(name)) {
      q_signal += sig;
      q_noise += s.relative_frobenius * s.relative_frobenius * sig;
      q_weights += static_cast<std::uint64_t>(a.numel());
      q_bytes += static_cast<std::uint64_t>(bpw * static_cast<double>(a.numel()) / 8.0);
    }
    rows.push_back({name, how, s, bpw});
  }
  LOWBIT_CHECK(!rows.empty(), ErrorCode::InvalidArgument, "compare: '{}' and '{}' share no float tensor", o.reference,
               o.other);
  const double total_rel = signal > 0 ? std::sqrt(noise / signal) : 0.0;
  const double total_snr = noise > 0 ? 10.0 * std::log10(signal / noise) : std::numeric_limits<double>::infinity();
  const double total_bpw = static_cast<double>(stored_bytes) * 8.0 / static_cast<double>(weights);

  if (o.json) {
    nlohmann::json j;
    j["reference"] = o.reference;
    j["other"] = o.other;
    j["format"] = qc.format;
    for (const auto& r : rows) {
      j["tensors"].push_back({{"name", r.name}, {"stored_as", r.how}, {"relative_error", r.stats.relative_frobenius},
                              {"snr_db", std::isfinite(r.stats.snr_db) ? nlohmann::json(r.stats.snr_db) : nlohmann::json()},
                              {"max_abs_error", r.stats.max_abs}, {"bits_per_weight", r.bits_per_weight}});
    }
    j["total"] = {{"tensors", rows.size()}, {"relative_error", total_rel},
                  {"snr_db", std::isfinite(total_snr) ? nlohmann::json(total_snr) : nlohmann::json()},
                  {"bits_per_weight", total_bpw}};
    fmt::print("{}\n", j.dump(2));
    return;
  }
  std::size_t width = 5;
  for (const auto& r : rows) width = std::max(width, r.name.size());
  fmt::print("{:<{}}  {:<10}  {:>12}  {:>9}  {:>11}  {:>6}\n", "tensor", width, "stored as", "rel. error", "SNR dB",
             "max |err|", "bits/w");
  for (const auto& r : rows) {
    fmt::print("{:<{}}  {:<10}  {:>12.4e}  {:>9.2f}  {:>11.4e}  {:>6.3f}\n", r.name, width, r.how,
               r.stats.relative_frobenius, r.stats.snr_db, r.stats.max_abs, r.bits_per_weight);
  }
  if (q_weights > 0) {
    fmt::print("quantized: {} tensors, relative error {:.4e}, SNR {:.2f} dB, {:.3f} bits per weight\n", quantized.size(),
               std::sqrt(q_noise / q_signal), 10.0 * std::log10(q_signal / q_noise),
               static_cast<double>(q_bytes) * 8.0 / static_cast<double>(q_weights));
  }
  fmt::print("total: {} tensors, relative error {:.4e}, SNR {:.2f} dB, {:.3f} bits per weight\n", rows.size(),
             total_rel, total_snr, total_bpw);
}

}  // namespace

void register_dequantize(CLI::App& app) {
  auto o = std::make_shared<DequantizeOptions>();
  CLI::App* cmd = app.add_subcommand("dequantize", "Write a dense checkpoint from a quantized one");
  cmd->add_option("input", o->input, "Quantized checkpoint (any layout lowbit reads: lowbit, bitsandbytes, hqq, gptq)")->required();
  cmd->add_option("output", o->output, "Output folder (replaced atomically when complete)")->required();
  cmd->add_option("--dtype", o->dtype, "Output dtype: f32, f16 or bf16 (default: each weight's original)");
  cmd->callback([o] { run_dequantize(*o); });
}

void register_compare(CLI::App& app) {
  auto o = std::make_shared<CompareOptions>();
  CLI::App* cmd = app.add_subcommand("compare", "Per-tensor relative Frobenius error and SNR against a reference");
  cmd->add_option("reference", o->reference, "Reference checkpoint (dense)")->required();
  cmd->add_option("other", o->other, "Checkpoint to compare: quantized (any layout lowbit reads) or dense")->required();
  cmd->add_flag("--json", o->json, "Print JSON for scripts");
  cmd->callback([o] { run_compare(*o); });
}

}  // namespace lowbit::cli
