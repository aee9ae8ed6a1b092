// safetensors files: a validating, zero-copy reader over mmap, and an atomic streaming writer.
//
// File layout (docs/formats.md#safetensors):
//
//     | u64 little-endian N | N bytes of UTF-8 JSON header (may end in spaces) | data section |
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
// to the data section) and may hold "__metadata__", a map of strings to strings. The reader trusts
// nothing: every rule in docs/formats.md is checked before any tensor is handed out, and each violation is
// an Error{ErrorCode::Corrupt} naming the file, the tensor and the numbers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "lowbit/core/mapped_file.hpp"
#include "lowbit/core/tensor.hpp"

namespace lowbit::io {

// The largest JSON header we accept: 100 MB, the bound of the reference implementation.
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::uint64_t begin = 0;  // byte offsets into the data section, as the header gives them
  std::uint64_t end = 0;
  std::uint64_t nbytes() const noexcept { return end - begin; }
};

struct SafetensorsHeader {
  std::uint64_t header_bytes = 0;  // N: the JSON header's length
  std::uint64_t data_offset = 0;   // 8 + N: where the data section starts in the file
  std::vector<TensorInfo> tensors;  // sorted by data offset
  std::map<std::string, std::string> metadata;
};

// Validates a whole file image and returns its header; `file_name` only labels messages.
// Throws Error{ErrorCode::Corrupt} on any violation.
SafetensorsHeader parse_safetensors(std::span<const std::byte> file, std::string_view file_name);

class SafetensorsFile {
 public:
  // Maps and validates; throws IO (cannot open) or Corrupt.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const noexcept { return file_->path(); }
  const SafetensorsHeader& header() const noexcept { return header_; }
  const std::vector<TensorInfo>& tensors() const noexcept { return header_.tensors; }  // offset order
  const std::map<std::string, std::string>& metadata() const noexcept { return header_.metadata; }
  std::vector<std::string> names() const;  // sorted by name
  bool contains(std::string_view name) const;
  // Throws InvalidArgument naming the file and the missing tensor.
  const TensorInfo& info(std::string_view name) const;
  // Zero-copy view into the mapping (a copy when the data is not aligned to its element size).
  Tensor tensor(std::string_view name) const;
  // The tensor's raw bytes in the file.
  std::span<const std::byte> bytes(std::string_view name) const;

 private:
  SafetensorsFile(std::shared_ptr<MappedFile> file, SafetensorsHeader header);

  std::shared_ptr<MappedFile> file_;
  std::shared_ptr<Storage> data_;  // the data section, owned by file_: every zero-copy view shares it
  SafetensorsHeader header_;
  std::unordered_map<std::string, std::size_t> index_;
};

// Collects tensors, then writes them in one pass through an AtomicFile. Tensors are laid out by element
// size (largest first), then by name, as the Python package does, so every tensor is aligned to its
// element size; the header is padded with spaces to a multiple of 8 bytes. (Within one element size the
// package's dtype order is followed too, so our files are byte-identical to the ones it writes.)
class SafetensorsWriter {
 public:
  // Fills exactly `bytes.size()` bytes with the tensor's data; called once, during write().
  using Producer = std::function<void(std::span<std::byte> bytes)>;

  explicit SafetensorsWriter(std::filesystem::path path);

  void set_metadata(std::map<std::string, std::string> metadata);
  // A host tensor of any strides (written contiguously). Packed dtypes have no safetensors name: store
  // their bytes as U8. Throws InvalidArgument for a duplicate or empty name, Unsupported for packed or
  // device tensors.
  void add(std::string name, const Tensor& tensor);
  // A tensor whose bytes are made only when written, so a writer need not hold every tensor in memory.
  void add_lazy(std::string name, DType dtype, const Shape& shape, Producer producer);
  // Writes the file atomically; throws IO (and leaves no file at the path) on failure.
  void write();

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    Producer producer;  // fills the bytes; unused when `tensor` is contiguous
    Tensor tensor;      // set by add(): written straight from its memory when contiguous
  };
  std::filesystem::path path_;
  std::map<std::string, std::string> metadata_;
  std::vector<Entry> entries_;
};

// One call: write `tensors` (name, tensor) with `metadata` to `path`, atomically.
void save_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace lowbit::io
