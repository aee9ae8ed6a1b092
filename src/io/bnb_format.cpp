#include "lowbit/io/formats/bnb.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

namespace lowbit::io {
namespace {

using quant::Nf4Type;
using quant::QuantizedTensor;

constexpr std::string_view kBlobLeaf = "weight.quant_state.bitsandbytes__";
// QuantState.valid_qs_keys: every field name bitsandbytes' from_dict accepts.
constexpr std::string_view kBlobFields[] = {"quant_type", "blocksize", "dtype", "shape", "nested_blocksize",
                                            "nested_dtype", "nested_offset"};
// quantize_blockwise's block sizes (the second level of double quantization).
constexpr std::int64_t kNestedBlockSizes[] = {4096, 2048, 1024, 512, 256, 128, 64, 32};

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

std::string_view type_name(Nf4Type type) { return type == Nf4Type::NF4 ? "nf4" : "fp4"; }

std::string_view torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::F32: return "float32";
    default: return "";
  }
}

std::optional<DType> dtype_from_torch_name(std::string_view name) {
  if (name == "float16") return DType::F16;
  if (name == "bfloat16") return DType::BF16;
  if (name == "float32") return DType::F32;
  return std::nullopt;
}

// What load_bnb_4bit needs of a SafetensorsFile or a Checkpoint.
struct Source {
  std::string label;  // the file or checkpoint path, for messages
  std::function<bool(const std::string&)> contains;
  std::function<Tensor(const std::string&)> tensor;
};

Source source_of(const SafetensorsFile& file) {
  return {file.path().string(), [&file](const std::string& n) { return file.contains(n); },
          [&file](const std::string& n) { return file.tensor(n); }};
}
Source source_of(const Checkpoint& checkpoint) {
  return {checkpoint.path().string(), [&checkpoint](const std::string& n) { return checkpoint.contains(n); },
          [&checkpoint](const std::string& n) { return checkpoint.tensor(n); }};
}

std::optional<std::string> blob_key(const Source& src, std::string_view prefix, const char* what) {
  const std::string nf4 = bnb_4bit_key(prefix, std::string(kBlobLeaf) + "nf4");
  const std::string fp4 = bnb_4bit_key(prefix, std::string(kBlobLeaf) + "fp4");
  const bool has_nf4 = src.contains(nf4), has_fp4 = src.contains(fp4);
  LOWBIT_CHECK(!(has_nf4 && has_fp4), ErrorCode::Corrupt, "{}: '{}': layer '{}' has both '{}' and '{}'", what,
               src.label, prefix, nf4, fp4);
  if (has_nf4) return nf4;
  if (has_fp4) return fp4;
  return std::nullopt;
}

// A contiguous 1-D view of all of t's bytes, whatever its dtype and shape.
Tensor bytes_view(const Tensor& t) {
  const Tensor c = t.contiguous();
  return Tensor::from_storage(c.storage(), c.byte_offset(), {static_cast<std::int64_t>(c.nbytes())}, DType::U8);
}

Tensor flat(const Tensor& t) { return t.contiguous().reshape({t.numel()}); }

