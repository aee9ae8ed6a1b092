// AutoGPTQ / GPTQModel "gptq" checkpoints (include/lowbit/io/formats/gptq.hpp; gptq.md section 5).
#include "lowbit/io/formats/gptq.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "lowbit/core/half.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/quant/affine.hpp"
#include "lowbit/io/atomic_file.hpp"
#include "config_json.hpp"

namespace lowbit::io {
namespace {

using quant::QuantizedTensor;
using Json = nlohmann::ordered_json;

constexpr std::int64_t kColumnBlock = 16;  // output channels packed or unpacked together: one 64-byte line of words

bool valid_bits(int bits) { return std::find(std::begin(kGptqBits), std::end(kGptqBits), bits) != std::end(kGptqBits); }

std::string key_name(std::string_view module, std::string_view key) {
  return module.empty() ? std::string(key) : fmt::format("{}.{}", module, key);
}

// ---- the bit stream ----------------------------------------------------------------------------------------

// Field j of the stream at bits [bits*j, bits*j + bits); words must be zero on entry. A field straddles
// two words only for 3 bits (fields 10 and 21 of every 32).
void pack_stream(const std::uint8_t* values, std::int64_t count, int bits, std::uint32_t* words) {
  const std::uint32_t mask = (1u << bits) - 1u;
  for (std::int64_t j = 0; j < count; ++j) {
    const std::int64_t bit = j * bits;
    const int offset = static_cast<int>(bit & 31);
    const std::uint32_t v = values[j] & mask;  // masked before OR-ing, whatever the caller checked
    words[bit >> 5] |= v << offset;
    if (offset + bits > 32) words[(bit >> 5) + 1] |= v >> (32 - offset);
  }
}

void unpack_stream(const std::uint32_t* words, std::int64_t count, int bits, std::uint8_t* values) {
  const std::uint32_t mask = (1u << bits) - 1u;
  for (std::int64_t j = 0; j < count; ++j) {
    const std::int64_t bit = j * bits;
    const int offset = static_cast<int>(bit & 31);
    std::uint32_t v = words[bit >> 5] >> offset;
    if (offset + bits > 32) v |= words[(bit >> 5) + 1] << (32 - offset);
    values[j] = static_cast<std::uint8_t>(v & mask);
  }
}

void check_bits(int bits, std::string_view what) {
  LOWBIT_CHECK(valid_bits(bits), ErrorCode::InvalidArgument, "{}: bits = {} is not a GPTQ width; valid: {}", what, bits,
               fmt::join(kGptqBits, ", "));
}

// Words as u32 (i32 and u32 share the bits), contiguous.
const std::uint32_t* word_data(const Tensor& contiguous_words) {
  return static_cast<const std::uint32_t*>(contiguous_words.raw_data());
}

// qweight from codes u8 [n, k]: column c of qweight is the stream of row c of codes. Blocks of output
// channels are packed into a buffer first so that every qweight row is written in whole lines.
Tensor pack_qweight(const Tensor& codes, int bits) {
  const std::int64_t n = codes.size(0), k = codes.size(1), kw = k * bits / 32;
  Tensor out = Tensor::zeros({kw, n}, DType::I32);
  const std::uint8_t* c = codes.data<std::uint8_t>();
  auto* q = static_cast<std::uint32_t*>(out.raw_data());
  const std::int64_t blocks = (n + kColumnBlock - 1) / kColumnBlock;
  parallel_for(blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
    std::vector<std::uint32_t> buffer(static_cast<std::size_t>(kColumnBlock * kw));
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t first = b * kColumnBlock, width = std::min(kColumnBlock, n - first);
      std::fill(buffer.begin(), buffer.end(), 0u);
      for (std::int64_t j = 0; j < width; ++j) pack_stream(c + (first + j) * k, k, bits, buffer.data() + j * kw);
      for (std::int64_t r = 0; r < kw; ++r) {
        for (std::int64_t j = 0; j < width; ++j) q[r * n + first + j] = buffer[static_cast<std::size_t>(j * kw + r)];
      }
    }
  });
  return out;
}

// The inverse: qweight i32 [kw, n] -> codes u8 [n, k].
Tensor unpack_qweight(const Tensor& qweight, int bits, std::int64_t k) {
  const Tensor words = qweight.contiguous();
  const std::int64_t kw = words.size(0), n = words.size(1);
  Tensor out = Tensor::empty({n, k}, DType::U8);
  const std::uint32_t* q = word_data(words);
  std::uint8_t* c = out.data<std::uint8_t>();
  const std::int64_t blocks = (n + kColumnBlock - 1) / kColumnBlock;
  parallel_for(blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
    std::vector<std::uint32_t> buffer(static_cast<std::size_t>(kColumnBlock * kw));
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t first = b * kColumnBlock, width = std::min(kColumnBlock, n - first);
      for (std::int64_t r = 0; r < kw; ++r) {
        for (std::int64_t j = 0; j < width; ++j) buffer[static_cast<std::size_t>(j * kw + r)] = q[r * n + first + j];
      }
      for (std::int64_t j = 0; j < width; ++j) unpack_stream(buffer.data() + j * kw, k, bits, c + (first + j) * k);
    }
  });
  return out;
}

// ---- config files ----------------------------------------------------------------------------------------

std::string read_text(const std::filesystem::path& path) { return read_text_file(path, "gptq"); }


std::int64_t integer_value(const Json& v, std::string_view key, std::string_view source) {
  return detail::config_integer(v, key, source, "gptq");
}

bool bool_value(const Json& v, std::string_view key, std::string_view source) {
  LOWBIT_CHECK(v.is_boolean(), ErrorCode::Corrupt, "gptq: '{}': '{}' is {}; expected true or false", source, key,
               v.dump());
  return v.get<bool>();
}

