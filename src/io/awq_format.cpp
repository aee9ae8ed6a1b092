// AutoAWQ "awq" checkpoints, GEMM and GEMV layouts (include/lowbit/io/formats/awq.hpp; awq.md section 4).
// The bit streams are GPTQ's (gptq_pack / gptq_unpack: field j at bits [4j, 4j+4)); what differs is the
// orientation (GEMM packs along outputs) and GEMM's interleave, applied to the u8 fields before packing.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "lowbit/core/half.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/io/formats/awq.hpp"
#include "lowbit/quant/affine.hpp"
#include "lowbit/io/atomic_file.hpp"
#include "config_json.hpp"

namespace lowbit::io {
namespace {

using quant::QuantizedTensor;
using Json = nlohmann::ordered_json;

constexpr std::int64_t kTile = 64;  // transpose tile: 64 x 64 bytes stay in L1

std::string key_name(std::string_view module, std::string_view key) {
  return module.empty() ? std::string(key) : fmt::format("{}.{}", module, key);
}

// dst [cols, rows] = src [rows, cols]^T for 1- or 2-byte elements, tiled, parallel over tiles of dst rows.
void transpose(const void* src, std::int64_t rows, std::int64_t cols, std::size_t size, void* dst) {
  const auto* s = static_cast<const std::uint8_t*>(src);
  auto* d = static_cast<std::uint8_t*>(dst);
  const std::int64_t tiles = (cols + kTile - 1) / kTile;
  parallel_for(tiles, 1, [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t c0 = t * kTile, c1 = std::min(cols, c0 + kTile);
      for (std::int64_t r0 = 0; r0 < rows; r0 += kTile) {
        const std::int64_t r1 = std::min(rows, r0 + kTile);
        for (std::int64_t c = c0; c < c1; ++c) {
          for (std::int64_t r = r0; r < r1; ++r)
            std::memcpy(d + (c * rows + r) * size, s + (r * cols + c) * size, size);
        }
      }
    }
  });
}

Tensor transposed(const Tensor& t) {
  const Tensor c = t.contiguous();
  Tensor out = Tensor::empty({c.size(1), c.size(0)}, c.dtype());
  transpose(c.raw_data(), c.size(0), c.size(1), dtype_size(c.dtype()), out.raw_data());
  return out;
}

// Reorders every group of 8 columns: out[r][8c + j] = in[r][8c + from[j]].
Tensor permute_eights(const Tensor& values, const int (&from)[8]) {
  const Tensor v = values.contiguous();
  const std::int64_t rows = v.size(0), count = v.size(1);
  Tensor out = Tensor::empty({rows, count}, DType::U8);
  const std::uint8_t* p = v.data<std::uint8_t>();
  std::uint8_t* q = out.data<std::uint8_t>();
  parallel_for(rows, std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(count, 1)),
               [&](std::int64_t b, std::int64_t e) {
                 for (std::int64_t r = b; r < e; ++r) {
                   for (std::int64_t c = 0; c < count; c += 8) {
                     for (int j = 0; j < 8; ++j) q[r * count + c + j] = p[r * count + c + from[j]];
                   }
                 }
               });
  return out;
}

// ---- config files ----------------------------------------------------------------------------------------

std::string read_text(const std::filesystem::path& path) { return read_text_file(path, "awq"); }


std::int64_t integer_value(const Json& v, std::string_view key, std::string_view source) {
  return detail::config_integer(v, key, source, "awq");
}

// The quant_method of a config dictionary, lower case; "" when absent or null.
std::string quant_method_of(const Json& j) {
  if (!j.is_object() || !j.contains("quant_method") || !j["quant_method"].is_string()) return "";
  return detail::ascii_lower(j["quant_method"].get<std::string>());
}

// Whether a side file (quant_config.json, quantize_config.json) holds an AWQ config.
bool looks_like_awq(const Json& j) {
  if (!j.is_object()) return false;
  const std::string method = quant_method_of(j);
  if (!method.empty()) return method == "awq";
  return j.contains("version") || j.contains("zero_point");
}

