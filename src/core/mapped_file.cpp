#include "lowbit/core/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "lowbit/core/error.hpp"

namespace lowbit {

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LOWBIT_CHECK(fd >= 0, ErrorCode::IO, "MappedFile::open: cannot open '{}': {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    LOWBIT_THROW(ErrorCode::IO, "MappedFile::open: cannot stat '{}': {}", path.string(), std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    LOWBIT_THROW(ErrorCode::IO, "MappedFile::open: '{}' is not a regular file", path.string());
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  std::byte* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      LOWBIT_THROW(ErrorCode::IO, "MappedFile::open: cannot map '{}' ({} bytes): {}", path.string(), size, std::strerror(err));
    }
    data = static_cast<std::byte*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
  return std::shared_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

}  // namespace lowbit
