// lowbit quality MODEL: what each data-free method and setting costs on every linear weight of a
// checkpoint: relative error, SNR, bits per weight (all metadata included) and quantization time, as a
// Markdown table (docs/quality.md is made by this command).
#include <chrono>
#include <cmath>
#include <numeric>
#include <regex>

#include <fmt/format.h>

#include "cli_util.hpp"
#include "commands.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/io/checkpoint.hpp"
#include "lowbit/quant/common.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::cli {
namespace {

struct Setting {
  const char* label;
  const char* method;
  void (*adjust)(quant::QuantParams&);
};

// The issue's list, in its order; each starts from the method's reference defaults.
const Setting kSettings[] = {
    {"int8 per-row (absmax)", "affine", [](quant::QuantParams& p) { p.bits = 8; p.group_size = -1; p.symmetric = true; p.variant = "absmax:f32"; }},
    {"LLM.int8() weights", "llm_int8", [](quant::QuantParams&) {}},
    {"bnb blockwise 8-bit (dynamic, 4096)", "bnb8", [](quant::QuantParams&) {}},
    {"RTN 4-bit g32", "affine", [](quant::QuantParams& p) { p.bits = 4; p.group_size = 32; }},
    {"RTN 4-bit g128", "affine", [](quant::QuantParams& p) { p.bits = 4; p.group_size = 128; }},
    {"NF4 (block 64)", "nf4", [](quant::QuantParams& p) { p.double_quant = false; }},
    {"NF4 + double quant", "nf4", [](quant::QuantParams& p) { p.double_quant = true; }},
    {"FP4 (block 64)", "fp4", [](quant::QuantParams& p) { p.double_quant = false; }},
    {"HQQ 4-bit g32", "hqq", [](quant::QuantParams& p) { p.bits = 4; p.group_size = 32; }},
    {"HQQ 4-bit g64", "hqq", [](quant::QuantParams& p) { p.bits = 4; p.group_size = 64; }},
    {"HQQ 3-bit g32", "hqq", [](quant::QuantParams& p) { p.bits = 3; p.group_size = 32; }},
    {"HQQ 2-bit g16", "hqq", [](quant::QuantParams& p) { p.bits = 2; p.group_size = 16; }},
    {"RTN 2-bit g32", "affine", [](quant::QuantParams& p) { p.bits = 2; p.group_size = 32; }},
};


struct QualityOptions {
  std::string model;
  std::string only;  // regex over setting labels
  int threads = 0;
};

void run_quality(const QualityOptions& o) {
  if (o.threads > 0) set_num_threads(o.threads);
  const io::Checkpoint ckpt = io::Checkpoint::open(o.model);
  const std::regex linear(R"(\.weight$)");
  const std::regex skip(R"((^|\.)(embed_tokens|embed|wte|wpe|lm_head|output)\.weight$)");
  std::vector<std::string> names;
  std::map<std::int64_t, int> k_count;
  for (const auto& n : ckpt.names()) {
    const auto& info = ckpt.info(n);
    if (info.shape.rank() == 2 && is_floating(info.dtype) && std::regex_search(n, linear) && !std::regex_search(n, skip)) {
      names.push_back(n);
      ++k_count[info.shape[1]];
    }
  }
  LOWBIT_CHECK(!names.empty(), ErrorCode::InvalidArgument, "quality: '{}' has no 2-D linear weight", o.model);
  std::string shapes;
  for (const auto& [k, c] : k_count) shapes += fmt::format("{}{} with K = {}", shapes.empty() ? "" : ", ", c, k);
  // Dense weights are read (and converted to f32) once, outside the timed part.
  std::vector<Tensor> weights;
  std::int64_t total = 0;
  for (const auto& n : names) {
    weights.push_back(ckpt.tensor(n).to(DType::F32));
    total += weights.back().numel();
  }

  fmt::print("Linear weights of `{}`: {} tensors, {} weights ({}); {} threads.\n\n", o.model, names.size(),
             with_commas(static_cast<std::uint64_t>(total)), shapes, num_threads());
  fmt::print("| setting | method (params) | rel. error | SNR dB | bits/weight | quantize s | what it did with K |\n");
  fmt::print("|---|---|---:|---:|---:|---:|---|\n");
  const std::regex only(o.only.empty() ? ".*" : o.only);
  for (const Setting& s : kSettings) {
    if (!std::regex_search(s.label, only)) continue;
    const quant::MethodInfo* info = nullptr;
    try {
      info = &quant::find_method(s.method);
    } catch (const Error&) {
      fmt::print("| {} | {} | not built | | | | |\n", s.label, s.method);
      continue;
    }
    quant::QuantParams params = info->defaults;
    s.adjust(params);
    double signal = 0, noise = 0, seconds = 0;
    double stored_bits = 0;
    std::string note;
    std::string failure;
    for (std::size_t i = 0; i < names.size(); ++i) {
      const Tensor& w = weights[i];
      try {
        const auto t0 = std::chrono::steady_clock::now();
        const quant::QuantizedTensor q = info->quantize(w, params);
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const Tensor w_hat = info->dequantize(q);
        const quant::ErrorStats e = quant::error_stats(w, w_hat);
        double sig = 0;
        const float* p = w.data<float>();
        for (std::int64_t j = 0; j < w.numel(); ++j) sig += static_cast<double>(p[j]) * p[j];
        signal += sig;
        noise += e.relative_frobenius * e.relative_frobenius * sig;
        stored_bits += q.packed_bits();
      } catch (const Error& e) {
        failure = fmt::format("{}: {}", names[i], e.what());
        break;
      }
    }
    // What grouping did where K is not a multiple of the group: the methods' own rules, stated.
    const std::int64_t g = params.group_size;
    if (s.method == std::string("affine") && g > 0) {
      for (const auto& [k, c] : k_count)
        if (k % g) note += fmt::format("K={}: last group of each row has {} ", k, k % g);
    } else if (s.method == std::string("hqq") && g > 0) {
      for (const auto& [k, c] : k_count)
        if (k % g) note += fmt::format("K={}: groups of {} over the flattened weight (cross rows) ", k, g);
    } else if (params.block_size > 0) {
      note = fmt::format("blocks of {} over the flattened weight", params.block_size);
    }
    if (!failure.empty()) {
      fmt::print("| {} | {} {} | failed: {} | | | | |\n", s.label, info->name, quant::params_to_json(params), failure);
      continue;
    }
    fmt::print("| {} | `{}` bits={} group={} | {:.4e} | {:.2f} | {:.3f} | {:.2f} | {} |\n", s.label, info->name,
               params.bits, params.group_size, std::sqrt(noise / signal), 10.0 * std::log10(signal / noise),
               stored_bits / static_cast<double>(total), seconds, note.empty() ? "-" : note);
  }
}

}  // namespace

void register_quality(CLI::App& app) {
  auto o = std::make_shared<QualityOptions>();
  CLI::App* cmd = app.add_subcommand(
      "quality", "Error, SNR, bits per weight and time of every data-free setting on a checkpoint (Markdown)");
  cmd->add_option("model", o->model, "Checkpoint folder or .safetensors file")->required();
  cmd->add_option("--only", o->only, "Regex: run only the settings whose label matches");
  cmd->add_option("--threads", o->threads, "CPU threads (default: all cores)");
  cmd->callback([o] { run_quality(*o); });
}

}  // namespace lowbit::cli
