// y[m, n] = x[m, k] * W[n, k]^T in fp32 on the CPU, against a weight repacked once for the kernel.
//
// The reference forward spends almost all of its time here. The library is built without -march flags
// (it must run on any x86-64 and elsewhere), so Eigen would compile to SSE2 only; instead the kernel is
// chosen at run time from what the CPU offers:
//
//   Avx512   8 x 32 register tile (16 zmm accumulators), AVX-512F        panels of nr = 32 outputs
//   Avx2     6 x 16 register tile (12 ymm accumulators), AVX2 + FMA     panels of nr = 16 outputs
//   Generic  Eigen (whatever the build's flags give it), any CPU          panels of nr = 16 outputs
//
// Packed layout (one contiguous buffer, 64-byte aligned): W is cut into panels of `nr` consecutive output
// features; panel p holds, for every kk in [0, k), the nr values W[p*nr + j, kk], j = 0..nr-1:
//
//     data[(p * k + kk) * nr + j] = W[p * nr + j, kk]        (0 where p * nr + j >= n)
//
// so the kernel reads each panel front to back and broadcasts one x value against nr weights per FMA: no
// horizontal sums. Kernels agree to fp32 rounding; each is deterministic run to run and for any thread
// count (every output is summed by one thread, in an order fixed by the shapes).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

namespace lowbit::model {

enum class CpuKernel : std::uint8_t { Generic, Avx2, Avx512 };

std::string_view to_string(CpuKernel kernel) noexcept;  // "generic", "avx2", "avx512"
// The fastest kernel this CPU runs; LOWBIT_CPU_KERNEL=generic|avx2|avx512 lowers it (for tests and
// comparisons; asking for one the CPU lacks throws Unsupported).
CpuKernel best_cpu_kernel();
// Every kernel this CPU can run, Generic first.
std::vector<CpuKernel> available_cpu_kernels();
// Output features per panel of a kernel's layout.
int panel_width(CpuKernel kernel) noexcept;

class PackedMatrix {
 public:
  PackedMatrix() = default;

  // W row-major [n, k] with row stride ldw >= k.
  static PackedMatrix pack(const float* w, std::int64_t n, std::int64_t k, std::int64_t ldw,
                           CpuKernel kernel = best_cpu_kernel());
  // W = v^T for v row-major [k, n] with row stride ldv >= n (attention's P * V uses this: W = V^T).
  static PackedMatrix pack_transposed(const float* v, std::int64_t k, std::int64_t n, std::int64_t ldv,
                                      CpuKernel kernel = best_cpu_kernel());

  std::int64_t n() const noexcept { return n_; }
  std::int64_t k() const noexcept { return k_; }
  int nr() const noexcept { return nr_; }
  CpuKernel kernel() const noexcept { return kernel_; }
  std::int64_t panels() const noexcept { return nr_ > 0 ? (n_ + nr_ - 1) / nr_ : 0; }
  const float* panel(std::int64_t p) const noexcept { return data_.get() + p * k_ * nr_; }
  std::size_t bytes() const noexcept { return static_cast<std::size_t>(panels() * k_ * nr_) * sizeof(float); }

 private:
  struct Free {
    void operator()(float* p) const noexcept;
  };
  static PackedMatrix allocate(std::int64_t n, std::int64_t k, CpuKernel kernel);

  std::int64_t n_ = 0;
  std::int64_t k_ = 0;
  int nr_ = 0;
  CpuKernel kernel_ = CpuKernel::Generic;
  std::shared_ptr<float> data_;
};

// y = x W^T (accumulate: y += x W^T). x: [m, k] with row stride ldx; y: [m, w.n()] with row stride ldy;
// the two must not overlap. Spreads over lowbit::parallel_for's threads (serially when called from inside
// a parallel_for chunk). Throws InvalidArgument for a negative m or a stride shorter than the row.
void gemm(const float* x, std::int64_t m, std::int64_t ldx, const PackedMatrix& w, float* y, std::int64_t ldy,
          bool accumulate = false);

}  // namespace lowbit::model
