// A read-only view of a whole file through mmap, shared by every tensor that points into it.
//
// The mapping is private and writable (copy-on-write): a caller that writes into a tensor view changes
// its own pages, never the file, and never faults. The file may be replaced or deleted while mapped.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>

namespace lowbit {

class MappedFile {
 public:
  // Throws IO naming the path and the OS error when the file cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  MappedFile(std::filesystem::path path, std::byte* data, std::size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::filesystem::path path_;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace lowbit
