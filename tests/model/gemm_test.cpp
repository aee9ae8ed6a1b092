// model/gemm.hpp: every kernel this CPU runs against a naive fp64 product, on shapes that hit every tail
// (m not a multiple of the tile height, n not a multiple of the panel width, k across the 128-long
// blocks), with row strides longer than the rows, accumulation, and determinism across thread counts.
#include "lowbit/model/gemm.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "lowbit/core/error.hpp"
#include "lowbit/core/parallel.hpp"

namespace lowbit::model {
namespace {

constexpr float kSentinel = -12345.0f;

std::vector<float> random_values(std::size_t count, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (float& x : v) x = dist(rng);
  return v;
}

struct Shape3 {
  std::int64_t m, n, k;
};

// y = x W^T (+ y0), W [n, k] with row stride ldw, x [m, k] with row stride ldx, y with row stride ldy.
void check_kernel(CpuKernel kernel, const Shape3& s, bool accumulate, bool transposed) {
  const std::int64_t ldx = s.k + 3;
  const std::int64_t ldw = s.k + 5;
  const std::int64_t ldy = s.n + 2;
  const std::uint64_t seed = static_cast<std::uint64_t>(s.m * 1000003 + s.n * 1009 + s.k);
  SCOPED_TRACE(fmt::format("kernel {} m={} n={} k={} accumulate={} transposed={} seed={}", to_string(kernel), s.m, s.n,
                           s.k, accumulate, transposed, seed));
  const std::vector<float> x = random_values(static_cast<std::size_t>(s.m * ldx), seed);
  const std::vector<float> w = random_values(static_cast<std::size_t>(s.n * ldw), seed + 1);
  std::vector<float> y0 = random_values(static_cast<std::size_t>(s.m * ldy), seed + 2);
  if (!accumulate) std::fill(y0.begin(), y0.end(), kSentinel);
  for (std::int64_t i = 0; i < s.m; ++i)  // padding beyond n must stay untouched
    for (std::int64_t j = s.n; j < ldy; ++j) y0[static_cast<std::size_t>(i * ldy + j)] = kSentinel;

  PackedMatrix packed;
  if (transposed) {  // v = W^T [k, n] with row stride n + 4
    const std::int64_t ldv = s.n + 4;
    std::vector<float> v(static_cast<std::size_t>(s.k * ldv), 0.0f);
    for (std::int64_t j = 0; j < s.n; ++j)
      for (std::int64_t kk = 0; kk < s.k; ++kk)
        v[static_cast<std::size_t>(kk * ldv + j)] = w[static_cast<std::size_t>(j * ldw + kk)];
    packed = PackedMatrix::pack_transposed(v.data(), s.k, s.n, ldv, kernel);
  } else {
    packed = PackedMatrix::pack(w.data(), s.n, s.k, ldw, kernel);
  }
  ASSERT_EQ(packed.n(), s.n);
  ASSERT_EQ(packed.k(), s.k);
  std::vector<float> y = y0;
  gemm(x.data(), s.m, ldx, packed, y.data(), ldy, accumulate);

  double worst = 0;
  for (std::int64_t i = 0; i < s.m; ++i) {
    for (std::int64_t j = 0; j < ldy; ++j) {
      const float got = y[static_cast<std::size_t>(i * ldy + j)];
      if (j >= s.n) {
        ASSERT_EQ(got, kSentinel) << "wrote past n at row " << i << " column " << j;
        continue;
      }
      double want = accumulate ? y0[static_cast<std::size_t>(i * ldy + j)] : 0.0;
      for (std::int64_t kk = 0; kk < s.k; ++kk)
        want +=
            static_cast<double>(x[static_cast<std::size_t>(i * ldx + kk)]) * w[static_cast<std::size_t>(j * ldw + kk)];
      // |x|, |w| <= 1: fp32 accumulation of k products errs by at most about k * eps32 (abs).
      const double tol = 2.0 * static_cast<double>(s.k + 1) * 1.2e-7;
      worst = std::max(worst, std::abs(got - want));
      ASSERT_NEAR(got, want, tol) << "row " << i << " column " << j;
    }
  }
}

TEST(Gemm, EveryKernelMatchesNaiveProductOnTailShapes) {
  const Shape3 shapes[] = {{1, 1, 1},    {1, 17, 5},  {3, 16, 128},  {7, 33, 129}, {8, 32, 257},
                           {9, 100, 64}, {48, 15, 3}, {50, 31, 300}, {97, 65, 77}, {1, 300, 288}};
  for (const CpuKernel kernel : available_cpu_kernels()) {
    for (const Shape3& s : shapes) {
      for (const bool accumulate : {false, true}) check_kernel(kernel, s, accumulate, /*transposed=*/false);
      check_kernel(kernel, s, /*accumulate=*/false, /*transposed=*/true);
    }
  }
}

TEST(Gemm, KernelsAgreeAndAreDeterministicAcrossThreadCounts) {
  const std::int64_t m = 70, n = 200, k = 300;
  const std::vector<float> x = random_values(static_cast<std::size_t>(m * k), 7);
  const std::vector<float> w = random_values(static_cast<std::size_t>(n * k), 8);
  const int threads = num_threads();
  std::vector<float> reference;
  for (const CpuKernel kernel : available_cpu_kernels()) {
    const PackedMatrix packed = PackedMatrix::pack(w.data(), n, k, k, kernel);
    std::vector<float> first;
    for (const int t : {1, 2, 3}) {
      set_num_threads(t);
      std::vector<float> y(static_cast<std::size_t>(m * n), kSentinel);
      gemm(x.data(), m, k, packed, y.data(), n);
      if (first.empty()) {
        first = y;
      } else {
        EXPECT_EQ(y, first) << to_string(kernel) << " differs between 1 and " << t << " threads";
      }
    }
    if (reference.empty()) reference = first;
    for (std::size_t i = 0; i < first.size(); ++i) ASSERT_NEAR(first[i], reference[i], 1e-4) << to_string(kernel);
  }
  set_num_threads(threads);
}

TEST(Gemm, EmptyDimensions) {
  const CpuKernel kernel = best_cpu_kernel();
  const std::vector<float> x(8, 1.0f);
  // k = 0: y = 0 (or unchanged when accumulating).
  const PackedMatrix none = PackedMatrix::pack(x.data(), 3, 0, 0, kernel);
  std::vector<float> y(6, 5.0f);
  gemm(x.data(), 2, 0, none, y.data(), 3);
  EXPECT_EQ(y, std::vector<float>(6, 0.0f));
  y.assign(6, 5.0f);
  gemm(x.data(), 2, 0, none, y.data(), 3, /*accumulate=*/true);
  EXPECT_EQ(y, std::vector<float>(6, 5.0f));
  // m = 0 and n = 0 write nothing.
  const PackedMatrix w = PackedMatrix::pack(x.data(), 2, 4, 4, kernel);
  gemm(x.data(), 0, 4, w, y.data(), 2);
  EXPECT_EQ(y, std::vector<float>(6, 5.0f));
}

TEST(Gemm, RejectsShortStrides) {
  const std::vector<float> x(64, 1.0f);
  EXPECT_THROW(PackedMatrix::pack(x.data(), 4, 8, 7), Error);
  const PackedMatrix w = PackedMatrix::pack(x.data(), 4, 8, 8);
  std::vector<float> y(64);
  EXPECT_THROW(gemm(x.data(), 2, 7, w, y.data(), 4), Error);
  EXPECT_THROW(gemm(x.data(), 2, 8, w, y.data(), 3), Error);
  EXPECT_THROW(gemm(x.data(), -1, 8, w, y.data(), 4), Error);
}

}  // namespace
}  // namespace lowbit::model
