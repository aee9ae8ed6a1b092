// lowbit::Error: the one exception type the library throws, with a code and a message that names the file,
// tensor, shape or value at fault. Form of every message (STYLE.md section 7):
//
//     <operation>: <what is wrong, naming the thing and the values>[; <what to do>]
//
// Public preconditions are checked with LOWBIT_CHECK, which throws in every build type; `assert` is kept
// for internal invariants only.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#if defined(__CUDACC__)
#include <sstream>
#else
#include <fmt/format.h>
#endif

namespace lowbit {

enum class ErrorCode : std::uint8_t {
  InvalidArgument,  // a value outside what the API accepts (bits = 5, negative size, bad option)
  ShapeMismatch,    // shapes that must agree do not
  DTypeMismatch,    // a dtype the operation does not take
  Unsupported,      // valid in general, not (yet) by this build or format
  IO,               // the operating system refused: open, read, write, rename, fsync, disk full
  Corrupt,          // a file's content contradicts its own format
  Numerical,        // NaN/Inf input, a matrix that is not positive definite, an overflow
  OutOfMemory,      // host or device allocation failed
  Cuda,             // a CUDA runtime or cuBLAS call failed
};

// "InvalidArgument", "Corrupt", ...
std::string_view to_string(ErrorCode code) noexcept;

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

namespace detail {
[[noreturn]] void throw_error(ErrorCode code, std::string message);

#if defined(__CUDACC__)
// fmt does not compile under nvcc, so .cu files get plain "{}" substitution (no format specs).
template <typename... Args>
[[noreturn]] void throw_formatted(ErrorCode code, std::string_view format, const Args&... args) {
  std::ostringstream out;
  std::size_t pos = 0;
  auto put = [&](const auto& arg) {
    const std::size_t hole = format.find("{}", pos);
    if (hole == std::string_view::npos) return;
    out << format.substr(pos, hole - pos) << arg;
    pos = hole + 2;
  };
  (put(args), ...);
  out << format.substr(pos);
  throw_error(code, out.str());
}
#else
template <typename... Args>
[[noreturn]] void throw_formatted(ErrorCode code, fmt::format_string<Args...> format, Args&&... args) {
  throw_error(code, fmt::format(format, std::forward<Args>(args)...));
}
#endif
}  // namespace detail

}  // namespace lowbit

// LOWBIT_THROW(ErrorCode::Corrupt, "safetensors: '{}': ...", path, ...)
#define LOWBIT_THROW(code, ...) ::lowbit::detail::throw_formatted(::lowbit::code, __VA_ARGS__)

// LOWBIT_CHECK(k % group_size == 0, ErrorCode::InvalidArgument, "quantize_affine: k = {} ...", k, ...)
// The message is formatted only when the check fails.
#define LOWBIT_CHECK(cond, code, ...)                      \
  do {                                                     \
    if (!(cond)) [[unlikely]] {                            \
      ::lowbit::detail::throw_formatted(::lowbit::code, __VA_ARGS__); \
    }                                                      \
  } while (false)
