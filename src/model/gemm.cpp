#include "lowbit/model/gemm.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "lowbit/core/error.hpp"
#include "lowbit/core/parallel.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LOWBIT_GEMM_X86 1
#include <immintrin.h>
#else
#define LOWBIT_GEMM_X86 0
#endif

namespace lowbit::model {
namespace {

// Tasks own up to this many rows of x: a block of rows x kc floats (<= 576 KiB) stays in L2 while every
// panel of the task streams past it, so a weight is read from memory once per row block.
constexpr std::int64_t kMaxRowsPerTask = 384;
// Row blocks are multiples of both register tiles' heights (8 and 6).
constexpr std::int64_t kRowQuantum = 24;
// k is walked in near-equal blocks of at most this many: a panel's slice (kc x 32 x 4 B <= 48 KiB) is reused
// from L1/L2 by every row tile of the task, and y is read and written once per block.
constexpr std::int64_t kMaxBlockK = 384;
// Below this many multiply-adds a product runs on the calling thread: waking the pool costs more.
constexpr std::int64_t kSerialMacs = 1 << 16;

bool cpu_has(CpuKernel kernel) {
#if LOWBIT_GEMM_X86
  switch (kernel) {
    case CpuKernel::Generic:
      return true;
    case CpuKernel::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuKernel::Avx512:
      return __builtin_cpu_supports("avx512f");
  }
  return false;
#else
  return kernel == CpuKernel::Generic;
#endif
}

CpuKernel detect_best() {
  CpuKernel best = CpuKernel::Generic;
  if (cpu_has(CpuKernel::Avx2)) best = CpuKernel::Avx2;
  if (cpu_has(CpuKernel::Avx512)) best = CpuKernel::Avx512;
  if (const char* env = std::getenv("LOWBIT_CPU_KERNEL"); env != nullptr && *env != '\0') {
    const std::string want(env);
    CpuKernel asked = CpuKernel::Generic;
    if (want == "avx2") {
      asked = CpuKernel::Avx2;
    } else if (want == "avx512") {
      asked = CpuKernel::Avx512;
    } else {
      LOWBIT_CHECK(want == "generic", ErrorCode::InvalidArgument,
                   "gemm: LOWBIT_CPU_KERNEL='{}' is not a kernel; use generic, avx2 or avx512", want);
    }
    LOWBIT_CHECK(cpu_has(asked), ErrorCode::Unsupported,
                 "gemm: LOWBIT_CPU_KERNEL='{}' but this CPU lacks it (best: {})", want, to_string(best));
    best = asked;
  }
  return best;
}

// One task: rows [0, m) of x and y (already offset to the task's first row) times panels [p0, p1) of w.
using TaskFn = void (*)(const float* x, std::int64_t m, std::int64_t ldx, const PackedMatrix& w, std::int64_t p0,
                        std::int64_t p1, float* y, std::int64_t ldy, bool accumulate);

// ---- generic: Eigen ------------------------------------------------------------------------------------------
void task_generic(const float* x, std::int64_t m, std::int64_t ldx, const PackedMatrix& w, std::int64_t p0,
                  std::int64_t p1, float* y, std::int64_t ldy, bool accumulate) {
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const std::int64_t k = w.k();
  const int nr = w.nr();
  const Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>> xm(x, m, k, Eigen::OuterStride<>(ldx));
  RowMajor product(m, nr);
  for (std::int64_t p = p0; p < p1; ++p) {
    const int cols = static_cast<int>(std::min<std::int64_t>(nr, w.n() - p * nr));
    const Eigen::Map<const RowMajor> pm(w.panel(p), k, nr);
    Eigen::Map<RowMajor, 0, Eigen::OuterStride<>> ym(y + p * nr, m, cols, Eigen::OuterStride<>(ldy));
    product.noalias() = xm * pm;  // [m, nr]
    if (accumulate) {
      ym += product.leftCols(cols);
    } else {
      ym = product.leftCols(cols);
    }
  }
}

#if LOWBIT_GEMM_X86
// ---- AVX2 + FMA: 6 x 16 tile, 12 ymm accumulators + 2 weights + 1 broadcast ----------------------------------
template <int MR>
__attribute__((target("avx2,fma"))) void tile_avx2(const float* x, std::int64_t ldx, const float* panel,
                                                   std::int64_t kc, float* y, std::int64_t ldy, int cols,
                                                   bool accumulate) {
  __m256 acc0[MR];
  __m256 acc1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
  for (std::int64_t kk = 0; kk < kc; ++kk) {
    const __m256 w0 = _mm256_load_ps(panel + kk * 16);
    const __m256 w1 = _mm256_load_ps(panel + kk * 16 + 8);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 b = _mm256_broadcast_ss(x + i * ldx + kk);
      acc0[i] = _mm256_fmadd_ps(b, w0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(b, w1, acc1[i]);
    }
  }
  // Lanes j < cols of the two halves (all of them for a full panel); masked loads and stores keep the
  // accumulators in registers where a scalar tail loop would make GCC spill them every iteration.
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), lane);
  const __m256i mask1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols - 8), lane);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    float* yi = y + i * ldy;
    if (accumulate) {
      acc0[i] = _mm256_add_ps(acc0[i], _mm256_maskload_ps(yi, mask0));
      acc1[i] = _mm256_add_ps(acc1[i], _mm256_maskload_ps(yi + 8, mask1));
    }
    _mm256_maskstore_ps(yi, mask0, acc0[i]);
    _mm256_maskstore_ps(yi + 8, mask1, acc1[i]);
  }
}

