// Linear layers of the reference forward: y[m, n] = x[m, k] W^T (+ b), fp32 activations on the CPU.
//
// Every projection of the model goes through this one interface, so that a weight can be dense, quantized
// (run through its method's reference matmul), dequantized once at load, or later a CUDA kernel, without
// the forward knowing which. W is [n, k]: n output features, k input features.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/core/tensor.hpp"
#include "lowbit/model/gemm.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::model {

class Linear {
 public:
  virtual ~Linear() = default;

  std::int64_t n() const noexcept { return n_; }  // output features
  std::int64_t k() const noexcept { return k_; }  // input features
  bool has_bias() const noexcept { return !bias_.empty(); }
  Tensor bias() const;  // f32 [n], or undefined without a bias

  // y = x W^T + b for x row-major [m, k], y row-major [m, n] (contiguous fp32, not overlapping).
  virtual void forward(const float* x, std::int64_t m, float* y) const = 0;
  // The same on tensors: x [m, k] of any float dtype -> f32 [m, n]. Throws ShapeMismatch naming both shapes.
  Tensor forward(const Tensor& x) const;
  // "dense f32 [288, 768] (avx512)", "nf4 [288, 768] reference matmul", ...
  virtual std::string describe() const = 0;
  // Bytes this layer holds in memory of its own (repacked or quantized weights, bias); memory-mapped
  // checkpoint views it keeps are not counted.
  virtual std::uint64_t resident_bytes() const = 0;

 protected:
  // bias: [n] of any float dtype, or undefined for none. Throws ShapeMismatch for another shape.
  Linear(std::int64_t n, std::int64_t k, const Tensor& bias);
  void add_bias(float* y, std::int64_t m) const;
  std::uint64_t bias_bytes() const noexcept { return bias_.size() * sizeof(float); }

 private:
  std::int64_t n_;
  std::int64_t k_;
  std::vector<float> bias_;
};

// A dense weight, repacked once for the CPU kernel (gemm.hpp). The weight tensor is kept as given, e.g. a
// zero-copy view of a memory-mapped checkpoint, for callers that need it (quantizers).
class DenseLinear final : public Linear {
 public:
  // weight: [n, k] f32, f16 or bf16 on the host. Throws ShapeMismatch (rank) or DTypeMismatch.
  explicit DenseLinear(Tensor weight, const Tensor& bias = {}, CpuKernel kernel = best_cpu_kernel());

  using Linear::forward;
  void forward(const float* x, std::int64_t m, float* y) const override;
  std::string describe() const override;
  std::uint64_t resident_bytes() const override;
  const Tensor& weight() const noexcept { return weight_; }
  const PackedMatrix& packed() const noexcept { return packed_; }

 private:
  Tensor weight_;
  PackedMatrix packed_;
};

// A quantized weight run through its method's reference matmul (quant::find_method(q.method).matmul),
// which dequantizes on the fly: slow, exact to the method's definition.
class QuantizedLinear final : public Linear {
 public:
  // Throws InvalidArgument if q.method is not registered, ShapeMismatch if q is not 2-D.
  explicit QuantizedLinear(quant::QuantizedTensor q, const Tensor& bias = {});

  using Linear::forward;
  void forward(const float* x, std::int64_t m, float* y) const override;
  std::string describe() const override;
  std::uint64_t resident_bytes() const override;
  const quant::QuantizedTensor& quantized() const noexcept { return q_; }

 private:
  quant::QuantizedTensor q_;
};

// How a quantized weight is run.
enum class QuantizedExecution : std::uint8_t {
  ReferenceMatmul,   // QuantizedLinear: the method's reference matmul on every call
  DequantizeAtLoad,  // DenseLinear over the method's reference dequantization, made once
};

std::unique_ptr<Linear> make_linear(quant::QuantizedTensor q, const Tensor& bias, QuantizedExecution execution);

}  // namespace lowbit::model
