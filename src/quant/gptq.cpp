#include "lowbit/quant/gptq.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <numeric>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "lowbit/core/half.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/quant/affine.hpp"
#include "weight_rows.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LOWBIT_GPTQ_X86 1
#include <immintrin.h>
#else
#define LOWBIT_GPTQ_X86 0
#endif

// Every multiply and add below rounds on its own, as written (fused multiply-adds only where a kernel asks for
// one): the intra-block update then rounds as the reference's `W1 -= e * U` does, and the instruction sets
// agree with each other. GCC otherwise fuses a * b + c even across intrinsics whenever FMA is enabled.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace lowbit::quant {
namespace {

constexpr std::string_view kOp = "quantize_gptq";

// ==== SIMD micro-kernels ========================================================================================
//
// Everything heavy is one operation: a tile of C [MR, NR] gets acc = A [MR, kc] * B [kc, NR], with A read
// in place (row stride lda, one broadcast per element) and B packed into panels of NR columns
// (bp[p * NR + j] = B[p, j]), then C = acc, C += acc or C -= acc. Each C element is summed over p in order
// in one register, so its value does not depend on the tiling or the thread count. The fp64 instances
// factor H; the fp32 ones run the lazy-batch update. AVX2 and AVX-512 both fuse the multiply-add and agree
// bit for bit; the generic instance (GCC vector types: SSE2, NEON) multiplies and adds separately.

enum class Isa : std::uint8_t { Generic, Avx2, Avx512 };
enum TileMode : int { kStore = 0, kAdd = 1, kSub = 2 };

typedef float GenF32 __attribute__((vector_size(16)));
typedef double GenF64 __attribute__((vector_size(16)));
static_assert(sizeof(GenF32) == 16 && sizeof(GenF64) == 16, "GCC vector types");

template <typename T, typename Vec>
struct GenericSimd {
  using Scalar = T;
  using V = Vec;
  static constexpr int kW = static_cast<int>(sizeof(Vec) / sizeof(T));
  static V zero() { return V{}; }
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof v); }
  static V set1(T x) { return V{} + x; }
  static V fmadd(V a, V b, V c) { return a * b + c; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
};

// The body shared by every instruction set (a macro, because each copy needs its own target attribute).
#define LOWBIT_GPTQ_TILE_BODY(S)                                                                     \
  using T = typename S::Scalar;                                                                      \
  using V = typename S::V;                                                                           \
  constexpr int kNr = NV * S::kW;                                                                    \
  V acc[MR][NV];                                                                                     \
  _Pragma("GCC unroll 16") for (int i = 0; i < MR; ++i) {                                            \
    _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[i][v] = S::zero();                      \
  }                                                                                                  \
  for (std::int64_t p = 0; p < kc; ++p) {                                                            \
    V b[NV];                                                                                         \
    _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) b[v] = S::load(bp + p * kNr + v * S::kW);   \
    _Pragma("GCC unroll 16") for (int i = 0; i < MR; ++i) {                                          \
      const V x = S::set1(a[i * lda + p]);                                                           \
      _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[i][v] = S::fmadd(x, b[v], acc[i][v]); \
    }                                                                                                \
  }                                                                                                  \
  _Pragma("GCC unroll 16") for (int i = 0; i < MR; ++i) {                                            \
    _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) {                                           \
      T* out = c + i * ldc + v * S::kW;                                                              \
      if (mode == kStore) {                                                                          \
        S::store(out, acc[i][v]);                                                                    \
      } else if (mode == kAdd) {                                                                     \
        S::store(out, S::add(S::load(out), acc[i][v]));                                              \
      } else {                                                                                       \
        S::store(out, S::sub(S::load(out), acc[i][v]));                                              \
      }                                                                                              \
    }                                                                                                \
  }

// y[j] -= alpha * x[j], the product rounded before the subtraction (the reference's W1 -= e * U row).
#define LOWBIT_GPTQ_AXPY_BODY(S)                                                                          \
  using V = typename S::V;                                                                                \
  const V va = S::set1(alpha);                                                                            \
  std::int64_t j = 0;                                                                                     \
  for (; j + S::kW <= n; j += S::kW) S::store(y + j, S::sub(S::load(y + j), S::mul(va, S::load(x + j)))); \
  for (; j < n; ++j) {                                                                                    \
    const auto prod = alpha * x[j];                                                                       \
    y[j] = y[j] - prod;                                                                                   \
  }

template <class S, int MR, int NV>
void tile_generic(const typename S::Scalar* a, std::int64_t lda, const typename S::Scalar* bp, std::int64_t kc,
                  typename S::Scalar* c, std::int64_t ldc, int mode) {
  LOWBIT_GPTQ_TILE_BODY(S)
}
template <class S>
void axpy_generic(typename S::Scalar* y, const typename S::Scalar* x, typename S::Scalar alpha, std::int64_t n) {
  LOWBIT_GPTQ_AXPY_BODY(S)
}

#if LOWBIT_GPTQ_X86
#define LOWBIT_GPTQ_AVX2 __attribute__((target("avx2,fma"), always_inline)) inline
struct Avx2F32 {
  using Scalar = float;
  using V = __m256;
  static constexpr int kW = 8;
  static LOWBIT_GPTQ_AVX2 V zero() { return _mm256_setzero_ps(); }
  static LOWBIT_GPTQ_AVX2 V load(const float* p) { return _mm256_loadu_ps(p); }
  static LOWBIT_GPTQ_AVX2 void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static LOWBIT_GPTQ_AVX2 V set1(float x) { return _mm256_set1_ps(x); }
  static LOWBIT_GPTQ_AVX2 V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static LOWBIT_GPTQ_AVX2 V add(V a, V b) { return _mm256_add_ps(a, b); }
  static LOWBIT_GPTQ_AVX2 V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static LOWBIT_GPTQ_AVX2 V mul(V a, V b) { return _mm256_mul_ps(a, b); }
};
struct Avx2F64 {
  using Scalar = double;
  using V = __m256d;
  static constexpr int kW = 4;
  static LOWBIT_GPTQ_AVX2 V zero() { return _mm256_setzero_pd(); }
  static LOWBIT_GPTQ_AVX2 V load(const double* p) { return _mm256_loadu_pd(p); }
  static LOWBIT_GPTQ_AVX2 void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static LOWBIT_GPTQ_AVX2 V set1(double x) { return _mm256_set1_pd(x); }
  static LOWBIT_GPTQ_AVX2 V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static LOWBIT_GPTQ_AVX2 V add(V a, V b) { return _mm256_add_pd(a, b); }
  static LOWBIT_GPTQ_AVX2 V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static LOWBIT_GPTQ_AVX2 V mul(V a, V b) { return _mm256_mul_pd(a, b); }
};
template <class S, int MR, int NV>
__attribute__((target("avx2,fma"))) void tile_avx2(const typename S::Scalar* a, std::int64_t lda,
                                                   const typename S::Scalar* bp, std::int64_t kc, typename S::Scalar* c,
                                                   std::int64_t ldc, int mode) {
  LOWBIT_GPTQ_TILE_BODY(S)
}
template <class S>
__attribute__((target("avx2,fma"))) void axpy_avx2(typename S::Scalar* y, const typename S::Scalar* x,
                                                   typename S::Scalar alpha, std::int64_t n) {
  LOWBIT_GPTQ_AXPY_BODY(S)
}