int checked_bits(std::int64_t bits, std::string_view source) {
  LOWBIT_CHECK(valid_bits(static_cast<int>(bits)) && bits == static_cast<int>(bits), ErrorCode::Unsupported,
               "gptq: '{}': bits = {} is not supported; the gptq format holds {}", source, bits,
               fmt::join(kGptqBits, ", "));
  return static_cast<int>(bits);
}

std::int64_t checked_group_size(std::int64_t g, std::string_view source) {
  LOWBIT_CHECK(g == -1 || g >= 1, ErrorCode::Corrupt,
               "gptq: '{}': group_size = {}; expected -1 (one group per output channel) or a positive size", source, g);
  return g;
}

GptqDynamicRule parse_dynamic_rule(const std::string& key, const Json& value, std::string_view source) {
  GptqDynamicRule rule;
  rule.pattern = key;
  if (key.starts_with("-:")) {
    rule.skip = true;
    rule.pattern = key.substr(2);
  } else if (key.starts_with("+:")) {
    rule.pattern = key.substr(2);
  }
  if (rule.skip || value.is_null()) return rule;
  LOWBIT_CHECK(value.is_object(), ErrorCode::Corrupt, "gptq: '{}': dynamic rule '{}' is {}; expected an object", source,
               key, value.dump());
  const std::string context = fmt::format("dynamic['{}']", key);
  for (const auto& [k, v] : value.items()) {
    if (k == "bits" || k == "w_bit") rule.bits = checked_bits(integer_value(v, context + "." + k, source), source);
    if (k == "group_size" || k == "q_group_size")
      rule.group_size = checked_group_size(integer_value(v, context + "." + k, source), source);
    if (k == "sym") rule.sym = bool_value(v, context + ".sym", source);
  }
  return rule;
}

std::string_view torch_dtype_key(const Json& config) {
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (config.contains(key) && config[key].is_string()) {
      const std::string& s = config[key].get_ref<const std::string&>();
      if (s == "float16") return "float16";
      if (s == "bfloat16") return "bfloat16";
      if (s == "float32") return "float32";
    }
  }
  return "";
}

// The original weights' dtype: config.json's torch_dtype, else f16 (what GPTQ models run in).
DType checkpoint_dtype(const Checkpoint& checkpoint) {
  const auto path = detail::config_folder(checkpoint) / "config.json";
  if (!std::filesystem::exists(path)) return DType::F16;
  const Json j = Json::parse(read_text(path), nullptr, false);
  if (!j.is_object()) return DType::F16;
  const std::string_view name = torch_dtype_key(j);
  if (name == "bfloat16") return DType::BF16;
  if (name == "float32") return DType::F32;
  return DType::F16;
}

// One module of a checkpoint, with the config's dynamic rules applied.
QuantizedTensor read_module(const Checkpoint& checkpoint, std::string_view module, const GptqConfig& config,
                            DType dtype) {
  const std::optional<GptqConfig> module_config = gptq_module_config(config, module);
  LOWBIT_CHECK(module_config.has_value(), ErrorCode::Corrupt,
               "gptq: '{}': module '{}' has a qweight but the config's dynamic rules skip it (it should be dense)",
               checkpoint.path().string(), module);
  const TensorLookup lookup = [&checkpoint](const std::string& name) -> std::optional<Tensor> {
    if (!checkpoint.contains(name)) return std::nullopt;
    return checkpoint.tensor(name);
  };
  return decode_gptq_linear(module, lookup, *module_config, dtype, checkpoint.path().string());
}

// ---- the writer's per-run state -----------------------------------------------------------------------------

// Whether a weight was written with a permuted g_idx, recorded by add() for config_json() and finish()
// (their QuantizedEntry carries params, not components). Keyed by weight name: each add() overwrites its
// entry, so a later checkpoint written in the same process sees its own weights.
struct ActOrderLog {
  std::mutex mutex;
  std::map<std::string, bool> permuted;

  void record(const std::string& weight, bool value) {
    std::lock_guard<std::mutex> lock(mutex);
    permuted[weight] = value;
  }
  bool any(const std::vector<QuantizedEntry>& entries) {
    std::lock_guard<std::mutex> lock(mutex);
    for (const auto& e : entries) {
      const auto it = permuted.find(e.name);
      if (it != permuted.end() && it->second) return true;
    }
    return false;
  }
};

std::string module_of(const std::string& weight) {
  constexpr std::string_view kSuffix = ".weight";
  LOWBIT_CHECK(weight.ends_with(kSuffix), ErrorCode::InvalidArgument,
               "gptq layout: '{}' is not a '<module>.weight' tensor; GPTQ stores '<module>.qweight'", weight);
  return weight.substr(0, weight.size() - kSuffix.size());
}

bool is_lm_head(const std::string& weight) { return weight == "lm_head.weight" || weight.ends_with(".lm_head.weight"); }

// The one config of all entries; Unsupported when they differ in what one quantization_config holds.
GptqConfig config_of(const std::vector<QuantizedEntry>& entries, bool desc_act) {
  LOWBIT_CHECK(!entries.empty(), ErrorCode::InvalidArgument, "gptq layout: nothing was quantized");
  const QuantizedEntry& e = entries.front();
  for (const auto& other : entries) {
    LOWBIT_CHECK(other.params.bits == e.params.bits && other.params.group_size == e.params.group_size &&
                     other.params.symmetric == e.params.symmetric,
                 ErrorCode::Unsupported,
                 "gptq layout: one quantization_config holds one setting, but '{}' (bits {}, group_size {}, {}) and "
                 "'{}' (bits {}, group_size {}, {}) differ",
                 e.name, e.params.bits, e.params.group_size, e.params.symmetric ? "sym" : "asym", other.name,
                 other.params.bits, other.params.group_size, other.params.symmetric ? "sym" : "asym");
  }
  GptqConfig c;
  c.bits = e.params.bits;
  c.group_size = e.params.group_size;
  c.sym = e.params.symmetric;
  c.desc_act = desc_act;
  c.zero_format = c.sym ? GptqZeroFormat::V1 : GptqZeroFormat::V2;
  for (const auto& other : entries) c.lm_head = c.lm_head || is_lm_head(other.name);
  return c;
}

