// Device tensors: allocation on a CUDA device and copies between host and device.
//
// Plain C++ (no CUDA syntax), so an engine includes it from any .cpp; link lowbit::cuda. Device memory is
// freed when the last Tensor viewing it goes away. Every CUDA return code is checked: failures throw
// Error{ErrorCode::Cuda} naming the call, or Error{ErrorCode::OutOfMemory} naming the size.
#pragma once

#include "lowbit/core/tensor.hpp"

struct CUstream_st;

namespace lowbit::cuda {

using Stream = CUstream_st*;  // = cudaStream_t; nullptr is the default stream

// Number of usable CUDA devices; 0 where there is no driver or device (never throws).
int device_count() noexcept;
// "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB"; throws Cuda for a bad ordinal.
std::string describe_device(int device);

// Uninitialised device memory of shape and dtype on `device`.
Tensor empty(const Shape& shape, DType dtype, int device = 0);
// Device tensor with every element set to `value` (converted to dtype as Tensor::to does; NaN is allowed
// for floating dtypes, the usual way to poison an output before a kernel writes it).
Tensor filled(const Shape& shape, DType dtype, double value, int device = 0, Stream stream = nullptr);
// Contiguous device copy of a host tensor (any strides). Synchronous with respect to the host.
Tensor to_device(const Tensor& host, int device = 0, Stream stream = nullptr);
// Host copy of a contiguous device tensor. Synchronous.
Tensor to_host(const Tensor& device_tensor, Stream stream = nullptr);

// Kernel behind filled(): writes `pattern` (element_bytes of 1, 2, 4 or 8) into n elements at data.
void launch_fill(void* data, std::int64_t n, int element_bytes, std::uint64_t pattern, Stream stream);

}  // namespace lowbit::cuda
