// The validating safetensors reader. Every number read from the file goes through checked arithmetic, and
// no tensor is handed out before the whole header has passed (docs/formats.md#safetensors lists the rules).
#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/io/safetensors.hpp"

namespace lowbit::io {
namespace {

using nlohmann::json;

// A valid header nests three levels (root, tensor entry, shape); anything far deeper is refused while
// parsing, before a hostile file can make us build a deep tree.
constexpr int kMaxHeaderDepth = 8;

// Offset of the first byte that is not part of well-formed UTF-8 (no overlong forms, no surrogates, nothing
// above U+10FFFF), or nullopt when all of `text` is valid.
std::optional<std::size_t> find_invalid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned lo = 0x80, hi = 0xbf;  // the allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;  // overlong
      if (c == 0xed) hi = 0x9f;  // UTF-16 surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;  // overlong
      if (c == 0xf4) hi = 0x8f;  // above U+10FFFF
    } else {
      return i;
    }
    if (n - i < len) return i;
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k) {
      if (s[i + k] < 0x80 || s[i + k] > 0xbf) return i;
    }
    i += len;
  }
  return std::nullopt;
}

std::string format_dims(const std::vector<std::uint64_t>& dims) {
  std::string out = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) out += fmt::format("{}{}", i ? ", " : "", dims[i]);
  return out + "]";
}

std::string known_dtype_names() {
  std::string out;
  for (const DType t : kAllDTypes) {
    const std::string_view name = safetensors_dtype_name(t);
    if (name.empty()) continue;
    out += fmt::format("{}{}", out.empty() ? "" : ", ", name);
  }
  return out;
}

// A JSON value as it appears in a message: its text, shortened if long.
std::string show(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return text;
}

// One tensor entry while it is being checked; the rank is not limited yet.
struct Entry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::uint64_t> dims;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

class HeaderParser {
 public:
  HeaderParser(std::span<const std::byte> file, std::string_view file_name) : file_(file), name_(file_name) {}

  SafetensorsHeader parse() {
    SafetensorsHeader header;
    const std::uint64_t size = file_.size();
    LOWBIT_CHECK(size >= 8, ErrorCode::Corrupt,
                 "safetensors: '{}': file is {} bytes, shorter than the 8-byte header length that starts every "
                 "safetensors file",
                 name_, size);
    std::uint64_t n = 0;
    std::memcpy(&n, file_.data(), sizeof n);  // little-endian: config.hpp refuses other hosts
    LOWBIT_CHECK(n <= kMaxSafetensorsHeaderBytes, ErrorCode::Corrupt,
                 "safetensors: '{}': header length {} exceeds the limit of {} bytes", name_, n,
                 kMaxSafetensorsHeaderBytes);
    LOWBIT_CHECK(n <= size - 8, ErrorCode::Corrupt,
                 "safetensors: '{}': header longer than the file: it declares {} bytes but only {} follow the "
                 "8-byte length (file is {} bytes)",
                 name_, n, size - 8, size);
    header.header_bytes = n;
    header.data_offset = 8 + n;
    data_size_ = size - 8 - n;

    const std::string_view text(reinterpret_cast<const char*>(file_.data()) + 8, n);
    const json root = parse_json(text);

    std::vector<Entry> entries;
    for (const auto& [key, value] : root.items()) {
      if (key == "__metadata__") {
        header.metadata = parse_metadata(value);
      } else {
        entries.push_back(parse_entry(key, value));
      }
    }
    check_layout(entries);

    // Only now, with every rule of the format checked, is a rank we cannot hold reported as unsupported.
    for (const Entry& e : entries) {
      LOWBIT_CHECK(e.dims.size() <= static_cast<std::size_t>(kMaxRank), ErrorCode::Unsupported,
                   "safetensors: '{}': tensor '{}' has rank {} (shape {}); lowbit tensors have at most {} "
                   "dimensions",
                   name_, e.name, e.dims.size(), format_dims(e.dims), kMaxRank);
    }
    header.tensors.reserve(entries.size());
    for (const Entry& e : entries) {
      TensorInfo info;
      info.name = e.name;
      info.dtype = e.dtype;
      std::vector<std::int64_t> dims(e.dims.begin(), e.dims.end());  // each checked <= INT64_MAX
      info.shape = Shape(std::span<const std::int64_t>(dims));
      info.begin = e.begin;
      info.end = e.end;
      header.tensors.push_back(std::move(info));
    }
    return header;
  }