#define LOWBIT_GPTQ_AVX512 __attribute__((target("avx512f"), always_inline)) inline
struct Avx512F32 {
  using Scalar = float;
  using V = __m512;
  static constexpr int kW = 16;
  static LOWBIT_GPTQ_AVX512 V zero() { return _mm512_setzero_ps(); }
  static LOWBIT_GPTQ_AVX512 V load(const float* p) { return _mm512_loadu_ps(p); }
  static LOWBIT_GPTQ_AVX512 void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static LOWBIT_GPTQ_AVX512 V set1(float x) { return _mm512_set1_ps(x); }
  static LOWBIT_GPTQ_AVX512 V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static LOWBIT_GPTQ_AVX512 V add(V a, V b) { return _mm512_add_ps(a, b); }
  static LOWBIT_GPTQ_AVX512 V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static LOWBIT_GPTQ_AVX512 V mul(V a, V b) { return _mm512_mul_ps(a, b); }
};
struct Avx512F64 {
  using Scalar = double;
  using V = __m512d;
  static constexpr int kW = 8;
  static LOWBIT_GPTQ_AVX512 V zero() { return _mm512_setzero_pd(); }
  static LOWBIT_GPTQ_AVX512 V load(const double* p) { return _mm512_loadu_pd(p); }
  static LOWBIT_GPTQ_AVX512 void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static LOWBIT_GPTQ_AVX512 V set1(double x) { return _mm512_set1_pd(x); }
  static LOWBIT_GPTQ_AVX512 V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static LOWBIT_GPTQ_AVX512 V add(V a, V b) { return _mm512_add_pd(a, b); }
  static LOWBIT_GPTQ_AVX512 V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  static LOWBIT_GPTQ_AVX512 V mul(V a, V b) { return _mm512_mul_pd(a, b); }
};
template <class S, int MR, int NV>
__attribute__((target("avx512f"))) void tile_avx512(const typename S::Scalar* a, std::int64_t lda,
                                                    const typename S::Scalar* bp, std::int64_t kc,
                                                    typename S::Scalar* c, std::int64_t ldc, int mode) {
  LOWBIT_GPTQ_TILE_BODY(S)
}
template <class S>
__attribute__((target("avx512f"))) void axpy_avx512(typename S::Scalar* y, const typename S::Scalar* x,
                                                    typename S::Scalar alpha, std::int64_t n) {
  LOWBIT_GPTQ_AXPY_BODY(S)
}
#endif  // LOWBIT_GPTQ_X86

template <typename T>
struct Kernels {
  int mr = 0;  // tile rows
  int nr = 0;  // tile columns = packed panel width
  void (*tile)(const T* a, std::int64_t lda, const T* bp, std::int64_t kc, T* c, std::int64_t ldc, int mode) = nullptr;
  void (*axpy)(T* y, const T* x, T alpha, std::int64_t n) = nullptr;  // y -= alpha * x
};

template <typename T>
Kernels<T> kernels_for(Isa isa) {
  using Gen = GenericSimd<T, std::conditional_t<std::is_same_v<T, float>, GenF32, GenF64>>;
  Kernels<T> k;
  k.mr = 4;
  k.nr = 2 * Gen::kW;
  k.tile = tile_generic<Gen, 4, 2>;
  k.axpy = axpy_generic<Gen>;
#if LOWBIT_GPTQ_X86
  using A2 = std::conditional_t<std::is_same_v<T, float>, Avx2F32, Avx2F64>;
  using A5 = std::conditional_t<std::is_same_v<T, float>, Avx512F32, Avx512F64>;
  if (isa == Isa::Avx2) {
    k = {6, 2 * A2::kW, tile_avx2<A2, 6, 2>, axpy_avx2<A2>};
  } else if (isa == Isa::Avx512) {
    k = {8, 2 * A5::kW, tile_avx512<A5, 8, 2>, axpy_avx512<A5>};
  }
#else
  (void)isa;
#endif
  return k;
}

bool cpu_has(Isa isa) {
#if LOWBIT_GPTQ_X86
  switch (isa) {
    case Isa::Generic:
      return true;
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f");
  }
  return false;
#else
  return isa == Isa::Generic;
#endif
}

// The best instruction set, lowered by LOWBIT_CPU_KERNEL=generic|avx2|avx512 as model/gemm.hpp does (read
// on every call, so tests can compare the kernels).
Isa select_isa() {
  Isa best = Isa::Generic;
  if (cpu_has(Isa::Avx2)) best = Isa::Avx2;
  if (cpu_has(Isa::Avx512)) best = Isa::Avx512;
  const char* env = std::getenv("LOWBIT_CPU_KERNEL");
  if (env == nullptr || *env == '\0') return best;
  const std::string_view want(env);
  Isa asked = Isa::Generic;
  if (want == "avx2") {
    asked = Isa::Avx2;
  } else if (want == "avx512") {
    asked = Isa::Avx512;
  } else {
    LOWBIT_CHECK(want == "generic", ErrorCode::InvalidArgument,
                 "{}: LOWBIT_CPU_KERNEL='{}' is not a kernel; use generic, avx2 or avx512", kOp, want);
  }
  LOWBIT_CHECK(cpu_has(asked), ErrorCode::Unsupported, "{}: LOWBIT_CPU_KERNEL='{}' but this CPU lacks it", kOp, want);
  return asked;
}

// A [rows, kc] as the kernel reads it: `a` itself when it has mr rows, else the rows copied into `buffer`
// and padded with zero rows (done once per row tile, not once per panel).
template <typename T>
const T* padded_rows(const Kernels<T>& kr, const T* a, std::int64_t lda, int rows, std::int64_t kc,
                     std::vector<T>& buffer, std::int64_t& lda_out) {
  lda_out = lda;
  if (rows == kr.mr) return a;
  buffer.assign(static_cast<std::size_t>(kr.mr * kc), T{0});
  for (int i = 0; i < rows; ++i)
    std::memcpy(buffer.data() + i * kc, a + i * lda, static_cast<std::size_t>(kc) * sizeof(T));
  lda_out = kc;
  return buffer.data();
}

// One tile of C, full or partial (rows <= mr, cols <= nr): a partial tile goes through a zeroed scratch tile
// so that the kernel only ever sees whole tiles. `a` has mr readable rows (padded_rows).
template <typename T>
void apply_tile(const Kernels<T>& kr, const T* a, std::int64_t lda, int rows, const T* bp, std::int64_t kc, T* c,
                std::int64_t ldc, int cols, int mode) {
  if (rows == kr.mr && cols == kr.nr) {
    kr.tile(a, lda, bp, kc, c, ldc, mode);
    return;
  }
  T ct[16 * 32] = {};  // >= mr * nr of every kernel
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) ct[i * kr.nr + j] = mode == kStore ? T{0} : c[i * ldc + j];
  kr.tile(a, lda, bp, kc, ct, kr.nr, mode);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) c[i * ldc + j] = ct[i * kr.nr + j];
}

// C [rows, cols] (mode)= A [rows, kc] * B, B packed as panels of kr.nr columns (panel q at bp + q * stride,
// stride = kc * nr unless given). Single-threaded: the callers split rows over threads. Loop order: a chunk
// of panels (about 256 KiB of B, kept in L2) against every row tile, the row tile's A staying in L1.
template <typename T>
void gemm_rows(const Kernels<T>& kr, const T* a, std::int64_t lda, std::int64_t rows, const T* bp, std::int64_t kc,
               std::int64_t cols, T* c, std::int64_t ldc, int mode, std::vector<T>& scratch,
               std::int64_t panel_stride = 0) {
  if (rows <= 0 || cols <= 0) return;
  if (panel_stride == 0) panel_stride = kc * kr.nr;
  const std::int64_t panels = (cols + kr.nr - 1) / kr.nr;
  const std::int64_t panel_bytes = std::max<std::int64_t>(1, kc * kr.nr * static_cast<std::int64_t>(sizeof(T)));
  const std::int64_t chunk = std::max<std::int64_t>(1, (std::int64_t{256} << 10) / panel_bytes);
  for (std::int64_t q0 = 0; q0 < panels; q0 += chunk) {
    const std::int64_t q1 = std::min(panels, q0 + chunk);
    for (std::int64_t i0 = 0; i0 < rows; i0 += kr.mr) {
      const int rr = static_cast<int>(std::min<std::int64_t>(kr.mr, rows - i0));
      std::int64_t alda = 0;
      const T* ap = padded_rows(kr, a + i0 * lda, lda, rr, kc, scratch, alda);
      for (std::int64_t q = q0; q < q1; ++q) {
        const int cc = static_cast<int>(std::min<std::int64_t>(kr.nr, cols - q * kr.nr));
        apply_tile(kr, ap, alda, rr, bp + q * panel_stride, kc, c + i0 * ldc + q * kr.nr, ldc, cc, mode);
      }
    }
  }
}

