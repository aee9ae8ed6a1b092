#pragma once

#include <gtest/gtest.h>

#include <cstdint>

#include "lowbit/core/tensor.hpp"
#include "lowbit/cuda/device.hpp"
#include "lowbit/cuda/matmul.hpp"

// GTEST_SKIP with a message where no CUDA device is present, so CPU-only machines report "skipped".
#define LOWBIT_REQUIRE_CUDA_DEVICE()                                         \
  do {                                                                       \
    if (::lowbit::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"; \
  } while (false)

namespace lowbit::cuda::test {

// Runs matmul(w, x) twice on NaN-poisoned outputs for a random x [m, k] in `dt`, requires bitwise-identical
// results with every element written, and a relative Frobenius error against w_ref (the f32 reference
// W_hat [n, k]) times the rounded x of at most 4e-3 (fp16) or 2.5e-2 (bf16). Needs a CUDA device.
void check_weight_only_matmul(const PreparedWeight& w, const Tensor& w_ref, std::int64_t m, DType dt,
                              std::uint64_t seed);

}  // namespace lowbit::cuda::test
