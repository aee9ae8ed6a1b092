// Compile-time configuration shared by host and device code.
//
// LOWBIT_HOST_DEVICE marks the decode math that the CUDA kernels and the CPU references share: it is
// `__host__ __device__` under nvcc and nothing elsewhere, so headers that use it stay plain C++.
#pragma once

#include <bit>

#if defined(__CUDACC__)
#define LOWBIT_HOST_DEVICE __host__ __device__
#define LOWBIT_FORCEINLINE __forceinline__
#else
#define LOWBIT_HOST_DEVICE
#define LOWBIT_FORCEINLINE inline __attribute__((always_inline))
#endif

namespace lowbit {

// Every format we read and write is little-endian, and we map files straight into tensors.
static_assert(std::endian::native == std::endian::little, "lowbit supports little-endian hosts only");

}  // namespace lowbit