// Work items of a triangular loop, balanced: item u covers tiles u and count - 1 - u, whose work (growing
// with the tile index) adds up to about the same for every u.
template <typename Fn>
void parallel_triangle(std::int64_t tiles, const Fn& fn) {
  const std::int64_t pairs = (tiles + 1) / 2;
  parallel_for(pairs, 1, [&](std::int64_t u0, std::int64_t u1) {
    for (std::int64_t u = u0; u < u1; ++u) {
      fn(u);
      if (tiles - 1 - u != u) fn(tiles - 1 - u);
    }
  });
}

// ==== the column loop of one block, W rows at a time ==========================================================
//
// Inside a block every column depends on the previous one, so one row is a chain of dependent divisions and
// roundings; W rows (one SIMD vector per column, the block transposed) run side by side instead. The
// arithmetic per element is exactly the scalar one: w / scale rounded half to even (through 1.5 * 2^23,
// valid after clamping to [-1024, 1024], which cannot change a code that is clamped to [0, 255]), the code
// clamped, w_hat = scale * (code - zero), e = (w - w_hat) / U_cc, and every later column of the block
// -= e * U[c, j] with the product rounded first (the reference's W1[:, i:] -= outer product).

struct SweepTile {
  float* w = nullptr;  // the tile's first row of W (processing order), row stride k
  std::int64_t k = 0;
  int rows = 0;                          // valid rows, <= the kernel's width
  std::int64_t i1 = 0, cnt = 0, bs = 0;  // the block: columns [i1, i1 + cnt); ud's row stride bs
  const float* ud = nullptr;             // U[i1:i2, i1:i2] in fp32, [bs, bs], zero below the diagonal
  const std::int32_t* col_group = nullptr;
  const std::int64_t* perm = nullptr;
  const float* scales = nullptr;  // the tile's first row of the grids, row stride groups
  const std::uint8_t* zeros = nullptr;
  std::int64_t groups = 0;
  std::uint8_t* codes = nullptr;  // the tile's first row of the codes (original order), stride k
  float* err = nullptr;           // [rows, bs] row-major: e of every column (the GEMM's A)
  double* loss = nullptr;         // [rows]: sum of (w - w_hat)^2 / U_cc^2
  float* scratch = nullptr;       // cnt * width floats, 64-byte aligned
  int bits = 4;
  bool propagate = true;  // false: the fallback (U = I), no updates
};

typedef float SweepF8 __attribute__((vector_size(32)));
typedef float SweepF16 __attribute__((vector_size(64)));
typedef std::int32_t SweepI8 __attribute__((vector_size(32)));
typedef std::int32_t SweepI16 __attribute__((vector_size(64)));
template <int W>
struct SweepVec;
template <>
struct SweepVec<8> {
  using F = SweepF8;
  using I = SweepI8;
};
template <>
struct SweepVec<16> {
  using F = SweepF16;
  using I = SweepI16;
};

template <int W>
LOWBIT_FORCEINLINE void sweep_tile_impl(const SweepTile& s) {
  using VF = typename SweepVec<W>::F;
  using VI = typename SweepVec<W>::I;
#define LOWBIT_GPTQ_LOAD(v, p) __builtin_memcpy(&(v), (p), sizeof(VF))
#define LOWBIT_GPTQ_STORE(p, v) __builtin_memcpy((p), &(v), sizeof(VF))
  float* blk = s.scratch;  // blk[i * W + l] = W[row l, i1 + i]
  for (int l = 0; l < W; ++l) {
    const float* src = s.w + (l < s.rows ? l : 0) * s.k + s.i1;
    for (std::int64_t i = 0; i < s.cnt; ++i) blk[i * W + l] = l < s.rows ? src[i] : 0.0f;
  }
  const VF magic = VF{} + 12582912.0f, lo = VF{} - 1024.0f, hi = VF{} + 1024.0f, zero = VF{};
  const VF maxq = VF{} + static_cast<float>((1 << s.bits) - 1);
  VF sc = VF{} + 1.0f, zf = VF{};
  std::int32_t cur_group = -1;
  for (std::int64_t i = 0; i < s.cnt; ++i) {
    const std::int64_t c = s.i1 + i;
    const std::int32_t gi = s.col_group[c];
    if (gi != cur_group) {
      cur_group = gi;
      for (int l = 0; l < s.rows; ++l) {
        sc[l] = s.scales[l * s.groups + gi];
        zf[l] = static_cast<float>(s.zeros[l * s.groups + gi]);
      }
    }
    VF w;
    LOWBIT_GPTQ_LOAD(w, blk + i * W);
    VF t = w / sc;
    t = t < lo ? lo : t;
    t = t > hi ? hi : t;
    VF code = ((t + magic) - magic) + zf;
    code = code < zero ? zero : code;
    code = code > maxq ? maxq : code;
    const VF diff = w - sc * (code - zf);
    const float d = s.ud[i * s.bs + i];
    const VF e = diff / (VF{} + d);
    const VI ci = __builtin_convertvector(code, VI);
    const double inv_d2 = 1.0 / (static_cast<double>(d) * d);
    const std::int64_t col = s.perm[c];
    for (int l = 0; l < s.rows; ++l) {
      s.codes[l * s.k + col] = static_cast<std::uint8_t>(ci[l]);
      s.err[l * s.bs + i] = e[l];
      s.loss[l] += static_cast<double>(diff[l]) * diff[l] * inv_d2;
    }
    if (s.propagate) {
      const float* u = s.ud + i * s.bs;
      for (std::int64_t j = i + 1; j < s.cnt; ++j) {
        VF x;
        LOWBIT_GPTQ_LOAD(x, blk + j * W);
        x = x - e * (VF{} + u[j]);
        LOWBIT_GPTQ_STORE(blk + j * W, x);
      }
    }
  }
  for (int l = 0; l < s.rows; ++l) {
    float* dst = s.w + l * s.k + s.i1;
    for (std::int64_t i = 0; i < s.cnt; ++i) dst[i] = blk[i * W + l];
  }
#undef LOWBIT_GPTQ_LOAD
#undef LOWBIT_GPTQ_STORE
}

void sweep_tile_generic(const SweepTile& s) { sweep_tile_impl<8>(s); }
#if LOWBIT_GPTQ_X86
__attribute__((target("avx2,fma"))) void sweep_tile_avx2(const SweepTile& s) { sweep_tile_impl<8>(s); }
__attribute__((target("avx512f"))) void sweep_tile_avx512(const SweepTile& s) { sweep_tile_impl<16>(s); }
#endif

struct SweepKernel {
  int width = 8;  // rows per call
  void (*fn)(const SweepTile&) = sweep_tile_generic;
};

SweepKernel sweep_kernel_for(Isa isa) {
#if LOWBIT_GPTQ_X86
  if (isa == Isa::Avx2) return {8, sweep_tile_avx2};
  if (isa == Isa::Avx512) return {16, sweep_tile_avx512};
#else
  (void)isa;
#endif
  return {};
}

// ==== fp64 factorization of the damped Hessian ==================================================================

// Block width of the blocked Cholesky and triangular inverse; the inner dimension of their GEMM tiles.
constexpr std::int64_t kFactorBlock = 64;
// Inner-dimension chunk of the triangular inverse's GEMM (A rows of the tile stay in L1).
constexpr std::int64_t kInnerChunk = 256;

