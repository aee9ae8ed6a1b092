#include "lowbit/io/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "lowbit/core/error.hpp"

namespace lowbit::io {
namespace {

// Bytes AtomicFile may still write before the injected "disk full"; negative: no injection.
std::atomic<std::int64_t> g_write_budget{-1};

// Takes up to `wanted` bytes from the injected budget; returns how many may be written.
std::size_t take_write_budget(std::size_t wanted) noexcept {
  std::int64_t budget = g_write_budget.load();
  while (true) {
    if (budget < 0) return wanted;
    const auto granted = static_cast<std::int64_t>(std::min<std::uint64_t>(wanted, static_cast<std::uint64_t>(budget)));
    if (g_write_budget.compare_exchange_weak(budget, budget - granted)) return static_cast<std::size_t>(granted);
  }
}

std::string folder_of(const std::filesystem::path& target) {
  const std::filesystem::path parent = target.parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// The permission bits a file created with open(..., 0666) would get: mkstemp makes 0600 files, and a
// checkpoint should be readable by whoever could read one written by any other tool.
mode_t default_file_mode() {
  // /proc/self/status has "Umask:\t0022" since Linux 4.7; umask() itself cannot be read without being set,
  // which would race with other threads creating files.
  if (std::FILE* status = std::fopen("/proc/self/status", "re")) {
    char line[256];
    unsigned mask = 0;
    bool found = false;
    while (std::fgets(line, sizeof line, status) != nullptr) {
      if (std::sscanf(line, "Umask: %o", &mask) == 1) {
        found = true;
        break;
      }
    }
    std::fclose(status);
    if (found) return static_cast<mode_t>(0666 & ~mask);
  }
  return 0644;
}

void fsync_folder(const std::filesystem::path& target) {
  const std::string folder = folder_of(target);
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  LOWBIT_CHECK(fd >= 0, ErrorCode::IO,
               "atomic_file: '{}' was written but its folder '{}' cannot be opened to sync it: {}", target.string(),
               folder, std::strerror(errno));
  // Some file systems cannot sync a folder (EINVAL); the rename is then as durable as they make it.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    const int err = errno;
    ::close(fd);
    LOWBIT_THROW(ErrorCode::IO, "atomic_file: '{}' was written but its folder '{}' cannot be synced: {}",
                 target.string(), folder, std::strerror(err));
  }
  ::close(fd);
}

}  // namespace

AtomicFile::AtomicFile(std::filesystem::path target) : target_(std::move(target)) {
  LOWBIT_CHECK(!target_.empty() && target_.has_filename(), ErrorCode::InvalidArgument,
               "atomic_file: '{}' is not a file path", target_.string());
  std::string pattern = target_.string() + ".tmp-XXXXXX";
  std::vector<char> name(pattern.begin(), pattern.end());
  name.push_back('\0');
  fd_ = ::mkostemp(name.data(), O_CLOEXEC);
  LOWBIT_CHECK(fd_ >= 0, ErrorCode::IO, "atomic_file: cannot create a temporary file in folder '{}' for '{}': {}",
               folder_of(target_), target_.filename().string(), std::strerror(errno));
  temp_ = std::filesystem::path(name.data());
  if (::fchmod(fd_, default_file_mode()) != 0) {
    const int err = errno;
    discard();
    LOWBIT_THROW(ErrorCode::IO, "atomic_file: cannot set permissions of '{}': {}", temp_.string(), std::strerror(err));
  }
}

AtomicFile::~AtomicFile() { discard(); }

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!committed_ && !temp_.empty()) {
    ::unlink(temp_.c_str());
    temp_.clear();
  }
}

void AtomicFile::write(std::span<const std::byte> bytes) {
  LOWBIT_CHECK(fd_ >= 0, ErrorCode::InvalidArgument, "atomic_file: '{}': write after commit or after a failed write",
               target_.string());
  const std::size_t allowed = take_write_budget(bytes.size());
  const std::byte* p = bytes.data();
  std::size_t left = allowed;
  int error = 0;
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      error = errno;
      break;
    }
    if (n == 0) {  // write(2) makes no progress only when the device is full
      error = ENOSPC;
      break;
    }
    p += n;
    left -= static_cast<std::size_t>(n);
    written_ += static_cast<std::uint64_t>(n);
  }
  if (error == 0 && allowed < bytes.size()) error = ENOSPC;  // injected by testing::fail_writes_after_bytes
  if (error != 0) {
    discard();
    if (error == ENOSPC || error == EDQUOT) {
      LOWBIT_THROW(ErrorCode::IO, "atomic_file: '{}': disk full after {} bytes ({}); free space and retry",
                   target_.string(), written_, std::strerror(error));
    }
    LOWBIT_THROW(ErrorCode::IO, "atomic_file: '{}': write failed after {} bytes: {}", target_.string(), written_,
                 std::strerror(error));
  }
}

void AtomicFile::commit() {
  LOWBIT_CHECK(fd_ >= 0, ErrorCode::InvalidArgument, "atomic_file: '{}': commit after commit or after a failed write",
               target_.string());
  if (::fsync(fd_) != 0) {
    const int err = errno;
    discard();
    LOWBIT_THROW(ErrorCode::IO, "atomic_file: '{}': fsync of {} bytes failed: {}", target_.string(), written_,
                 std::strerror(err));
  }
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    discard();
    LOWBIT_THROW(ErrorCode::IO, "atomic_file: '{}': close failed: {}", target_.string(), std::strerror(err));
  }
  if (::rename(temp_.c_str(), target_.c_str()) != 0) {
    const int err = errno;
    discard();
    LOWBIT_THROW(ErrorCode::IO, "atomic_file: cannot rename '{}' to '{}': {}", temp_.string(), target_.string(),
                 std::strerror(err));
  }
  committed_ = true;
  fsync_folder(target_);
}

void write_file_atomically(const std::filesystem::path& target, std::string_view text) {
  AtomicFile file(target);
  file.write(text);
  file.commit();
}

std::string read_text_file(const std::filesystem::path& path, std::string_view context) {
  std::ifstream in(path, std::ios::binary);
  LOWBIT_CHECK(in.good(), ErrorCode::IO, "{}: cannot read '{}'", context, path.string());
  std::ostringstream text;
  text << in.rdbuf();
  LOWBIT_CHECK(!in.bad(), ErrorCode::IO, "{}: error while reading '{}'", context, path.string());
  return text.str();
}

namespace testing {
void fail_writes_after_bytes(std::int64_t bytes) noexcept { g_write_budget.store(bytes < 0 ? -1 : bytes); }
}  // namespace testing

}  // namespace lowbit::io
