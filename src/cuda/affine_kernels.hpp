// The host side of the affine kernels: what src/cuda/affine.cpp hands kernels/affine_*.cu and
// kernels/dequantize.cu. Plain C++ (the .cu files turn it into kernels::WeightOnlyArgs).
#pragma once

#include <cstdint>

#include "lowbit/core/dtype.hpp"
#include "lowbit/cuda/affine.hpp"
#include "lowbit/cuda/device.hpp"

namespace lowbit::cuda::detail {

struct AffineLaunch {
  int bits = 0;
  DType dtype = DType::F16;           // of x and y
  const std::uint32_t* qweight = nullptr;  // [n, words_per_row]
  const void* scales = nullptr;       // f16 or f32 [n, groups]
  bool scales_f32 = false;
  const std::uint8_t* zeros = nullptr;  // [n, groups]
  std::int64_t n = 0, k = 0, k_pad = 0, group = 0, groups = 0;
  const void* x = nullptr;            // [m, k] (already permuted for act-order)
  void* y = nullptr;                  // [m, n]
  int m = 0;
  int k_splits = 1;
  float* partials = nullptr;          // [k_splits, m, n] when k_splits > 1
};

// Each throws Unsupported listing kAffineBuilt when (bits, dtype, tile) has no instance.
void launch_affine_gemv(const AffineLaunch& a, int tile, Stream stream);
void launch_affine_mma(const AffineLaunch& a, int tile, Stream stream);
// W_hat [n, k] in a.dtype into `out` (the Dequantize regime's first half).
void launch_affine_dequantize(const AffineLaunch& a, void* out, Stream stream);

}  // namespace lowbit::cuda::detail