// ---- the writer ------------------------------------------------------------------------------------------

std::string module_of(const std::string& weight) {
  constexpr std::string_view kSuffix = ".weight";
  LOWBIT_CHECK(weight.ends_with(kSuffix), ErrorCode::InvalidArgument,
               "awq layout: '{}' is not a '<module>.weight' tensor; AWQ stores '<module>.qweight'", weight);
  return weight.substr(0, weight.size() - kSuffix.size());
}

AwqConfig config_of(const std::vector<QuantizedEntry>& entries, AwqVersion version) {
  LOWBIT_CHECK(!entries.empty(), ErrorCode::InvalidArgument, "awq layout: nothing was quantized");
  const QuantizedEntry& e = entries.front();
  for (const auto& other : entries) {
    LOWBIT_CHECK(other.params.bits == e.params.bits && other.params.group_size == e.params.group_size,
                 ErrorCode::Unsupported,
                 "awq layout: one quantization_config holds one setting, but '{}' (bits {}, group_size {}) and '{}' "
                 "(bits {}, group_size {}) differ",
                 e.name, e.params.bits, e.params.group_size, other.name, other.params.bits, other.params.group_size);
  }
  LOWBIT_CHECK(e.params.bits == kAwqBits, ErrorCode::Unsupported,
               "awq layout: bits = {}; AutoAWQ stores 4-bit codes only", e.params.bits);
  AwqConfig c;
  c.bits = e.params.bits;
  c.group_size = e.params.group_size;
  c.version = version;
  return c;
}

// Scales [n, G] (f16, or f32 that fp16 holds exactly) as f16 [n, G].
Tensor f16_scales(const QuantizedTensor& q, std::string_view what) {
  const Tensor s = q.component("scales").contiguous();
  if (s.dtype() == DType::F16) return s;
  const std::int64_t groups = s.size(1);
  Tensor out = Tensor::empty(s.shape(), DType::F16);
  auto* h = static_cast<std::uint16_t*>(out.raw_data());
  const float* f = s.data<float>();
  for (std::int64_t i = 0; i < s.numel(); ++i) {
    h[i] = f32_to_f16_bits(f[i]);
    LOWBIT_CHECK(f16_bits_to_f32(h[i]) == f[i], ErrorCode::Unsupported,
                 "{}: f32 scale {} (row {}, group {}) is not an fp16 number; awq stores fp16 scales: quantize with "
                 "variant minmax:f16",
                 what, f[i], i / groups, i % groups);
  }
  return out;
}

}  // namespace

std::string_view awq_version_name(AwqVersion version) { return version == AwqVersion::Gemm ? "gemm" : "gemv"; }

Tensor awq_gemm_pack(const Tensor& values) {
  LOWBIT_CHECK(values.dtype() == DType::U8 && values.rank() == 2, ErrorCode::InvalidArgument,
               "awq_gemm_pack: values are {}; expected u8 [rows, count]", values.describe());
  LOWBIT_CHECK(values.size(1) % 8 == 0, ErrorCode::InvalidArgument,
               "awq_gemm_pack: {} values per row; the GEMM layout packs whole words of 8", values.size(1));
  return gptq_pack(permute_eights(values, kAwqOrder), kAwqBits);
}

Tensor awq_gemm_unpack(const Tensor& words) {
  const Tensor fields = gptq_unpack(words, kAwqBits);  // checks dtype and rank
  return permute_eights(fields, kAwqReverseOrder);
}

std::int64_t awq_gemv_zeros_width(std::int64_t k, std::int64_t group_size) {
  LOWBIT_CHECK(k > 0, ErrorCode::InvalidArgument, "awq_gemv_zeros_width: k = {}", k);
  const std::int64_t gs = group_size == -1 ? k : group_size;
  std::int64_t multiplier = 0;
  if (gs >= 128)
    multiplier = 1;
  else if (gs == 64)
    multiplier = 2;
  else if (gs == 32)
    multiplier = 4;
  LOWBIT_CHECK(multiplier > 0, ErrorCode::Unsupported,
               "awq gemv: group size {} has no GEMV kernel in AutoAWQ (32, 64 or >= 128; calculate_zeros_width)", gs);
  const std::int64_t base = (k / gs + 7) / 8;
  return (base + multiplier - 1) / multiplier * multiplier;
}