QuantizedTensor load_impl(const Source& src, std::string_view prefix) {
  constexpr const char* kOp = "load_bnb_4bit";
  const std::optional<std::string> key = blob_key(src, prefix, kOp);
  LOWBIT_CHECK(key.has_value(), ErrorCode::InvalidArgument,
               "{}: '{}' has no 4-bit layer '{}': neither '{}nf4' nor '{}fp4' exists", kOp, src.label, prefix,
               bnb_4bit_key(prefix, kBlobLeaf), bnb_4bit_key(prefix, kBlobLeaf));
  const auto need = [&](std::string_view leaf) -> Tensor {
    const std::string name = bnb_4bit_key(prefix, leaf);
    LOWBIT_CHECK(src.contains(name), ErrorCode::Corrupt, "{}: '{}': layer '{}' has '{}' but no '{}'", kOp, src.label,
                 prefix, *key, name);
    return src.tensor(name);
  };

  // ---- the JSON blob ----
  const Tensor blob = src.tensor(*key);
  LOWBIT_CHECK(blob.dtype() == DType::U8 && blob.rank() == 1, ErrorCode::Corrupt,
               "{}: '{}': '{}' is {}; bitsandbytes stores its quant_state JSON as a u8 vector", kOp, src.label, *key,
               blob.describe());
  const Tensor blob_bytes = blob.contiguous();
  const std::string_view text(static_cast<const char*>(blob_bytes.raw_data()), blob_bytes.nbytes());
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  LOWBIT_CHECK(j.is_object(), ErrorCode::Corrupt,
               "{}: '{}': '{}' is not a JSON object (bitsandbytes writes NaN offsets as a bare NaN, which is not "
               "JSON): '{}'",
               kOp, src.label, *key, text.substr(0, 200));
  for (const auto& [field, value] : j.items()) {
    const bool known = std::find(std::begin(kBlobFields), std::end(kBlobFields), field) != std::end(kBlobFields);
    LOWBIT_CHECK(known, ErrorCode::Corrupt,
                 "{}: '{}': '{}' has the field '{}', which bitsandbytes' QuantState.from_dict does not accept "
                 "(known: quant_type, blocksize, dtype, shape, nested_blocksize, nested_dtype, nested_offset)",
                 kOp, src.label, *key, field);
  }
  const auto field = [&](const char* name) -> const nlohmann::json& {
    const auto it = j.find(name);
    LOWBIT_CHECK(it != j.end(), ErrorCode::Corrupt, "{}: '{}': '{}' has no field '{}': {}", kOp, src.label, *key, name,
                 text.substr(0, 200));
    return *it;
  };
  const auto integer = [&](const char* name) -> std::int64_t {
    const nlohmann::json& v = field(name);
    LOWBIT_CHECK(v.is_number_integer(), ErrorCode::Corrupt, "{}: '{}': '{}' field '{}' is {}; expected an integer",
                 kOp, src.label, *key, name, v.dump());
    return v.get<std::int64_t>();
  };
  const auto string = [&](const char* name) -> std::string {
    const nlohmann::json& v = field(name);
    LOWBIT_CHECK(v.is_string(), ErrorCode::Corrupt, "{}: '{}': '{}' field '{}' is {}; expected a string", kOp,
                 src.label, *key, name, v.dump());
    return v.get<std::string>();
  };

  const std::string quant_type = string("quant_type");
  LOWBIT_CHECK(quant_type == "nf4" || quant_type == "fp4", ErrorCode::Corrupt,
               "{}: '{}': '{}' has quant_type '{}'; expected \"nf4\" or \"fp4\"", kOp, src.label, *key, quant_type);
  LOWBIT_CHECK(key->ends_with(quant_type), ErrorCode::Corrupt, "{}: '{}': '{}' says quant_type '{}'", kOp, src.label,
               *key, quant_type);
  const Nf4Type type = quant_type == "nf4" ? Nf4Type::NF4 : Nf4Type::FP4;

  const std::int64_t block_size = integer("blocksize");
  LOWBIT_CHECK(std::find(std::begin(quant::kNf4BlockSizes), std::end(quant::kNf4BlockSizes), block_size) !=
                   std::end(quant::kNf4BlockSizes),
               ErrorCode::Unsupported, "{}: '{}': '{}' has blocksize {}; bitsandbytes uses 32, 64, ..., 4096", kOp,
               src.label, *key, block_size);

  const std::string dtype_text = string("dtype");
  const std::optional<DType> dtype = dtype_from_torch_name(dtype_text);
  LOWBIT_CHECK(dtype.has_value(), ErrorCode::Unsupported,
               "{}: '{}': '{}' has dtype '{}'; bitsandbytes quantizes float16, bfloat16 and float32 weights", kOp,
               src.label, *key, dtype_text);

  const nlohmann::json& shape_json = field("shape");
  LOWBIT_CHECK(shape_json.is_array(), ErrorCode::Corrupt, "{}: '{}': '{}' has shape {}; expected a list of sizes", kOp,
               src.label, *key, shape_json.dump());
  LOWBIT_CHECK(shape_json.size() <= static_cast<std::size_t>(kMaxRank), ErrorCode::Unsupported,
               "{}: '{}': '{}' has shape {} of rank {}; lowbit tensors have rank <= {}", kOp, src.label, *key,
               shape_json.dump(), shape_json.size(), kMaxRank);
  std::vector<std::int64_t> dims;
  for (const auto& d : shape_json) {
    LOWBIT_CHECK(d.is_number_integer() && d.get<std::int64_t>() >= 0, ErrorCode::Corrupt,
                 "{}: '{}': '{}' has shape {}; expected non-negative integer sizes", kOp, src.label, *key,
                 shape_json.dump());
    dims.push_back(d.get<std::int64_t>());
  }
  const Shape shape(dims);
  const std::int64_t n = shape.numel();  // throws Numerical on overflow
  LOWBIT_CHECK(n > 0, ErrorCode::Corrupt, "{}: '{}': '{}' has shape {} with no elements", kOp, src.label, *key,
               shape.to_string());
  const std::int64_t nb = ceil_div(n, block_size);

  // ---- the tensors ----
  QuantizedTensor q;
  q.method = quant_type;
  q.shape = shape;
  q.dtype = *dtype;
  q.params.bits = 4;
  q.params.block_size = block_size;
  q.params.variant = quant_type;

  const std::string weight_name = bnb_4bit_key(prefix, "weight");
  const Tensor weight = need("weight");
  LOWBIT_CHECK(!is_packed(weight.dtype()), ErrorCode::Corrupt, "{}: '{}': '{}' is {}", kOp, src.label, weight_name,
               weight.describe());
  LOWBIT_CHECK(static_cast<std::int64_t>(weight.nbytes()) == ceil_div(n, 2), ErrorCode::Corrupt,
               "{}: '{}': '{}' is {} = {} bytes; shape {} needs ceil({} / 2) = {} bytes of packed codes", kOp,
               src.label, weight_name, weight.describe(), weight.nbytes(), shape.to_string(), n, ceil_div(n, 2));
  q.components.emplace("codes", bytes_view(weight));

  const auto expect = [&](std::string_view leaf, const Tensor& t, DType want, std::int64_t count) {
    LOWBIT_CHECK(t.dtype() == want && t.numel() == count, ErrorCode::Corrupt,
                 "{}: '{}': '{}' is {}; shape {} with blocksize {} needs {} with {} elements", kOp, src.label,
                 bnb_4bit_key(prefix, leaf), t.describe(), shape.to_string(), block_size, dtype_name(want), count);
  };

  const Tensor quant_map = need("weight.quant_map");
  expect("weight.quant_map", quant_map, DType::F32, 16);
  const Tensor map = flat(quant_map);
  const std::span<const float, 16> table = quant::nf4_quant_map(type);
  for (int i = 0; i < 16; ++i) {
    const float stored = map.data<float>()[i];
    LOWBIT_CHECK(stored == table[static_cast<std::size_t>(i)], ErrorCode::Unsupported,
                 "{}: '{}': '{}' entry {} is {} where bitsandbytes' {} table has {}; a custom quant_map is not "
                 "supported (bitsandbytes' CUDA dequantize ignores it while its batch-1 kernel uses it)",
                 kOp, src.label, bnb_4bit_key(prefix, "weight.quant_map"), i, stored, quant_type,
                 table[static_cast<std::size_t>(i)]);
  }
  q.components.emplace("quant_map", map);

  const bool nested = j.contains("nested_blocksize") || j.contains("nested_dtype") || j.contains("nested_offset");
  const std::string nested_absmax_name = bnb_4bit_key(prefix, "weight.nested_absmax");
  const std::string nested_map_name = bnb_4bit_key(prefix, "weight.nested_quant_map");
  const Tensor absmax = need("weight.absmax");
  if (!nested) {
    LOWBIT_CHECK(!src.contains(nested_absmax_name) && !src.contains(nested_map_name), ErrorCode::Corrupt,
                 "{}: '{}': layer '{}' has nested tensors but '{}' has no nested_* fields", kOp, src.label, prefix,
                 *key);
    expect("weight.absmax", absmax, DType::F32, nb);
    q.components.emplace("absmax", flat(absmax));
    return q;
  }

  const std::int64_t nested_block_size = integer("nested_blocksize");
  LOWBIT_CHECK(std::find(std::begin(kNestedBlockSizes), std::end(kNestedBlockSizes), nested_block_size) !=
                   std::end(kNestedBlockSizes),
               ErrorCode::Unsupported,
               "{}: '{}': '{}' has nested_blocksize {}; bitsandbytes writes 256 (its blockwise 8-bit sizes are "
               "32 ... 4096)",
               kOp, src.label, *key, nested_block_size);
  const std::string nested_dtype = string("nested_dtype");
  LOWBIT_CHECK(nested_dtype == "float32", ErrorCode::Unsupported,
               "{}: '{}': '{}' has nested_dtype '{}'; bitsandbytes double-quantizes float32 absmax only", kOp,
               src.label, *key, nested_dtype);
  const nlohmann::json& offset_json = field("nested_offset");
  LOWBIT_CHECK(offset_json.is_number(), ErrorCode::Corrupt, "{}: '{}': '{}' has nested_offset {}; expected a number",
               kOp, src.label, *key, offset_json.dump());
  const float offset = static_cast<float>(offset_json.get<double>());  // torch.tensor(float(...)): fp32

  expect("weight.absmax", absmax, DType::U8, nb);
  const Tensor nested_absmax = need("weight.nested_absmax");
  expect("weight.nested_absmax", nested_absmax, DType::F32, ceil_div(nb, nested_block_size));
  const Tensor nested_map = need("weight.nested_quant_map");
  expect("weight.nested_quant_map", nested_map, DType::F32, 256);

  q.params.double_quant = true;
  q.params.nested_block_size = nested_block_size;
  q.components.emplace("absmax", flat(absmax));
  q.components.emplace("nested_absmax", flat(nested_absmax));
  q.components.emplace("nested_quant_map", flat(nested_map));
  Tensor offset_tensor = Tensor::empty({1}, DType::F32);
  offset_tensor.data<float>()[0] = offset;
  q.components.emplace("nested_offset", std::move(offset_tensor));
  return q;
}

}  // namespace