// The components of an affine tensor against its shape and params (as dequantize_affine_reference checks
// them, without making the dense weight): Corrupt naming the first that is wrong.
void check_affine_components(const QuantizedTensor& q, std::int64_t groups, std::string_view what) {
  const std::int64_t n = q.shape[0], k = q.shape[1];
  const int maxq = (1 << q.params.bits) - 1;
  const Tensor& codes = q.component("codes");
  const Tensor& scales = q.component("scales");
  const Tensor& zeros = q.component("zeros");
  LOWBIT_CHECK(codes.dtype() == DType::U8 && codes.shape() == q.shape, ErrorCode::Corrupt,
               "{}: codes are {}; expected u8{}", what, codes.describe(), q.shape.to_string());
  const Shape group_shape{n, groups};
  LOWBIT_CHECK((scales.dtype() == DType::F16 || scales.dtype() == DType::F32) && scales.shape() == group_shape,
               ErrorCode::Corrupt, "{}: scales are {}; expected f16 {}", what, scales.describe(),
               group_shape.to_string());
  LOWBIT_CHECK(zeros.dtype() == DType::U8 && zeros.shape() == group_shape, ErrorCode::Corrupt,
               "{}: zeros are {}; expected u8{}", what, zeros.describe(), group_shape.to_string());
  const Tensor c = codes.contiguous(), z = zeros.contiguous();
  const std::uint8_t* cp = c.data<std::uint8_t>();
  const std::int64_t count = c.numel();
  const std::uint8_t* worst = std::max_element(cp, cp + count);
  LOWBIT_CHECK(count == 0 || *worst <= maxq, ErrorCode::Corrupt, "{}: code {} at row {}, column {} exceeds 2^{} - 1",
               what, count ? *worst : 0, (worst - cp) / std::max<std::int64_t>(k, 1),
               (worst - cp) % std::max<std::int64_t>(k, 1), q.params.bits);
  const std::uint8_t* zp = z.data<std::uint8_t>();
  for (std::int64_t i = 0; i < z.numel(); ++i) {
    LOWBIT_CHECK(zp[i] <= maxq, ErrorCode::Corrupt, "{}: zero point {} at row {}, group {} exceeds 2^{} - 1", what,
                 zp[i], i / groups, i % groups, q.params.bits);
  }
  if (q.has("g_idx")) {
    const Tensor& g_idx = q.component("g_idx");
    LOWBIT_CHECK(g_idx.dtype() == DType::I32 && g_idx.shape() == Shape{k}, ErrorCode::Corrupt,
                 "{}: g_idx is {}; expected i32[{}]", what, g_idx.describe(), k);
    const Tensor gc = g_idx.contiguous();
    const std::int32_t* gi = gc.data<std::int32_t>();
    for (std::int64_t i = 0; i < k; ++i) {
      LOWBIT_CHECK(gi[i] >= 0 && gi[i] < groups, ErrorCode::Corrupt, "{}: g_idx[{}] = {} is outside the {} groups",
                   what, i, gi[i], groups);
    }
  }
}

}  // namespace

std::string_view gptq_checkpoint_format(GptqZeroFormat format) {
  return format == GptqZeroFormat::V1 ? "gptq" : "gptq_v2";
}

Tensor gptq_pack(const Tensor& values, int bits) {
  constexpr std::string_view op = "gptq_pack";
  check_bits(bits, op);
  LOWBIT_CHECK(values.dtype() == DType::U8 && values.rank() == 2, ErrorCode::InvalidArgument,
               "{}: values are {}; expected u8 [rows, count]", op, values.describe());
  const Tensor v = values.contiguous();
  const std::int64_t rows = v.size(0), count = v.size(1);
  LOWBIT_CHECK(count * bits % 32 == 0, ErrorCode::InvalidArgument,
               "{}: {} values of {} bits per row fill {} bits, not whole 32-bit words", op, count, bits, count * bits);
  const std::uint8_t* p = v.data<std::uint8_t>();
  const int maxq = (1 << bits) - 1;
  for (std::int64_t i = 0; i < v.numel(); ++i) {
    LOWBIT_CHECK(p[i] <= maxq, ErrorCode::InvalidArgument, "{}: value {} at row {}, column {} exceeds 2^{} - 1 = {}",
                 op, p[i], i / count, i % count, bits, maxq);
  }
  const std::int64_t nw = count * bits / 32;
  Tensor out = Tensor::zeros({rows, nw}, DType::I32);
  auto* w = static_cast<std::uint32_t*>(out.raw_data());
  parallel_for(rows, std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(count, 1)),
               [&](std::int64_t b, std::int64_t e) {
                 for (std::int64_t r = b; r < e; ++r) pack_stream(p + r * count, count, bits, w + r * nw);
               });
  return out;
}