// ---- configuration ------------------------------------------------------------------------------------

std::string awq_quantization_config(const AwqConfig& config) {
  Json j;
  j["quant_method"] = "awq";
  j["zero_point"] = config.zero_point;
  j["group_size"] = config.group_size;
  j["bits"] = config.bits;
  j["version"] = std::string(awq_version_name(config.version));
  j["modules_to_not_convert"] =
      config.modules_to_not_convert.empty() ? Json(nullptr) : Json(config.modules_to_not_convert);
  return j.dump(2);
}

std::string awq_quant_config(const AwqConfig& config) {
  Json j;
  j["zero_point"] = config.zero_point;
  j["q_group_size"] = config.group_size;
  j["w_bit"] = config.bits;
  j["version"] = std::string(awq_version_name(config.version));
  j["modules_to_not_convert"] =
      config.modules_to_not_convert.empty() ? Json(nullptr) : Json(config.modules_to_not_convert);
  return j.dump(2);
}

AwqConfig parse_awq_config(std::string_view text, std::string_view source) {
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  LOWBIT_CHECK(j.is_object(), ErrorCode::Corrupt, "awq: '{}' is not a JSON object", source);
  if (j.contains("quant_method") && !j["quant_method"].is_null()) {
    LOWBIT_CHECK(j["quant_method"].is_string(), ErrorCode::Corrupt, "awq: '{}': quant_method is {}", source,
                 j["quant_method"].dump());
    const std::string method = quant_method_of(j);
    LOWBIT_CHECK(method == "awq", ErrorCode::Unsupported,
                 "awq: '{}': quant_method is '{}', not 'awq'; this reader takes AutoAWQ checkpoints", source, method);
  }
  AwqConfig c;
  for (const char* key : {"bits", "w_bit"}) {
    if (j.contains(key) && !j[key].is_null()) {
      const std::int64_t bits = integer_value(j[key], key, source);
      LOWBIT_CHECK(bits == kAwqBits, ErrorCode::Unsupported,
                   "awq: '{}': {} = {}; AutoAWQ's GEMM and GEMV layouts hold 4-bit codes only", source, key, bits);
      c.bits = static_cast<int>(bits);
      break;
    }
  }
  for (const char* key : {"group_size", "q_group_size"}) {
    if (j.contains(key) && !j[key].is_null()) {
      c.group_size = integer_value(j[key], key, source);
      LOWBIT_CHECK(c.group_size == -1 || c.group_size >= 1, ErrorCode::Corrupt,
                   "awq: '{}': {} = {}; expected -1 (one group per row) or a positive size", source, key, c.group_size);
      break;
    }
  }
  if (j.contains("zero_point") && !j["zero_point"].is_null()) {
    LOWBIT_CHECK(j["zero_point"].is_boolean(), ErrorCode::Corrupt,
                 "awq: '{}': zero_point is {}; expected true or false", source, j["zero_point"].dump());
    c.zero_point = j["zero_point"].get<bool>();
    LOWBIT_CHECK(c.zero_point, ErrorCode::Unsupported,
                 "awq: '{}': zero_point = false; AutoAWQ exports zero-point quantization only (its packers need zeros)",
                 source);
  }
  if (j.contains("version") && !j["version"].is_null()) {
    LOWBIT_CHECK(j["version"].is_string(), ErrorCode::Corrupt, "awq: '{}': version is {}; expected a string", source,
                 j["version"].dump());
    const std::string version = detail::ascii_lower(j["version"].get<std::string>());
    if (version == "gemm") {
      c.version = AwqVersion::Gemm;
    } else if (version == "gemv") {
      c.version = AwqVersion::Gemv;
    } else {
      LOWBIT_THROW(ErrorCode::Unsupported,
                   "awq: '{}': version '{}' is not supported; lowbit reads AutoAWQ's 'gemm' and 'gemv' layouts", source,
                   version);
    }
  }
  if (j.contains("backend") && j["backend"].is_string()) {
    const std::string backend = detail::ascii_lower(j["backend"].get<std::string>());
    LOWBIT_CHECK(backend != "llm-awq" && backend != "llm_awq", ErrorCode::Unsupported,
                 "awq: '{}': backend '{}' stores llm-awq's TinyChat layout, not AutoAWQ's; it is not supported", source,
                 backend);
  }
  if (j.contains("modules_to_not_convert") && !j["modules_to_not_convert"].is_null()) {
    const Json& m = j["modules_to_not_convert"];
    LOWBIT_CHECK(m.is_array() && std::all_of(m.begin(), m.end(), [](const Json& e) { return e.is_string(); }),
                 ErrorCode::Corrupt, "awq: '{}': modules_to_not_convert is {}; expected a list of names", source,
                 m.dump());
    for (const Json& e : m) c.modules_to_not_convert.push_back(e.get<std::string>());
  }
  return c;
}

