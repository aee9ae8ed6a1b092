#include <cmath>
#include <cstring>
#include <random>

#include "cuda/cuda_test_util.hpp"

namespace lowbit {
namespace {

TEST(CudaDevice, HostDeviceRoundTripIsBitExact) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::mt19937 rng(1234);
  std::normal_distribution<float> dist;
  for (const Shape& shape : {Shape{1}, Shape{17, 33}, Shape{3, 5, 7, 9}, Shape{4096, 11}}) {
    SCOPED_TRACE(shape.to_string());
    Tensor host = Tensor::empty(shape, DType::F32);
    float* p = host.data<float>();
    for (std::int64_t i = 0; i < host.numel(); ++i) p[i] = dist(rng);
    const Tensor half = host.to(DType::F16);
    const Tensor back = cuda::to_host(cuda::to_device(half));
    ASSERT_EQ(back.shape(), shape);
    ASSERT_EQ(std::memcmp(back.raw_data(), half.raw_data(), half.nbytes()), 0);
  }
}

TEST(CudaDevice, StridedHostViewIsCopiedContiguously) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  Tensor host = Tensor::empty({6, 10}, DType::F32);
  for (std::int64_t i = 0; i < 6; ++i)
    for (std::int64_t j = 0; j < 10; ++j) host.set({i, j}, static_cast<double>(i * 10 + j));
  const Tensor view = host.transpose(0, 1).slice(0, 2, 7);  // [5, 6], strided
  const Tensor back = cuda::to_host(cuda::to_device(view));
  for (std::int64_t i = 0; i < 5; ++i)
    for (std::int64_t j = 0; j < 6; ++j) EXPECT_EQ(back.get({i, j}), view.get({i, j}));
}

TEST(CudaDevice, FilledWritesEveryElement) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  const Tensor poisoned = cuda::to_host(cuda::filled({1000, 37}, DType::F16, std::nan("")));
  for (std::int64_t i = 0; i < 1000; ++i) ASSERT_TRUE(std::isnan(poisoned.get({i, 36})));
  const Tensor ones = cuda::to_host(cuda::filled({5, 3}, DType::BF16, 1.0));
  EXPECT_EQ(ones.get({4, 2}), 1.0);
}

TEST(CudaDevice, DeviceTensorRefusesHostAccess) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  const Tensor d = cuda::empty({4}, DType::F32);
  EXPECT_TRUE(d.device().is_cuda());
  try {
    (void)d.get({0});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Unsupported);
  }
}

TEST(CudaDevice, BadOrdinalIsAClearError) {
  try {
    (void)cuda::empty({4}, DType::F32, 1000);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Cuda);
    EXPECT_NE(std::string(e.what()).find("1000"), std::string::npos);
  }
}

}  // namespace
}  // namespace lowbit
