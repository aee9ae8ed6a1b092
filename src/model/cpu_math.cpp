#include "lowbit/model/cpu_math.hpp"

#include <cmath>

#include "lowbit/core/error.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LOWBIT_CPU_MATH_X86 1
#include <immintrin.h>
#else
#define LOWBIT_CPU_MATH_X86 0
#endif

namespace lowbit::model {
namespace {

// Cephes expf: ln 2 = kLn2Hi + kLn2Lo (kLn2Hi exact in 9 bits, so n * kLn2Hi is exact for |n| < 2^15), and the
// minimax polynomial of (exp(r) - 1 - r) / r^2 on [-ln 2 / 2, ln 2 / 2].
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f;
constexpr float kP1 = 1.3981999507e-3f;
constexpr float kP2 = 8.3334519073e-3f;
constexpr float kP3 = 4.1665795894e-2f;
constexpr float kP4 = 1.6666665459e-1f;
constexpr float kP5 = 5.0000001201e-1f;

#if LOWBIT_CPU_MATH_X86
// GCC 12's avx512fintrin.h fills the unused pass-through operand of min/max/roundscale/scalef with
// _mm512_undefined_*(), which -W(maybe-)uninitialized flags once inlined (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
// ---- AVX-512: 2^n applied with scalef, which saturates to 0 and +inf by itself ------------------------------
__attribute__((target("avx512f"))) inline __m512 exp16(__m512 x) {
  // Clamped so that r stays small; min/max return x itself when x is NaN, so NaN propagates.
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kP0);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP5));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

__attribute__((target("avx512f"))) double exp_sum_avx512(const float* x, float* out, std::int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512d sum0 = _mm512_setzero_pd();
  __m512d sum1 = _mm512_setzero_pd();
  std::int64_t i = 0;
  for (; i < n; i += 16) {
    const auto mask = static_cast<__mmask16>(n - i >= 16 ? 0xFFFFu : (1u << (n - i)) - 1u);
    const __m512 e = _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + i), s)));
    if (out != nullptr) _mm512_mask_storeu_ps(out + i, mask, e);
    sum0 = _mm512_add_pd(sum0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    sum1 = _mm512_add_pd(sum1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(sum0, sum1));
}

__attribute__((target("avx512f"))) void silu_mul_avx512(float* gate, const float* up, std::int64_t n) {
  for (std::int64_t i = 0; i < n; i += 16) {
    const auto mask = static_cast<__mmask16>(n - i >= 16 ? 0xFFFFu : (1u << (n - i)) - 1u);
    const __m512 g = _mm512_maskz_loadu_ps(mask, gate + i);
    const __m512 u = _mm512_maskz_loadu_ps(mask, up + i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    _mm512_mask_storeu_ps(gate + i, mask, _mm512_mul_ps(silu, u));
  }
}

#pragma GCC diagnostic pop

// ---- AVX2: 2^n built in the exponent bits, so x is clamped to where that is a normal number ---------------
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);  // n <= 127 and >= -126: 2^n a normal number
  x = _mm256_max_ps(_mm256_set1_ps(-87.3365447504f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kP0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP5));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}

__attribute__((target("avx2,fma"))) __m256i tail_mask8(std::int64_t left) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left < 8 ? left : 8)), lane);
}

__attribute__((target("avx2,fma"))) double exp_sum_avx2(const float* x, float* out, std::int64_t n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256d sum0 = _mm256_setzero_pd();
  __m256d sum1 = _mm256_setzero_pd();
  for (std::int64_t i = 0; i < n; i += 8) {
    const __m256i mask = tail_mask8(n - i);
    const __m256 e = _mm256_and_ps(_mm256_castsi256_ps(mask),
                                   exp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), s)));
    if (out != nullptr) _mm256_maskstore_ps(out + i, mask, e);
    sum0 = _mm256_add_pd(sum0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    sum1 = _mm256_add_pd(sum1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(sum0, sum1));
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

__attribute__((target("avx2,fma"))) void silu_mul_avx2(float* gate, const float* up, std::int64_t n) {
  for (std::int64_t i = 0; i < n; i += 8) {
    const __m256i mask = tail_mask8(n - i);
    const __m256 g = _mm256_maskload_ps(gate + i, mask);
    const __m256 u = _mm256_maskload_ps(up + i, mask);
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    _mm256_maskstore_ps(gate + i, mask, _mm256_mul_ps(silu, u));
  }
}
#endif

double exp_sum_generic(const float* x, float* out, std::int64_t n, float shift) {
  double sum = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float e = std::exp(x[i] - shift);
    if (out != nullptr) out[i] = e;
    sum += e;
  }
  return sum;
}

double exp_sum(const float* x, float* out, std::int64_t n, float shift, CpuKernel kernel) {
  switch (kernel) {
#if LOWBIT_CPU_MATH_X86
    case CpuKernel::Avx512: return exp_sum_avx512(x, out, n, shift);
    case CpuKernel::Avx2: return exp_sum_avx2(x, out, n, shift);
#endif
    default: return exp_sum_generic(x, out, n, shift);
  }
}

}  // namespace

double exp_shifted(float* x, std::int64_t n, float shift, CpuKernel kernel) {
  return n > 0 ? exp_sum(x, x, n, shift, kernel) : 0.0;
}

double sum_exp_shifted(const float* x, std::int64_t n, float shift, CpuKernel kernel) {
  return n > 0 ? exp_sum(x, nullptr, n, shift, kernel) : 0.0;
}

void silu_mul(float* gate, const float* up, std::int64_t n, CpuKernel kernel) {
  if (n <= 0) return;
  switch (kernel) {
#if LOWBIT_CPU_MATH_X86
    case CpuKernel::Avx512: return silu_mul_avx512(gate, up, n);
    case CpuKernel::Avx2: return silu_mul_avx2(gate, up, n);
#endif
    default:
      for (std::int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }
}

}  // namespace lowbit::model
