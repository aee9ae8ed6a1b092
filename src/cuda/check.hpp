// One checking macro for every CUDA runtime call: the call's text, file and line go into the Error.
#pragma once

#include <cuda_runtime_api.h>

#include "lowbit/core/error.hpp"

#define LOWBIT_CUDA_CHECK(call)                                                                             \
  do {                                                                                                      \
    const cudaError_t lowbit_status_ = (call);                                                              \
    if (lowbit_status_ != cudaSuccess) [[unlikely]] {                                                       \
      ::lowbit::detail::throw_formatted(                                                                    \
          lowbit_status_ == cudaErrorMemoryAllocation ? ::lowbit::ErrorCode::OutOfMemory                    \
                                                      : ::lowbit::ErrorCode::Cuda,                          \
          "{} failed at {}:{}: {} ({})", #call, __FILE__, __LINE__, cudaGetErrorString(lowbit_status_),   \
          cudaGetErrorName(lowbit_status_));                                                                \
    }                                                                                                       \
  } while (false)