std::string bnb_4bit_key(std::string_view prefix, std::string_view leaf) {
  if (prefix.empty()) return std::string(leaf);
  if (prefix.back() == '.') return fmt::format("{}{}", prefix, leaf);
  return fmt::format("{}.{}", prefix, leaf);
}

std::string python_float_repr(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific);  // shortest
  const std::string_view sci(buf, static_cast<std::size_t>(res.ptr - buf));
  // sci = [-]d[.ddd]e(+|-)XX
  const std::size_t e_pos = sci.find('e');
  std::string_view mantissa = sci.substr(0, e_pos);
  const int exponent = std::stoi(std::string(sci.substr(e_pos + 1)));
  std::string sign;
  if (!mantissa.empty() && mantissa[0] == '-') {
    sign = "-";
    mantissa.remove_prefix(1);
  }
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits += c;
  }
  if (exponent >= -4 && exponent < 16) {
    std::string out;
    if (exponent >= 0) {
      const std::size_t int_digits = static_cast<std::size_t>(exponent) + 1;
      if (digits.size() <= int_digits) {
        out = digits + std::string(int_digits - digits.size(), '0') + ".0";
      } else {
        out = digits.substr(0, int_digits) + "." + digits.substr(int_digits);
      }
    } else {
      out = "0." + std::string(static_cast<std::size_t>(-exponent - 1), '0') + digits;
    }
    return sign + out;
  }
  std::string out = digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  return fmt::format("{}{}e{}{:02d}", sign, out, exponent < 0 ? '-' : '+', std::abs(exponent));
}

