// The check every weight-only kernel test runs (declared in cuda_test_util.hpp).
#include <cmath>
#include <cstring>
#include <random>

#include "cuda/cuda_test_util.hpp"
#include "lowbit/cuda/matmul.hpp"

namespace lowbit::cuda::test {

void check_weight_only_matmul(const PreparedWeight& w, const Tensor& w_ref, std::int64_t m, DType dt,
                              std::uint64_t seed) {
  const std::int64_t n = w_ref.shape()[0], k = w_ref.shape()[1];
  SCOPED_TRACE(::testing::Message() << w.method << " [" << n << ", " << k << "] m=" << m << " " << dtype_name(dt)
                                    << " seed=" << seed << " plan: " << plan_matmul(w.method, w.params, m, n, k, 132).describe());
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Tensor x = Tensor::empty({m, k}, DType::F32);
  for (std::int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = dist(rng);
  const Tensor x_dt = x.to(dt);
  const Tensor x_rounded = x_dt.to(DType::F32);
  const Tensor xd = to_device(x_dt, w.device);

  Tensor outs[2];
  for (Tensor& out : outs) {
    Tensor y = filled({m, n}, dt, std::nan(""), w.device);
    matmul(w, xd, y);
    out = to_host(y);
  }
  ASSERT_EQ(std::memcmp(outs[0].raw_data(), outs[1].raw_data(), outs[0].nbytes()), 0) << "not deterministic";
  const Tensor got = outs[0].to(DType::F32);
  const float* wp = w_ref.data<float>();
  const float* xp = x_rounded.data<float>();
  double err = 0, norm = 0;
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t r = 0; r < n; ++r) {
      double want = 0;
      for (std::int64_t c = 0; c < k; ++c) want += static_cast<double>(xp[i * k + c]) * wp[r * k + c];
      const double g = got.data<float>()[i * n + r];
      ASSERT_FALSE(std::isnan(g)) << "element " << i << ", " << r << " not written (or NaN)";
      err += (g - want) * (g - want);
      norm += want * want;
    }
  }
  ASSERT_GT(norm, 0.0);
  EXPECT_LE(std::sqrt(err / norm), dt == DType::F16 ? 4e-3 : 2.5e-2);
}

}  // namespace lowbit::cuda::test