// ---- AVX-512: 8 x 32 tile, 16 zmm accumulators -----------------------------------------------------------
template <int MR>
__attribute__((target("avx512f"))) void tile_avx512(const float* x, std::int64_t ldx, const float* panel,
                                                    std::int64_t kc, float* y, std::int64_t ldy, int cols,
                                                    bool accumulate) {
  __m512 acc0[MR];
  __m512 acc1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (std::int64_t kk = 0; kk < kc; ++kk) {
    const __m512 w0 = _mm512_load_ps(panel + kk * 32);
    const __m512 w1 = _mm512_load_ps(panel + kk * 32 + 16);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 b = _mm512_set1_ps(x[i * ldx + kk]);
      acc0[i] = _mm512_fmadd_ps(b, w0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(b, w1, acc1[i]);
    }
  }
  const auto mask0 = static_cast<__mmask16>(cols >= 16 ? 0xFFFFu : (1u << cols) - 1u);
  const auto mask1 = static_cast<__mmask16>(cols >= 32 ? 0xFFFFu : cols > 16 ? (1u << (cols - 16)) - 1u : 0u);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    float* yi = y + i * ldy;
    if (accumulate) {
      acc0[i] = _mm512_add_ps(acc0[i], _mm512_maskz_loadu_ps(mask0, yi));
      acc1[i] = _mm512_add_ps(acc1[i], _mm512_maskz_loadu_ps(mask1, yi + 16));
    }
    _mm512_mask_storeu_ps(yi, mask0, acc0[i]);
    _mm512_mask_storeu_ps(yi + 16, mask1, acc1[i]);
  }
}

using TileFn = void (*)(const float*, std::int64_t, const float*, std::int64_t, float*, std::int64_t, int, bool);

template <int NR, int MR, TileFn (*Tile)(int)>
void task_tiled(const float* x, std::int64_t m, std::int64_t ldx, const PackedMatrix& w, std::int64_t p0,
                std::int64_t p1, float* y, std::int64_t ldy, bool accumulate) {
  const std::int64_t k = w.k();
  const std::int64_t blocks = (k + kMaxBlockK - 1) / kMaxBlockK;
  const std::int64_t block_k = (k + blocks - 1) / blocks;
  for (std::int64_t k0 = 0; k0 < k; k0 += block_k) {
    const std::int64_t kc = std::min(block_k, k - k0);
    const bool add = accumulate || k0 > 0;
    for (std::int64_t p = p0; p < p1; ++p) {
      const int cols = static_cast<int>(std::min<std::int64_t>(NR, w.n() - p * NR));
      const float* panel = w.panel(p) + k0 * NR;
      float* yp = y + p * NR;
      std::int64_t i = 0;
      for (; i + MR <= m; i += MR) Tile(MR)(x + i * ldx + k0, ldx, panel, kc, yp + i * ldy, ldy, cols, add);
      if (i < m) Tile(static_cast<int>(m - i))(x + i * ldx + k0, ldx, panel, kc, yp + i * ldy, ldy, cols, add);
    }
  }
}

