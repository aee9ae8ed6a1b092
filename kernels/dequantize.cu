// The Dequantize regime (m above the tensor-core range: 64, or 8 at 2 and 3 bits) and the small pieces
// every weight-only format shares.
//
//   launch_affine_dequantize   W_hat [n, k] fp16|bf16 from the affine repacked layout (a block a row,
//                              kernels::dequantize_kernel; any Decoder plugs into the same template)
//   gemm_x_wt                  y = x W^T through cublasGemmEx, fp32 accumulation, on a handle per (device,
//                              stream) created once
//   permute_columns            act-order's x[:, perm] gather into a scratch buffer
//   StreamScratch              stream-ordered scratch (cudaMallocAsync / cudaFreeAsync) from the device's
//                              default pool, whose release threshold is raised once per device so that
//                              freed scratch stays in the pool across synchronizations (the default
//                              threshold 0 hands it back to the driver at every sync, and the next call
//                              maps it again)
//
// Operands   x [m, k], W_hat [n, k], y [m, n]: row-major, F16 or BF16 (one dtype for all three).
// Reference  dequantize_affine_reference(); tests/cuda/affine_kernel_test.cpp (m = 1024 and 300).
// Launch     dequantize: 128 threads a block, a block a weight row; permute: 256 threads, one thread an element.
// Refuses    dtypes other than F16/BF16; a (bits, dtype) outside kAffineBuilt: Unsupported listing it.
// Instances  the Dequantize rows of kAffineBuilt (cuda/affine.hpp).
#include <cublas_v2.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "../src/cuda/weight_only.hpp"
#include "affine_decoder.cuh"

namespace lowbit::cuda {
namespace kernels {
namespace {

const char* cublas_status_text(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cublas error";
  }
}

#define LOWBIT_CUBLAS_CHECK(call)                                                                        \
  do {                                                                                                   \
    const cublasStatus_t lowbit_cublas_status_ = (call);                                                 \
    LOWBIT_CHECK(lowbit_cublas_status_ == CUBLAS_STATUS_SUCCESS, ErrorCode::Cuda, "{} failed at {}:{}: {}", \
                 #call, __FILE__, __LINE__, ::lowbit::cuda::kernels::cublas_status_text(lowbit_cublas_status_));                 \
  } while (false)

// One handle per (device, stream), created on first use and kept for the process: cuBLAS handles are meant
// to be reused (creating one costs milliseconds), and a handle's workspace must not be shared by kernels
// that may run at once on different streams. The handle of a (device, stream) is used under its mutex.
struct HandleSlot {
  std::mutex mutex;
  cublasHandle_t handle = nullptr;
};

HandleSlot& handle_slot(int device, Stream stream) {
  static std::mutex map_mutex;
  static std::map<std::pair<int, Stream>, std::unique_ptr<HandleSlot>> slots;
  std::lock_guard lock(map_mutex);
  std::unique_ptr<HandleSlot>& slot = slots[{device, stream}];
  if (!slot) slot = std::make_unique<HandleSlot>();
  return *slot;
}

template <typename T>
__global__ void permute_columns_kernel(const T* x, const std::int32_t* perm, T* out, std::int64_t m, std::int64_t k) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m * k) return;
  const std::int64_t row = i / k;
  const std::int64_t col = i % k;
  out[i] = x[row * k + __ldg(perm + col)];
}

}  // namespace
}  // namespace kernels

namespace detail {

void gemm_x_wt(const void* x, const void* w, void* y, std::int64_t m, std::int64_t n, std::int64_t k, DType dtype,
               int device, Stream stream) {
  LOWBIT_CHECK(dtype == DType::F16 || dtype == DType::BF16, ErrorCode::DTypeMismatch,
               "gemm_x_wt: {} operands; built for f16 and bf16", dtype_name(dtype));
  LOWBIT_CHECK(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX, ErrorCode::ShapeMismatch,
               "gemm_x_wt: m={} n={} k={} exceed cuBLAS's int range", m, n, k);
  kernels::HandleSlot& slot = kernels::handle_slot(device, stream);
  std::lock_guard lock(slot.mutex);
  if (slot.handle == nullptr) LOWBIT_CUBLAS_CHECK(cublasCreate(&slot.handle));
  LOWBIT_CUBLAS_CHECK(cublasSetStream(slot.handle, stream));
  const cudaDataType_t type = dtype == DType::F16 ? CUDA_R_16F : CUDA_R_16BF;
  const float alpha = 1.0f;
  const float beta = 0.0f;
  // Column-major view: y^T [n, m] = W_hat [n, k] (stored as k x n, so op T) x x^T [k, m] (stored as k x m).
  LOWBIT_CUBLAS_CHECK(cublasGemmEx(slot.handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                                   static_cast<int>(k), &alpha, w, type, static_cast<int>(k), x, type,
                                   static_cast<int>(k), &beta, y, type, static_cast<int>(n), CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
}

void permute_columns(const void* x, const std::int32_t* perm, void* out, std::int64_t m, std::int64_t k,
                     Stream stream) {
  const std::int64_t total = m * k;
  if (total == 0) return;
  kernels::permute_columns_kernel<std::uint16_t><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(
      static_cast<const std::uint16_t*>(x), perm, static_cast<std::uint16_t*>(out), m, k);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}

namespace {

// Keep freed memory in the current device's default pool (release threshold = max), once per device.
void keep_default_pool_memory() {
  static std::mutex mutex;
  static std::vector<bool> done;
  int device = 0;
  LOWBIT_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  if (static_cast<std::size_t>(device) < done.size() && done[static_cast<std::size_t>(device)]) return;
  cudaMemPool_t pool = nullptr;
  LOWBIT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  std::uint64_t threshold = UINT64_MAX;
  LOWBIT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  if (done.size() <= static_cast<std::size_t>(device)) done.resize(static_cast<std::size_t>(device) + 1, false);
  done[static_cast<std::size_t>(device)] = true;
}

}  // namespace

StreamScratch::StreamScratch(std::size_t bytes, Stream stream) : stream_(stream) {
  if (bytes == 0) return;
  keep_default_pool_memory();
  LOWBIT_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
}

StreamScratch::~StreamScratch() {
  if (ptr_ != nullptr) (void)cudaFreeAsync(ptr_, stream_);  // a destructor cannot throw; errors resurface
}

DeviceGuard::DeviceGuard(int device) {
  LOWBIT_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) LOWBIT_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current != previous_) (void)cudaSetDevice(previous_);
}

void launch_affine_dequantize(const AffineLaunch& a, void* out, Stream stream) {
  using namespace kernels;
  const bool done = dispatch_affine<Regime::Dequantize>(
      a, 0,
      [&]<AffineKernel E>() {
        using D = AffineDecoderOf<E>;
        launch_dequantize<D>(make_affine_args<D>(a), static_cast<typename D::T*>(out), stream);
      },
      std::make_index_sequence<kAffineBuiltCount>{});
  LOWBIT_CHECK(done, ErrorCode::Unsupported, "affine dequantize: no kernel for {}-bit {}; built: {}", a.bits,
               dtype_name(a.dtype), describe_affine_built());
}

}  // namespace detail
}  // namespace lowbit::cuda
