// LLM.int8() on the GPU (kernels/llm_int8.cu + cuBLASLt) against quant::matmul_llm_int8_reference.
//
// Every intermediate of the device pipeline is exact or rounded once in the reference's order
// (cuda/llm_int8.hpp), so the output must equal the reference bit for bit (+0 and -0 compare equal). A
// looser check runs first so a failure shows how far off it is: relative Frobenius error at most one unit
// in the last place of the output type (2^-11 for f16, 2^-8 for bf16).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.hpp"
#include "io/io_test_util.hpp"
#include "lowbit/cuda/llm_int8.hpp"
#include "lowbit/cuda/matmul.hpp"
#include "lowbit/quant/llm_int8.hpp"

namespace lowbit {
namespace {

struct Case {
  std::int64_t m, n, k;
  int outlier_cols;     // columns that get an element >= threshold
  double threshold;     // 0: no decomposition
};

std::string describe(const Case& c, DType dt, std::uint64_t seed) {
  return fmt::format("m={} n={} k={} outlier_cols={} threshold={} {} seed={}", c.m, c.n, c.k, c.outlier_cols,
                     c.threshold, dtype_name(dt), seed);
}

// x ~ N(0, 1) in dt; `outlier_cols` distinct columns get one element of magnitude 8..40 in a random row
// (one of them exactly the threshold, one beyond the fp16 range for bf16); row 1 is all zero when m > 2.
Tensor make_x(const Case& c, DType dt, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensor x = Tensor::empty({c.m, c.k}, DType::F32);
  float* p = x.data<float>();
  for (std::int64_t e = 0; e < x.numel(); ++e) p[e] = std::clamp(normal(rng), -5.5f, 5.5f);
  if (c.m > 2) std::fill(p + c.k, p + 2 * c.k, 0.0f);
  std::vector<std::int64_t> cols(static_cast<std::size_t>(c.k));
  for (std::int64_t j = 0; j < c.k; ++j) cols[static_cast<std::size_t>(j)] = j;
  std::shuffle(cols.begin(), cols.end(), rng);
  std::uniform_real_distribution<float> big(8.0f, 40.0f);
  for (int t = 0; t < c.outlier_cols; ++t) {
    const std::int64_t j = cols[static_cast<std::size_t>(t)];
    std::int64_t i = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(c.m));
    if (c.m > 2 && i == 1) i = 0;
    float v = (rng() & 1) ? big(rng) : -big(rng);
    if (t == 0 && c.threshold > 0) v = static_cast<float>(c.threshold);  // ">=": exactly t is an outlier
    if (t == 1 && dt == DType::BF16 && c.threshold > 0) v = 1.0e5f;     // fp16 Inf: still an outlier
    p[i * c.k + j] = v;
  }
  return x.to(dt);
}

quant::QuantizedTensor make_weight(const Case& c, std::uint64_t seed) {
  quant::LlmInt8Config config;
  config.threshold = c.threshold;
  return quant::quantize_llm_int8(io::test::random_weight(c.n, c.k, seed), config);
}

Tensor run_gpu(const cuda::PreparedWeight& w, const Tensor& x_device, DType dt) {
  Tensor y = cuda::filled({x_device.shape()[0], w.n}, dt, std::nan(""));
  cuda::matmul(w, x_device, y);
  return cuda::to_host(y);
}

void check_case(const Case& c, DType dt, std::uint64_t seed) {
  SCOPED_TRACE(describe(c, dt, seed));
  const quant::QuantizedTensor q = make_weight(c, seed);
  const Tensor x = make_x(c, dt, seed + 1);
  const Tensor y_ref = quant::matmul_llm_int8_reference(q, x);  // f32 [m, n], values of dt

  const cuda::PreparedWeight w = cuda::prepare(q);
  ASSERT_EQ(w.weight_bytes(), static_cast<std::uint64_t>(c.n * c.k + 4 * c.n));
  const Tensor x_device = cuda::to_device(x);
  const Tensor y1 = run_gpu(w, x_device, dt);
  const Tensor y2 = run_gpu(w, x_device, dt);
  ASSERT_EQ(y1.dtype(), dt);
  ASSERT_EQ(std::memcmp(y1.raw_data(), y2.raw_data(), y1.nbytes()), 0) << "two runs differ";

  const Tensor y = y1.to(DType::F32);
  const float* a = y.data<float>();
  const float* b = y_ref.data<float>();
  double err = 0.0, ref = 0.0, max_ref = 0.0;
  std::int64_t different = 0, first_bad = -1;
  for (std::int64_t e = 0; e < y.numel(); ++e) {
    ASSERT_FALSE(std::isnan(a[e])) << "y[" << e / c.n << ", " << e % c.n << "] is NaN (not written?)";
    err += (static_cast<double>(a[e]) - b[e]) * (static_cast<double>(a[e]) - b[e]);
    ref += static_cast<double>(b[e]) * b[e];
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(b[e])));
    if (a[e] != b[e]) {
      ++different;
      if (first_bad < 0) first_bad = e;
    }
  }
  ASSERT_GT(max_ref, 0.0) << "degenerate reference";
  const double ulp = dt == DType::F16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  EXPECT_LE(std::sqrt(err / ref), ulp);
  EXPECT_EQ(different, 0) << "first difference at [" << first_bad / c.n << ", " << first_bad % c.n
                          << "]: gpu " << (first_bad >= 0 ? a[first_bad] : 0.0f) << " vs reference "
                          << (first_bad >= 0 ? b[first_bad] : 0.0f);
}

