// Host pieces every weight-only format shares (plain C++; defined in kernels/dequantize.cu). The kernel
// templates themselves are in kernels/weight_only.cuh.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lowbit/core/dtype.hpp"
#include "lowbit/cuda/device.hpp"
#include "lowbit/cuda/matmul.hpp"

namespace lowbit::cuda::detail {

// Columns of a repacked row: k rounded up to the tensor-core kernel's k-step (64).
constexpr std::int64_t weight_only_padded_k(std::int64_t k) { return (k + 63) / 64 * 64; }

// Regime boundaries for formats with a tensor-core instance (docs/kernels.md `## regimes` has the
// measurements behind them): the GEMV re-reads nothing but its time grows ~linearly in m (x loads and
// fp16 FMAs per weight), so it only wins at m <= 2; the tensor-core kernel covers one kBM = 64 tile of x
// rows, so above 64 rows it would decode the weight once per 64 rows, and dequantize (n k (bits/8 + 2)
// bytes) + cuBLAS (reads n k 2 bytes) is cheaper.
inline constexpr std::int64_t kGemvMaxM = 2;
inline constexpr std::int64_t kTensorCoreMaxM = 64;

// The plan of the three weight_only.cuh templates for `bits`-bit codes (bits/8 bytes a weight streamed):
//   m <= kGemvMaxM (2; 8 without a tensor-core instance)
//                               Gemv, threads 128, rows_per_block 8, m_tile = m rounded up to 1, 2, 4, 8
//   m <= kTensorCoreMaxM (64) and tensor_core
//                               TensorCore, threads 128, rows_per_block 64, m_tile 16 (m <= 16) or 64;
//                               k_splits = floor(resident / blocks) when the grid is under one wave of
//                               resident blocks (6 an SM at m_tile 16, 3 at 64), each split >= 4 k-steps of
//                               64, at most 16, and the fp32 partials' traffic (8 splits m n bytes) under
//                               half of the weight's (n k bits / 8)
//   otherwise                   Dequantize, threads 128 (a block per weight row)
MatmulPlan plan_weight_only(int bits, bool tensor_core, std::int64_t m, std::int64_t n, std::int64_t k, int sm_count);

// The buffers of a host-side PreparedWeight (what repack_nf4 / repack_hqq return) copied to `device`.
PreparedWeight upload(PreparedWeight w, int device, Stream stream);

// x and y must start on 16-byte boundaries (the kernels' vector loads and stores): InvalidArgument naming
// w's method and the views' byte offsets otherwise.
void check_aligned16(const PreparedWeight& w, const Tensor& x, const Tensor& y);

// y [m, n] = x [m, k] w^T with w [n, k] dense (all row-major, dtype F16 or BF16, fp32 accumulation),
// through cublasGemmEx on a handle per (device, stream), created once on the current device (which must
// be `device`). Deterministic run to run (cuBLAS's guarantee for one GPU model and one stream).
void gemm_x_wt(const void* x, const void* w, void* y, std::int64_t m, std::int64_t n, std::int64_t k, DType dtype,
               int device, Stream stream);

// out[i, j] = x[i, perm[j]] for x [m, k] of 2-byte elements: act-order's permutation of x into scratch.
void permute_columns(const void* x, const std::int32_t* perm, void* out, std::int64_t m, std::int64_t k,
                     Stream stream);

// Device memory for one call, ordered on `stream` (cudaMallocAsync, from the device's default pool, so
// repeated calls reuse it); released with cudaFreeAsync on the same stream when the object goes away. For
// act-order's permuted x and split-k partials. Allocates on the current device. The first allocation on a
// device raises the default pool's release threshold to the maximum, so freed scratch stays in the pool
// across synchronizations instead of going back to the driver (which made each call after a sync map it
// again); the pool keeps the largest scratch in use at once.
class StreamScratch {
 public:
  StreamScratch(std::size_t bytes, Stream stream);
  ~StreamScratch();
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  Stream stream_ = nullptr;
};

// Makes `device` current for the scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace lowbit::cuda::detail
