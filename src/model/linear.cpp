#include "lowbit/model/linear.hpp"

#include <fmt/format.h>

#include <cstring>

#include "lowbit/core/error.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::model {
namespace {

std::vector<float> float_vector(const Tensor& t) {
  const Tensor f = t.to(DType::F32).contiguous();
  const float* p = f.data<float>();
  return std::vector<float>(p, p + f.numel());
}

}  // namespace

Linear::Linear(std::int64_t n, std::int64_t k, const Tensor& bias) : n_(n), k_(k) {
  if (!bias.defined()) return;
  LOWBIT_CHECK(bias.rank() == 1 && bias.size(0) == n, ErrorCode::ShapeMismatch,
               "linear: bias is {} but the weight has n = {} outputs", bias.shape().to_string(), n);
  LOWBIT_CHECK(is_floating(bias.dtype()), ErrorCode::DTypeMismatch, "linear: bias is {}, not a float tensor",
               bias.describe());
  bias_ = float_vector(bias);
}

void Linear::add_bias(float* y, std::int64_t m) const {
  if (bias_.empty()) return;
  for (std::int64_t i = 0; i < m; ++i) {
    float* row = y + i * n_;
    for (std::int64_t j = 0; j < n_; ++j) row[j] += bias_[static_cast<std::size_t>(j)];
  }
}

Tensor Linear::forward(const Tensor& x) const {
  LOWBIT_CHECK(x.rank() == 2 && x.size(1) == k_, ErrorCode::ShapeMismatch,
               "linear: input is {} but the layer ({}) takes [m, {}]", x.shape().to_string(), describe(), k_);
  LOWBIT_CHECK(is_floating(x.dtype()), ErrorCode::DTypeMismatch, "linear: input is {}, not a float tensor",
               x.describe());
  const Tensor xf = x.dtype() == DType::F32 ? x.contiguous() : x.to(DType::F32);
  Tensor y = Tensor::empty({x.size(0), n_}, DType::F32);
  forward(xf.data<float>(), x.size(0), y.data<float>());
  return y;
}

DenseLinear::DenseLinear(Tensor weight, const Tensor& bias, CpuKernel kernel)
    : Linear(weight.rank() == 2 ? weight.size(0) : 0, weight.rank() == 2 ? weight.size(1) : 0, bias),
      weight_(std::move(weight)) {
  LOWBIT_CHECK(weight_.rank() == 2, ErrorCode::ShapeMismatch, "linear: weight is {}, not 2-D [n, k]",
               weight_.describe());
  LOWBIT_CHECK(weight_.dtype() == DType::F32 || weight_.dtype() == DType::F16 || weight_.dtype() == DType::BF16,
               ErrorCode::DTypeMismatch, "linear: weight is {}; f32, f16 or bf16 are supported", weight_.describe());
  const Tensor f = weight_.dtype() == DType::F32 ? weight_.contiguous() : weight_.to(DType::F32);
  packed_ = PackedMatrix::pack(f.data<float>(), n(), k(), k(), kernel);
}

void DenseLinear::forward(const float* x, std::int64_t m, float* y) const {
  gemm(x, m, k(), packed_, y, n());
  add_bias(y, m);
}

std::string DenseLinear::describe() const {
  return fmt::format("dense {} {}{} ({} kernel)", dtype_name(weight_.dtype()), weight_.shape().to_string(),
                     has_bias() ? " + bias" : "", to_string(packed_.kernel()));
}

QuantizedLinear::QuantizedLinear(quant::QuantizedTensor q, const Tensor& bias)
    : Linear(q.shape.rank() == 2 ? q.shape[0] : 0, q.shape.rank() == 2 ? q.shape[1] : 0, bias), q_(std::move(q)) {
  LOWBIT_CHECK(q_.shape.rank() == 2, ErrorCode::ShapeMismatch, "linear: quantized weight {} is not 2-D [n, k]",
               q_.describe());
  (void)quant::find_method(q_.method);  // an unknown method fails here, at load, not at the first token
}

void QuantizedLinear::forward(const float* x, std::int64_t m, float* y) const {
  const Tensor xt = Tensor::wrap(const_cast<float*>(x), {m, k()}, DType::F32);
  const Tensor out = quant::find_method(q_.method).matmul(q_, xt);
  LOWBIT_CHECK(out.rank() == 2 && out.size(0) == m && out.size(1) == n(), ErrorCode::ShapeMismatch,
               "linear: the {} reference matmul returned {} for x [{}, {}] and W {}", q_.method,
               out.shape().to_string(), m, k(), q_.shape.to_string());
  const Tensor f = out.dtype() == DType::F32 ? out.contiguous() : out.to(DType::F32);
  std::memcpy(y, f.data<float>(), static_cast<std::size_t>(m * n()) * sizeof(float));
  add_bias(y, m);
}

Tensor Linear::bias() const {
  if (bias_.empty()) return {};
  return Tensor::from_values(std::span<const float>(bias_), {n_});
}

std::uint64_t DenseLinear::resident_bytes() const { return packed_.bytes() + bias_bytes(); }

std::uint64_t QuantizedLinear::resident_bytes() const { return q_.storage_bytes() + bias_bytes(); }

std::string QuantizedLinear::describe() const {
  return fmt::format("{} {}{} (reference matmul)", q_.method, q_.shape.to_string(), has_bias() ? " + bias" : "");
}

std::unique_ptr<Linear> make_linear(quant::QuantizedTensor q, const Tensor& bias, QuantizedExecution execution) {
  if (execution == QuantizedExecution::DequantizeAtLoad) {
    return std::make_unique<DenseLinear>(quant::find_method(q.method).dequantize(q), bias);
  }
  return std::make_unique<QuantizedLinear>(std::move(q), bias);
}

}  // namespace lowbit::model
