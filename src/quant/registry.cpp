#include "lowbit/quant/registry.hpp"

#include <fmt/format.h>

#include "lowbit/quant/affine.hpp"
#include "lowbit/quant/awq.hpp"
#include "lowbit/quant/bnb8.hpp"
#include "lowbit/quant/gptq.hpp"
#include "lowbit/quant/hqq.hpp"
#include "lowbit/quant/llm_int8.hpp"
#include "lowbit/quant/nf4.hpp"

namespace lowbit::quant {

const std::vector<MethodInfo>& methods() {
  // Listed here, not self-registered from each method's file: a static library drops unreferenced
  // objects, and with them any registration done by static constructors.
  static const std::vector<MethodInfo> all = [] {
    std::vector<MethodInfo> v;
    v.push_back(affine_method_info());
    v.push_back(bnb8_method_info());
    v.push_back(nf4_method_info());
    v.push_back(fp4_method_info());
    v.push_back(hqq_method_info());
    v.push_back(llm_int8_method_info());
    v.push_back(gptq_method_info());
    v.push_back(awq_method_info());
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
