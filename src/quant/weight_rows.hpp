// Private to src/quant: reads a float weight (f32, f16, bf16, f64) as fp32, one row or one span at a time,
// so that a quantizer converts and checks its input inside its own parallel loop instead of first making
// an fp32 copy of the whole tensor on one thread (float_weight() in common.hpp does that).
//
// Conversions are exact (f16, bf16 -> f32) or correctly rounded (f64 -> f32); a NaN or Inf element is an
// Error{Numerical} naming the element, its row and column, in the form float_weight() uses.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "lowbit/core/error.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/core/tensor.hpp"

namespace lowbit::quant {

class WeightRows {
 public:
  // `weight`: a host float tensor, not empty; 2-D unless `any_rank` (then rows are its last dimension).
  static WeightRows open(const Tensor& weight, std::string_view operation, bool any_rank = false) {
    LOWBIT_CHECK(weight.defined(), ErrorCode::InvalidArgument, "{}: the weight is undefined", operation);
    if (!any_rank) {
      LOWBIT_CHECK(weight.rank() == 2, ErrorCode::ShapeMismatch, "{}: expected a 2-D weight [n, k], got {}", operation,
                   weight.describe());
    } else {
      LOWBIT_CHECK(weight.rank() >= 1, ErrorCode::ShapeMismatch, "{}: expected a weight of rank 1 to 4, got {}",
                   operation, weight.describe());
    }
    const DType t = weight.dtype();
    LOWBIT_CHECK(t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64, ErrorCode::DTypeMismatch,
                 "{}: weight is {}; expected f32, f16, bf16 or f64", operation, weight.describe());
    LOWBIT_CHECK(weight.numel() > 0, ErrorCode::InvalidArgument, "{}: weight {} is empty; nothing to quantize",
                 operation, weight.describe());
    WeightRows r;
    r.weight_ = weight.contiguous();
    r.operation_ = std::string(operation);
    r.k_ = weight.size(-1);
    r.n_ = weight.numel() / r.k_;
    return r;
  }

  std::int64_t n() const noexcept { return n_; }  // rows (product of all but the last dimension)
  std::int64_t k() const noexcept { return k_; }  // elements per row
  std::int64_t numel() const noexcept { return n_ * k_; }
  const Tensor& tensor() const noexcept { return weight_; }

  // Row r as fp32 into out[0, k).
  void read(std::int64_t r, float* out) const { read_flat(r * k_, (r + 1) * k_, out); }

  // Elements [begin, end) of the flattened weight as fp32 into out[0, end - begin).
  void read_flat(std::int64_t begin, std::int64_t end, float* out) const {
    const std::int64_t len = end - begin;
    // `bad` collects "exponent all ones" (Inf or NaN) as an integer so that the loops vectorize.
    std::uint32_t bad = 0;
    switch (weight_.dtype()) {
      case DType::F32: {
        const float* in = static_cast<const float*>(weight_.raw_data()) + begin;
        std::memcpy(out, in, static_cast<std::size_t>(len) * sizeof(float));
        for (std::int64_t i = 0; i < len; ++i) bad |= (~float_bits(out[i]) & 0x7f800000u) == 0 ? 1u : 0u;
        break;
      }
      case DType::F16: {
        const std::uint16_t* in = static_cast<const std::uint16_t*>(weight_.raw_data()) + begin;
        for (std::int64_t i = 0; i < len; ++i) {
          const std::uint32_t h = in[i];
          bad |= (~h & 0x7c00u) == 0 ? 1u : 0u;
          // Exponent and mantissa moved into an fp32 pattern are the value times 2^-112 (subnormals included,
          // as fp32 subnormals); the power-of-two product is exact. Inf/NaN were flagged above.
          const float magnitude = bits_float((h & 0x7fffu) << 13) * 0x1p112f;
          out[i] = bits_float(float_bits(magnitude) | ((h & 0x8000u) << 16));
        }
        break;
      }
      case DType::BF16: {
        const std::uint16_t* in = static_cast<const std::uint16_t*>(weight_.raw_data()) + begin;
        for (std::int64_t i = 0; i < len; ++i) {
          bad |= (~static_cast<std::uint32_t>(in[i]) & 0x7f80u) == 0 ? 1u : 0u;
          out[i] = bits_float(static_cast<std::uint32_t>(in[i]) << 16);
        }
        break;
      }
      case DType::F64: {
        const double* in = static_cast<const double*>(weight_.raw_data()) + begin;
        for (std::int64_t i = 0; i < len; ++i) {
          out[i] = static_cast<float>(in[i]);
          bad |= std::isfinite(out[i]) ? 0u : 1u;
        }
        break;
      }
      default:
        break;
    }
    if (bad != 0) [[unlikely]]
      report_non_finite(begin, end);
  }

 private:
  [[noreturn]] void report_non_finite(std::int64_t begin, std::int64_t end) const {
    for (std::int64_t i = begin; i < end; ++i) {
      double v = 0;
      switch (weight_.dtype()) {
        case DType::F32:
          v = static_cast<const float*>(weight_.raw_data())[i];
          break;
        case DType::F16:
          v = f16_bits_to_f32(static_cast<const std::uint16_t*>(weight_.raw_data())[i]);
          break;
        case DType::BF16:
          v = bf16_bits_to_f32(static_cast<const std::uint16_t*>(weight_.raw_data())[i]);
          break;
        case DType::F64:
          v = static_cast<const double*>(weight_.raw_data())[i];
          break;
        default:
          break;
      }
      if (!std::isfinite(static_cast<float>(v))) {
        LOWBIT_THROW(ErrorCode::Numerical, "{}: weight {} has {} at element {} (row {}, column {}){}", operation_,
                     weight_.describe(), v, i, i / k_, i % k_, std::isfinite(v) ? "; beyond the fp32 range" : "");
      }
    }
    LOWBIT_THROW(ErrorCode::Numerical, "{}: weight {} has a NaN or Inf in elements [{}, {})", operation_,
                 weight_.describe(), begin, end);
  }

  Tensor weight_;
  std::string operation_;
  std::int64_t n_ = 0, k_ = 0;
};

}  // namespace lowbit::quant