std::optional<AwqConfig> find_awq_config(const Checkpoint& checkpoint) {
  const auto folder = detail::config_folder(checkpoint);
  const auto config = folder / "config.json";
  if (std::filesystem::exists(config)) {
    const Json j = Json::parse(read_text(config), nullptr, false);
    if (j.is_object() && j.contains("quantization_config") && quant_method_of(j["quantization_config"]) == "awq")
      return parse_awq_config(j["quantization_config"].dump(), config.string() + " quantization_config");
  }
  for (const char* name : {"quant_config.json", "quantize_config.json"}) {
    const auto path = folder / name;
    if (!std::filesystem::exists(path)) continue;
    const std::string text = read_text(path);
    if (looks_like_awq(Json::parse(text, nullptr, false))) return parse_awq_config(text, path.string());
  }
  return std::nullopt;
}

// ---- one linear ---------------------------------------------------------------------------------------

std::vector<std::pair<std::string, Tensor>> awq_linear_tensors(std::string_view module, const QuantizedTensor& q,
                                                               AwqVersion version) {
  const std::string what = fmt::format("awq {} layout: '{}'", awq_version_name(version), module);
  LOWBIT_CHECK(q.method == "affine", ErrorCode::InvalidArgument,
               "{}: the quantized tensor is '{}'; the awq layout stores affine (AWQ/RTN) tensors", what, q.method);
  const quant::AffineConfig config = quant::affine_config_from_params(q.params);
  LOWBIT_CHECK(config.mode != quant::AffineMode::Absmax, ErrorCode::Unsupported,
               "{}: the absmax grid (variant '{}') is not an AWQ grid; quantize with variant minmax", what,
               q.params.variant);
  LOWBIT_CHECK(q.params.bits == kAwqBits, ErrorCode::Unsupported,
               "{}: bits = {}; AutoAWQ's layouts hold 4-bit codes only", what, q.params.bits);
  LOWBIT_CHECK(q.params.group_size != 0, ErrorCode::Unsupported,
               "{}: one scale per tensor (group_size 0) has no awq form; use a group size or -1 (per output channel)",
               what);
  LOWBIT_CHECK(
      !q.has("g_idx"), ErrorCode::Unsupported,
      "{}: the tensor carries a g_idx (act-order); AWQ groups are consecutive input channels, write it as gptq", what);
  LOWBIT_CHECK(q.shape.rank() == 2, ErrorCode::Corrupt, "{}: shape {} is not 2-D", what, q.shape.to_string());
  quant::affine_require_whole_groups(q, what);
  const std::int64_t n = q.shape[0], k = q.shape[1];
  LOWBIT_CHECK(n % 8 == 0, ErrorCode::Unsupported,
               "{}: shape {} has n = {} outputs, not a multiple of 8 (AutoAWQ asserts out_features % 8 == 0)", what,
               q.shape.to_string(), n);
  const std::int64_t groups = quant::affine_groups_per_row(k, q.params.group_size);
  check_packed_affine_components(q, groups, what);
  const Tensor scales = f16_scales(q, what);  // [n, G]
  const Tensor codes = q.component("codes").contiguous();
  const Tensor zeros = q.component("zeros").contiguous();

  std::vector<std::pair<std::string, Tensor>> out;
  if (version == AwqVersion::Gemm) {
    out.emplace_back(key_name(module, "qweight"), awq_gemm_pack(transposed(codes)));
    out.emplace_back(key_name(module, "qzeros"), awq_gemm_pack(transposed(zeros)));
    out.emplace_back(key_name(module, "scales"), transposed(scales));
    return out;
  }
  LOWBIT_CHECK(k % 8 == 0, ErrorCode::Unsupported,
               "{}: shape {} has k = {} inputs, not a multiple of 8 (GEMV packs 8 inputs per word)", what,
               q.shape.to_string(), k);
  const std::int64_t zw = awq_gemv_zeros_width(k, q.params.group_size);
  Tensor padded_zeros = Tensor::zeros({n, zw * 8}, DType::U8);
  Tensor padded_scales = Tensor::zeros({n, zw * 8}, DType::F16);
  for (std::int64_t r = 0; r < n; ++r) {
    std::memcpy(padded_zeros.data<std::uint8_t>() + r * zw * 8, zeros.data<std::uint8_t>() + r * groups,
                static_cast<std::size_t>(groups));
    std::memcpy(static_cast<std::uint16_t*>(padded_scales.raw_data()) + r * zw * 8,
                static_cast<const std::uint16_t*>(scales.raw_data()) + r * groups,
                static_cast<std::size_t>(groups) * sizeof(std::uint16_t));
  }
  out.emplace_back(key_name(module, "qweight"), gptq_pack(codes, kAwqBits));
  out.emplace_back(key_name(module, "qzeros"), gptq_pack(padded_zeros, kAwqBits));
  out.emplace_back(key_name(module, "scales"), padded_scales);
  return out;
}