 private:
  json parse_json(std::string_view text) {
    LOWBIT_CHECK(
        !text.empty() && text.front() == '{', ErrorCode::Corrupt,
        "safetensors: '{}': header of {} bytes does not start with '{{' (first byte {})", name_, text.size(),
        text.empty() ? std::string("none") : fmt::format("0x{:02x}", static_cast<unsigned char>(text.front())));
    if (const auto bad = find_invalid_utf8(text)) {
      LOWBIT_THROW(ErrorCode::Corrupt, "safetensors: '{}': header is not valid UTF-8 at byte {} of {} (byte 0x{:02x})",
                   name_, *bad, text.size(), static_cast<unsigned char>(text[*bad]));
    }
    // JSON has no place for a NUL byte, and the JSON library would take one for the end of its input.
    if (const std::size_t nul = text.find('\0'); nul != std::string_view::npos) {
      LOWBIT_THROW(ErrorCode::Corrupt, "safetensors: '{}': header of {} bytes holds a NUL byte at offset {}", name_,
                   text.size(), nul);
    }
    // Keys seen in each object still open, to refuse duplicates: the JSON library would keep the last.
    std::vector<std::set<std::string>> open_objects;
    const auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
      LOWBIT_CHECK(depth <= kMaxHeaderDepth, ErrorCode::Corrupt,
                   "safetensors: '{}': header nests deeper than {} levels; a valid header has 3", name_,
                   kMaxHeaderDepth);
      switch (event) {
        case json::parse_event_t::object_start: open_objects.emplace_back(); break;
        case json::parse_event_t::object_end: open_objects.pop_back(); break;
        case json::parse_event_t::key: {
          const auto& key = parsed.get_ref<const std::string&>();
          LOWBIT_CHECK(open_objects.back().insert(key).second, ErrorCode::Corrupt,
                       "safetensors: '{}': header has the key '{}' twice in one object", name_, key);
          break;
        }
        default: break;
      }
      return true;
    };
    json root;
    try {
      root = json::parse(text.begin(), text.end(), on_event, /*allow_exceptions=*/true, /*ignore_comments=*/false);
    } catch (const json::exception& e) {
      LOWBIT_THROW(ErrorCode::Corrupt, "safetensors: '{}': header of {} bytes is not valid JSON: {}", name_,
                   text.size(), e.what());
    }
    LOWBIT_CHECK(root.is_object(), ErrorCode::Corrupt, "safetensors: '{}': header is a JSON {}, not an object", name_,
                 root.type_name());
    return root;
  }

  std::map<std::string, std::string> parse_metadata(const json& value) {
    LOWBIT_CHECK(value.is_object(), ErrorCode::Corrupt,
                 "safetensors: '{}': '__metadata__' is a JSON {} ({}), not an object of strings", name_,
                 value.type_name(), show(value));
    std::map<std::string, std::string> metadata;
    for (const auto& [key, item] : value.items()) {
      LOWBIT_CHECK(item.is_string(), ErrorCode::Corrupt,
                   "safetensors: '{}': '__metadata__' maps '{}' to a JSON {} ({}); metadata values must be strings",
                   name_, key, item.type_name(), show(item));
      metadata.emplace(key, item.get<std::string>());
    }
    return metadata;
  }

  std::uint64_t unsigned_field(const Entry& e, const json& item, std::string_view field, std::size_t position) {
    LOWBIT_CHECK(item.is_number_unsigned(), ErrorCode::Corrupt,
                 "safetensors: '{}': tensor '{}' has {} entry {} = {} ({}); it must be a non-negative integer", name_,
                 e.name, field, position, show(item), item.type_name());
    return item.get<std::uint64_t>();
  }

  Entry parse_entry(const std::string& name, const json& value) {
    Entry e;
    e.name = name;
    LOWBIT_CHECK(!name.empty(), ErrorCode::Corrupt, "safetensors: '{}': header holds a tensor with an empty name",
                 name_);
    LOWBIT_CHECK(value.is_object(), ErrorCode::Corrupt,
                 "safetensors: '{}': tensor '{}' is described by a JSON {} ({}), not an object", name_, name,
                 value.type_name(), show(value));
    for (const auto& [key, item] : value.items()) {
      LOWBIT_CHECK(key == "dtype" || key == "shape" || key == "data_offsets", ErrorCode::Corrupt,
                   "safetensors: '{}': tensor '{}' has the unknown field '{}'; expected only dtype, shape and "
                   "data_offsets",
                   name_, name, key);
    }
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      LOWBIT_CHECK(value.contains(key), ErrorCode::Corrupt, "safetensors: '{}': tensor '{}' has no '{}'", name_, name,
                   key);
    }

    const json& dtype = value["dtype"];
    LOWBIT_CHECK(dtype.is_string(), ErrorCode::Corrupt,
                 "safetensors: '{}': tensor '{}' has dtype {}, a JSON {} rather than a string", name_, name,
                 show(dtype), dtype.type_name());
    const auto parsed = dtype_from_safetensors_name(dtype.get_ref<const std::string&>());
    LOWBIT_CHECK(parsed.has_value(), ErrorCode::Corrupt,
                 "safetensors: '{}': tensor '{}' has unknown dtype '{}'; known: {}", name_, name,
                 dtype.get_ref<const std::string&>(), known_dtype_names());
    e.dtype = *parsed;

    const json& shape = value["shape"];
    LOWBIT_CHECK(shape.is_array(), ErrorCode::Corrupt,
                 "safetensors: '{}': tensor '{}' has shape {}, a JSON {} rather than an array", name_, name,
                 show(shape), shape.type_name());
    for (std::size_t i = 0; i < shape.size(); ++i) {
      const std::uint64_t d = unsigned_field(e, shape[i], "shape", i);
      LOWBIT_CHECK(d <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()), ErrorCode::Corrupt,
                   "safetensors: '{}': tensor '{}' has shape entry {} = {}, above 2^63 - 1", name_, name, i, d);
      e.dims.push_back(d);
    }

    const json& offsets = value["data_offsets"];
    LOWBIT_CHECK(offsets.is_array() && offsets.size() == 2, ErrorCode::Corrupt,
                 "safetensors: '{}': tensor '{}' has data_offsets {}; expected an array [begin, end]", name_, name,
                 show(offsets));
    e.begin = unsigned_field(e, offsets[0], "data_offsets", 0);
    e.end = unsigned_field(e, offsets[1], "data_offsets", 1);
    LOWBIT_CHECK(e.begin <= e.end, ErrorCode::Corrupt,
                 "safetensors: '{}': tensor '{}' has data_offsets [{}, {}]: begin is after end", name_, name, e.begin,
                 e.end);

    // Element count: the product of the non-zero sizes must fit in int64 even when a zero makes the count 0,
    // so that Shape::numel() can never overflow whatever order it multiplies in.
    std::uint64_t count = 1;
    bool has_zero = false;
    for (const std::uint64_t d : e.dims) {
      if (d == 0) {
        has_zero = true;
        continue;
      }
      LOWBIT_CHECK(!__builtin_mul_overflow(count, d, &count) &&
                       count <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                   ErrorCode::Corrupt,
                   "safetensors: '{}': tensor '{}' has shape {} whose element count overflows int64", name_, name,
                   format_dims(e.dims));
    }
    if (has_zero) count = 0;
    std::uint64_t bytes = 0;
    LOWBIT_CHECK(!__builtin_mul_overflow(count, static_cast<std::uint64_t>(dtype_size(e.dtype)), &bytes),
                 ErrorCode::Corrupt,
                 "safetensors: '{}': tensor '{}' declares {} {} = {} elements of {} bytes, which overflows 64 bits",
                 name_, name, format_dims(e.dims), safetensors_dtype_name(e.dtype), count, dtype_size(e.dtype));
    LOWBIT_CHECK(bytes == e.end - e.begin, ErrorCode::Corrupt,
                 "safetensors: '{}': tensor '{}' declares {} {} = {} bytes but its offsets span {} bytes ([{}, {}])",
                 name_, name, format_dims(e.dims), safetensors_dtype_name(e.dtype), bytes, e.end - e.begin, e.begin,
                 e.end);
    return e;
  }

  // Tensors must tile the data section exactly: sorted by offset, the first at 0, each starting where the
  // previous ended, the last ending at the end of the file.
  void check_layout(std::vector<Entry>& entries) {
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      if (a.begin != b.begin) return a.begin < b.begin;
      if (a.end != b.end) return a.end < b.end;
      return a.name < b.name;
    });
    std::uint64_t expected = 0;
    const Entry* previous = nullptr;
    for (const Entry& e : entries) {
      if (e.begin < expected) {
        LOWBIT_THROW(ErrorCode::Corrupt,
                     "safetensors: '{}': tensor '{}' at data_offsets [{}, {}] overlaps tensor '{}' at [{}, {}]", name_,
                     e.name, e.begin, e.end, previous->name, previous->begin, previous->end);
      }
      if (e.begin > expected) {
        LOWBIT_THROW(ErrorCode::Corrupt,
                     "safetensors: '{}': bytes [{}, {}) of the data section belong to no tensor (a gap before "
                     "tensor '{}')",
                     name_, expected, e.begin, e.name);
      }
      LOWBIT_CHECK(e.end <= data_size_, ErrorCode::Corrupt,
                   "safetensors: '{}': tensor '{}' ends at byte {} but the data section holds only {} bytes "
                   "(file truncated?)",
                   name_, e.name, e.end, data_size_);
      expected = e.end;
      previous = &e;
    }
    if (expected != data_size_) {
      if (previous == nullptr) {
        LOWBIT_THROW(ErrorCode::Corrupt, "safetensors: '{}': header lists no tensors but {} bytes of data follow it",
                     name_, data_size_);
      }
      LOWBIT_THROW(ErrorCode::Corrupt,
                   "safetensors: '{}': {} trailing bytes after the last tensor ('{}' ends at byte {} of a {}-byte "
                   "data section)",
                   name_, data_size_ - expected, previous->name, expected, data_size_);
    }
  }

  std::span<const std::byte> file_;
  std::string_view name_;
  std::uint64_t data_size_ = 0;
};

}  // namespace