// In-place lower Cholesky of the row-major [n, n] matrix a (lower triangle read and written; entries above
// the diagonal are scratch afterwards). Returns -1 on success, else the first column whose pivot was not
// positive (or not finite).
template <typename T>
std::int64_t cholesky_lower(T* a, std::int64_t n, const Kernels<T>& kr) {
  std::vector<T> lt(static_cast<std::size_t>(kFactorBlock * kFactorBlock));
  std::vector<T> packed;
  for (std::int64_t j0 = 0; j0 < n; j0 += kFactorBlock) {
    const std::int64_t jb = std::min(kFactorBlock, n - j0);
    // Diagonal block, left-looking inside the block (earlier blocks were applied by the trailing updates).
    for (std::int64_t j = j0; j < j0 + jb; ++j) {
      T* rj = a + j * n;
      T d = rj[j];
      for (std::int64_t p = j0; p < j; ++p) d -= rj[p] * rj[p];
      if (!(d > 0.0) || !std::isfinite(d)) return j;
      d = std::sqrt(d);
      rj[j] = d;
      for (std::int64_t i = j + 1; i < j0 + jb; ++i) {
        T* ri = a + i * n;
        T s = ri[j];
        for (std::int64_t p = j0; p < j; ++p) s -= ri[p] * rj[p];
        ri[j] = s / d;
      }
    }
    const std::int64_t s0 = j0 + jb;  // first row below the block
    const std::int64_t m = n - s0;
    if (m == 0) break;
    // L11^T, row-major: row p holds column p of L11, so the panel solve below runs on contiguous rows.
    for (std::int64_t p = 0; p < jb; ++p)
      for (std::int64_t q = 0; q < jb; ++q) lt[p * jb + q] = q >= p ? a[(j0 + q) * n + j0 + p] : T{0};
    // Panel: each row x of A21 solves x L11^T = a (forward substitution, one axpy per column).
    parallel_for(m, 32, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = s0 + b; i < s0 + e; ++i) {
        T* x = a + i * n + j0;
        for (std::int64_t p = 0; p < jb; ++p) {
          x[p] /= lt[p * jb + p];
          kr.axpy(x + p + 1, lt.data() + p * jb + p + 1, x[p], jb - p - 1);
        }
      }
    });
    // Trailing update, lower triangle: A22 -= A21 A21^T. A21^T is packed into panels of nr columns of A22.
    const std::int64_t panels = (m + kr.nr - 1) / kr.nr;
    packed.assign(static_cast<std::size_t>(panels * jb * kr.nr), T{0});
    parallel_for(panels, 4, [&](std::int64_t q0, std::int64_t q1) {
      for (std::int64_t q = q0; q < q1; ++q) {
        T* dst = packed.data() + q * jb * kr.nr;
        for (int jj = 0; jj < kr.nr && q * kr.nr + jj < m; ++jj) {
          const T* src = a + (s0 + q * kr.nr + jj) * n + j0;
          for (std::int64_t p = 0; p < jb; ++p) dst[p * kr.nr + jj] = src[p];
        }
      }
    });
    const std::int64_t row_tiles = (m + kr.mr - 1) / kr.mr;
    parallel_triangle(row_tiles, [&](std::int64_t t) {
      thread_local std::vector<T> scratch;
      const std::int64_t i0 = t * kr.mr;
      const int rr = static_cast<int>(std::min<std::int64_t>(kr.mr, m - i0));
      const std::int64_t last_col = i0 + rr - 1;  // columns 0..last_col of A22 (relative) are needed
      std::int64_t alda = 0;
      const T* ap = padded_rows(kr, a + (s0 + i0) * n + j0, n, rr, jb, scratch, alda);
      for (std::int64_t q = 0; q * kr.nr <= last_col; ++q) {
        const int cc = static_cast<int>(std::min<std::int64_t>(kr.nr, m - q * kr.nr));
        apply_tile(kr, ap, alda, rr, packed.data() + q * jb * kr.nr, jb, a + (s0 + i0) * n + s0 + q * kr.nr, n, cc,
                   kSub);
      }
    });
  }
  return -1;
}

// Zeroes the strict upper triangle (the Cholesky's diagonal tiles leave scratch there).
template <typename T>
void zero_upper(T* a, std::int64_t n) {
  parallel_for(n, 64, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) std::fill(a + i * n + i + 1, a + (i + 1) * n, T{0});
  });
}

// In-place inverse of the lower-triangular [n, n] row-major matrix a (strict upper triangle zero on entry
// and on exit). Blocked, right to left: with the trailing part already inverted (X22),
// X21 = -X22 L21 L11^-1, then L11 is inverted.
template <typename T>
void invert_lower(T* a, std::int64_t n, const Kernels<T>& kr) {
  std::vector<T> packed, t, l11(static_cast<std::size_t>(kFactorBlock * kFactorBlock));
  const std::int64_t last = ((n - 1) / kFactorBlock) * kFactorBlock;
  for (std::int64_t j0 = last; j0 >= 0; j0 -= kFactorBlock) {
    const std::int64_t jb = std::min(kFactorBlock, n - j0);
    const std::int64_t s0 = j0 + jb;
    const std::int64_t m = n - s0;
    if (m > 0) {
      // L21 [m, jb] packed into panels of nr of its columns, all m rows (the inner dimension of X22 L21).
      const std::int64_t panels = (jb + kr.nr - 1) / kr.nr;
      packed.assign(static_cast<std::size_t>(panels * m * kr.nr), T{0});
      parallel_for(m, 256, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t l = b; l < e; ++l) {
          const T* src = a + (s0 + l) * n + j0;
          for (std::int64_t q = 0; q < panels; ++q)
            for (int jj = 0; jj < kr.nr && q * kr.nr + jj < jb; ++jj)
              packed[static_cast<std::size_t>((q * m + l) * kr.nr + jj)] = src[q * kr.nr + jj];
        }
      });
      // T = X22 L21 [m, jb]: row i needs X22[i, 0..i] only (the rest is zero).
      t.assign(static_cast<std::size_t>(m * jb), T{0});
      const std::int64_t row_tiles = (m + kr.mr - 1) / kr.mr;
      parallel_triangle(row_tiles, [&](std::int64_t tile) {
        thread_local std::vector<T> scratch;
        const std::int64_t i0 = tile * kr.mr;
        const int rr = static_cast<int>(std::min<std::int64_t>(kr.mr, m - i0));
        const std::int64_t inner = i0 + rr;  // X22 columns 0..inner-1 can be nonzero in these rows
        for (std::int64_t l0 = 0; l0 < inner; l0 += kInnerChunk) {
          const std::int64_t kc = std::min(kInnerChunk, inner - l0);
          std::int64_t alda = 0;
          const T* ap = padded_rows(kr, a + (s0 + i0) * n + s0 + l0, n, rr, kc, scratch, alda);
          for (std::int64_t q = 0; q < panels; ++q) {
            const int cc = static_cast<int>(std::min<std::int64_t>(kr.nr, jb - q * kr.nr));
            apply_tile(kr, ap, alda, rr, packed.data() + (q * m + l0) * kr.nr, kc, t.data() + i0 * jb + q * kr.nr, jb,
                       cc, l0 == 0 ? kStore : kAdd);
          }
        }
      });
      // X21 = -T L11^-1: each row y solves y L11 = -t (back substitution, one axpy per column).
      parallel_for(m, 32, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t i = b; i < e; ++i) {
          T* y = a + (s0 + i) * n + j0;
          const T* ti = t.data() + i * jb;
          for (std::int64_t q = 0; q < jb; ++q) y[q] = -ti[q];
          for (std::int64_t p = jb - 1; p >= 0; --p) {
            const T* lp = a + (j0 + p) * n + j0;
            y[p] /= lp[p];
            kr.axpy(y, lp, y[p], p);
          }
        }
      });
    }
    // L11 <- L11^-1 (unblocked, from a copy).
    for (std::int64_t i = 0; i < jb; ++i)
      for (std::int64_t q = 0; q <= i; ++q) l11[static_cast<std::size_t>(i * jb + q)] = a[(j0 + i) * n + j0 + q];
    for (std::int64_t j = 0; j < jb; ++j) {
      a[(j0 + j) * n + j0 + j] = T{1} / l11[static_cast<std::size_t>(j * jb + j)];
      for (std::int64_t i = j + 1; i < jb; ++i) {
        T s = T{0};
        for (std::int64_t p = j; p < i; ++p) s += l11[static_cast<std::size_t>(i * jb + p)] * a[(j0 + p) * n + j0 + j];
        a[(j0 + i) * n + j0 + j] = -s / l11[static_cast<std::size_t>(i * jb + i)];
      }
    }
  }
}