std::string bnb_4bit_quant_state_json(const QuantizedTensor& q) {
  quant::validate_nf4(q, "bnb_4bit_quant_state_json");
  const std::string_view dtype = torch_dtype_name(q.dtype);
  LOWBIT_CHECK(!dtype.empty(), ErrorCode::InvalidArgument,
               "bnb_4bit_quant_state_json: {} tensor records dtype {}; bitsandbytes stores float16, bfloat16 or "
               "float32 weights",
               q.method, dtype_name(q.dtype));
  std::string shape;
  for (const std::int64_t d : q.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
  std::string out = fmt::format(R"({{"quant_type": "{}", "blocksize": {}, "dtype": "{}", "shape": [{}])", q.method,
                                q.params.block_size, dtype, shape);
  if (q.params.double_quant) {
    const float offset = q.component("nested_offset").contiguous().data<float>()[0];
    out += fmt::format(R"(, "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {})",
                       q.params.nested_block_size, python_float_repr(static_cast<double>(offset)));
  }
  return out + "}";
}

std::vector<std::pair<std::string, Tensor>> bnb_4bit_tensors(std::string_view prefix, const QuantizedTensor& q,
                                                            const Tensor& bias, DType quant_storage) {
  quant::validate_nf4(q, "bnb_4bit_tensors");
  const std::string json = bnb_4bit_quant_state_json(q);
  LOWBIT_CHECK(!is_packed(quant_storage), ErrorCode::InvalidArgument,
               "bnb_4bit_tensors: quant_storage {} is a packed dtype; bitsandbytes stores whole-byte types",
               dtype_name(quant_storage));
  const Tensor codes = q.component("codes").contiguous();
  const std::int64_t bytes = codes.numel();
  const auto itemsize = static_cast<std::int64_t>(dtype_size(quant_storage));
  LOWBIT_CHECK(bytes % itemsize == 0, ErrorCode::InvalidArgument,
               "bnb_4bit_tensors: {} bytes of packed codes are not a whole number of {} elements; bitsandbytes "
               "would allocate ({} + 1) / {} = {} of them and lose the tail; use quant_storage u8",
               bytes, dtype_name(quant_storage), q.shape.numel(), 2 * itemsize,
               (q.shape.numel() + 1) / (2 * itemsize));

  std::vector<std::pair<std::string, Tensor>> out;
  out.emplace_back(bnb_4bit_key(prefix, "weight"),
                   Tensor::from_storage(codes.storage(), codes.byte_offset(), {bytes / itemsize, 1}, quant_storage));
  if (bias.defined()) {
    LOWBIT_CHECK(q.shape.rank() == 2 && bias.rank() == 1 && bias.size(0) == q.shape[0], ErrorCode::ShapeMismatch,
                 "bnb_4bit_tensors: bias {} does not match the weight {}; expected [{}]", bias.describe(),
                 q.shape.to_string(), q.shape.rank() >= 1 ? q.shape[0] : 0);
    out.emplace_back(bnb_4bit_key(prefix, "bias"), bias);
  }
  out.emplace_back(bnb_4bit_key(prefix, "weight.absmax"), q.component("absmax"));
  out.emplace_back(bnb_4bit_key(prefix, "weight.quant_map"), q.component("quant_map"));
  if (q.params.double_quant) {
    out.emplace_back(bnb_4bit_key(prefix, "weight.nested_absmax"), q.component("nested_absmax"));
    out.emplace_back(bnb_4bit_key(prefix, "weight.nested_quant_map"), q.component("nested_quant_map"));
  }
  Tensor blob = Tensor::empty({static_cast<std::int64_t>(json.size())}, DType::U8);
  std::memcpy(blob.raw_data(), json.data(), json.size());
  out.emplace_back(bnb_4bit_key(prefix, std::string(kBlobLeaf) + q.method), std::move(blob));
  return out;
}

