// HQQ checkpoints (include/lowbit/io/formats/hqq.hpp): hqq's encode_safetensor_type / decode rules.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "lowbit/io/formats/hqq.hpp"
#include "lowbit/io/atomic_file.hpp"

namespace lowbit::io {
namespace {

std::string key_name(std::string_view layer, std::string_view key) {
  return layer.empty() ? std::string(key) : fmt::format("{}.{}", layer, key);
}

// encode_safetensor_type: bool -> u8 [], int -> i32 [], str -> u8 [len] of the character codes.
Tensor encode_bool(bool v) { return Tensor::from_values<std::uint8_t>({static_cast<std::uint8_t>(v ? 1 : 0)}, Shape{}); }
Tensor encode_int(std::int64_t v) { return Tensor::from_values<std::int32_t>({static_cast<std::int32_t>(v)}, Shape{}); }
Tensor encode_string(std::string_view s) {
  std::vector<std::uint8_t> codes(s.begin(), s.end());
  return Tensor::from_values<std::uint8_t>(std::span<const std::uint8_t>(codes), {static_cast<std::int64_t>(codes.size())});
}

// torch dtype names (str(torch.float16)) of the dtypes hqq stores.
std::string_view torch_dtype_name(DType t) {
  switch (t) {
    case DType::F16: return "torch.float16";
    case DType::BF16: return "torch.bfloat16";
    case DType::F32: return "torch.float32";
    case DType::U8: return "torch.uint8";
    case DType::I32: return "torch.int32";
    default: return "";
  }
}
std::optional<DType> dtype_from_torch_name(std::string_view name) {
  for (const DType t : {DType::F16, DType::BF16, DType::F32, DType::U8, DType::I32}) {
    if (torch_dtype_name(t) == name) return t;
  }
  if (name == "torch.half") return DType::F16;
  if (name == "torch.float") return DType::F32;
  if (name == "torch.int") return DType::I32;
  return std::nullopt;
}

// W_q bytes viewed as another dtype along the last dimension (torch's Tensor.view(dtype)).
Tensor reinterpret_rows(const Tensor& t, DType to, std::string_view what) {
  const Tensor c = t.contiguous();
  const std::size_t from_size = dtype_size(c.dtype()), to_size = dtype_size(to);
  const std::int64_t row_bytes = c.size(-1) * static_cast<std::int64_t>(from_size);
  LOWBIT_CHECK(row_bytes % static_cast<std::int64_t>(to_size) == 0, ErrorCode::InvalidArgument,
               "{}: W_q {} rows of {} bytes cannot be viewed as {}", what, c.describe(), row_bytes, dtype_name(to));
  Tensor out = Tensor::empty({c.size(0), row_bytes / static_cast<std::int64_t>(to_size)}, to);
  std::memcpy(out.raw_data(), c.raw_data(), c.nbytes());
  return out;
}

class Decoder {
 public:
  Decoder(std::string_view layer, const TensorLookup& lookup, std::string_view source)
      : layer_(layer), lookup_(lookup),
        context_(fmt::format("hqq: layer '{}' in '{}'", layer.empty() ? "<root>" : layer, source)) {}

  const std::string& context() const { return context_; }

  std::optional<Tensor> find(std::string_view key) const { return lookup_(key_name(layer_, key)); }

  Tensor require(std::string_view key) const {
    auto t = find(key);
    LOWBIT_CHECK(t.has_value(), ErrorCode::Corrupt, "{}: tensor '{}' is missing (HQQLinear.state_dict() writes it)",
                 context_, key_name(layer_, key));
    return *t;
  }

  // A 0-dim (or one-element) integer tensor, decoded as hqq does with int(t.item()).
  std::int64_t integer(std::string_view key) const {
    const Tensor t = require(key);
    LOWBIT_CHECK(t.numel() == 1 && !is_floating(t.dtype()) && t.dtype() != DType::U4, ErrorCode::Corrupt,
                 "{}: '{}' is {}; expected one integer", context_, key_name(layer_, key), t.describe());
    return static_cast<std::int64_t>(t.contiguous().reshape({1}).get({0}));
  }

