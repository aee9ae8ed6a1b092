// model/cpu_math.hpp: every kernel's exp against std::exp over the whole useful range (every 2^-10 step
// from -87 to 88, plus tails of every length), the sums, saturation and NaN, and SiLU * up.
#include "lowbit/model/cpu_math.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace lowbit::model {
namespace {

TEST(CpuMath, ExpMatchesStdExpOverTheRange) {
  std::vector<float> x;
  for (float v = -87.0f; v <= 88.0f; v += 1.0f / 1024.0f) x.push_back(v);
  for (const CpuKernel kernel : available_cpu_kernels()) {
    SCOPED_TRACE(to_string(kernel));
    std::vector<float> e = x;
    const double sum = exp_shifted(e.data(), static_cast<std::int64_t>(e.size()), 0.0f, kernel);
    double want_sum = 0, worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double want = std::exp(static_cast<double>(x[i]));
      want_sum += static_cast<float>(want);
      worst = std::max(worst, std::abs(e[i] - want) / want);
    }
    EXPECT_LT(worst, 4e-7) << "worst relative error";  // a few ulp (1 ulp = 6e-8 .. 1.2e-7)
    EXPECT_NEAR(sum, want_sum, 1e-6 * want_sum);
    EXPECT_NEAR(sum_exp_shifted(x.data(), static_cast<std::int64_t>(x.size()), 0.0f, kernel), sum, 1e-12 * sum);
  }
}

TEST(CpuMath, TailsShiftsSaturationAndNaN) {
  for (const CpuKernel kernel : available_cpu_kernels()) {
    SCOPED_TRACE(to_string(kernel));
    for (std::int64_t n = 1; n <= 40; ++n) {  // every tail length of 8- and 16-wide vectors
      std::vector<float> x(static_cast<std::size_t>(n) + 1, 123.0f);  // the extra element must stay untouched
      double want = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        x[static_cast<std::size_t>(i)] = 0.37f * static_cast<float>(i) - 5.0f;
        want += std::exp(0.37 * static_cast<double>(i) - 5.0 - 2.5);
      }
      const double sum = exp_shifted(x.data(), n, 2.5f, kernel);
      EXPECT_NEAR(sum, want, 1e-6 * want) << "n = " << n;
      EXPECT_EQ(x[static_cast<std::size_t>(n)], 123.0f) << "wrote past n = " << n;
    }
    std::vector<float> edge = {-200.0f, -1e30f, 200.0f, std::numeric_limits<float>::quiet_NaN(), 0.0f};
    exp_shifted(edge.data(), 5, 0.0f, kernel);
    for (int i : {0, 1}) {  // saturates towards 0: 0, a denormal, or 2^-126 (AVX2 clamps x at -87.34)
      EXPECT_LE(edge[i], 1.2e-38f);
      EXPECT_GE(edge[i], 0.0f);
    }
    EXPECT_GT(edge[2], 1e38f);
    EXPECT_TRUE(std::isnan(edge[3]));
    EXPECT_EQ(edge[4], 1.0f);
  }
}

TEST(CpuMath, SiluMul) {
  for (const CpuKernel kernel : available_cpu_kernels()) {
    SCOPED_TRACE(to_string(kernel));
    std::vector<float> gate, up;
    for (int i = 0; i < 37; ++i) {
      gate.push_back(-100.0f + 5.5f * static_cast<float>(i));
      up.push_back(0.5f + 0.1f * static_cast<float>(i));
    }
    std::vector<float> out = gate;
    silu_mul(out.data(), up.data(), static_cast<std::int64_t>(out.size()), kernel);
    for (std::size_t i = 0; i < gate.size(); ++i) {
      const double g = gate[i];
      const double want = g / (1.0 + std::exp(-g)) * up[i];
      EXPECT_NEAR(out[i], want, 4e-7 * std::abs(want) + 1e-30) << "gate " << g;
    }
  }
}

}  // namespace
}  // namespace lowbit::model
