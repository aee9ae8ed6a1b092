// AWQ on one Llama decoder block (model/awq_layer.hpp quantize_awq_layer: capture of the linears' inputs,
// the four scale searches, folding, the clip search on v, o, gate, up, down, 4-bit zero-point group
// quantization), llm-awq's defaults (x_mean^alpha, n_grid 20, max_shrink 0.5, 512 clip tokens), layer 0 of:
//
//   block 0  stories15M (../shared/data or $LOWBIT_SHARED_DATA; hidden 288, intermediate 768, 6 heads of 48)
//            on 128 windows x 256 tokens of tinystories-calib.txt (the CLI's --calib default for this model:
//            seqlen = max_position_embeddings = 256, seed 0): the layer's inputs are the embeddings. Group
//            size 32: 128 does not divide 288, which the references refuse.
//   block 1  a synthetic Llama block, hidden 1024, intermediate 2816, 16 heads of 64, no GQA, on 16
//            sequences x 512 tokens of random hidden states (synthetic_block below: outlier channels in the
//            inputs, v and up rows that make outlier channels in the o and down inputs).
//
// Counters: `mse` (mean over all elements of (y_q - y_fp)^2, the block's output with the AWQ-quantized layer
// against the full-precision layer, same inputs), `mse_rtn` (the same for plain round-to-nearest on the AWQ
// grid, no scales, no clip: the baseline AWQ must beat), and the chosen alpha of each scaling group
// (`a_qkv`, `a_o`, `a_mlp`, `a_down`). Each repetition times one whole quantize_awq_layer on a freshly
// loaded layer (the reload is not timed).
//
//     LOWBIT_NUM_THREADS=2 build/bin/lowbit_bench --benchmark_filter=AwqLayer --benchmark_repetitions=3
//
// bench/awq_reference.py times llm-awq's algorithm (torch, fp32, CPU) on the same block and inputs: run this
// bench with LOWBIT_AWQ_BENCH_DUMP=<folder> and it writes awq_<block>.safetensors (the layer's weights and
// inputs) and, after the timed runs, appends to awq_<block>.lowbit.jsonl (our times, alphas and errors) there
// for the script to read and print beside its own. BM_AwqClipSearch times the clip search alone (where the
// time goes).
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <stdlib.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/core/parallel.hpp"
#include "lowbit/io/atomic_file.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/model/awq_layer.hpp"
#include "lowbit/model/layerwise.hpp"
#include "lowbit/model/llama.hpp"
#include "lowbit/model/tokenizer.hpp"
#include "lowbit/quant/awq.hpp"