bool is_bnb_4bit_layer(const SafetensorsFile& file, std::string_view prefix) {
  return blob_key(source_of(file), prefix, "is_bnb_4bit_layer").has_value();
}
bool is_bnb_4bit_layer(const Checkpoint& checkpoint, std::string_view prefix) {
  return blob_key(source_of(checkpoint), prefix, "is_bnb_4bit_layer").has_value();
}

std::vector<std::string> bnb_4bit_layers(const Checkpoint& checkpoint) {
  std::set<std::string> layers;
  for (const std::string& name : checkpoint.names()) {
    for (const std::string_view type : {"nf4", "fp4"}) {
      const std::string leaf = std::string(kBlobLeaf) + std::string(type);
      if (name == leaf) layers.insert("");
      if (name.size() > leaf.size() && name.ends_with("." + leaf)) {
        layers.insert(name.substr(0, name.size() - leaf.size() - 1));
      }
    }
  }
  return {layers.begin(), layers.end()};
}

QuantizedTensor load_bnb_4bit(const SafetensorsFile& file, std::string_view prefix) {
  return load_impl(source_of(file), prefix);
}
QuantizedTensor load_bnb_4bit(const Checkpoint& checkpoint, std::string_view prefix) {
  return load_impl(source_of(checkpoint), prefix);
}

std::string bnb_4bit_quantization_config_json(const Bnb4bitQuantizationConfig& config) {
  nlohmann::json j;  // std::map underneath: keys come out sorted, as json.dumps(sort_keys=True)
  j["_load_in_4bit"] = true;
  j["_load_in_8bit"] = false;
  j["bnb_4bit_compute_dtype"] = config.compute_dtype;
  j["bnb_4bit_quant_storage"] = config.quant_storage;
  j["bnb_4bit_quant_type"] = std::string(type_name(config.type));
  j["bnb_4bit_use_double_quant"] = config.double_quant;
  j["llm_int8_enable_fp32_cpu_offload"] = false;
  j["llm_int8_has_fp16_weight"] = false;
  j["llm_int8_skip_modules"] = config.skip_modules.empty() ? nlohmann::json(nullptr) : nlohmann::json(config.skip_modules);
  j["llm_int8_threshold"] = 6.0;
  j["load_in_4bit"] = true;
  j["load_in_8bit"] = false;
  j["quant_method"] = "bitsandbytes";
  return j.dump(2);
}

}  // namespace lowbit::io
