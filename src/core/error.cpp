#include "lowbit/core/error.hpp"

namespace lowbit {

std::string_view to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::InvalidArgument: return "InvalidArgument";
    case ErrorCode::ShapeMismatch: return "ShapeMismatch";
    case ErrorCode::DTypeMismatch: return "DTypeMismatch";
    case ErrorCode::Unsupported: return "Unsupported";
    case ErrorCode::IO: return "IO";
    case ErrorCode::Corrupt: return "Corrupt";
    case ErrorCode::Numerical: return "Numerical";
    case ErrorCode::OutOfMemory: return "OutOfMemory";
    case ErrorCode::Cuda: return "Cuda";
  }
  return "Unknown";
}

namespace detail {
void throw_error(ErrorCode code, std::string message) { throw Error(code, message); }
}  // namespace detail

}  // namespace lowbit