Tensor gptq_unpack(const Tensor& words, int bits) {
  constexpr std::string_view op = "gptq_unpack";
  check_bits(bits, op);
  LOWBIT_CHECK((words.dtype() == DType::I32 || words.dtype() == DType::U32) && words.rank() == 2,
               ErrorCode::InvalidArgument, "{}: words are {}; expected i32 or u32 [rows, words]", op, words.describe());
  const Tensor w = words.contiguous();
  const std::int64_t rows = w.size(0), nw = w.size(1);
  LOWBIT_CHECK(nw * 32 % bits == 0, ErrorCode::InvalidArgument,
               "{}: {} words of 32 bits do not hold whole {}-bit fields", op, nw, bits);
  const std::int64_t count = nw * 32 / bits;
  Tensor out = Tensor::empty({rows, count}, DType::U8);
  const std::uint32_t* p = word_data(w);
  std::uint8_t* v = out.data<std::uint8_t>();
  parallel_for(rows, std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(count, 1)),
               [&](std::int64_t b, std::int64_t e) {
                 for (std::int64_t r = b; r < e; ++r) unpack_stream(p + r * nw, count, bits, v + r * count);
               });
  return out;
}

std::optional<GptqConfig> gptq_module_config(const GptqConfig& config, std::string_view module) {
  const std::string name(module);
  for (const GptqDynamicRule& rule : config.dynamic) {
    std::regex re;
    try {
      re = std::regex(rule.pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      LOWBIT_THROW(ErrorCode::Unsupported, "gptq: dynamic pattern '{}' is not a regular expression lowbit can use ({})",
                   rule.pattern, e.what());
    }
    // Python's re.match: anchored at the start of the name, not at its end.
    if (!std::regex_search(name, re, std::regex_constants::match_continuous)) continue;
    if (rule.skip) return std::nullopt;
    GptqConfig out = config;
    out.dynamic.clear();
    if (rule.bits) out.bits = *rule.bits;
    if (rule.group_size) out.group_size = *rule.group_size;
    if (rule.sym) out.sym = *rule.sym;
    return out;
  }
  GptqConfig out = config;
  out.dynamic.clear();
  return out;
}

std::string gptq_quantization_config(const GptqConfig& config) {
  check_bits(config.bits, "gptq_quantization_config");
  LOWBIT_CHECK(config.group_size == -1 || config.group_size >= 1, ErrorCode::InvalidArgument,
               "gptq_quantization_config: group_size = {}; GPTQ holds -1 or a positive size", config.group_size);
  Json j;
  j["bits"] = config.bits;
  j["group_size"] = config.group_size;
  j["desc_act"] = config.desc_act;
  j["sym"] = config.sym;
  j["lm_head"] = config.lm_head;
  j["quant_method"] = "gptq";
  j["checkpoint_format"] = std::string(gptq_checkpoint_format(config.zero_format));
  j["pack_dtype"] = "int32";
  if (!config.dynamic.empty()) {
    Json dynamic = Json::object();
    for (const auto& rule : config.dynamic) {
      Json r = Json::object();
      if (rule.bits) r["bits"] = *rule.bits;
      if (rule.group_size) r["group_size"] = *rule.group_size;
      if (rule.sym) r["sym"] = *rule.sym;
      dynamic[(rule.skip ? "-:" : "+:") + rule.pattern] = r;
    }
    j["dynamic"] = dynamic;
  }
  // "name:version" entries are what GPTQModel parses; a producer without a version is listed and skipped.
  j["meta"] = Json{{"quantizer", Json::array({"lowbit"})}};
  return j.dump(2);
}

GptqConfig parse_gptq_config(std::string_view text, std::string_view source) {
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  LOWBIT_CHECK(j.is_object(), ErrorCode::Corrupt, "gptq: '{}' is not a JSON object", source);
  if (j.contains("quant_method") && !j["quant_method"].is_null()) {
    LOWBIT_CHECK(j["quant_method"].is_string(), ErrorCode::Corrupt, "gptq: '{}': quant_method is {}", source,
                 j["quant_method"].dump());
    const std::string method = detail::ascii_lower(j["quant_method"].get<std::string>());
    LOWBIT_CHECK(method == "gptq", ErrorCode::Unsupported,
                 "gptq: '{}': quant_method is '{}', not 'gptq'; lowbit reads AutoGPTQ/GPTQModel 'gptq' checkpoints "
                 "(and its own, bitsandbytes and HQQ ones), not this layout",
                 source, method);
  }
  GptqConfig c;
  bool has_bits = false;
  for (const char* key : {"bits", "w_bit"}) {
    if (j.contains(key)) {
      c.bits = checked_bits(integer_value(j[key], key, source), source);
      has_bits = true;
      break;
    }
  }
  LOWBIT_CHECK(has_bits, ErrorCode::Corrupt, "gptq: '{}' has no 'bits'", source);
  bool has_group = false;
  for (const char* key : {"group_size", "q_group_size"}) {
    if (j.contains(key)) {
      c.group_size = checked_group_size(integer_value(j[key], key, source), source);
      has_group = true;
      break;
    }
  }
  LOWBIT_CHECK(has_group, ErrorCode::Corrupt, "gptq: '{}' has no 'group_size'", source);
  if (j.contains("sym") && !j["sym"].is_null()) c.sym = bool_value(j["sym"], "sym", source);
  if (j.contains("desc_act") && !j["desc_act"].is_null()) c.desc_act = bool_value(j["desc_act"], "desc_act", source);
  if (j.contains("lm_head") && j["lm_head"].is_boolean()) c.lm_head = j["lm_head"].get<bool>();
  LOWBIT_CHECK(
      !(j.contains("is_marlin_format") && j["is_marlin_format"].is_boolean() && j["is_marlin_format"].get<bool>()),
      ErrorCode::Unsupported,
      "gptq: '{}': is_marlin_format = true (AutoGPTQ's Marlin-repacked tensors); lowbit reads the plain "
      "gptq layout only",
      source);
  std::string format = "gptq";
  for (const char* key : {"checkpoint_format", "format"}) {
    if (j.contains(key) && j[key].is_string()) {
      format = detail::ascii_lower(j[key].get<std::string>());
      break;
    }
  }
  if (format == "gptq") {
    c.zero_format = GptqZeroFormat::V1;
  } else if (format == "gptq_v2") {
    c.zero_format = GptqZeroFormat::V2;
  } else {
    LOWBIT_THROW(ErrorCode::Unsupported,
                 "gptq: '{}': checkpoint_format '{}' is not supported; lowbit reads 'gptq' (v1 zero points) and "
                 "'gptq_v2'",
                 source, format);
  }
  if (j.contains("pack_dtype") && !j["pack_dtype"].is_null()) {
    const std::string pack = j["pack_dtype"].is_string() ? j["pack_dtype"].get<std::string>() : j["pack_dtype"].dump();
    LOWBIT_CHECK(pack == "int32" || pack == "torch.int32", ErrorCode::Unsupported,
                 "gptq: '{}': pack_dtype '{}' is not supported; lowbit reads int32 words", source, pack);
  }
  if (j.contains("meta") && j["meta"].is_object() && j["meta"].contains("quantizer")) {
    const Json& producers = j["meta"]["quantizer"];
    for (const Json& p : producers.is_array() ? producers : Json::array({producers})) {
      if (p.is_string() && detail::ascii_lower(p.get<std::string>()).starts_with("gptqmodel")) c.v1_from_gptqmodel = true;
    }
  }
  if (j.contains("dynamic") && !j["dynamic"].is_null()) {
    LOWBIT_CHECK(j["dynamic"].is_object(), ErrorCode::Corrupt, "gptq: '{}': dynamic is {}; expected an object", source,
                 j["dynamic"].dump());
    for (const auto& [key, value] : j["dynamic"].items()) c.dynamic.push_back(parse_dynamic_rule(key, value, source));
  }
  return c;
}

std::optional<GptqConfig> find_gptq_config(const Checkpoint& checkpoint) {
  const auto folder = detail::config_folder(checkpoint);
  for (const char* name : {"quantize_config.json", "quant_config.json"}) {
    const auto path = folder / name;
    if (std::filesystem::exists(path)) return parse_gptq_config(read_text(path), path.string());
  }
  const auto config = folder / "config.json";
  if (!std::filesystem::exists(config)) return std::nullopt;
  const Json j = Json::parse(read_text(config), nullptr, false);
  if (!j.is_object() || !j.contains("quantization_config") || j["quantization_config"].is_null()) return std::nullopt;
  return parse_gptq_config(j["quantization_config"].dump(), config.string() + " quantization_config");
}

std::vector<std::pair<std::string, Tensor>> gptq_linear_tensors(std::string_view module, const QuantizedTensor& q,
                                                                GptqZeroFormat format) {
  const std::string what = fmt::format("gptq layout: '{}'", module);
  LOWBIT_CHECK(q.method == "affine", ErrorCode::InvalidArgument,
               "{}: the quantized tensor is '{}'; the gptq layout stores affine (GPTQ/RTN) tensors", what, q.method);
  const quant::AffineConfig config = quant::affine_config_from_params(q.params);
  LOWBIT_CHECK(config.mode != quant::AffineMode::Absmax, ErrorCode::Unsupported,
               "{}: the absmax grid (variant '{}') is not a GPTQ grid; quantize with variant minmax", what,
               q.params.variant);
  LOWBIT_CHECK(q.params.group_size != 0, ErrorCode::Unsupported,
               "{}: one scale per tensor (group_size 0) has no gptq form; use a group size or -1 (per output channel)",
               what);
  quant::affine_require_whole_groups(q, what);
  const int bits = q.params.bits;
  check_bits(bits, what);
  LOWBIT_CHECK(q.shape.rank() == 2, ErrorCode::Corrupt, "{}: shape {} is not 2-D", what, q.shape.to_string());
  const std::int64_t n = q.shape[0], k = q.shape[1];
  LOWBIT_CHECK(n % 32 == 0 && k % 32 == 0, ErrorCode::Unsupported,
               "{}: shape {} (n = {} outputs, k = {} inputs): the gptq layout needs both multiples of 32 (AutoGPTQ "
               "allocates k / 32 * bits qweight rows and n / 32 * bits qzeros columns and drops a remainder)",
               what, q.shape.to_string(), n, k);
  const std::int64_t groups = quant::affine_groups_per_row(k, q.params.group_size);
  const std::int64_t group_size = q.params.group_size >= 1 ? q.params.group_size : k;
  check_affine_components(q, groups, what);

  // Scales: f16 [G, n]; f32 only when every value is an fp16 number already.
  const Tensor scales = q.component("scales").contiguous();  // [n, G]
  Tensor scales_t = Tensor::empty({groups, n}, DType::F16);
  auto* st = static_cast<std::uint16_t*>(scales_t.raw_data());
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t g = 0; g < groups; ++g) {
      std::uint16_t h = 0;
      if (scales.dtype() == DType::F16) {
        h = static_cast<const std::uint16_t*>(scales.raw_data())[r * groups + g];
      } else {
        const float s = scales.data<float>()[r * groups + g];
        h = f32_to_f16_bits(s);
        LOWBIT_CHECK(f16_bits_to_f32(h) == s, ErrorCode::Unsupported,
                     "{}: f32 scale {} (row {}, group {}) is not an fp16 number; gptq stores fp16 scales: quantize "
                     "with variant minmax:f16",
                     what, s, r, g);
      }
      st[g * n + r] = h;
    }
  }

  // Zero points: fields z - 1 (v1) or z (v2), [G, n] packed along n.
  const Tensor zeros = q.component("zeros").contiguous();  // u8 [n, G]
  const std::uint8_t* z = zeros.data<std::uint8_t>();
  const int sym_zero = 1 << (bits - 1);
  Tensor fields = Tensor::empty({groups, n}, DType::U8);
  std::uint8_t* f = fields.data<std::uint8_t>();
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t g = 0; g < groups; ++g) {
      const int zero = z[r * groups + g];
      LOWBIT_CHECK(!q.params.symmetric || zero == sym_zero, ErrorCode::InvalidArgument,
                   "{}: the tensor is symmetric but row {}, group {} has zero point {}, not 2^{} = {}", what, r, g,
                   zero, bits - 1, sym_zero);
      LOWBIT_CHECK(
          format == GptqZeroFormat::V2 || zero >= 1, ErrorCode::Unsupported,
          "{}: zero point 0 at row {}, group {} has no v1 ('gptq') field (z - 1 = -1); write checkpoint_format "
          "gptq_v2, which stores z",
          what, r, g);
      f[g * n + r] = static_cast<std::uint8_t>(format == GptqZeroFormat::V1 ? zero - 1 : zero);
    }
  }

  Tensor g_idx = Tensor::empty({k}, DType::I32);
  std::int32_t* gi = g_idx.data<std::int32_t>();
  if (q.has("g_idx")) {
    const Tensor src = q.component("g_idx").contiguous();
    std::memcpy(gi, src.raw_data(), static_cast<std::size_t>(k) * sizeof(std::int32_t));
  } else {
    for (std::int64_t c = 0; c < k; ++c) gi[c] = static_cast<std::int32_t>(c / group_size);
  }

  std::vector<std::pair<std::string, Tensor>> out;
  out.emplace_back(key_name(module, "qweight"), pack_qweight(q.component("codes").contiguous(), bits));
  out.emplace_back(key_name(module, "qzeros"), gptq_pack(fields, bits));
  out.emplace_back(key_name(module, "scales"), scales_t);
  out.emplace_back(key_name(module, "g_idx"), g_idx);
  return out;
}

