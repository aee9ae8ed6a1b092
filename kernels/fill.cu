// Fills device memory with one element's bit pattern: the poison (NaN) that GPU tests write into an
// output before a kernel runs, so an element the kernel never wrote cannot pass as correct.
//
// Operands   data: n elements of element_bytes (1, 2, 4, 8) each, on the current device.
// Launch     a grid-stride loop, 256 threads a block, at most 4 blocks per SM's worth of work.
// Refuses    element_bytes outside {1, 2, 4, 8}: Error naming the value.
#include <cuda_runtime.h>

#include <cstdint>

#include "../src/cuda/check.hpp"
#include "lowbit/cuda/device.hpp"

namespace lowbit::cuda {
namespace {

template <typename T>
__global__ void fill_kernel(T* data, std::int64_t n, T value) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    data[i] = value;
  }
}

template <typename T>
void run_fill(void* data, std::int64_t n, std::uint64_t pattern, Stream stream) {
  constexpr int kThreads = 256;
  const std::int64_t blocks = (n + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 ? blocks : 65535);
  fill_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<T*>(data), n, static_cast<T>(pattern));
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void launch_fill(void* data, std::int64_t n, int element_bytes, std::uint64_t pattern, Stream stream) {
  if (n == 0) return;
  switch (element_bytes) {
    case 1: return run_fill<std::uint8_t>(data, n, pattern, stream);
    case 2: return run_fill<std::uint16_t>(data, n, pattern, stream);
    case 4: return run_fill<std::uint32_t>(data, n, pattern, stream);
    case 8: return run_fill<std::uint64_t>(data, n, pattern, stream);
    default: break;
  }
  LOWBIT_THROW(ErrorCode::InvalidArgument, "launch_fill: element_bytes = {}; built for 1, 2, 4 and 8", element_bytes);
}

}  // namespace lowbit::cuda