TileFn avx2_tile(int rows) {
  static constexpr TileFn table[] = {nullptr,      tile_avx2<1>, tile_avx2<2>, tile_avx2<3>,
                                     tile_avx2<4>, tile_avx2<5>, tile_avx2<6>};
  return table[rows];
}
TileFn avx512_tile(int rows) {
  static constexpr TileFn table[] = {nullptr,        tile_avx512<1>, tile_avx512<2>, tile_avx512<3>, tile_avx512<4>,
                                     tile_avx512<5>, tile_avx512<6>, tile_avx512<7>, tile_avx512<8>};
  return table[rows];
}
#endif

TaskFn task_function(CpuKernel kernel) {
  switch (kernel) {
    case CpuKernel::Generic:
      return task_generic;
#if LOWBIT_GEMM_X86
    case CpuKernel::Avx2:
      return task_tiled<16, 6, avx2_tile>;
    case CpuKernel::Avx512:
      return task_tiled<32, 8, avx512_tile>;
#else
    default:
      break;
#endif
  }
  LOWBIT_THROW(ErrorCode::Unsupported, "gemm: kernel {} is not built for this CPU", to_string(kernel));
}

}  // namespace

std::string_view to_string(CpuKernel kernel) noexcept {
  switch (kernel) {
    case CpuKernel::Generic:
      return "generic";
    case CpuKernel::Avx2:
      return "avx2";
    case CpuKernel::Avx512:
      return "avx512";
  }
  return "?";
}

CpuKernel best_cpu_kernel() {
  static const CpuKernel best = detect_best();
  return best;
}

std::vector<CpuKernel> available_cpu_kernels() {
  std::vector<CpuKernel> out;
  for (const CpuKernel k : {CpuKernel::Generic, CpuKernel::Avx2, CpuKernel::Avx512}) {
    if (cpu_has(k)) out.push_back(k);
  }
  return out;
}

int panel_width(CpuKernel kernel) noexcept { return kernel == CpuKernel::Avx512 ? 32 : 16; }

void PackedMatrix::Free::operator()(float* p) const noexcept { std::free(p); }

PackedMatrix PackedMatrix::allocate(std::int64_t n, std::int64_t k, CpuKernel kernel) {
  LOWBIT_CHECK(n >= 0 && k >= 0, ErrorCode::InvalidArgument, "gemm: cannot pack a weight of shape [{}, {}]", n, k);
  LOWBIT_CHECK(cpu_has(kernel), ErrorCode::Unsupported, "gemm: this CPU cannot run the {} kernel", to_string(kernel));
  PackedMatrix out;
  out.n_ = n;
  out.k_ = k;
  out.nr_ = panel_width(kernel);
  out.kernel_ = kernel;
  const std::size_t bytes = std::max<std::size_t>(64, (out.bytes() + 63) / 64 * 64);
  auto* data = static_cast<float*>(std::aligned_alloc(64, bytes));
  LOWBIT_CHECK(data != nullptr, ErrorCode::OutOfMemory, "gemm: cannot allocate {} bytes for a packed [{}, {}] weight",
               bytes, n, k);
  out.data_ = std::shared_ptr<float>(data, Free{});
  return out;
}

PackedMatrix PackedMatrix::pack(const float* w, std::int64_t n, std::int64_t k, std::int64_t ldw, CpuKernel kernel) {
  LOWBIT_CHECK(ldw >= k, ErrorCode::InvalidArgument, "gemm: row stride {} of W is shorter than k = {}", ldw, k);
  PackedMatrix out = allocate(n, k, kernel);
  const int nr = out.nr_;
  float* data = out.data_.get();
  parallel_for(out.panels(), std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(1, k * nr)),
               [&](std::int64_t p0, std::int64_t p1) {
                 for (std::int64_t p = p0; p < p1; ++p) {
                   float* dst = data + p * k * nr;
                   for (int j = 0; j < nr; ++j) {
                     const std::int64_t row = p * nr + j;
                     if (row < n) {
                       const float* src = w + row * ldw;
                       for (std::int64_t kk = 0; kk < k; ++kk) dst[kk * nr + j] = src[kk];
                     } else {
                       for (std::int64_t kk = 0; kk < k; ++kk) dst[kk * nr + j] = 0.0f;
                     }
                   }
                 }
               });
  return out;
}

