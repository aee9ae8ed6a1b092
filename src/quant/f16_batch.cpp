#include "f16_batch.hpp"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "lowbit/core/half.hpp"

namespace lowbit::quant::detail {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// CPUID leaf 1, ECX: OSXSAVE (27), AVX (28), F16C (29); and the OS must save YMM state (XCR0 bits 1, 2).
// Read directly: clang 14's __builtin_cpu_supports does not know "f16c".
bool have_f16c() {
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) == 0) return false;
    const unsigned need = (1u << 27) | (1u << 28) | (1u << 29);
    if ((c & need) != need) return false;
    unsigned lo = 0, hi = 0;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6u) == 6u;
  }();
  return yes;
}

namespace {
__attribute__((target("avx,f16c"))) std::int64_t f32_to_f16_f16c(const float* in, std::uint16_t* out, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
  }
  return i;
}
}  // namespace
#else
bool have_f16c() { return false; }
#endif

void f32_to_f16_batch(const float* in, std::uint16_t* out, std::int64_t n) {
  std::int64_t i = 0;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (have_f16c()) i = f32_to_f16_f16c(in, out, n);
#endif
  for (; i < n; ++i) out[i] = f32_to_f16_bits(in[i]);
}

}  // namespace lowbit::quant::detail