// ==== the solver ===================================================================================================

bool valid_bits(int bits) {
  return std::find(std::begin(kAffineBits), std::end(kAffineBits), bits) != std::end(kAffineBits);
}

void check_config(const GptqConfig& c) {
  LOWBIT_CHECK(valid_bits(c.bits), ErrorCode::InvalidArgument, "{}: bits = {} is not supported; valid: 2, 3, 4, 8", kOp,
               c.bits);
  LOWBIT_CHECK(c.group_size == -1 || c.group_size >= 1, ErrorCode::InvalidArgument,
               "{}: group_size = {} is not valid; use >= 1 (columns per group) or -1 (one group per row)", kOp,
               c.group_size);
  LOWBIT_CHECK(std::isfinite(c.damp) && c.damp >= 0.0 && c.damp < 1.0, ErrorCode::InvalidArgument,
               "{}: damp = {} is outside [0, 1) (the fraction of mean(diag H) added to the diagonal)", kOp, c.damp);
  LOWBIT_CHECK(std::isfinite(c.damp_auto_increment) && c.damp_auto_increment >= 0.0, ErrorCode::InvalidArgument,
               "{}: damp_auto_increment = {} is negative or not finite", kOp, c.damp_auto_increment);
  LOWBIT_CHECK(c.block_size >= 1, ErrorCode::InvalidArgument, "{}: block_size = {} must be >= 1", kOp, c.block_size);
  LOWBIT_CHECK(c.scale_dtype == DType::F16 || c.scale_dtype == DType::F32, ErrorCode::InvalidArgument,
               "{}: scale_dtype {} is not supported; valid: f16, f32", kOp, dtype_name(c.scale_dtype));
  LOWBIT_CHECK(c.factor_dtype == DType::F64 || c.factor_dtype == DType::F32, ErrorCode::InvalidArgument,
               "{}: factor_dtype {} is not supported; valid: f64, f32", kOp, dtype_name(c.factor_dtype));
  if (c.mse) {
    LOWBIT_CHECK(std::isfinite(c.mse_norm) && c.mse_norm > 0.0, ErrorCode::InvalidArgument,
                 "{}: mse_norm = {} must be > 0", kOp, c.mse_norm);
    LOWBIT_CHECK(c.mse_grid >= 1, ErrorCode::InvalidArgument, "{}: mse_grid = {} must be >= 1", kOp, c.mse_grid);
    LOWBIT_CHECK(c.mse_maxshrink > 0.0 && c.mse_maxshrink <= 1.0, ErrorCode::InvalidArgument,
                 "{}: mse_maxshrink = {} is outside (0, 1]", kOp, c.mse_maxshrink);
  }
}

// quant.py Quantizer.find_params for one group (one row's slice): the min-max grid, or with mse the
// shrink factor whose |w_hat - w|^norm sum is strictly smallest (first one on ties).
struct GridSearch {
  int bits = 4;
  bool symmetric = false;
  bool mse = false;
  float norm = 2.4f;
  int steps = 0;  // floor(maxshrink * grid), as Python's int() of the double product
  double grid = 100;

  AffineGroupParams find(const float* x, std::int64_t len) const {
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (std::int64_t i = 0; i < len; ++i) {
      lo = std::min(lo, x[i]);
      hi = std::max(hi, x[i]);
    }
    AffineGroupParams best = affine_params_minmax(lo, hi, bits, symmetric, 1.0f);
    if (!mse) return best;
    double best_err = std::numeric_limits<double>::infinity();
    for (int s = 0; s < steps; ++s) {
      // p = 1 - i / grid in Python floats, rounded to fp32 where torch multiplies the fp32 range by it.
      const auto p = static_cast<float>(1.0 - static_cast<double>(s) / grid);
      const AffineGroupParams cand = affine_params_minmax(lo, hi, bits, symmetric, p);
      double err = 0.0;
      for (std::int64_t i = 0; i < len; ++i) {
        const float q = affine_dequantize_value(affine_quantize_value(x[i], cand, bits), cand.scale, cand.zero);
        err += static_cast<double>(std::pow(std::fabs(q - x[i]), norm));
      }
      if (err < best_err) {
        best_err = err;
        best = cand;
      }
    }
    return best;
  }
};

// The Hessian as the solver reads it: contiguous, f64 or f32.
struct HessianView {
  Tensor t;
  const double* f64 = nullptr;
  const float* f32 = nullptr;
  std::int64_t k = 0;
  double at(std::int64_t i, std::int64_t j) const {
    return f64 != nullptr ? f64[i * k + j] : static_cast<double>(f32[i * k + j]);
  }
};

HessianView open_hessian(const Tensor& h, std::int64_t k, std::string_view op) {
  LOWBIT_CHECK(h.defined(), ErrorCode::InvalidArgument, "{}: the Hessian is undefined", op);
  LOWBIT_CHECK(h.rank() == 2 && h.size(0) == k && h.size(1) == k, ErrorCode::ShapeMismatch,
               "{}: Hessian is {}; expected [{}, {}] (k = the weight's input features)", op, h.describe(), k, k);
  LOWBIT_CHECK(h.dtype() == DType::F64 || h.dtype() == DType::F32, ErrorCode::DTypeMismatch,
               "{}: Hessian is {}; expected f64 or f32", op, h.describe());
  HessianView v;
  v.t = h.contiguous();
  v.k = k;
  if (h.dtype() == DType::F64) {
    v.f64 = v.t.data<double>();
  } else {
    v.f32 = v.t.data<float>();
  }
  // Every element finite, checked up front (the solver reads only part of H, gptq_proxy_loss all of it).
  std::vector<std::int64_t> bad_row(static_cast<std::size_t>(k), -1);
  parallel_for(k, 64, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      bool ok = true;
      if (v.f64 != nullptr) {
        for (std::int64_t j = 0; j < k; ++j) ok &= std::isfinite(v.f64[i * k + j]);
      } else {
        for (std::int64_t j = 0; j < k; ++j) ok &= std::isfinite(v.f32[i * k + j]);
      }
      if (!ok) bad_row[static_cast<std::size_t>(i)] = i;
    }
  });
  for (std::int64_t i = 0; i < k; ++i) {
    if (bad_row[static_cast<std::size_t>(i)] < 0) continue;
    for (std::int64_t j = 0; j < k; ++j) {
      const double x = v.at(i, j);
      LOWBIT_CHECK(std::isfinite(x), ErrorCode::Numerical,
                   "{}: Hessian {} has {} at row {}, column {}; the calibration inputs (or an earlier quantized "
                   "layer) overflowed",
                   op, h.describe(), x, i, j);
    }
  }
  return v;
}

template <typename T>
std::unique_ptr<T[]> allocate(std::int64_t count, std::string_view what) {
  try {
    return std::unique_ptr<T[]>(new T[static_cast<std::size_t>(count)]);
  } catch (const std::bad_alloc&) {
    LOWBIT_THROW(ErrorCode::OutOfMemory, "{}: cannot allocate {} ({} bytes)", kOp, what,
                 count * static_cast<std::int64_t>(sizeof(T)));
  }
}