QuantizedTensor decode_awq_linear(std::string_view module, const TensorLookup& lookup, const AwqConfig& config,
                                  DType dtype, std::string_view source) {
  const std::string ctx = fmt::format("awq {}: module '{}' in '{}'", awq_version_name(config.version), module, source);
  LOWBIT_CHECK(config.bits == kAwqBits, ErrorCode::Unsupported,
               "{}: bits = {}; AutoAWQ's layouts hold 4-bit codes only", ctx, config.bits);
  const auto qweight_found = lookup(key_name(module, "qweight"));
  LOWBIT_CHECK(qweight_found.has_value(), ErrorCode::InvalidArgument, "{}: no tensor '{}'; not an AWQ module", ctx,
               key_name(module, "qweight"));
  auto require = [&](std::string_view key) {
    auto t = lookup(key_name(module, key));
    LOWBIT_CHECK(t.has_value(), ErrorCode::Corrupt,
                 "{}: tensor '{}' is missing (an awq linear has qweight, qzeros and scales)", ctx,
                 key_name(module, key));
    return *t;
  };
  auto check_words = [&](const Tensor& t, std::string_view key) {
    LOWBIT_CHECK(t.rank() == 2, ErrorCode::Corrupt, "{}: '{}' is {}; expected a 2-D matrix of packed words", ctx,
                 key_name(module, key), t.describe());
    LOWBIT_CHECK(t.dtype() == DType::I32 || t.dtype() == DType::U32, ErrorCode::Unsupported,
                 "{}: '{}' is {}; AutoAWQ packs into int32 words", ctx, key_name(module, key), t.describe());
  };
  const Tensor& qweight = *qweight_found;
  check_words(qweight, "qweight");
  const Tensor qzeros = require("qzeros");
  check_words(qzeros, "qzeros");
  const Tensor scales = require("scales");
  LOWBIT_CHECK(scales.rank() == 2, ErrorCode::Corrupt, "{}: '{}' is {}; expected a 2-D matrix", ctx,
               key_name(module, "scales"), scales.describe());
  LOWBIT_CHECK(scales.dtype() == DType::F16, ErrorCode::Unsupported, "{}: '{}' is {}; AutoAWQ stores f16 scales", ctx,
               key_name(module, "scales"), scales.describe());

  const bool gemm = config.version == AwqVersion::Gemm;
  // GEMM: qweight [k, n/8]; GEMV: qweight [n, k/8].
  const std::int64_t k = gemm ? qweight.size(0) : qweight.size(1) * 8;
  const std::int64_t n = gemm ? qweight.size(1) * 8 : qweight.size(0);
  LOWBIT_CHECK(k > 0 && n > 0, ErrorCode::Corrupt, "{}: '{}' is {}: no weights", ctx, key_name(module, "qweight"),
               qweight.describe());
  const std::int64_t gs = config.group_size == -1 ? k : config.group_size;
  LOWBIT_CHECK(k % gs == 0, ErrorCode::Corrupt,
               "{}: '{}' is {}, so k = {} inputs, not a multiple of group_size = {} (AutoAWQ asserts whole groups)",
               ctx, key_name(module, "qweight"), qweight.describe(), k, gs);
  const std::int64_t groups = k / gs;

  Tensor codes, zeros, scales_out;
  if (gemm) {
    LOWBIT_CHECK(qzeros.size(0) == groups && qzeros.size(1) == n / 8, ErrorCode::Corrupt,
                 "{}: '{}' is {}; expected [{}, {}] (k / group_size = {} / {} groups, n / 8 words)", ctx,
                 key_name(module, "qzeros"), qzeros.describe(), groups, n / 8, k, gs);
    LOWBIT_CHECK(scales.size(0) == groups && scales.size(1) == n, ErrorCode::Corrupt,
                 "{}: '{}' is {}; expected [{}, {}] (groups, n)", ctx, key_name(module, "scales"), scales.describe(),
                 groups, n);
    codes = transposed(awq_gemm_unpack(qweight));
    zeros = transposed(awq_gemm_unpack(qzeros));
    scales_out = transposed(scales);
  } else {
    const std::int64_t zw = awq_gemv_zeros_width(k, config.group_size);
    LOWBIT_CHECK(qzeros.size(0) == n && qzeros.size(1) == zw, ErrorCode::Corrupt,
                 "{}: '{}' is {}; expected [{}, {}] (n, calculate_zeros_width(k = {}, group_size = {}))", ctx,
                 key_name(module, "qzeros"), qzeros.describe(), n, zw, k, gs);
    LOWBIT_CHECK(scales.size(0) == n && scales.size(1) == zw * 8, ErrorCode::Corrupt,
                 "{}: '{}' is {}; expected [{}, {}] (n, 8 * zeros width)", ctx, key_name(module, "scales"),
                 scales.describe(), n, zw * 8);
    codes = gptq_unpack(qweight, kAwqBits);
    const Tensor all_zeros = gptq_unpack(qzeros, kAwqBits);  // [n, 8 zw]; columns past G are padding
    zeros = all_zeros.slice(1, 0, groups).contiguous();
    scales_out = scales.contiguous().slice(1, 0, groups).contiguous();
  }

  quant::AffineConfig affine;
  affine.bits = kAwqBits;
  affine.group_size = config.group_size;
  affine.mode = quant::AffineMode::Asymmetric;
  affine.scale_dtype = DType::F16;
  QuantizedTensor q;
  q.method = "affine";
  q.shape = Shape{n, k};
  q.dtype = dtype;
  q.params = quant::affine_params_from_config(affine);
  q.components.emplace("codes", std::move(codes));
  q.components.emplace("scales", std::move(scales_out));
  q.components.emplace("zeros", std::move(zeros));
  return q;
}

