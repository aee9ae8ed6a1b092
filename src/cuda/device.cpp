#include "lowbit/cuda/device.hpp"

#include <cuda_runtime_api.h>

#include <cstring>

#include "check.hpp"

namespace lowbit::cuda {
namespace {

// Makes `device` current for the scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    LOWBIT_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device != previous_) LOWBIT_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

void check_ordinal(int device, const char* operation) {
  const int count = device_count();
  LOWBIT_CHECK(device >= 0 && device < count, ErrorCode::Cuda, "{}: CUDA device {} requested, {} present", operation,
               device, count);
}

}  // namespace

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

std::string describe_device(int device) {
  check_ordinal(device, "describe_device");
  cudaDeviceProp prop{};
  LOWBIT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return fmt::format("{}, sm_{}{}, {} SMs, {:.1f} GiB", prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                     static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
}

Tensor empty(const Shape& shape, DType dtype, int device) {
  check_ordinal(device, "cuda::empty");
  DeviceGuard guard(device);
  const std::size_t bytes = storage_bytes(dtype, shape.numel());
  void* p = nullptr;
  if (bytes > 0) {
    const cudaError_t status = cudaMalloc(&p, bytes);
    if (status != cudaSuccess) {
      cudaGetLastError();
      LOWBIT_CHECK(status != cudaErrorMemoryAllocation, ErrorCode::OutOfMemory,
                   "cuda::empty: cannot allocate {} bytes for {}{} on cuda:{}", bytes, dtype_name(dtype),
                   shape.to_string(), device);
      LOWBIT_CUDA_CHECK(status);
    }
  }
  std::shared_ptr<const void> owner(p, [](const void* q) {
    if (q != nullptr) cudaFree(const_cast<void*>(q));
  });
  auto storage = std::make_shared<Storage>(p, bytes, Device::cuda(device), std::move(owner));
  return Tensor::from_storage(std::move(storage), 0, shape, dtype);
}

Tensor filled(const Shape& shape, DType dtype, double value, int device, Stream stream) {
  LOWBIT_CHECK(!is_packed(dtype), ErrorCode::Unsupported, "cuda::filled: packed dtype {} is not supported",
               dtype_name(dtype));
  // The element's bit pattern, converted on the host exactly as Tensor::to converts.
  Tensor one = Tensor::zeros({1}, dtype);
  one.set({0}, value);
  std::uint64_t pattern = 0;
  std::memcpy(&pattern, one.raw_data(), dtype_size(dtype));
  Tensor out = empty(shape, dtype, device);
  DeviceGuard guard(device);
  launch_fill(out.raw_data(), out.numel(), static_cast<int>(dtype_size(dtype)), pattern, stream);
  LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));
  return out;
}

Tensor to_device(const Tensor& host, int device, Stream stream) {
  LOWBIT_CHECK(host.defined() && host.device().is_cpu(), ErrorCode::InvalidArgument,
               "cuda::to_device: expected a host tensor, got {}", host.describe());
  const Tensor src = host.contiguous();
  Tensor out = empty(src.shape(), src.dtype(), device);
  DeviceGuard guard(device);
  if (src.nbytes() > 0) {
    LOWBIT_CUDA_CHECK(cudaMemcpyAsync(out.raw_data(), src.raw_data(), src.nbytes(), cudaMemcpyHostToDevice, stream));
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  return out;
}

Tensor to_host(const Tensor& device_tensor, Stream stream) {
  LOWBIT_CHECK(device_tensor.defined() && device_tensor.device().is_cuda(), ErrorCode::InvalidArgument,
               "cuda::to_host: expected a device tensor, got {}", device_tensor.describe());
  LOWBIT_CHECK(device_tensor.is_contiguous(), ErrorCode::Unsupported,
               "cuda::to_host: {} is a strided view; only contiguous device tensors are copied",
               device_tensor.describe());
  Tensor out = Tensor::empty(device_tensor.shape(), device_tensor.dtype());
  DeviceGuard guard(device_tensor.device().index);
  if (out.nbytes() > 0) {
    LOWBIT_CUDA_CHECK(
        cudaMemcpyAsync(out.raw_data(), device_tensor.raw_data(), out.nbytes(), cudaMemcpyDeviceToHost, stream));
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  return out;
}

}  // namespace lowbit::cuda
