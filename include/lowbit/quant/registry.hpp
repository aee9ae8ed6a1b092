// The method registry: every quantizer by name, so that the CLI, tests and benchmarks can list methods
// and build any of them from a name and options.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/core/progress.hpp"
#include "lowbit/quant/calibration.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::quant {

// Settings of a calibration-based solver that are not part of the encoding (so not in QuantParams).
struct SolverOptions {
  double damp = 0.01;             // GPTQ percdamp: this fraction of mean(diag H) is added to the diagonal
  bool act_order = false;         // GPTQ desc_act: columns in order of decreasing diag(H)
  bool static_groups = false;     // GPTQ: group grids fixed from the unpermuted W before the solve
  std::int64_t block_size = 128;  // GPTQ lazy-batch block
  bool mse = false;               // GPTQ quantizer's grid search (norm 2.4, grid 100, maxshrink 0.8)
  bool duo_scaling = false;       // AWQ: AutoAWQ's x_mean^a / (w_mean^(1-a) + 1e-4) (default: llm-awq's x_mean^a)
  bool clip = true;               // AWQ: the clip search
};

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

  // Calibration-based methods: what they need from a linear's inputs, and the quantizer that uses it
  // (`quantize` then throws InvalidArgument saying calibration is needed). Empty for data-free methods.
  CalibrationNeeds needs;
  std::function<QuantizedTensor(const Tensor& weight, const QuantParams& params, const Calibration& calibration,
                                const SolverOptions& options)>
      quantize_calibrated;
  // Methods that transform whole decoder layers (AWQ: scales folded into norms and previous linears) run
  // only under the layer-by-layer driver (model/layerwise.hpp), which finds their layer procedure by name.
  bool layer_level = false;
  bool calibrated() const noexcept { return static_cast<bool>(quantize_calibrated) || layer_level; }
};

// All registered methods, in a fixed order.
const std::vector<MethodInfo>& methods();
// Throws InvalidArgument naming the unknown method and listing the known ones.
const MethodInfo& find_method(std::string_view name);

}  // namespace lowbit::quant