QuantizedTensor decode_gptq_linear(std::string_view module, const TensorLookup& lookup, const GptqConfig& config,
                                   DType dtype, std::string_view source) {
  const std::string ctx = fmt::format("gptq: module '{}' in '{}'", module, source);
  const int bits = config.bits;
  LOWBIT_CHECK(valid_bits(bits), ErrorCode::Unsupported, "{}: bits = {} is not supported; valid: {}", ctx, bits,
               fmt::join(kGptqBits, ", "));
  const auto qweight_found = lookup(key_name(module, "qweight"));
  LOWBIT_CHECK(qweight_found.has_value(), ErrorCode::InvalidArgument, "{}: no tensor '{}'; not a GPTQ module", ctx,
               key_name(module, "qweight"));
  auto require = [&](std::string_view key) {
    auto t = lookup(key_name(module, key));
    LOWBIT_CHECK(t.has_value(), ErrorCode::Corrupt,
                 "{}: tensor '{}' is missing (a gptq linear has qweight, qzeros, "
                 "scales and g_idx)",
                 ctx, key_name(module, key));
    return *t;
  };
  auto check_words = [&](const Tensor& t, std::string_view key) {
    LOWBIT_CHECK(t.rank() == 2, ErrorCode::Corrupt, "{}: '{}' is {}; expected a 2-D matrix of packed words", ctx,
                 key_name(module, key), t.describe());
    LOWBIT_CHECK(t.dtype() == DType::I32 || t.dtype() == DType::U32, ErrorCode::Unsupported,
                 "{}: '{}' is {}; lowbit reads int32 words (pack_dtype int32)", ctx, key_name(module, key),
                 t.describe());
  };
  const Tensor& qweight = *qweight_found;
  check_words(qweight, "qweight");
  const std::int64_t kw = qweight.size(0), n = qweight.size(1);

  std::int64_t k = kw * 32 / bits;
  const auto g_idx_found = lookup(key_name(module, "g_idx"));
  Tensor g_idx;
  if (g_idx_found) {
    const Tensor& t = *g_idx_found;
    LOWBIT_CHECK(t.rank() == 1 && (t.dtype() == DType::I32 || t.dtype() == DType::I64), ErrorCode::Corrupt,
                 "{}: '{}' is {}; expected i32 [k]", ctx, key_name(module, "g_idx"), t.describe());
    k = t.size(0);
    g_idx = Tensor::empty({k}, DType::I32);
    const Tensor c = t.contiguous();
    for (std::int64_t i = 0; i < k; ++i) {
      const std::int64_t v = c.dtype() == DType::I32 ? c.data<std::int32_t>()[i] : c.data<std::int64_t>()[i];
      LOWBIT_CHECK(v >= std::numeric_limits<std::int32_t>::min() && v <= std::numeric_limits<std::int32_t>::max(),
                   ErrorCode::Corrupt, "{}: '{}'[{}] = {} is not a group index", ctx, key_name(module, "g_idx"), i, v);
      g_idx.data<std::int32_t>()[i] = static_cast<std::int32_t>(v);
    }
  }
  LOWBIT_CHECK(kw * 32 % bits == 0 && k * bits == kw * 32 && k > 0 && n > 0, ErrorCode::Corrupt,
               "{}: '{}' is {}, but {} input channels of {} bits need [{}, n] words{}", ctx,
               key_name(module, "qweight"), qweight.describe(), k, bits, (k * bits + 31) / 32,
               g_idx_found ? fmt::format(" (k = {} from '{}')", k, key_name(module, "g_idx")) : std::string());
  LOWBIT_CHECK(n * bits % 32 == 0, ErrorCode::Corrupt,
               "{}: '{}' has n = {} output channels; {} bits each do not fill whole qzeros words", ctx,
               key_name(module, "qweight"), n, bits);

  const std::int64_t groups = quant::affine_groups_per_row(k, config.group_size);
  const std::int64_t group_size = config.group_size >= 1 ? config.group_size : k;
  const Tensor scales = require("scales");
  LOWBIT_CHECK(scales.rank() == 2 && scales.size(0) == groups && scales.size(1) == n, ErrorCode::Corrupt,
               "{}: '{}' is {}; expected [{}, {}] (G = ceil(k / group_size) = ceil({} / {}), n)", ctx,
               key_name(module, "scales"), scales.describe(), groups, n, k, config.group_size);
  LOWBIT_CHECK(scales.dtype() == DType::F16 || scales.dtype() == DType::BF16 || scales.dtype() == DType::F32,
               ErrorCode::Corrupt, "{}: '{}' is {}; expected f16 scales", ctx, key_name(module, "scales"),
               scales.describe());
  const Tensor qzeros = require("qzeros");
  check_words(qzeros, "qzeros");
  LOWBIT_CHECK(qzeros.size(0) == groups && qzeros.size(1) == n * bits / 32, ErrorCode::Corrupt,
               "{}: '{}' is {}; expected [{}, {}] (G groups, n * bits / 32 words)", ctx, key_name(module, "qzeros"),
               qzeros.describe(), groups, n * bits / 32);

  // Zero points: fields [G, n] -> z [n, G].
  const int sym_zero = 1 << (bits - 1), maxq = (1 << bits) - 1;
  Tensor fields = gptq_unpack(qzeros, bits);
  bool stored_as_is = config.zero_format == GptqZeroFormat::V2;
  if (!stored_as_is && config.sym) {
    // A symmetric file labelled v1 whose fields are all 2^(bits-1) holds v2 zero points (gptq.md 5.3).
    const std::uint8_t* f = fields.data<std::uint8_t>();
    stored_as_is = std::all_of(f, f + fields.numel(), [&](std::uint8_t v) { return v == sym_zero; });
  }
  bool wrapped = false;  // fields already hold z (mod 2^bits)
  if (!stored_as_is && config.v1_from_gptqmodel) {
    if (bits == 3) {
      // GPTQModel subtracts 1 per field modulo 8 (fields straddle words); the inverse adds it back.
      std::uint8_t* f = fields.data<std::uint8_t>();
      for (std::int64_t i = 0; i < fields.numel(); ++i) f[i] = static_cast<std::uint8_t>((f[i] + 1) & 7);
    } else {
      // GPTQModel subtracts 0x55555555 / 0x11111111 / 0x01010101 from each v2 word (a zero point of 0
      // borrows from the next field); adding the constant back to each word is the exact inverse.
      const std::uint32_t one_per_field = bits == 2 ? 0x55555555u : bits == 4 ? 0x11111111u : 0x01010101u;
      Tensor words = qzeros.contiguous().clone();
      auto* w = static_cast<std::uint32_t*>(words.raw_data());
      for (std::int64_t i = 0; i < words.numel(); ++i) w[i] += one_per_field;
      fields = gptq_unpack(words, bits);
    }
    wrapped = true;
  }
  const std::uint8_t* f = fields.data<std::uint8_t>();
  Tensor zeros = Tensor::empty({n, groups}, DType::U8);
  std::uint8_t* z = zeros.data<std::uint8_t>();
  for (std::int64_t g = 0; g < groups; ++g) {
    for (std::int64_t r = 0; r < n; ++r) {
      const int field = f[g * n + r];
      const int zero = stored_as_is || wrapped ? field : field + 1;
      LOWBIT_CHECK(zero <= maxq, ErrorCode::Unsupported,
                   "{}: '{}' group {}, output {}: v1 field {} decodes to zero point {} > 2^{} - 1 (AutoGPTQ's "
                   "asymmetric zero-point overflow); lowbit's affine grid cannot hold it",
                   ctx, key_name(module, "qzeros"), g, r, field, zero, bits);
      LOWBIT_CHECK(!config.sym || zero == sym_zero, ErrorCode::Corrupt,
                   "{}: '{}' group {}, output {}: zero point {} in a symmetric (sym = true) checkpoint; expected 2^{} "
                   "= {}",
                   ctx, key_name(module, "qzeros"), g, r, zero, bits - 1, sym_zero);
      z[r * groups + g] = static_cast<std::uint8_t>(zero);
    }
  }

  // Scales: [G, n] -> [n, G], f16 kept, bf16/f32 widened to f32 (exact).
  const Tensor s = scales.contiguous();
  const bool f16 = s.dtype() == DType::F16;
  Tensor scales_out = Tensor::empty({n, groups}, f16 ? DType::F16 : DType::F32);
  for (std::int64_t g = 0; g < groups; ++g) {
    for (std::int64_t r = 0; r < n; ++r) {
      const std::int64_t from = g * n + r, to = r * groups + g;
      if (f16) {
        static_cast<std::uint16_t*>(scales_out.raw_data())[to] = static_cast<const std::uint16_t*>(s.raw_data())[from];
      } else if (s.dtype() == DType::BF16) {
        scales_out.data<float>()[to] = bf16_bits_to_f32(static_cast<const std::uint16_t*>(s.raw_data())[from]);
      } else {
        scales_out.data<float>()[to] = s.data<float>()[from];
      }
    }
  }

  // g_idx: checked, then dropped when it is the trivial c / group_size.
  bool trivial = true;
  if (g_idx.defined()) {
    const std::int32_t* gi = g_idx.data<std::int32_t>();
    for (std::int64_t c = 0; c < k; ++c) {
      LOWBIT_CHECK(gi[c] >= 0 && gi[c] < groups, ErrorCode::Corrupt,
                   "{}: '{}'[{}] = {} is outside the {} groups (k = {}, group_size = {})", ctx,
                   key_name(module, "g_idx"), c, gi[c], groups, k, config.group_size);
      trivial = trivial && gi[c] == c / group_size;
    }
  }

  quant::AffineConfig affine;
  affine.bits = bits;
  affine.group_size = config.group_size;
  affine.mode = config.sym ? quant::AffineMode::Symmetric : quant::AffineMode::Asymmetric;
  affine.scale_dtype = f16 ? DType::F16 : DType::F32;
  QuantizedTensor q;
  q.method = "affine";
  q.shape = Shape{n, k};
  q.dtype = dtype;
  q.params = quant::affine_params_from_config(affine);
  q.components.emplace("codes", unpack_qweight(qweight, bits, k));
  q.components.emplace("scales", std::move(scales_out));
  q.components.emplace("zeros", std::move(zeros));
  if (!trivial) q.components.emplace("g_idx", std::move(g_idx));
  return q;
}

