// Calibration: what a calibration-based method (GPTQ, AWQ, ...) learns from the inputs of one linear layer,
// or of one group of linears that read the same input (q/k/v; gate/up), streamed batch by batch.
//
// Inputs arrive as f32 [tokens, k] batches, each tagged with the number of sequences it holds. Kept, as
// CalibrationNeeds asks:
//
//   hessian   H = (2 / n) sum_t x_t x_t^T, fp64 [k, k], accumulated in the GPTQ reference's running-average
//             form (gptq.md section 2.1): per batch of b sequences, H <- H n / (n + b); n <- n + b;
//             H <- H + (2 / n) X^T X. So n counts SEQUENCES, as the reference does (GPTQModel divides by
//             tokens instead; the scale of H does not change GPTQ's result, see gptq.md). Accumulated in
//             fp64, so the only rounding is fp64's: a relative 1e-15 per term.
//   channel   per input channel over all tokens: mean |x| and max |x| (fp64 sums), AWQ's activation
//             statistics (awq.md section 2.3).
//   samples   up to `sample_rows` input rows, f32 [rows, k], the first ones seen in order; AWQ's clip
//             search and any output-error measurement use them.
//
// Padding: a batch comes with an optional mask (one byte a row, nonzero = keep); masked rows count for
// nothing. Thread-safe for one writer at a time (the driver feeds batches one after another); the
// accumulation itself is multi-threaded (Eigen's rank-k update over the parallel pool's threads).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "lowbit/core/tensor.hpp"

namespace lowbit::quant {

struct CalibrationNeeds {
  bool hessian = false;           // GPTQ
  bool channel_stats = false;     // AWQ's mean |x|
  std::int64_t sample_rows = 0;   // rows of raw input to keep
  bool any() const noexcept { return hessian || channel_stats || sample_rows > 0; }
};

class Calibration {
 public:
  // k: input features. Throws InvalidArgument for k < 1, and for a Hessian that could not be allocated
  // (naming k and the bytes it needs) rather than failing later.
  Calibration(std::int64_t k, CalibrationNeeds needs);
  Calibration(Calibration&&) noexcept;
  Calibration& operator=(Calibration&&) noexcept;
  ~Calibration();

  // x: [tokens, k] (f32, f16 or bf16; any strides); `sequences` >= 1 (what the running average counts);
  // keep: empty or one entry per row. Throws ShapeMismatch for another k or mask length, Numerical naming
  // the row and column of a NaN/Inf.
  void add(const Tensor& x, std::int64_t sequences = 1, std::span<const std::uint8_t> keep = {});

  std::int64_t k() const noexcept { return k_; }
  const CalibrationNeeds& needs() const noexcept { return needs_; }
  std::int64_t sequences() const noexcept { return sequences_; }  // n of the running average
  std::int64_t tokens() const noexcept { return tokens_; }        // rows kept

  // f64 [k, k], symmetric (both triangles). Throws InvalidArgument if not collected.
  Tensor hessian() const;
  // f32 [k]: mean |x| and max |x| per input channel (0 where no token was seen).
  Tensor mean_abs() const;
  Tensor max_abs() const;
  // f32 [rows, k]: the kept input rows.
  Tensor samples() const;

 private:
  struct State;
  std::int64_t k_ = 0;
  CalibrationNeeds needs_;
  std::int64_t sequences_ = 0;
  std::int64_t tokens_ = 0;
  std::unique_ptr<State> state_;
};

}  // namespace lowbit::quant