namespace {

using lowbit::DType;
using lowbit::Tensor;
using lowbit::model::LlamaModel;

// ../shared/data beside the project root (found from this file's path), or $LOWBIT_SHARED_DATA.
std::filesystem::path shared_data() {
  if (const char* env = std::getenv("LOWBIT_SHARED_DATA")) return env;
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "shared" / "data";
}

struct Block {
  std::string name;
  std::int64_t group_size = 128;  // of the AWQ grid (stories15M: 32, the largest common size that divides its
                                  // 288 and 768 input widths, since the references reshape W into whole groups)
  std::filesystem::path folder;  // the model folder (a temporary one for the synthetic block)
  std::unique_ptr<LlamaModel> model;
  std::vector<Tensor> inputs;    // layer 0's inputs, one f32 [T, hidden] per sample
  std::vector<Tensor> y_fp;      // the full-precision layer's outputs on them
  double mse_rtn = 0;
};

// Mean over all elements of (a - b)^2 over the samples.
double mean_square(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  double sum = 0;
  std::int64_t count = 0;
  for (std::size_t s = 0; s < a.size(); ++s) {
    const float* pa = a[s].data<float>();
    const float* pb = b[s].data<float>();
    for (std::int64_t i = 0; i < a[s].numel(); ++i) {
      const double d = static_cast<double>(pa[i]) - pb[i];
      sum += d * d;
    }
    count += a[s].numel();
  }
  return sum / static_cast<double>(count);
}

std::vector<Tensor> run_layer(const LlamaModel& model, const std::vector<Tensor>& inputs) {
  std::vector<Tensor> out;
  for (const Tensor& h : inputs) {
    Tensor y = h.clone();
    model.forward_layer(0, y);
    out.push_back(std::move(y));
  }
  return out;
}

std::string layer_name(int j) { return fmt::format("model.layers.0.{}", lowbit::model::kLayerLinears[j]); }

// Writes the layer's weights and inputs (LOWBIT_AWQ_BENCH_DUMP) for bench/awq_reference.py: "x" f32
// [samples, T, hidden], "y" the full-precision layer's outputs (the script checks its forward against them),
// the seven weights by their short names ("q_proj", ...), the two norms; metadata:
// heads, kv_heads, rms_norm_eps, rope_theta.
void dump(const Block& b) {
  const char* dir = std::getenv("LOWBIT_AWQ_BENCH_DUMP");
  if (dir == nullptr || *dir == '\0') return;
  const LlamaModel& m = *b.model;
  const std::int64_t s = static_cast<std::int64_t>(b.inputs.size()), t = b.inputs[0].size(0), h = m.hidden_size();
  Tensor x = Tensor::empty({s, t, h}, DType::F32);
  for (std::int64_t i = 0; i < s; ++i)
    std::copy_n(b.inputs[static_cast<std::size_t>(i)].data<float>(), t * h, x.data<float>() + i * t * h);
  Tensor y = Tensor::empty({s, t, h}, DType::F32);
  for (std::int64_t i = 0; i < s; ++i)
    std::copy_n(b.y_fp[static_cast<std::size_t>(i)].data<float>(), t * h, y.data<float>() + i * t * h);
  std::vector<std::pair<std::string, Tensor>> tensors{{"x", x}, {"y", y}};
  for (int j = 0; j < 7; ++j) {
    const auto& dense = dynamic_cast<const lowbit::model::DenseLinear&>(*m.layer(0).linears[j]);
    const std::string_view full = lowbit::model::kLayerLinears[j];
    tensors.emplace_back(std::string(full.substr(full.find('.') + 1)), dense.weight().to(DType::F32));
  }
  const auto norm = [h](const std::vector<float>& v) {
    Tensor n = Tensor::empty({h}, DType::F32);
    std::copy(v.begin(), v.end(), n.data<float>());
    return n;
  };
  tensors.emplace_back("input_layernorm", norm(m.layer(0).input_layernorm));
  tensors.emplace_back("post_attention_layernorm", norm(m.layer(0).post_attention_layernorm));
  const auto& c = m.config();
  std::filesystem::create_directories(dir);
  lowbit::io::save_safetensors(std::filesystem::path(dir) / fmt::format("awq_{}.safetensors", b.name), tensors,
                               {{"heads", std::to_string(c.num_attention_heads)},
                                {"kv_heads", std::to_string(c.num_key_value_heads)},
                                {"rms_norm_eps", fmt::format("{:.9g}", c.rms_norm_eps)},
                                {"rope_theta", fmt::format("{:.9g}", c.rope_theta)},
                                {"group_size", std::to_string(b.group_size)}});
}

// The full-precision outputs and the RTN baseline (every linear pseudo-quantized on the AWQ grid, nothing
// else), then the layer reloaded.
void finish(Block& b) {
  LlamaModel& m = *b.model;
  b.y_fp = run_layer(m, b.inputs);
  lowbit::quant::AwqConfig config;
  config.group_size = b.group_size;
  for (int j = 0; j < 7; ++j) {
    const auto& dense = dynamic_cast<const lowbit::model::DenseLinear&>(*m.layer(0).linears[j]);
    Tensor w = dense.weight().to(DType::F32).contiguous().clone();
    lowbit::quant::awq_pseudo_quantize(w.data<float>(), w.size(0), w.size(1), config.bits, config.group_size);
    m.set_linear(layer_name(j), std::make_unique<lowbit::model::DenseLinear>(w));
  }
  b.mse_rtn = mean_square(run_layer(m, b.inputs), b.y_fp);
  m.release_layer(0);
  m.load_layer(0);
  dump(b);
}

std::unique_ptr<LlamaModel> load(const std::filesystem::path& folder) {
  lowbit::model::LoadOptions options;
  options.layers_on_demand = true;
  auto model = std::make_unique<LlamaModel>(LlamaModel::load(folder, options));
  model->load_layer(0);
  return model;
}

// stories15M layer 0 on 128 windows x 256 tokens of TinyStories; null where ../shared/data is absent.
Block* stories_block() {
  static const std::unique_ptr<Block> block = []() -> std::unique_ptr<Block> {
    const std::filesystem::path folder = shared_data() / "stories15M";
    const std::filesystem::path text = shared_data() / "text" / "tinystories-calib.txt";
    if (!std::filesystem::exists(folder / "model.safetensors") || !std::filesystem::exists(text)) return nullptr;
    auto b = std::make_unique<Block>();
    b->name = "stories15M";
    b->group_size = 32;
    b->folder = folder;
    b->model = load(folder);
    const auto tokenizer = lowbit::model::Tokenizer::load(folder);
    lowbit::model::CalibrationTextOptions options;
    options.nsamples = 128;
    options.seqlen = 256;
    const auto samples =
        lowbit::model::calibration_samples(tokenizer, lowbit::io::read_text_file(text, "awq bench"), options);
    for (const auto& ids : samples) b->inputs.push_back(b->model->embed(ids));
    finish(*b);
    return b;
  }();
  return block.get();
}

// A Llama block of realistic width with AWQ's target structure: weights N(0, 0.02) with every column scaled
// by a random factor in [0.5, 2]; inputs h = N(0, 1) per element times a per-channel factor in [0.5, 2],
// except 8 outlier channels (every 128th) x 20; rows 5, 133, ... (every 128th) of v_proj and up_proj x 8, so
// that the o and down inputs have outlier channels too; norms 1 + N(0, 0.1). Written as a one-layer model
// folder (vocab 16, tied embeddings) in a temporary directory, since LlamaModel loads folders.
Block* synthetic_block() {
  static const std::unique_ptr<Block> block = []() {
    constexpr std::int64_t kHidden = 1024, kInter = 2816, kHeads = 16, kSeqs = 16, kTokens = 512, kVocab = 16;
    std::mt19937_64 rng(2306);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> factor(0.5f, 2.0f);
    const auto matrix = [&](std::int64_t n, std::int64_t k, std::int64_t outlier_rows) {
      std::vector<float> col(static_cast<std::size_t>(k));
      for (float& c : col) c = factor(rng);
      Tensor w = Tensor::empty({n, k}, DType::F32);
      float* p = w.data<float>();
      for (std::int64_t r = 0; r < n; ++r) {
        const float row = outlier_rows > 0 && r % 128 == 5 ? 8.0f : 1.0f;
        for (std::int64_t j = 0; j < k; ++j) p[r * k + j] = 0.02f * normal(rng) * col[static_cast<std::size_t>(j)] * row;
      }
      return w;
    };
    const auto norm = [&]() {
      Tensor n = Tensor::empty({kHidden}, DType::F32);
      for (std::int64_t i = 0; i < kHidden; ++i) n.data<float>()[i] = 1.0f + 0.1f * normal(rng);
      return n;
    };
    std::vector<std::pair<std::string, Tensor>> tensors;
    const std::int64_t shapes[7][3] = {{kHidden, kHidden, 0}, {kHidden, kHidden, 0}, {kHidden, kHidden, 1},
                                       {kHidden, kHidden, 0}, {kInter, kHidden, 0},  {kInter, kHidden, 1},
                                       {kHidden, kInter, 0}};
    for (int j = 0; j < 7; ++j)
      tensors.emplace_back(layer_name(j) + ".weight", matrix(shapes[j][0], shapes[j][1], shapes[j][2]));
    tensors.emplace_back("model.layers.0.input_layernorm.weight", norm());
    tensors.emplace_back("model.layers.0.post_attention_layernorm.weight", norm());
    tensors.emplace_back("model.norm.weight", norm());
    tensors.emplace_back("model.embed_tokens.weight", matrix(kVocab, kHidden, 0));

    auto b = std::make_unique<Block>();
    b->name = fmt::format("synthetic{}", kHidden);
    std::string pattern = (std::filesystem::temp_directory_path() / "lowbit-awq-bench-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
    b->folder = pattern;
    std::ofstream(b->folder / "config.json") << fmt::format(
        R"({{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": {}, )"
        R"("intermediate_size": {}, "num_hidden_layers": 1, "num_attention_heads": {}, "num_key_value_heads": {}, )"
        R"("vocab_size": {}, "max_position_embeddings": {}, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, )"
        R"("hidden_act": "silu", "attention_bias": false, "mlp_bias": false, "tie_word_embeddings": true}})",
        kHidden, kInter, kHeads, kHeads, kVocab, kTokens);
    lowbit::io::save_safetensors(b->folder / "model.safetensors", tensors);
    b->model = load(b->folder);
    std::filesystem::remove_all(b->folder);  // the checkpoint stays mapped, so load_layer still reads it
    std::vector<float> channel(static_cast<std::size_t>(kHidden));
    for (std::int64_t j = 0; j < kHidden; ++j) channel[static_cast<std::size_t>(j)] = j % 128 == 17 ? 20.0f : factor(rng);
    for (std::int64_t s = 0; s < kSeqs; ++s) {
      Tensor h = Tensor::empty({kTokens, kHidden}, DType::F32);
      for (std::int64_t i = 0; i < h.numel(); ++i)
        h.data<float>()[i] = normal(rng) * channel[static_cast<std::size_t>(i % kHidden)];
      b->inputs.push_back(std::move(h));
    }
    finish(*b);
    return b;
  }();
  return block.get();
}

// The cases of both benchmarks: block 0 (stories15M) and 1 (synthetic), one iteration each; repetitions:
// --benchmark_repetitions=3 (each repetition re-runs the whole search).
void block_cases(benchmark::internal::Benchmark* b) {
  b->ArgName("block")
      ->Arg(0)
      ->Arg(1)
      ->Unit(benchmark::kMillisecond)
      ->MeasureProcessCPUTime()
      ->UseRealTime()
      ->Iterations(1);
}

void BM_AwqLayer(benchmark::State& state) {
  Block* b = state.range(0) == 0 ? stories_block() : synthetic_block();
  if (b == nullptr) return state.SkipWithError("no stories15M or tinystories-calib.txt in ../shared/data");
  LlamaModel& m = *b->model;
  lowbit::quant::AwqConfig config;  // llm-awq: 4 bit, x_mean^alpha, clip on, n_grid 20, 512 clip tokens
  config.group_size = b->group_size;
  lowbit::model::AwqLayerTrace trace;
  std::vector<double> seconds, cpu_seconds;
  const auto process_cpu = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  };
  for (auto _ : state) {
    state.PauseTiming();
    m.release_layer(0);
    m.load_layer(0);
    trace = {};
    state.ResumeTiming();
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = process_cpu();
    auto result = lowbit::model::quantize_awq_layer(m, 0, b->inputs, config, {}, &trace);
    cpu_seconds.push_back(process_cpu() - c0);
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    benchmark::DoNotOptimize(result.quantized.size());
  }
  const double mse = mean_square(run_layer(m, b->inputs), b->y_fp);  // after the timed loop: not timed
  std::int64_t tokens = 0;
  for (const Tensor& h : b->inputs) tokens += h.size(0);
  state.SetLabel(fmt::format("{} {}x{} tokens g{}", b->name, b->inputs.size(), b->inputs[0].size(0), b->group_size));
  state.counters["mse"] = mse;
  state.counters["mse_rtn"] = b->mse_rtn;
  const char* names[4] = {"a_qkv", "a_o", "a_mlp", "a_down"};
  for (int g = 0; g < 4; ++g) state.counters[names[g]] = trace.alpha[g];
  state.counters["tokens"] = static_cast<double>(tokens);
  if (const char* dir = std::getenv("LOWBIT_AWQ_BENCH_DUMP"); dir != nullptr && *dir != '\0') {
    // Appended per repetition: the script reads every line (times) and the last (alphas, errors).
    std::ofstream out(std::filesystem::path(dir) / fmt::format("awq_{}.lowbit.jsonl", b->name), std::ios::app);
    out << fmt::format(
 R"({{"threads": {}, "group_size": {}, "seconds": [{}], "cpu_seconds": [{}], "mse": {:.9g}, "mse_rtn": {:.9g}, "alpha": [{}, {}, {}, {}], )"
        R"("loss": [{:.9g}, {:.9g}, {:.9g}, {:.9g}]}})"
        "\n",
        lowbit::num_threads(), b->group_size, fmt::join(seconds, ", "), fmt::join(cpu_seconds, ", "), mse, b->mse_rtn, trace.alpha[0], trace.alpha[1],
        trace.alpha[2], trace.alpha[3], trace.loss[0], trace.loss[1], trace.loss[2], trace.loss[3]);
  }
}
BENCHMARK(BM_AwqLayer)->Apply(block_cases);