// Everything the solve needs, fixed for one call.
struct Problem {
  std::int64_t n = 0, k = 0;
  std::int64_t g = 0;                   // columns per group (k for one group per row)
  std::int64_t groups = 1;              // per row
  bool per_row = false;                 // group_size == -1
  bool dynamic = false;                 // groups found during the solve (not per row, not static)
  std::vector<std::int64_t> perm;       // processing position -> original column (identity without act-order)
  std::vector<std::int32_t> col_group;  // processing position -> group index of scales/zeros
  std::vector<char> dead;               // original column -> H_ii == 0
  std::vector<double> diag;             // original diag(H), dead entries set to 1
  GridSearch grid;
};

// The factor of the damped H, reversed: a holds M^-1 where J H_d J = M M^T (lower M), so that
// U[c1, c2] = a[(k-1-c1) * k + (k-1-c2)] for c2 >= c1 (processing order). One of a64 / a32 is set.
struct Factor {
  std::unique_ptr<double[]> a64;
  std::unique_ptr<float[]> a32;
  bool identity = false;  // the fallback: U = I
  float u(std::int64_t k, std::int64_t c1, std::int64_t c2) const {
    const std::size_t i = static_cast<std::size_t>((k - 1 - c1) * k + (k - 1 - c2));
    return a64 ? static_cast<float>(a64[i]) : a32[i];
  }
};

// Fills the work matrix with J P^T H_d P J (lower triangle; zeros above) and factors it. True on success.
template <typename T>
bool try_factor(T* a, const HessianView& h, const Problem& pb, const std::vector<double>& diag, double lambda,
                const Kernels<T>& kr) {
  const std::int64_t k = pb.k;
  parallel_for(k, 16, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t r1 = b; r1 < e; ++r1) {
      T* row = a + r1 * k;
      const std::int64_t o1 = pb.perm[static_cast<std::size_t>(k - 1 - r1)];
      const std::int64_t hrow = o1 * k;
      for (std::int64_t r2 = 0; r2 < r1; ++r2) {
        const std::int64_t o2 = pb.perm[static_cast<std::size_t>(k - 1 - r2)];
        row[r2] = static_cast<T>(h.f64 != nullptr ? h.f64[hrow + o2] : static_cast<double>(h.f32[hrow + o2]));
      }
      row[r1] = static_cast<T>(diag[static_cast<std::size_t>(o1)] + lambda);
      std::fill(row + r1 + 1, row + k, T{0});
    }
  });
  return cholesky_lower(a, k, kr) < 0;
}

struct FactorOutcome {
  double damp_used = 0;
  double diag_floor = 0;
  int attempts = 0;
  bool ok = false;
  std::string tried;
};

// GPTQModel's schedule (gptq.md section 4): damp, damp + increment, ... below 1; then diagonal floors.
template <typename T>
FactorOutcome factor_with_schedule(T* a, const HessianView& h, const Problem& pb, const GptqConfig& cfg,
                                   const Kernels<T>& kr) {
  FactorOutcome out;
  const std::int64_t k = pb.k;
  double max_abs_diag = 0.0;
  for (const double d : pb.diag) max_abs_diag = std::max(max_abs_diag, std::fabs(d));
  std::vector<double> diag(pb.diag.size());
  const auto schedule = [&](double floor) {
    for (std::size_t i = 0; i < diag.size(); ++i)
      diag[i] = floor > 0 ? std::max(pb.diag[i] + floor, floor) : pb.diag[i];
    const double mean = std::accumulate(diag.begin(), diag.end(), 0.0) / static_cast<double>(k);
    for (double damp = cfg.damp;;) {
      ++out.attempts;
      if (try_factor(a, h, pb, diag, damp * mean, kr)) {
        out.damp_used = damp;
        out.diag_floor = floor;
        return true;
      }
      out.tried += fmt::format("{}{:.4g}{}", out.tried.empty() ? "" : ", ", damp,
                               floor > 0 ? fmt::format(" (floor {:.3g})", floor) : "");
      if (cfg.damp_auto_increment <= 0.0 || !(damp + cfg.damp_auto_increment < 1.0)) return false;
      damp += cfg.damp_auto_increment;
    }
  };
  if (schedule(0.0)) {
    out.ok = true;
    return out;
  }
  for (int attempt = 1; attempt <= 6; ++attempt) {
    const double floor = 1e-6 * max_abs_diag * std::pow(10.0, attempt - 1);
    if (floor > 0 && schedule(floor)) {
      out.ok = true;
      return out;
    }
  }
  return out;
}

// W [n, k] in processing order as fp32, dead columns zeroed; per-row and static grids found on the way.
void load_weight(const WeightRows& rows, const Problem& pb, float* w, float* scales, std::uint8_t* zeros) {
  const std::int64_t n = pb.n, k = pb.k;
  const bool permuted = !pb.perm.empty() && !std::is_sorted(pb.perm.begin(), pb.perm.end());
  parallel_for(n, std::max<std::int64_t>(1, 16384 / k), [&](std::int64_t b, std::int64_t e) {
    std::vector<float> buf(static_cast<std::size_t>(k));
    for (std::int64_t r = b; r < e; ++r) {
      rows.read(r, buf.data());
      const auto store = [&](std::int64_t group, const AffineGroupParams& p) {
        scales[r * pb.groups + group] = p.scale;
        zeros[r * pb.groups + group] = static_cast<std::uint8_t>(p.zero);
      };
      if (pb.per_row) store(0, pb.grid.find(buf.data(), k));  // before the dead columns are zeroed (step 1)
      for (std::int64_t c = 0; c < k; ++c)
        if (pb.dead[static_cast<std::size_t>(c)]) buf[static_cast<std::size_t>(c)] = 0.0f;
      if (!pb.per_row && !pb.dynamic) {  // static groups: original order, before any update
        for (std::int64_t j = 0; j < pb.groups; ++j)
          store(j, pb.grid.find(buf.data() + j * pb.g, std::min(pb.g, k - j * pb.g)));
      }
      float* dst = w + r * k;
      if (permuted) {
        for (std::int64_t c = 0; c < k; ++c)
          dst[c] = buf[static_cast<std::size_t>(pb.perm[static_cast<std::size_t>(c)])];
      } else {
        std::memcpy(dst, buf.data(), static_cast<std::size_t>(k) * sizeof(float));
      }
    }
  });
}