PackedMatrix PackedMatrix::pack_transposed(const float* v, std::int64_t k, std::int64_t n, std::int64_t ldv,
                                           CpuKernel kernel) {
  LOWBIT_CHECK(ldv >= n, ErrorCode::InvalidArgument, "gemm: row stride {} of V is shorter than n = {}", ldv, n);
  PackedMatrix out = allocate(n, k, kernel);
  const int nr = out.nr_;
  float* data = out.data_.get();
  for (std::int64_t p = 0; p < out.panels(); ++p) {
    const std::int64_t cols = std::min<std::int64_t>(nr, n - p * nr);
    for (std::int64_t kk = 0; kk < k; ++kk) {
      float* dst = data + (p * k + kk) * nr;
      std::memcpy(dst, v + kk * ldv + p * nr, static_cast<std::size_t>(cols) * sizeof(float));
      for (std::int64_t j = cols; j < nr; ++j) dst[j] = 0.0f;
    }
  }
  return out;
}

void gemm(const float* x, std::int64_t m, std::int64_t ldx, const PackedMatrix& w, float* y, std::int64_t ldy,
          bool accumulate) {
  const std::int64_t n = w.n();
  const std::int64_t k = w.k();
  LOWBIT_CHECK(m >= 0, ErrorCode::InvalidArgument, "gemm: m = {} is negative", m);
  LOWBIT_CHECK(ldx >= k && ldy >= n, ErrorCode::InvalidArgument,
               "gemm: row strides ldx = {}, ldy = {} are shorter than k = {}, n = {}", ldx, ldy, k, n);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate) {
      for (std::int64_t i = 0; i < m; ++i) std::fill_n(y + i * ldy, n, 0.0f);
    }
    return;
  }
  const TaskFn task_fn = task_function(w.kernel());
  const std::int64_t panels = w.panels();
  // Tasks: a grid of row blocks x panel groups, about 8 per thread. Few, tall row blocks first (each one
  // streams the weight once); more of them only where the weight has too few panels to share out.
  const std::int64_t wanted = 8 * static_cast<std::int64_t>(num_threads());
  std::int64_t row_blocks = (m + kMaxRowsPerTask - 1) / kMaxRowsPerTask;
  const std::int64_t groups = std::clamp<std::int64_t>((wanted + row_blocks - 1) / row_blocks, 1, panels);
  if (row_blocks * groups < wanted) {
    row_blocks = std::min((m + kRowQuantum - 1) / kRowQuantum, (wanted + groups - 1) / groups);
  }
  const std::int64_t rows_per_block = ((m + row_blocks - 1) / row_blocks + kRowQuantum - 1) / kRowQuantum * kRowQuantum;
  row_blocks = (m + rows_per_block - 1) / rows_per_block;
  const std::int64_t per_group = (panels + groups - 1) / groups;
  const std::int64_t used_groups = (panels + per_group - 1) / per_group;
  const std::int64_t tasks = row_blocks * used_groups;
  const auto run = [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t r0 = (t / used_groups) * rows_per_block;
      const std::int64_t rows = std::min(rows_per_block, m - r0);
      const std::int64_t p0 = (t % used_groups) * per_group;
      task_fn(x + r0 * ldx, rows, ldx, w, p0, std::min(panels, p0 + per_group), y + r0 * ldy, ldy, accumulate);
    }
  };
  const std::int64_t macs_per_task = std::max<std::int64_t>(1, (m * n * k) / tasks);
  parallel_for(tasks, std::max<std::int64_t>(1, kSerialMacs / macs_per_task), run);
}

}  // namespace lowbit::model
