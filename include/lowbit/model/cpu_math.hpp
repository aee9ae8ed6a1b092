// Vectorised exp for the reference forward's softmax, SiLU and log-sum-exp, chosen at run time like the GEMM
// kernels (gemm.hpp: AVX-512, AVX2, or the C library's expf).
//
// exp(x) = 2^n * p(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two for exactness), p the Cephes
// expf polynomial: within a few ulp of std::exp for x in [-87, 88] (tests/model/cpu_math_test.cpp sweeps the
// range). Outside it the result saturates: towards 0 below, to exp(88) (AVX2) or +inf (AVX-512) above. NaN
// stays NaN.
#pragma once

#include <cstdint>

#include "lowbit/model/gemm.hpp"

namespace lowbit::model {

// x[i] = exp(x[i] - shift) for i in [0, n); returns the sum of the results (accumulated in fp64 per lane).
double exp_shifted(float* x, std::int64_t n, float shift, CpuKernel kernel = best_cpu_kernel());
// Sum of exp(x[i] - shift) without writing x (log-sum-exp over a vocabulary).
double sum_exp_shifted(const float* x, std::int64_t n, float shift, CpuKernel kernel = best_cpu_kernel());
// gate[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i]: the SwiGLU product.
void silu_mul(float* gate, const float* up, std::int64_t n, CpuKernel kernel = best_cpu_kernel());

}  // namespace lowbit::model
