// The method registry: every quantizer by name, so that the CLI, tests and benchmarks can list methods
// and build any of them from a name and options.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/core/progress.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::quant {

struct MethodInfo {
  std::string name;     // "nf4"
  std::string summary;  // one line for `lowbit quantize --help`
  QuantParams defaults;  // what the reference uses when the user says nothing
  // W [n, k] (f32/f16/bf16) -> QuantizedTensor. Throws lowbit::Error on bad input.
  std::function<QuantizedTensor(const Tensor& weight, const QuantParams& params)> quantize;
  // The reference dequantization: fp32, shape q.shape.
  std::function<Tensor(const QuantizedTensor& q)> dequantize;
  // The reference matmul y = x W_hat^T (fp32 [m, n]) in the method's order of operations.
  std::function<Tensor(const QuantizedTensor& q, const Tensor& x)> matmul;
};

// All registered methods, in a fixed order.
const std::vector<MethodInfo>& methods();
// Throws InvalidArgument naming the unknown method and listing the known ones.
const MethodInfo& find_method(std::string_view name);

}  // namespace lowbit::quant