  bool flag(std::string_view key, bool if_missing) const {
    if (!find(key)) return if_missing;
    const std::int64_t v = integer(key);
    LOWBIT_CHECK(v == 0 || v == 1, ErrorCode::Corrupt, "{}: '{}' = {}; expected 0 or 1", context_, key_name(layer_, key), v);
    return v == 1;
  }

  std::string string(std::string_view key) const {
    const Tensor t = require(key);
    LOWBIT_CHECK(t.dtype() == DType::U8 && t.rank() == 1, ErrorCode::Corrupt,
                 "{}: '{}' is {}; expected the u8 character codes of a string", context_, key_name(layer_, key),
                 t.describe());
    const Tensor c = t.contiguous();
    return std::string(reinterpret_cast<const char*>(c.raw_data()), static_cast<std::size_t>(c.numel()));
  }

 private:
  std::string_view layer_;
  const TensorLookup& lookup_;
  std::string context_;
};

std::string read_text(const std::filesystem::path& path) { return read_text_file(path, "hqq"); }

nlohmann::ordered_json weight_quant_params(int bits, std::int64_t group_size, int axis) {
  // BaseQuantizeConfig's dict, keys in the order json.dump(sort_keys) gives them (transformers sorts).
  nlohmann::ordered_json w;
  w["axis"] = axis;
  w["channel_wise"] = true;
  w["group_size"] = group_size;
  w["nbits"] = bits;
  w["optimize"] = true;
  w["round_zero"] = bits == 4;
  w["view_as_float"] = false;
  return w;
}

nlohmann::ordered_json base_quantize_config(int bits, std::int64_t group_size, int axis) {
  nlohmann::ordered_json q;
  q["offload_meta"] = false;
  q["scale_quant_params"] = nullptr;
  q["weight_quant_params"] = weight_quant_params(bits, group_size, axis);
  q["zero_quant_params"] = nullptr;
  return q;
}

std::string strip_weight(const std::string& name) {
  constexpr std::string_view suffix = ".weight";
  return name.ends_with(suffix) ? name.substr(0, name.size() - suffix.size()) : name;
}

}  // namespace

std::vector<std::pair<std::string, Tensor>> hqq_state_dict(std::string_view layer, const HqqLinear& linear) {
  const quant::QuantizedTensor& q = linear.weight;
  quant::hqq_codes(q);  // validates every component against the params (throws naming what disagrees)
  const quant::HqqPacking packing = quant::hqq_packing_for_bits(q.params.bits);
  const DType compute = q.component("scale").dtype();
  Tensor w_q = q.component("W_q");
  if (linear.view_as_float) w_q = reinterpret_rows(w_q, compute, "hqq_state_dict");
  const std::int64_t shape[] = {q.shape[0], q.shape[1]};

  std::vector<std::pair<std::string, Tensor>> out;
  auto put = [&](std::string_view key, Tensor t) { out.emplace_back(key_name(layer, key), std::move(t)); };
  put("W_q", w_q);
  put("nbits", encode_int(q.params.bits));
  put("group_size", encode_int(q.params.group_size));
  put("shape", Tensor::from_values<std::int64_t>(std::span<const std::int64_t>(shape), {2}));
  put("scale", q.component("scale"));
  put("zero", q.component("zero"));
  put("axis", encode_int(q.params.axis));
  put("packing", encode_string(quant::hqq_packing_name(packing)));
  put("unpack_view_dtype", encode_string(torch_dtype_name(quant::hqq_packing_dtype(packing))));
  put("view_as_float", encode_bool(linear.view_as_float));
  put("quant_scale", encode_bool(false));
  put("quant_zero", encode_bool(false));
  put("compute_dtype", encode_string(torch_dtype_name(compute)));
  if (linear.bias.defined()) put("bias", linear.bias);
  put("offload_meta", encode_bool(false));
  put("encoded_state_dict", encode_bool(true));
  put("stores_quant_config", encode_bool(true));
  put("channel_wise", encode_bool(linear.channel_wise));
  put("optimize", encode_bool(linear.optimize));
  put("round_zero", encode_bool(linear.round_zero));
  return out;
}

HqqLinear decode_hqq_linear(std::string_view layer, const TensorLookup& lookup, std::string_view source) {
  const Decoder d(layer, lookup, source);
  const std::string& ctx = d.context();
  auto w_q_found = d.find("W_q");
  LOWBIT_CHECK(w_q_found.has_value(), ErrorCode::InvalidArgument, "{}: no tensor '{}'; not an HQQ layer", ctx,
               key_name(layer, "W_q"));
  for (const char* legacy : {"zero_scale", "zero_q", "scale_q", "meta_zero", "meta_scale", "meta"}) {
    LOWBIT_CHECK(!d.find(legacy), ErrorCode::Unsupported,
                 "{}: holds '{}', hqq's legacy quantized or offloaded meta-data; only the plain encoded form "
                 "(fp scale and zero) is supported",
                 ctx, key_name(layer, legacy));
  }
  LOWBIT_CHECK(d.flag("encoded_state_dict", false), ErrorCode::Unsupported,
               "{}: encoded_state_dict is missing or 0; only HQQLinear's encoded (safetensors) state_dict is supported",
               ctx);
  for (const char* f : {"quant_scale", "quant_zero", "offload_meta"}) {
    LOWBIT_CHECK(!d.flag(f, false), ErrorCode::Unsupported,
                 "{}: {} = 1 (legacy meta-data quantization/offloading, ignored since hqq 0.2.2); unsupported", ctx, f);
  }
  const Tensor nbits_t = d.require("nbits");
  LOWBIT_CHECK(!is_floating(nbits_t.dtype()), ErrorCode::Unsupported,
               "{}: nbits is stored as {} ({}): hqq's 1.58-bit (ternary) layers are not supported", ctx,
               nbits_t.describe(), nbits_t.numel() == 1 ? nbits_t.contiguous().reshape({1}).get({0}) : 0.0);
  const std::int64_t bits = d.integer("nbits");
  LOWBIT_CHECK(std::find(std::begin(quant::kHqqBits), std::end(quant::kHqqBits), bits) != std::end(quant::kHqqBits),
               ErrorCode::Unsupported, "{}: nbits = {}; supported: {}", ctx, bits, fmt::join(quant::kHqqBits, ", "));
  const quant::HqqPacking packing = quant::hqq_packing_for_bits(static_cast<int>(bits));
  const std::string packing_name = d.string("packing");
  LOWBIT_CHECK(packing_name == quant::hqq_packing_name(packing), ErrorCode::Corrupt,
               "{}: packing '{}' does not match nbits = {} (hqq packs it as '{}')", ctx, packing_name, bits,
               quant::hqq_packing_name(packing));
  const std::int64_t group_size = d.integer("group_size");
  const std::int64_t axis = d.integer("axis");
  const Tensor shape_t = d.require("shape");
  LOWBIT_CHECK(shape_t.rank() == 1 && shape_t.numel() == 2 && !is_floating(shape_t.dtype()), ErrorCode::Corrupt,
               "{}: shape is {}; expected two integers [n, k]", ctx, shape_t.describe());
  const Shape shape{static_cast<std::int64_t>(shape_t.get({0})), static_cast<std::int64_t>(shape_t.get({1}))};
  LOWBIT_CHECK(axis == 0 || axis == 1, ErrorCode::Corrupt, "{}: axis = {}; expected 0 or 1", ctx, axis);
  LOWBIT_CHECK(group_size > 0 && shape.numel() > 0 && shape.numel() % group_size == 0, ErrorCode::Corrupt,
               "{}: group_size = {} does not divide shape {}", ctx, group_size, shape.to_string());

  const std::string compute_name = d.string("compute_dtype");
  const auto compute = dtype_from_torch_name(compute_name);
  LOWBIT_CHECK(compute && is_floating(*compute), ErrorCode::Corrupt,
               "{}: compute_dtype '{}' is not one of torch.float16, torch.bfloat16, torch.float32", ctx, compute_name);
  const std::string view_name = d.find("unpack_view_dtype") ? d.string("unpack_view_dtype") : "";
  const DType want_view = quant::hqq_packing_dtype(packing);
  LOWBIT_CHECK(view_name.empty() || dtype_from_torch_name(view_name) == want_view, ErrorCode::Corrupt,
               "{}: unpack_view_dtype '{}' does not match packing '{}' ({})", ctx, view_name, packing_name,
               torch_dtype_name(want_view));

  HqqLinear out;
  out.view_as_float = d.flag("view_as_float", false);
  out.channel_wise = d.flag("channel_wise", true);
  out.optimize = d.flag("optimize", true);
  out.round_zero = d.flag("round_zero", false);
  Tensor w_q = *w_q_found;
  LOWBIT_CHECK(w_q.rank() == 2, ErrorCode::Corrupt, "{}: W_q is {}; expected a 2-D packed matrix", ctx, w_q.describe());
  if (out.view_as_float) {
    LOWBIT_CHECK(is_floating(w_q.dtype()), ErrorCode::Corrupt, "{}: view_as_float = 1 but W_q is {}", ctx, w_q.describe());
    w_q = reinterpret_rows(w_q, want_view, ctx);
  }

  quant::QuantizedTensor& q = out.weight;
  q.method = "hqq";
  q.shape = shape;
  q.dtype = *compute;
  q.params.bits = static_cast<int>(bits);
  q.params.group_size = group_size;
  q.params.axis = static_cast<int>(axis);
  q.components["W_q"] = w_q;
  // HQQLinear.cuda() casts every floating meta tensor to the compute dtype on load; so do we.
  for (const char* name : {"scale", "zero"}) {
    const Tensor t = d.require(name);
    LOWBIT_CHECK(is_floating(t.dtype()), ErrorCode::Corrupt, "{}: {} is {}; expected a float tensor", ctx, name,
                 t.describe());
    q.components[name] = t.dtype() == *compute ? t : t.to(*compute);
  }
  if (auto bias = d.find("bias")) out.bias = *bias;
  try {
    quant::hqq_codes(q);  // every shape and dtype against nbits, group_size, axis and shape
  } catch (const Error& e) {
    LOWBIT_THROW(ErrorCode::Corrupt, "{}: {}", ctx, e.what());
  }
  return out;
}

HqqLinear read_hqq_linear(const Checkpoint& checkpoint, std::string_view layer) {
  const TensorLookup lookup = [&checkpoint](const std::string& name) -> std::optional<Tensor> {
    if (!checkpoint.contains(name)) return std::nullopt;
    return checkpoint.tensor(name);
  };
  return decode_hqq_linear(layer, lookup, checkpoint.path().string());
}

std::vector<std::string> hqq_layers(const Checkpoint& checkpoint) {
  std::vector<std::string> out;
  for (const std::string& name : checkpoint.names()) {
    if (name == "W_q") out.emplace_back();
    else if (name.ends_with(".W_q")) out.push_back(name.substr(0, name.size() - 4));
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string hqq_linear_tag(std::string_view layer) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= layer.size()) {
    const std::size_t dot = std::min(layer.find('.', start), layer.size());
    const std::string part(layer.substr(start, dot - start));
    const bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (part != "model" && part != "layers" && !numeric) parts.push_back(part);
    start = dot + 1;
  }
  return fmt::format("{}", fmt::join(parts, "."));
}

std::string hqq_quantization_config(const quant::HqqConfig& config, const std::vector<std::string>& skip_modules) {
  LOWBIT_CHECK(config.group_size > 0, ErrorCode::InvalidArgument,
               "hqq_quantization_config: group_size = {}; transformers needs a positive group size", config.group_size);
  nlohmann::ordered_json j;
  j["quant_config"] = base_quantize_config(config.bits, config.group_size, config.axis);
  j["quant_method"] = "hqq";
  j["skip_modules"] = skip_modules;
  return j.dump();
}

FormatWriter hqq_format_writer() {
  FormatWriter w;
  w.name = "hqq";
  w.methods = {"hqq"};
  w.summary = "HQQLinear's encoded state_dict, as transformers saves HQQ models (docs/formats.md#hqq)";
  w.add = [](CheckpointWriter& out, const std::string& name, const quant::QuantizedTensor& q) {
    HqqLinear linear;
    linear.weight = q;
    linear.round_zero = q.params.bits == 4;  // BaseQuantizeConfig's choice; decoding never reads it
    for (auto& [key, tensor] : hqq_state_dict(strip_weight(name), linear)) out.add(key, tensor);
  };
  w.config_json = [](const std::filesystem::path& config, const std::vector<QuantizedEntry>& entries) {
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(read_text(config), nullptr, false);
    LOWBIT_CHECK(j.is_object(), ErrorCode::Corrupt, "hqq: '{}' is not a JSON object", config.string());
    bool uniform = true;
    for (const auto& e : entries) uniform = uniform && e.params == entries.front().params;
    nlohmann::ordered_json quant_config;
    if (uniform && !entries.empty()) {
      const auto& p = entries.front().params;
      quant_config = base_quantize_config(p.bits, p.group_size, p.axis);
    } else {
      // transformers' dynamic form: one BaseQuantizeConfig per layer tag (the first layer of a tag wins;
      // loading decodes every layer from its own tensors either way).
      quant_config = nlohmann::ordered_json::object();
      for (const auto& e : entries) {
        const std::string tag = hqq_linear_tag(strip_weight(e.name));
        if (!quant_config.contains(tag)) quant_config[tag] = base_quantize_config(e.params.bits, e.params.group_size, e.params.axis);
      }
    }
    bool lm_head_quantized = false;
    for (const auto& e : entries) lm_head_quantized = lm_head_quantized || hqq_linear_tag(strip_weight(e.name)) == "lm_head";
    nlohmann::ordered_json qc;
    qc["quant_config"] = quant_config;
    qc["quant_method"] = "hqq";
    qc["skip_modules"] = lm_head_quantized ? std::vector<std::string>{} : std::vector<std::string>{"lm_head"};
    j["quantization_config"] = qc;
    return j.dump(2) + "\n";
  };
  w.finish = [](CheckpointWriter& out, const std::vector<QuantizedEntry>&) { out.add_metadata("format", "pt"); };
  return w;
}

bool is_hqq_checkpoint(const Checkpoint& checkpoint) {
  for (const std::string& layer : hqq_layers(checkpoint)) {
    if (checkpoint.contains(key_name(layer, "packing")) && checkpoint.contains(key_name(layer, "nbits"))) return true;
  }
  return false;
}

QuantizedCheckpoint open_hqq(const Checkpoint& checkpoint) {
  QuantizedCheckpoint out;
  out.format = "hqq";
  std::map<std::string, std::string> layer_of;  // weight name -> layer
  for (const std::string& layer : hqq_layers(checkpoint)) {
    const std::string weight = layer.empty() ? "weight" : layer + ".weight";
    layer_of[weight] = layer;
    out.weights.push_back(weight);
    for (const std::string_view key : kHqqStateKeys) {
      if (key == "bias") continue;  // a dense tensor, loaded as the layer's bias
      const std::string name = key_name(layer, key);
      if (checkpoint.contains(name)) out.parts.insert(name);
    }
  }
  out.load = [&checkpoint, layer_of](std::string_view weight) {
    const auto it = layer_of.find(std::string(weight));
    LOWBIT_CHECK(it != layer_of.end(), ErrorCode::InvalidArgument, "hqq: '{}' holds no HQQ layer for weight '{}'",
                 checkpoint.path().string(), weight);
    return read_hqq_linear(checkpoint, it->second).weight;
  };
  return out;
}

}  // namespace lowbit::io