TEST(CudaLlmInt8Kernel, MatchesReferenceForEveryBatchSize) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 100;
  for (const DType dt : cuda::kLlmInt8Built) {
    for (const std::int64_t m : {1, 2, 3, 8, 16, 33, 64, 256, 1024}) {
      check_case({m, 72, 264, 3, 6.0}, dt, seed++);
    }
  }
}

TEST(CudaLlmInt8Kernel, MatchesReferenceOnRealShapes) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 200;
  for (const DType dt : cuda::kLlmInt8Built) {
    check_case({1, 4096, 4096, 4, 6.0}, dt, seed++);
    check_case({64, 4096, 4096, 4, 6.0}, dt, seed++);
    check_case({8, 264, 7392, 7, 6.0}, dt, seed++);  // a tensor-parallel shard: k = 7392
    check_case({17, 11008 / 8, 512, 2, 6.0}, dt, seed++);
  }
}

TEST(CudaLlmInt8Kernel, OutlierCountsFromNoneToBeyondThePanel) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 300;
  for (const DType dt : cuda::kLlmInt8Built) {
    check_case({33, 136, 264, 0, 6.0}, dt, seed++);    // threshold set, nothing reaches it
    check_case({33, 136, 264, 5, 0.0}, dt, seed++);    // threshold 0: pure int8 (large values quantized)
    check_case({5, 136, 264, 1, 6.0}, dt, seed++);
    // More outlier columns than the dense panel holds: columns 64.. are gathered in the epilogue; 96 >
    // 3 chunks of 32 exercises the chunk loop.
    check_case({40, 136, 512, static_cast<int>(cuda::kLlmInt8PanelCols) + 40, 6.0}, dt, seed++);
    check_case({1, 136, 512, static_cast<int>(cuda::kLlmInt8PanelCols) + 3, 6.0}, dt, seed++);
    check_case({5, 136, 512, static_cast<int>(cuda::kLlmInt8PanelCols) + 6, 6.0}, dt, seed++);  // Gemv, many
  }
}

TEST(CudaLlmInt8Kernel, ScratchIsReusedAcrossBatchSizes) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  // Large m first, then small, then large again: the scratch grows once and stale contents (the previous
  // call's outlier mask and columns) must not leak into the next result.
  const Case big{300, 64, 128, 6, 6.0}, small{2, 64, 128, 0, 6.0};
  const quant::QuantizedTensor q = make_weight(big, 7);
  const cuda::PreparedWeight w = cuda::prepare(q);
  for (const Case& c : {big, small, big}) {
    SCOPED_TRACE(describe(c, DType::F16, 8));
    const Tensor x = make_x(c, DType::F16, 8 + c.m);
    const Tensor y_ref = quant::matmul_llm_int8_reference(q, x);
    const Tensor y = run_gpu(w, cuda::to_device(x), DType::F16).to(DType::F32);
    for (std::int64_t e = 0; e < y.numel(); ++e) ASSERT_EQ(y.data<float>()[e], y_ref.data<float>()[e]) << e;
  }
}

TEST(CudaLlmInt8Kernel, RefusesMisalignedActivations) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  const Case c{2, 64, 64, 0, 6.0};
  const cuda::PreparedWeight w = cuda::prepare(make_weight(c, 9));
  const Tensor storage = cuda::to_device(make_x({3, 64, 64, 0, 6.0}, DType::F16, 10).reshape({3 * 64}));
  // A view starting 2 bytes in: contiguous, right shape, not 16-byte aligned.
  const Tensor x = storage.slice(0, 1, 1 + 2 * 64).reshape({2, 64});
  Tensor y = cuda::filled({2, 64}, DType::F16, 0.0);
  try {
    cuda::matmul(w, x, y);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("16-byte"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowbit
