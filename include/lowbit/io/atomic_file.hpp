// Writing a file so that the target path never holds a half-written file.
//
// Bytes go to a temporary file in the target's folder (same file system, so the rename is atomic);
// commit() flushes, fsyncs, renames it over the target and fsyncs the folder. If commit() is never reached
// (an exception, a full disk), the destructor removes the temporary and the previous file at the target,
// if any, is untouched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace lowbit::io {

class AtomicFile {
 public:
  // Creates the temporary "<target>.tmp-XXXXXX"; throws IO naming the folder when it cannot.
  explicit AtomicFile(std::filesystem::path target);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Throws IO naming the target and the OS error (ENOSPC for a full disk).
  void write(std::span<const std::byte> bytes);
  void write(std::string_view text) { write(std::as_bytes(std::span<const char>(text.data(), text.size()))); }
  // Throws IO; after a failed commit the temporary is removed and the target is untouched.
  void commit();

  const std::filesystem::path& target() const noexcept { return target_; }
  const std::filesystem::path& temp_path() const noexcept { return temp_; }
  std::uint64_t bytes_written() const noexcept { return written_; }

 private:
  void discard() noexcept;

  std::filesystem::path target_;
  std::filesystem::path temp_;
  int fd_ = -1;
  std::uint64_t written_ = 0;
  bool committed_ = false;
};

// Writes `text` to `target` atomically (config files, JSON sidecars).
void write_file_atomically(const std::filesystem::path& target, std::string_view text);

// The whole file as bytes (config files, calibration text). Throws IO "<context>: cannot open '<path>'"
// or "<context>: cannot read '<path>'".
std::string read_text_file(const std::filesystem::path& path, std::string_view context);

namespace testing {
// Fault injection for tests: once this many more bytes have been written through AtomicFile (all of
// them, process-wide), the next write fails as if the disk were full (ENOSPC). Negative disables.
void fail_writes_after_bytes(std::int64_t bytes) noexcept;
}  // namespace testing

}  // namespace lowbit::io
