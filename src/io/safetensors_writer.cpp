// The streaming safetensors writer: the header is fixed before any data is made, then each tensor is
// produced and written in turn, so memory holds one tensor at a time (none for contiguous host tensors).
#include <algorithm>
#include <cstring>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/io/atomic_file.hpp"
#include "lowbit/io/safetensors.hpp"

namespace lowbit::io {
namespace {

using OrderedJson = nlohmann::ordered_json;

// Refuses text the header could not hold: JSON output needs valid UTF-8.
void check_utf8(const std::filesystem::path& path, std::string_view what, const std::string& text) {
  try {
    (void)OrderedJson(text).dump();
  } catch (const nlohmann::json::exception&) {
    LOWBIT_THROW(ErrorCode::InvalidArgument, "safetensors: '{}': {} '{}' is not valid UTF-8", path.string(), what,
                 text);
  }
}

// Position of a dtype in the layout: the Python package (0.8) sorts by its Rust `Dtype` enum, descending,
// which orders element sizes largest first and, within a size, as below. Following it exactly makes our
// files byte-identical to the package's (tests/io/safetensors_golden_test.cpp checks this).
int layout_rank(DType t) noexcept {
  constexpr DType kOrder[] = {DType::U64,    DType::I64,    DType::F64, DType::F32, DType::U32,
                              DType::I32,    DType::BF16,   DType::F16, DType::U16, DType::I16,
                              DType::F8E4M3, DType::F8E5M2, DType::I8,  DType::U8,  DType::Bool};
  for (int i = 0; i < static_cast<int>(std::size(kOrder)); ++i) {
    if (kOrder[i] == t) return i;
  }
  return static_cast<int>(std::size(kOrder));  // packed types: refused by add_lazy, never laid out
}

}  // namespace

SafetensorsWriter::SafetensorsWriter(std::filesystem::path path) : path_(std::move(path)) {}

void SafetensorsWriter::set_metadata(std::map<std::string, std::string> metadata) {
  for (const auto& [key, value] : metadata) {
    check_utf8(path_, "metadata key", key);
    check_utf8(path_, fmt::format("metadata value of '{}'", key), value);
  }
  metadata_ = std::move(metadata);
}

void SafetensorsWriter::add(std::string name, const Tensor& tensor) {
  LOWBIT_CHECK(tensor.defined(), ErrorCode::InvalidArgument, "safetensors: '{}': tensor '{}' is undefined",
               path_.string(), name);
  LOWBIT_CHECK(tensor.device().is_cpu(), ErrorCode::Unsupported,
               "safetensors: '{}': tensor '{}' is {}; copy it to the host before writing", path_.string(), name,
               tensor.describe());
  // Strided tensors are gathered into the write buffer; contiguous ones are written from their own memory.
  add_lazy(std::move(name), tensor.dtype(), tensor.shape(), [tensor](std::span<std::byte> out) {
    Tensor::wrap(out.data(), tensor.shape(), tensor.dtype()).copy_from(tensor);
  });
  entries_.back().tensor = tensor;
}

void SafetensorsWriter::add_lazy(std::string name, DType dtype, const Shape& shape, Producer producer) {
  LOWBIT_CHECK(!name.empty(), ErrorCode::InvalidArgument, "safetensors: '{}': a tensor name is empty", path_.string());
  LOWBIT_CHECK(name != "__metadata__", ErrorCode::InvalidArgument,
               "safetensors: '{}': '__metadata__' is reserved for the metadata map and cannot name a tensor",
               path_.string());
  check_utf8(path_, "tensor name", name);
  LOWBIT_CHECK(producer != nullptr, ErrorCode::InvalidArgument, "safetensors: '{}': tensor '{}' has no producer",
               path_.string(), name);
  LOWBIT_CHECK(!is_packed(dtype), ErrorCode::Unsupported,
               "safetensors: '{}': tensor '{}' is {}, a packed dtype safetensors has no name for; store its bytes "
               "as U8",
               path_.string(), name, dtype_name(dtype));
  for (const Entry& e : entries_) {
    LOWBIT_CHECK(e.name != name, ErrorCode::InvalidArgument, "safetensors: '{}': tensor '{}' is added twice",
                 path_.string(), name);
  }
  (void)storage_bytes(dtype, shape.numel());  // throws Numerical now for a size that overflows
  entries_.push_back(Entry{std::move(name), dtype, shape, std::move(producer), Tensor()});
}

void SafetensorsWriter::write() {
  // Largest elements first, then by name: with the header padded to 8 bytes, every tensor then starts at a
  // multiple of its element size.
  std::vector<const Entry*> order;
  order.reserve(entries_.size());
  for (const Entry& e : entries_) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    if (layout_rank(a->dtype) != layout_rank(b->dtype)) return layout_rank(a->dtype) < layout_rank(b->dtype);
    return a->name < b->name;
  });

  OrderedJson header = OrderedJson::object();
  if (!metadata_.empty()) {
    OrderedJson metadata = OrderedJson::object();
    for (const auto& [key, value] : metadata_) metadata[key] = value;
    header["__metadata__"] = std::move(metadata);
  }
  std::uint64_t offset = 0;
  std::size_t largest = 0;
  for (const Entry* e : order) {
    const std::size_t bytes = storage_bytes(e->dtype, e->shape.numel());
    OrderedJson shape = OrderedJson::array();
    for (const std::int64_t d : e->shape) shape.push_back(d);
    OrderedJson entry = OrderedJson::object();
    entry["dtype"] = std::string(safetensors_dtype_name(e->dtype));
    entry["shape"] = std::move(shape);
    entry["data_offsets"] = OrderedJson::array({offset, offset + bytes});
    header[e->name] = std::move(entry);
    offset += bytes;
    if (!e->tensor.defined() || !e->tensor.is_contiguous()) largest = std::max(largest, bytes);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  LOWBIT_CHECK(text.size() <= kMaxSafetensorsHeaderBytes, ErrorCode::InvalidArgument,
               "safetensors: '{}': the header of {} tensors would be {} bytes, above the {}-byte limit readers accept",
               path_.string(), entries_.size(), text.size(), kMaxSafetensorsHeaderBytes);

  AtomicFile file(path_);
  const std::uint64_t n = text.size();
  std::byte length[8];
  std::memcpy(length, &n, sizeof n);  // little-endian: config.hpp refuses other hosts
  file.write(std::span<const std::byte>(length));
  file.write(text);

  // One buffer, as large as the largest tensor that must be made or gathered, reused for each.
  std::shared_ptr<Storage> buffer = Storage::allocate_host(largest);
  for (const Entry* e : order) {
    const std::size_t bytes = storage_bytes(e->dtype, e->shape.numel());
    if (e->tensor.defined() && e->tensor.is_contiguous()) {
      file.write(std::span<const std::byte>(static_cast<const std::byte*>(e->tensor.raw_data()), bytes));
      continue;
    }
    std::span<std::byte> out(buffer->data(), bytes);
    // Zeroed first so that bytes a faulty producer leaves unwritten are zeros, never stale memory.
    std::memset(out.data(), 0, bytes);
    e->producer(out);
    file.write(out);
  }
  LOWBIT_CHECK(file.bytes_written() == 8 + n + offset, ErrorCode::IO, "safetensors: '{}': wrote {} bytes, expected {}",
               path_.string(), file.bytes_written(), 8 + n + offset);
  file.commit();
}

void save_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter writer(path);
  writer.set_metadata(metadata);
  for (const auto& [name, tensor] : tensors) writer.add(name, tensor);
  writer.write();
}

}  // namespace lowbit::io