QuantizedTensor read_awq_linear(const Checkpoint& checkpoint, std::string_view module, const AwqConfig& config) {
  const TensorLookup lookup = [&checkpoint](const std::string& name) -> std::optional<Tensor> {
    if (!checkpoint.contains(name)) return std::nullopt;
    return checkpoint.tensor(name);
  };
  return decode_awq_linear(module, lookup, config, packed_checkpoint_dtype(checkpoint), checkpoint.path().string());
}

FormatWriter awq_format_writer(AwqVersion version) {
  FormatWriter w;
  w.name = version == AwqVersion::Gemm ? "awq" : "awq-gemv";
  w.methods = {"affine", "awq"};
  w.summary =
      version == AwqVersion::Gemm
          ? "AutoAWQ GEMM layout: qweight, qzeros, scales + config.json quantization_config (docs/formats.md#awq)"
          : "AutoAWQ GEMV layout (docs/formats.md#awq)";
  w.add = [version](CheckpointWriter& out, const std::string& name, const QuantizedTensor& q) {
    const auto tensors = awq_linear_tensors(module_of(name), q, version);
    out.add_metadata("format", "pt");  // transformers' loader checks it; set before this weight's shard is written
    for (const auto& [n, t] : tensors) out.add(n, t);
  };
  w.config_json = [version](const std::filesystem::path& config, const std::vector<QuantizedEntry>& entries) {
    const AwqConfig c = config_of(entries, version);
    Json j = Json::parse(read_text(config), nullptr, false);
    LOWBIT_CHECK(j.is_object(), ErrorCode::Corrupt, "awq layout: '{}' is not a JSON object", config.string());
    j["quantization_config"] = Json::parse(awq_quantization_config(c));
    return j.dump(2) + "\n";
  };
  w.finish = [version](CheckpointWriter& out, const std::vector<QuantizedEntry>& entries) {
    out.add_text_file("quant_config.json", awq_quant_config(config_of(entries, version)) + "\n");
    out.add_metadata("format", "pt");
  };
  return w;
}

