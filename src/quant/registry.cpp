#include "lowbit/quant/registry.hpp"

#include <fmt/format.h>

namespace lowbit::quant {

const std::vector<MethodInfo>& methods() {
  // Listed here, not self-registered from each method's file: a static library drops unreferenced
  // objects, and with them any registration done by static constructors.
  static const std::vector<MethodInfo> all = [] {
    std::vector<MethodInfo> v;
    return v;
  }();
  return all;
}

const MethodInfo& find_method(std::string_view name) {
  std::string known;
  for (const auto& m : methods()) {
    if (m.name == name) return m;
    known += (known.empty() ? "" : ", ") + m.name;
  }
  LOWBIT_THROW(ErrorCode::InvalidArgument, "quantize: unknown method '{}'; available: {}", name, known);
}

}  // namespace lowbit::quant