// The column sweep of fasterquant over all rows (rows are independent; U is shared). Writes codes in the
// original column order, the dynamic groups' grids, and each row's share of the loss.
void sweep(const Problem& pb, const Factor& f, const GptqConfig& cfg, const Kernels<float>& kr, const SweepKernel& sk,
           float* w, std::uint8_t* codes, float* scales, std::uint8_t* zeros, std::vector<double>& loss_rows) {
  const std::int64_t n = pb.n, k = pb.k, bs = std::min(cfg.block_size, k);
  const int bits = cfg.bits;
  std::vector<float> ud(static_cast<std::size_t>(bs * bs));
  const std::int64_t max_panels = (k + kr.nr - 1) / kr.nr;
  std::vector<float> ur(f.identity ? 0 : static_cast<std::size_t>(max_panels * bs * kr.nr));
  // Row tiles of 48 rows (a multiple of every kernel's tile height and row-vector width) are the unit of
  // work; any split gives the same numbers.
  constexpr std::int64_t kRowTile = 48;
  const std::int64_t row_tiles = (n + kRowTile - 1) / kRowTile;
  const auto u_at = [&](std::int64_t c1, std::int64_t c2) { return f.u(k, c1, c2); };

  for (std::int64_t i1 = 0; i1 < k; i1 += bs) {
    const std::int64_t i2 = std::min(i1 + bs, k);
    const std::int64_t cnt = i2 - i1;
    const std::int64_t right = k - i2;
    // U[i1:i2, i1:i2] (upper, rows of bs) and U[i1:i2, i2:] packed into panels, in fp32 (the reference's Hinv).
    for (std::int64_t i = 0; i < cnt; ++i)
      for (std::int64_t j = 0; j < cnt; ++j)
        ud[static_cast<std::size_t>(i * bs + j)] =
            f.identity ? (i == j ? 1.0f : 0.0f) : (j >= i ? u_at(i1 + i, i1 + j) : 0.0f);
    const std::int64_t panels = (right + kr.nr - 1) / kr.nr;
    if (!f.identity && right > 0) {
      parallel_for(panels, 8, [&](std::int64_t q0, std::int64_t q1) {
        for (std::int64_t q = q0; q < q1; ++q) {
          float* dst = ur.data() + q * cnt * kr.nr;
          for (std::int64_t i = 0; i < cnt; ++i) {
            for (int jj = 0; jj < kr.nr; ++jj) {
              const std::int64_t c2 = i2 + q * kr.nr + jj;
              dst[i * kr.nr + jj] = c2 < k ? u_at(i1 + i, c2) : 0.0f;
            }
          }
        }
      });
    }

    parallel_for(row_tiles, 1, [&](std::int64_t t0, std::int64_t t1) {
      std::vector<float> err(static_cast<std::size_t>(kRowTile * bs));
      std::vector<float> scratch;
      std::vector<double> loss_tile(static_cast<std::size_t>(sk.width));
      std::vector<float> blk_storage(static_cast<std::size_t>(cnt * sk.width + 16));
      float* blk = blk_storage.data() + (16 - (reinterpret_cast<std::uintptr_t>(blk_storage.data()) / 4) % 16) % 16;
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t r0 = t * kRowTile, r1 = std::min(n, r0 + kRowTile);
        // Dynamic groups starting in this block: their grid from W as it stands now, i.e. without this
        // block's updates (the reference's outer W).
        if (pb.dynamic) {
          for (std::int64_t c0 = (i1 + pb.g - 1) / pb.g * pb.g; c0 < i2; c0 += pb.g) {
            const std::int64_t len = std::min(pb.g, k - c0), gi = c0 / pb.g;
            for (std::int64_t r = r0; r < r1; ++r) {
              const AffineGroupParams p = pb.grid.find(w + r * k + c0, len);
              scales[r * pb.groups + gi] = p.scale;
              zeros[r * pb.groups + gi] = static_cast<std::uint8_t>(p.zero);
            }
          }
        }
        for (std::int64_t l0 = r0; l0 < r1; l0 += sk.width) {
          SweepTile st;
          st.w = w + l0 * k;
          st.k = k;
          st.rows = static_cast<int>(std::min<std::int64_t>(sk.width, r1 - l0));
          st.i1 = i1;
          st.cnt = cnt;
          st.bs = bs;
          st.ud = ud.data();
          st.col_group = pb.col_group.data();
          st.perm = pb.perm.data();
          st.scales = scales + l0 * pb.groups;
          st.zeros = zeros + l0 * pb.groups;
          st.groups = pb.groups;
          st.codes = codes + l0 * k;
          st.err = err.data() + (l0 - r0) * bs;
          st.loss = loss_tile.data();
          st.scratch = blk;
          st.bits = bits;
          st.propagate = !f.identity;
          std::fill(loss_tile.begin(), loss_tile.end(), 0.0);
          sk.fn(st);
          for (int l = 0; l < st.rows; ++l)
            loss_rows[static_cast<std::size_t>(l0 + l)] += loss_tile[static_cast<std::size_t>(l)] / 2.0;
        }
        // The lazy batch update of the columns right of the block: W[rows, i2:] -= E U[i1:i2, i2:].
        if (!f.identity && right > 0) {
          gemm_rows(kr, err.data(), bs, r1 - r0, ur.data(), cnt, right, w + r0 * k + i2, k, kSub, scratch);
        }
      }
    });
  }
}


}  // namespace

GptqResult quantize_gptq(const Tensor& weight, const Tensor& hessian, const GptqConfig& config) {
  check_config(config);
  const WeightRows rows = WeightRows::open(weight, kOp);
  const std::int64_t n = rows.n(), k = rows.k();
  const HessianView h = open_hessian(hessian, k, kOp);
  const Isa isa = select_isa();
  const Kernels<float> k32 = kernels_for<float>(isa);

  Problem pb;
  pb.n = n;
  pb.k = k;
  pb.per_row = config.group_size == -1;
  pb.g = pb.per_row ? k : config.group_size;
  pb.groups = affine_groups_per_row(k, config.group_size);
  pb.dynamic = !pb.per_row && !config.static_groups;
  pb.grid.bits = config.bits;
  pb.grid.symmetric = config.symmetric;
  pb.grid.mse = config.mse;
  pb.grid.norm = static_cast<float>(config.mse_norm);
  pb.grid.grid = config.mse_grid;
  pb.grid.steps = static_cast<int>(config.mse_maxshrink * static_cast<double>(config.mse_grid));

  GptqResult result;
  // Dead columns (step 2) and the diagonal every later step sees.
  pb.dead.assign(static_cast<std::size_t>(k), 0);
  pb.diag.resize(static_cast<std::size_t>(k));
  for (std::int64_t i = 0; i < k; ++i) {
    const double d = h.at(i, i);
    pb.dead[static_cast<std::size_t>(i)] = d == 0.0;
    pb.diag[static_cast<std::size_t>(i)] = d == 0.0 ? 1.0 : d;
    result.dead_columns += d == 0.0 ? 1 : 0;
  }
  // Act-order (step 4): decreasing diag(H), ties by column index.
  pb.perm.resize(static_cast<std::size_t>(k));
  std::iota(pb.perm.begin(), pb.perm.end(), std::int64_t{0});
  if (config.act_order) {
    std::stable_sort(pb.perm.begin(), pb.perm.end(), [&](std::int64_t x, std::int64_t y) {
      return pb.diag[static_cast<std::size_t>(x)] > pb.diag[static_cast<std::size_t>(y)];
    });
  }
  pb.col_group.resize(static_cast<std::size_t>(k));
  for (std::int64_t c = 0; c < k; ++c) {
    const std::int64_t original = pb.perm[static_cast<std::size_t>(c)];
    pb.col_group[static_cast<std::size_t>(c)] =
        static_cast<std::int32_t>(pb.per_row ? 0 : (pb.dynamic ? c : original) / pb.g);
  }

  // Steps 5 and 6: damping and the inverse factor, with the fallback schedule.
  Factor factor;
  const auto factorize = [&](auto* a, const auto& kr) {
    const FactorOutcome fo = factor_with_schedule(a, h, pb, config, kr);
    if (fo.ok) {
      zero_upper(a, k);
      invert_lower(a, k, kr);
    }
    return fo;
  };
  FactorOutcome fo;
  if (config.factor_dtype == DType::F64) {
    factor.a64 = allocate<double>(k * k, fmt::format("the fp64 factor of H [{}, {}]", k, k));
    fo = factorize(factor.a64.get(), kernels_for<double>(isa));
  } else {
    factor.a32 = allocate<float>(k * k, fmt::format("the fp32 factor of H [{}, {}]", k, k));
    fo = factorize(factor.a32.get(), k32);
  }
  result.factor_attempts = fo.attempts;
  result.damp_used = fo.damp_used;
  result.diag_floor = fo.diag_floor;
  if (!fo.ok) {
    factor = Factor{};
    factor.identity = true;
    result.fallback = true;
    result.fallback_reason = fmt::format(
        "the damped Hessian is not positive definite at any damp tried ({}); quantized without error "
        "propagation (round to nearest on GPTQ's grid)",
        fo.tried);
  }

  std::unique_ptr<float[]> w = allocate<float>(n * k, fmt::format("the fp32 working copy of W [{}, {}]", n, k));
  Tensor codes = Tensor::empty({n, k}, DType::U8);
  Tensor scales32 = Tensor::empty({n, pb.groups}, DType::F32);
  Tensor zeros = Tensor::empty({n, pb.groups}, DType::U8);
  std::vector<double> loss_rows;
  const auto solve = [&]() {
    load_weight(rows, pb, w.get(), scales32.data<float>(), zeros.data<std::uint8_t>());
    loss_rows.assign(static_cast<std::size_t>(n), 0.0);
    sweep(pb, factor, config, k32, sweep_kernel_for(isa), w.get(), codes.data<std::uint8_t>(), scales32.data<float>(),
          zeros.data<std::uint8_t>(), loss_rows);
    result.loss = 0.0;
    for (const double l : loss_rows) result.loss += l;  // in row order: the same for any thread count
  };
  solve();
  if (!std::isfinite(result.loss) && !factor.identity) {
    // Propagated errors overflowed fp32 (weights near its range): never hand back NaN or Inf weights.
    factor = Factor{};
    factor.identity = true;
    result.fallback = true;
    result.damp_used = 0.0;
    result.fallback_reason = fmt::format(
        "the solve overflowed fp32 (loss {}) at damp {}; quantized without error propagation (round to nearest "
        "on GPTQ's grid)",
        result.loss, fo.damp_used);
    solve();
  }
  if (result.fallback) result.damp_used = 0.0;

  QuantizedTensor& q = result.q;
  q.method = "affine";
  q.shape = Shape{n, k};
  q.dtype = weight.dtype();
  q.params = gptq_params_from_config(config);
  q.components.emplace("codes", std::move(codes));
  q.components.emplace("scales", affine_store_scales(scales32, config.scale_dtype, kOp));
  q.components.emplace("zeros", std::move(zeros));
  if (pb.dynamic && config.act_order) {
    // g_idx[c] = rank(c) / g; stored only where some column leaves the contiguous c / g grouping.
    Tensor g_idx = Tensor::empty({k}, DType::I32);
    std::int32_t* gi = g_idx.data<std::int32_t>();
    bool trivial = true;
    for (std::int64_t c = 0; c < k; ++c) {
      const std::int64_t original = pb.perm[static_cast<std::size_t>(c)];
      gi[original] = static_cast<std::int32_t>(c / pb.g);
      trivial &= original / pb.g == c / pb.g;
    }
    if (!trivial) q.components.emplace("g_idx", std::move(g_idx));
  }
  return result;
}