bool is_awq_checkpoint(const Checkpoint& checkpoint) {
  return !gptq_modules(checkpoint).empty() && find_awq_config(checkpoint).has_value();
}

QuantizedCheckpoint open_awq(const Checkpoint& checkpoint) {
  const std::optional<AwqConfig> config = find_awq_config(checkpoint);
  LOWBIT_CHECK(config.has_value(), ErrorCode::InvalidArgument,
               "awq: '{}' has no AWQ config (config.json quantization_config with quant_method 'awq', or "
               "quant_config.json) beside its weights",
               checkpoint.path().string());
  QuantizedCheckpoint out;
  out.format = config->version == AwqVersion::Gemm ? "awq" : "awq-gemv";
  std::map<std::string, std::string> module_of_weight;
  for (const std::string& module : gptq_modules(checkpoint)) {
    LOWBIT_CHECK(!checkpoint.contains(key_name(module, "g_idx")), ErrorCode::Unsupported,
                 "awq: '{}': the config names quant_method 'awq', but '{}' is a GPTQ tensor (AWQ layouts have no "
                 "g_idx); the tensors and the config disagree",
                 checkpoint.path().string(), key_name(module, "g_idx"));
    const std::string weight = module.empty() ? "weight" : module + ".weight";
    module_of_weight[weight] = module;
    out.weights.push_back(weight);
    for (const char* key : {"qweight", "qzeros", "scales"}) {
      const std::string name = key_name(module, key);
      if (checkpoint.contains(name)) out.parts.insert(name);
    }
  }
  const DType dtype = packed_checkpoint_dtype(checkpoint);
  out.load = [&checkpoint, module_of_weight, config = *config, dtype](std::string_view weight) {
    const auto it = module_of_weight.find(std::string(weight));
    LOWBIT_CHECK(it != module_of_weight.end(), ErrorCode::InvalidArgument,
                 "awq: '{}' holds no AWQ module for weight '{}'", checkpoint.path().string(), weight);
    const TensorLookup lookup = [&checkpoint](const std::string& name) -> std::optional<Tensor> {
      if (!checkpoint.contains(name)) return std::nullopt;
      return checkpoint.tensor(name);
    };
    return decode_awq_linear(it->second, lookup, config, dtype, checkpoint.path().string());
  };
  return out;
}

}  // namespace lowbit::io