QuantizedTensor read_gptq_linear(const Checkpoint& checkpoint, std::string_view module, const GptqConfig& config) {
  return read_module(checkpoint, module, config, checkpoint_dtype(checkpoint));
}

std::vector<std::string> gptq_modules(const Checkpoint& checkpoint) {
  std::vector<std::string> out;
  for (const std::string& name : checkpoint.names()) {
    if (name == "qweight")
      out.emplace_back();
    else if (name.ends_with(".qweight"))
      out.push_back(name.substr(0, name.size() - 8));
  }
  std::sort(out.begin(), out.end());
  return out;
}

void check_packed_affine_components(const QuantizedTensor& q, std::int64_t groups, std::string_view what) {
  check_affine_components(q, groups, what);
}

DType packed_checkpoint_dtype(const Checkpoint& checkpoint) { return checkpoint_dtype(checkpoint); }

FormatWriter gptq_format_writer() {
  auto log = std::make_shared<ActOrderLog>();
  FormatWriter w;
  w.name = "gptq";
  w.methods = {"affine", "gptq"};
  w.summary = "AutoGPTQ/GPTQModel layout: qweight, qzeros, scales, g_idx + quantize_config.json (docs/formats.md#gptq)";
  w.add = [log](CheckpointWriter& out, const std::string& name, const QuantizedTensor& q) {
    const std::string module = module_of(name);
    const GptqZeroFormat format = q.params.symmetric ? GptqZeroFormat::V1 : GptqZeroFormat::V2;
    const auto tensors = gptq_linear_tensors(module, q, format);
    bool permuted = false;
    if (q.has("g_idx")) {  // written as given; a trivial one is not act-order
      const Tensor gi = q.component("g_idx").contiguous();
      const std::int64_t gs = q.params.group_size >= 1 ? q.params.group_size : q.shape[1];
      for (std::int64_t c = 0; c < gi.numel() && !permuted; ++c) permuted = gi.data<std::int32_t>()[c] != c / gs;
    }
    log->record(name, permuted);
    out.add_metadata("format", "pt");  // transformers' loader checks it; set before this weight's shard is written
    for (const auto& [n, t] : tensors) out.add(n, t);
  };
  w.config_json = [log](const std::filesystem::path& config, const std::vector<QuantizedEntry>& entries) {
    const GptqConfig c = config_of(entries, log->any(entries));
    Json j = Json::parse(read_text(config), nullptr, false);
    LOWBIT_CHECK(j.is_object(), ErrorCode::Corrupt, "gptq layout: '{}' is not a JSON object", config.string());
    j["quantization_config"] = Json::parse(gptq_quantization_config(c));
    return j.dump(2) + "\n";
  };
  w.finish = [log](CheckpointWriter& out, const std::vector<QuantizedEntry>& entries) {
    out.add_text_file("quantize_config.json", gptq_quantization_config(config_of(entries, log->any(entries))) + "\n");
    out.add_metadata("format", "pt");
  };
  return w;
}