SafetensorsHeader parse_safetensors(std::span<const std::byte> file, std::string_view file_name) {
  return HeaderParser(file, file_name).parse();
}

SafetensorsFile::SafetensorsFile(std::shared_ptr<MappedFile> file, SafetensorsHeader header)
    : file_(std::move(file)), header_(std::move(header)) {
  data_ = std::make_shared<Storage>(file_->data() + header_.data_offset, file_->size() - header_.data_offset,
                                    Device::cpu(), file_);
  index_.reserve(header_.tensors.size());
  for (std::size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  std::shared_ptr<MappedFile> file = MappedFile::open(path);
  SafetensorsHeader header = parse_safetensors(file->bytes(), path.string());
  return SafetensorsFile(std::move(file), std::move(header));
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(header_.tensors.size());
  for (const TensorInfo& t : header_.tensors) out.push_back(t.name);
  std::sort(out.begin(), out.end());
  return out;
}

bool SafetensorsFile::contains(std::string_view name) const { return index_.count(std::string(name)) != 0; }

const TensorInfo& SafetensorsFile::info(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  LOWBIT_CHECK(it != index_.end(), ErrorCode::InvalidArgument,
               "safetensors: '{}': no tensor named '{}' (the file holds {} tensors)", path().string(), name,
               header_.tensors.size());
  return header_.tensors[it->second];
}

Tensor SafetensorsFile::tensor(std::string_view name) const {
  const TensorInfo& t = info(name);
  const std::byte* address = data_->data() + t.begin;
  if (reinterpret_cast<std::uintptr_t>(address) % dtype_size(t.dtype) == 0) {
    return Tensor::from_storage(data_, static_cast<std::size_t>(t.begin), t.shape, t.dtype);
  }
  // A file not written with the usual padding: elements would be misaligned in place, so copy them out.
  Tensor copy = Tensor::empty(t.shape, t.dtype);
  if (t.nbytes() > 0) std::memcpy(copy.raw_data(), address, static_cast<std::size_t>(t.nbytes()));
  return copy;
}

std::span<const std::byte> SafetensorsFile::bytes(std::string_view name) const {
  const TensorInfo& t = info(name);
  return {data_->data() + t.begin, static_cast<std::size_t>(t.nbytes())};
}

}  // namespace lowbit::io