// The clip search alone (step 4 of quantize_awq_layer: v, o, gate, up, down on the full-precision layer's
// weights and inputs, unscaled; the cost is the same as on scaled ones): the part of BM_AwqLayer that does not
// run the model, timed apart to show where the time goes.
void BM_AwqClipSearch(benchmark::State& state) {
  Block* b = state.range(0) == 0 ? stories_block() : synthetic_block();
  if (b == nullptr) return state.SkipWithError("no stories15M or tinystories-calib.txt in ../shared/data");
  LlamaModel& m = *b->model;
  m.release_layer(0);
  m.load_layer(0);
  std::map<std::string, std::vector<float>> rows;  // inputs of v (= q, k), o, gate (= up), down, all tokens
  std::map<std::string, std::int64_t> widths;
  const lowbit::model::LinearInputHook hook = [&](std::string_view name, const Tensor& x) {
    auto& r = rows[std::string(name.substr(name.rfind('.') + 1))];
    r.insert(r.end(), x.data<float>(), x.data<float>() + x.numel());
    widths[std::string(name.substr(name.rfind('.') + 1))] = x.size(1);
  };
  for (const Tensor& h : b->inputs) {
    Tensor y = h.clone();
    m.forward_layer(0, y, lowbit::model::LayerOptions{0, nullptr, &hook});
  }
  lowbit::quant::AwqConfig config;
  config.group_size = b->group_size;
  const char* input_of[7] = {"", "", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  std::vector<std::pair<Tensor, Tensor>> problems;
  for (int j = 2; j < 7; ++j) {
    const auto& dense = dynamic_cast<const lowbit::model::DenseLinear&>(*m.layer(0).linears[j]);
    const auto& r = rows.at(input_of[j]);
    const std::int64_t k = widths.at(input_of[j]);
    Tensor x = Tensor::empty({static_cast<std::int64_t>(r.size()) / k, k}, DType::F32);
    std::copy(r.begin(), r.end(), x.data<float>());
    problems.emplace_back(dense.weight().to(DType::F32).contiguous(), std::move(x));
  }
  for (auto _ : state) {
    for (const auto& [w, x] : problems) benchmark::DoNotOptimize(lowbit::quant::awq_search_clip(w, x, config).numel());
  }
  state.SetLabel(fmt::format("{} v, o, gate, up, down", b->name));
}
BENCHMARK(BM_AwqClipSearch)->Apply(block_cases);

}  // namespace