double gptq_proxy_loss(const Tensor& weight, const Tensor& hessian, const Tensor& w_hat) {
  constexpr std::string_view op = "gptq_proxy_loss";
  const WeightRows wr = WeightRows::open(weight, op);
  const WeightRows qr = WeightRows::open(w_hat, op);
  LOWBIT_CHECK(weight.shape() == w_hat.shape(), ErrorCode::ShapeMismatch, "{}: weight is {} but w_hat is {}", op,
               weight.describe(), w_hat.describe());
  const std::int64_t n = wr.n(), k = wr.k();
  const HessianView h = open_hessian(hessian, k, op);
  const Kernels<double> kr = kernels_for<double>(select_isa());

  // Column chunks of H (packed panels, all k rows as the inner dimension) against row tiles of D = W - W_hat.
  constexpr std::int64_t kChunkCols = 256, kRowTile = 64;
  const std::int64_t row_tiles = (n + kRowTile - 1) / kRowTile;
  std::vector<double> row_sum(static_cast<std::size_t>(n), 0.0);
  std::vector<double> packed;
  for (std::int64_t j0 = 0; j0 < k; j0 += kChunkCols) {
    const std::int64_t cols = std::min(kChunkCols, k - j0);
    const std::int64_t panels = (cols + kr.nr - 1) / kr.nr;
    packed.assign(static_cast<std::size_t>(panels * k * kr.nr), 0.0);
    parallel_for(k, 64, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t p = b; p < e; ++p)
        for (std::int64_t j = 0; j < cols; ++j)
          packed[static_cast<std::size_t>(((j / kr.nr) * k + p) * kr.nr + j % kr.nr)] = h.at(p, j0 + j);
    });
    parallel_for(row_tiles, 1, [&](std::int64_t t0, std::int64_t t1) {
      std::vector<float> a(static_cast<std::size_t>(k)), b(static_cast<std::size_t>(k));
      std::vector<double> d(static_cast<std::size_t>(kRowTile * k)), c(static_cast<std::size_t>(kRowTile * cols));
      std::vector<double> scratch;
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t r0 = t * kRowTile, r1 = std::min(n, r0 + kRowTile);
        for (std::int64_t r = r0; r < r1; ++r) {
          wr.read(r, a.data());
          qr.read(r, b.data());
          for (std::int64_t j = 0; j < k; ++j)
            d[static_cast<std::size_t>((r - r0) * k + j)] = static_cast<double>(a[j]) - static_cast<double>(b[j]);
        }
        // C = D H[:, j0:j0+cols], the inner dimension in chunks (fixed boundaries: deterministic).
        for (std::int64_t p0 = 0; p0 < k; p0 += kInnerChunk) {
          gemm_rows(kr, d.data() + p0, k, r1 - r0, packed.data() + p0 * kr.nr, std::min(kInnerChunk, k - p0), cols,
                    c.data(), cols, p0 == 0 ? kStore : kAdd, scratch, k * kr.nr);
        }
        for (std::int64_t r = r0; r < r1; ++r) {
          double s = 0.0;
          for (std::int64_t j = 0; j < cols; ++j)
            s += c[static_cast<std::size_t>((r - r0) * cols + j)] * d[static_cast<std::size_t>((r - r0) * k + j0 + j)];
          row_sum[static_cast<std::size_t>(r)] += s;
        }
      }
    });
  }
  double total = 0.0;
  for (const double s : row_sum) total += s;
  return total;
}

QuantParams gptq_params_from_config(const GptqConfig& config) {
  AffineConfig a;
  a.bits = config.bits;
  a.group_size = config.group_size;
  a.mode = config.symmetric ? AffineMode::Symmetric : AffineMode::Asymmetric;
  a.scale_dtype = config.scale_dtype;
  return affine_params_from_config(a);
}

GptqConfig gptq_config_from(const QuantParams& params, const SolverOptions& options) {
  const AffineConfig a = affine_config_from_params(params);
  LOWBIT_CHECK(a.mode != AffineMode::Absmax, ErrorCode::InvalidArgument,
               "gptq: variant '{}' is an absmax grid; GPTQ quantizes onto the min-max grid ('minmax:f16' or "
               "'minmax:f32')",
               params.variant);
  LOWBIT_CHECK(params.group_size != 0, ErrorCode::InvalidArgument,
               "gptq: group_size = 0 (one group for the whole tensor) is not a GPTQ grid; use >= 1 or -1 (per row)");
  GptqConfig c;
  c.bits = params.bits;
  c.group_size = params.group_size;
  c.symmetric = params.symmetric;
  c.scale_dtype = a.scale_dtype;
  c.damp = options.damp;
  c.act_order = options.act_order;
  c.static_groups = options.static_groups;
  c.block_size = options.block_size;
  c.mse = options.mse;
  return c;
}

MethodInfo gptq_method_info() {
  MethodInfo m;
  m.name = "gptq";
  m.summary =
      "GPTQ (IST-DASLab reference): column-by-column quantization onto the affine min-max grid with error "
      "propagation through the Hessian of calibration inputs; 2/3/4/8 bits, per row or group, act-order";
  m.defaults = gptq_params_from_config(GptqConfig{});
  m.quantize = [](const Tensor&, const QuantParams&) -> QuantizedTensor {
    LOWBIT_THROW(ErrorCode::InvalidArgument,
                 "gptq: needs calibration data (the Hessian of each layer's inputs); pass calibration text with "
                 "--calib, or use 'affine' for round to nearest without it");
  };
  m.dequantize = [](const QuantizedTensor& q) { return dequantize_affine_reference(q); };
  m.matmul = [](const QuantizedTensor& q, const Tensor& x) { return matmul_affine_reference(q, x); };
  m.needs.hessian = true;
  m.quantize_calibrated = [](const Tensor& weight, const QuantParams& params, const Calibration& calibration,
                             const SolverOptions& options) {
    return quantize_gptq(weight, calibration.hessian(), gptq_config_from(params, options)).q;
  };
  return m;
}

}  // namespace lowbit::quant