bool is_gptq_checkpoint(const Checkpoint& checkpoint) {
  for (const std::string& name : checkpoint.names()) {
    if (name == "qweight" || name.ends_with(".qweight")) return true;
  }
  return false;
}

QuantizedCheckpoint open_gptq(const Checkpoint& checkpoint) {
  const std::optional<GptqConfig> config = find_gptq_config(checkpoint);
  LOWBIT_CHECK(config.has_value(), ErrorCode::InvalidArgument,
               "gptq: '{}' holds 'qweight' tensors but no quantize_config.json, quant_config.json or config.json "
               "quantization_config beside them; GPTQ's bits, group_size and checkpoint_format come from there",
               checkpoint.path().string());
  QuantizedCheckpoint out;
  out.format = std::string(gptq_checkpoint_format(config->zero_format));
  std::map<std::string, std::string> module_of_weight;
  for (const std::string& module : gptq_modules(checkpoint)) {
    const std::string weight = module.empty() ? "weight" : module + ".weight";
    module_of_weight[weight] = module;
    out.weights.push_back(weight);
    for (const char* key : {"qweight", "qzeros", "scales", "g_idx"}) {
      const std::string name = key_name(module, key);
      if (checkpoint.contains(name)) out.parts.insert(name);
    }
  }
  const DType dtype = checkpoint_dtype(checkpoint);
  out.load = [&checkpoint, module_of_weight, config = *config, dtype](std::string_view weight) {
    const auto it = module_of_weight.find(std::string(weight));
    LOWBIT_CHECK(it != module_of_weight.end(), ErrorCode::InvalidArgument,
                 "gptq: '{}' holds no GPTQ module for weight '{}'", checkpoint.path().string(), weight);
    return read_module(checkpoint, it->second, config, dtype);
  };
  return out;
}

}  // namespace lowbit::io
