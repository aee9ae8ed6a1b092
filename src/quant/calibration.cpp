#include "lowbit/quant/calibration.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <new>

#include "lowbit/core/error.hpp"
#include "lowbit/core/parallel.hpp"

namespace lowbit::quant {
namespace {

using RowMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Rows converted to fp64 per step: bounds the scratch copy of a long batch (4096 x k doubles).
constexpr std::int64_t kChunkRows = 4096;
// Columns of H one task updates.
constexpr std::int64_t kTileColumns = 64;

}  // namespace

struct Calibration::State {
  Eigen::MatrixXd hessian;  // column-major [k, k]; the lower triangle (and diagonal) is kept
  std::vector<double> abs_sum;
  std::vector<float> abs_max;
  std::vector<float> samples;  // [sample_rows, k] row-major, filled in order
  std::int64_t sample_count = 0;
};

Calibration::Calibration(std::int64_t k, CalibrationNeeds needs) : k_(k), needs_(needs), state_(std::make_unique<State>()) {
  LOWBIT_CHECK(k >= 1, ErrorCode::InvalidArgument, "calibration: k = {} input features; need at least 1", k);
  LOWBIT_CHECK(needs.sample_rows >= 0, ErrorCode::InvalidArgument, "calibration: sample_rows = {} is negative",
               needs.sample_rows);
  try {
    if (needs.hessian) state_->hessian = Eigen::MatrixXd::Zero(k, k);
    if (needs.channel_stats) {
      state_->abs_sum.assign(static_cast<std::size_t>(k), 0.0);
      state_->abs_max.assign(static_cast<std::size_t>(k), 0.0f);
    }
    if (needs.sample_rows > 0) state_->samples.reserve(static_cast<std::size_t>(needs.sample_rows * k));
  } catch (const std::bad_alloc&) {
    LOWBIT_THROW(ErrorCode::OutOfMemory,
                 "calibration: cannot allocate the statistics of k = {} inputs ({} bytes of fp64 Hessian, {} sample rows)",
                 k, needs.hessian ? k * k * 8 : 0, needs.sample_rows);
  }
}

Calibration::Calibration(Calibration&&) noexcept = default;
Calibration& Calibration::operator=(Calibration&&) noexcept = default;
Calibration::~Calibration() = default;

void Calibration::add(const Tensor& x, std::int64_t sequences, std::span<const std::uint8_t> keep) {
  LOWBIT_CHECK(x.shape().rank() == 2 && x.shape()[1] == k_, ErrorCode::ShapeMismatch,
               "calibration: input is {}; expected [tokens, {}]", x.shape().to_string(), k_);
  LOWBIT_CHECK(is_floating(x.dtype()), ErrorCode::DTypeMismatch, "calibration: input is {}; expected a float dtype",
               dtype_name(x.dtype()));
  LOWBIT_CHECK(sequences >= 1, ErrorCode::InvalidArgument, "calibration: a batch of {} sequences", sequences);
  const std::int64_t rows = x.shape()[0];
  LOWBIT_CHECK(keep.empty() || static_cast<std::int64_t>(keep.size()) == rows, ErrorCode::ShapeMismatch,
               "calibration: mask of {} entries for {} rows", keep.size(), rows);
  const Tensor f = x.dtype() == DType::F32 ? x.contiguous() : x.to(DType::F32);
  const float* data = f.data<float>();

  // Kept rows, checked for NaN/Inf before anything is accumulated.
  std::vector<std::int64_t> kept;
  kept.reserve(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    if (!keep.empty() && keep[static_cast<std::size_t>(r)] == 0) continue;
    const float* row = data + r * k_;
    for (std::int64_t c = 0; c < k_; ++c) {
      LOWBIT_CHECK(std::isfinite(row[c]), ErrorCode::Numerical, "calibration: input row {} column {} is {}", r, c,
                   row[c]);
    }
    kept.push_back(r);
  }
  const auto n_kept = static_cast<std::int64_t>(kept.size());

  if (needs_.hessian) {
    // The reference's running average: H <- H n / (n + b); n <- n + b; H <- H + (2 / n) X^T X.
    const double n_old = static_cast<double>(sequences_);
    const double n_new = n_old + static_cast<double>(sequences);
    if (sequences_ > 0) state_->hessian *= n_old / n_new;
    const double scale = std::sqrt(2.0 / n_new);
    Eigen::MatrixXd& h = state_->hessian;
    RowMatrix chunk;
    for (std::int64_t begin = 0; begin < n_kept; begin += kChunkRows) {
      const std::int64_t count = std::min(kChunkRows, n_kept - begin);
      chunk.resize(count, k_);
      for (std::int64_t i = 0; i < count; ++i) {
        const float* row = data + kept[static_cast<std::size_t>(begin + i)] * k_;
        for (std::int64_t c = 0; c < k_; ++c) chunk(i, c) = scale * static_cast<double>(row[c]);
      }
      // Lower triangle by column tiles: H[j0:, j0:j0+w] += X[:, j0:]^T X[:, j0:j0+w].
      const std::int64_t tiles = (k_ + kTileColumns - 1) / kTileColumns;
      parallel_for(tiles, 1, [&](std::int64_t t0, std::int64_t t1) {
        for (std::int64_t t = t0; t < t1; ++t) {
          const std::int64_t j0 = t * kTileColumns;
          const std::int64_t w = std::min(kTileColumns, k_ - j0);
          h.block(j0, j0, k_ - j0, w).noalias() +=
              chunk.middleCols(j0, k_ - j0).transpose() * chunk.middleCols(j0, w);
        }
      });
    }
  }
  if (needs_.channel_stats) {
    for (const std::int64_t r : kept) {
      const float* row = data + r * k_;
      for (std::int64_t c = 0; c < k_; ++c) {
        const float a = std::fabs(row[c]);
        state_->abs_sum[static_cast<std::size_t>(c)] += a;
        state_->abs_max[static_cast<std::size_t>(c)] = std::max(state_->abs_max[static_cast<std::size_t>(c)], a);
      }
    }
  }
  for (std::size_t i = 0; i < kept.size() && state_->sample_count < needs_.sample_rows; ++i) {
    const float* row = data + kept[i] * k_;
    state_->samples.insert(state_->samples.end(), row, row + k_);
    ++state_->sample_count;
  }
  sequences_ += sequences;
  tokens_ += n_kept;
}

Tensor Calibration::hessian() const {
  LOWBIT_CHECK(needs_.hessian, ErrorCode::InvalidArgument, "calibration: the Hessian was not collected");
  Tensor out = Tensor::empty({k_, k_}, DType::F64);
  double* p = out.data<double>();
  const Eigen::MatrixXd& h = state_->hessian;
  for (std::int64_t i = 0; i < k_; ++i) {
    for (std::int64_t j = 0; j < k_; ++j) p[i * k_ + j] = i >= j ? h(i, j) : h(j, i);
  }
  return out;
}

Tensor Calibration::mean_abs() const {
  LOWBIT_CHECK(needs_.channel_stats, ErrorCode::InvalidArgument, "calibration: channel statistics were not collected");
  Tensor out = Tensor::empty({k_}, DType::F32);
  float* p = out.data<float>();
  for (std::int64_t c = 0; c < k_; ++c) {
    p[c] = tokens_ > 0 ? static_cast<float>(state_->abs_sum[static_cast<std::size_t>(c)] / static_cast<double>(tokens_))
                       : 0.0f;
  }
  return out;
}

Tensor Calibration::max_abs() const {
  LOWBIT_CHECK(needs_.channel_stats, ErrorCode::InvalidArgument, "calibration: channel statistics were not collected");
  return Tensor::from_values(std::span<const float>(state_->abs_max), {k_});
}

Tensor Calibration::samples() const {
  LOWBIT_CHECK(needs_.sample_rows > 0, ErrorCode::InvalidArgument, "calibration: no sample rows were asked for");
  Tensor out = Tensor::empty({state_->sample_count, k_}, DType::F32);
  std::copy(state_->samples.begin(), state_->samples.end(), out.data<float>());
  return out;
}

}  // namespace lowbit::quant
