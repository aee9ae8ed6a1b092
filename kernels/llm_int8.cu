// LLM.int8() activation side, epilogue and small-m GEMV: everything of y = x W^T around the int8 GEMM
// (cuBLASLt), and for m <= 8 the GEMM too.
//
// Operands   x: f16|bf16 [m, k] row-major, 16-byte aligned. CB: i8 [n, k]. SCB: f32 [n]. Scratch regions
//            as cuda/llm_int8.hpp's LlmInt8ScratchLayout.
// Reference  quant::trace_llm_int8_matmul (LlmInt8Backend::Cuda); tests/cuda/llm_int8_kernel_test.cpp
//            requires bit equality for f16 and bf16.
// Design     rows kernel: one block per row, two passes over the row (the second from L1/L2): absmax of
//            the inliers, then codes; 16-byte loads issued 4 at a time, 8-byte code stores. Outlier columns
//            are OR-ed into a bit mask with atomicOr (order-free, hence deterministic). compact: one block,
//            a block-wide scan of popcounts. outliers: grid-stride over (row, outlier column) and (outlier
//            column, output feature). epilogue: 16 rows x 64 features per block, the outlier product
//            staged through shared memory 32 columns at a time. gemv (m <= 8): a warp per 2 features,
//            dp4a over 8-byte chunks of CB and CA with outlier columns masked, exact int32, then the same
//            epilogue arithmetic per lane.
//            Rounding: products and quotients that the reference rounds are written with __fmul_rn /
//            __fdiv_rn, so the compiler cannot contract them into an FMA (which would round once less).
// Launch     rows: m blocks of 512. compact: 1 block of 1024. outliers: 4 blocks per SM of 256.
//            epilogue: (ceil(n/64), ceil(m/16)) blocks of 256. gemv: ceil(n/16) blocks of 256.
// Refuses    an activation dtype outside kLlmInt8Built, an m the gemv has no instance for: Errors listing
//            what is built.
// Instances  {half, bf16} x (rows, outliers, epilogue, gemv kM in {1, 2, 4, 8}) (kLlmInt8Built).
// Bench      lowbit_cuda_bench --benchmark_filter=llm_int8
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../src/cuda/check.hpp"
#include "lowbit/cuda/llm_int8.hpp"
#include "lowbit/quant/llm_int8.hpp"

namespace lowbit::cuda::detail {
namespace {

constexpr int kRowThreads = 512;
constexpr int kRowBatch = 4;
constexpr int kCompactThreads = 1024;
constexpr int kFixThreads = 256;

__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// x rounded to fp16 (bitsandbytes quantizes A.to(float16)); identity for half input.
__device__ __forceinline__ float to_x16(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_x16(__nv_bfloat16 v) { return __half2float(__float2half_rn(__bfloat162float(v))); }

// fp32 -> the activation dtype and back (round to nearest even), as float.
template <typename T>
__device__ __forceinline__ float round_to_act(float v);
template <>
__device__ __forceinline__ float round_to_act<__half>(float v) { return __half2float(__float2half_rn(v)); }
template <>
__device__ __forceinline__ float round_to_act<__nv_bfloat16>(float v) {
  return __bfloat162float(__float2bfloat16_rn(v));
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// quant::llm_int8_dequantize_value with explicit rounding: fl32(fl32(code * absmax) * fl32(1/127)).
__device__ __forceinline__ float dequantize_weight(int code, float absmax) {
  return __fmul_rn(__fmul_rn(static_cast<float>(code), absmax), quant::kLlmInt8InvMaxCode);
}

// Max over a block of kRowThreads; every thread gets the result.
__device__ __forceinline__ float block_max(float v, float* shared /* [kRowThreads / 32] */) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float r = shared[0];
  for (int w = 1; w < kRowThreads / 32; ++w) r = fmaxf(r, shared[w]);
  return r;
}

// Step 1: per row i, absmax over inliers, outlier bits, codes (outlier elements 0). Each thread takes
// kRowBatch 16-byte chunks at a time, all loads issued before any is used, so a row of k = 28672 (3584
// chunks over 512 threads) costs two round trips to memory per pass, not seven.
template <typename T>
__global__ void __launch_bounds__(kRowThreads) llm_int8_rows_kernel(const T* __restrict__ x, std::int64_t k,
                                                                     float t16, bool decompose,
                                                                     std::uint32_t* __restrict__ mask,
                                                                     float* __restrict__ sca,
                                                                     std::int8_t* __restrict__ ca) {
  __shared__ float reduce[kRowThreads / 32];
  const std::int64_t i = blockIdx.x;
  const T* row = x + i * k;
  const std::int64_t chunks = k / 8;  // 8 elements = 16 bytes each
  float absmax = 0.0f;  // outliers count as 0, as in the reference
  for (std::int64_t c0 = threadIdx.x; c0 < chunks; c0 += kRowThreads * kRowBatch) {
    uint4 raw[kRowBatch];
#pragma unroll
    for (int b = 0; b < kRowBatch; ++b) {
      const std::int64_t c = c0 + b * kRowThreads;
      raw[b] = c < chunks ? *reinterpret_cast<const uint4*>(row + c * 8) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int b = 0; b < kRowBatch; ++b) {
      const std::int64_t c = c0 + b * kRowThreads;
      const T* v = reinterpret_cast<const T*>(&raw[b]);
      std::uint32_t bits = 0;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float magnitude = fabsf(to_x16(v[e]));
        if (decompose && magnitude >= t16) {
          bits |= 1u << e;
        } else {
          absmax = fmaxf(absmax, magnitude);
        }
      }
      // Padding chunks past the row hold zeros: they may count as outliers only for t16 = 0, so they
      // are kept out of the mask explicitly; 0 never moves the max.
      if (bits != 0 && c < chunks) atomicOr(mask + llm_int8_mask_word(c), bits << llm_int8_mask_shift(c));
    }
  }
  absmax = block_max(absmax, reduce);
  if (threadIdx.x == 0) sca[i] = absmax;
  // llm_int8_scale: fl32(fl32(1 / absmax) * 127); Inf for absmax 0 (then every inlier is +-0: code 0).
  const float scale = __fmul_rn(__fdiv_rn(1.0f, absmax), static_cast<float>(quant::kLlmInt8MaxCode));
  std::int8_t* out = ca + i * k;
  for (std::int64_t c0 = threadIdx.x; c0 < chunks; c0 += kRowThreads * kRowBatch) {
    uint4 raw[kRowBatch];
#pragma unroll
    for (int b = 0; b < kRowBatch; ++b) {
      const std::int64_t c = c0 + b * kRowThreads;
      raw[b] = c < chunks ? *reinterpret_cast<const uint4*>(row + c * 8) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int b = 0; b < kRowBatch; ++b) {
      const std::int64_t c = c0 + b * kRowThreads;
      if (c >= chunks) continue;
      const T* v = reinterpret_cast<const T*>(&raw[b]);
      std::uint32_t packed[2] = {0u, 0u};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float v16 = to_x16(v[e]);
        int code = 0;
        if (!(decompose && fabsf(v16) >= t16)) {
          const float p = __fmul_rn(v16, scale);
          code = (p == p) ? __float2int_rn(p) : 0;  // NaN only from 0 * Inf (all-zero row): code 0
        }
        packed[e / 4] |= (static_cast<std::uint32_t>(code) & 0xffu) << (8 * (e % 4));
      }
      *reinterpret_cast<uint2*>(out + c * 8) = make_uint2(packed[0], packed[1]);
    }
  }
}

// Step 2: the mask's set bits, ascending, into cols; their number into *ncols.
__global__ void __launch_bounds__(kCompactThreads) llm_int8_compact_kernel(const std::uint32_t* __restrict__ mask,
                                                                          std::int64_t words,
                                                                          std::int32_t* __restrict__ cols,
                                                                          std::int32_t* __restrict__ ncols) {
  __shared__ int warp_sums[kCompactThreads / 32];
  __shared__ int base_shared;
  if (threadIdx.x == 0) base_shared = 0;
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (std::int64_t w0 = 0; w0 < words; w0 += kCompactThreads) {
    const std::int64_t w = w0 + threadIdx.x;
    std::uint32_t word = w < words ? mask[w] : 0u;
    const int count = __popc(word);
    // Inclusive scan within the warp, then across warp totals.
    int inclusive = count;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    if (lane == 31) warp_sums[warp] = inclusive;
    __syncthreads();
    int before = base_shared;
    for (int v = 0; v < warp; ++v) before += warp_sums[v];
    int position = before + inclusive - count;
    while (word != 0u) {
      const int bit = __ffs(static_cast<int>(word)) - 1;
      cols[position++] = static_cast<std::int32_t>(w * 32 + bit);
      word &= word - 1u;
    }
    __syncthreads();  // everyone has read base_shared and warp_sums
    if (threadIdx.x == kCompactThreads - 1) base_shared = before + inclusive;
    __syncthreads();
  }
  if (threadIdx.x == 0) *ncols = base_shared;
}

// Step 3: zero whole outlier columns of CA, gather x's outlier columns and the dequantized weight columns
// (the first kLlmInt8PanelCols outlier columns) into dense panels.
template <typename T>
__global__ void __launch_bounds__(kFixThreads) llm_int8_outliers_kernel(
    const T* __restrict__ x, const std::int8_t* __restrict__ cb, const float* __restrict__ scb,
    const std::int32_t* __restrict__ cols, const std::int32_t* __restrict__ ncols_ptr, std::int64_t m,
    std::int64_t n, std::int64_t k, std::int8_t* __restrict__ ca, float* __restrict__ sub_a,
    float* __restrict__ sub_b) {
  const std::int64_t nc = *ncols_ptr;
  if (nc == 0) return;
  const std::int64_t panel = nc < kLlmInt8PanelCols ? nc : kLlmInt8PanelCols;
  const std::int64_t part_a = m * nc;      // (i, j): j fastest
  const std::int64_t part_b = panel * n;   // (j, o): o fastest
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < part_a + part_b;
       t += stride) {
    if (t < part_a) {
      const std::int64_t i = t / nc, j = t % nc;
      const std::int64_t col = cols[j];
      ca[i * k + col] = 0;
      if (j < kLlmInt8PanelCols) sub_a[i * kLlmInt8PanelCols + j] = to_float(x[i * k + col]);
    } else {
      const std::int64_t u = t - part_a;
      const std::int64_t j = u / n, o = u % n;
      const std::int64_t col = cols[j];
      sub_b[j * n + o] = round_to_act<T>(dequantize_weight(cb[o * k + col], scb[o]));
    }
  }
}

// Step 5: int8 part dequantized as kdequant_mm_int32_fp16, then the outlier product added.
template <typename T>
__global__ void __launch_bounds__(kLlmInt8EpilogueThreads) llm_int8_epilogue_kernel(
    const std::int32_t* __restrict__ c, const float* __restrict__ sca, const float* __restrict__ scb,
    const T* __restrict__ x, const std::int8_t* __restrict__ cb, const std::int32_t* __restrict__ cols,
    const std::int32_t* __restrict__ ncols_ptr, const float* __restrict__ sub_a, const float* __restrict__ sub_b,
    std::int64_t m, std::int64_t n, std::int64_t k, T* __restrict__ y) {
  constexpr int kRows = kLlmInt8EpilogueRows, kCols = kLlmInt8EpilogueCols, kChunk = 32;
  constexpr int kRowGroups = kLlmInt8EpilogueThreads / kCols;  // 4
  constexpr int kPerThread = kRows / kRowGroups;                // 4 rows per thread
  static_assert(kRows % kRowGroups == 0, "epilogue tile");
  __shared__ float s_a[kRows][kChunk];        // [16, 32]  x's outlier columns
  __shared__ float s_b[kCols][kChunk + 1];    // [64, 33]  dequantized weight columns (+1: no bank conflicts)
  __shared__ std::int32_t s_cols[kChunk];

  const int col = threadIdx.x % kCols, group = threadIdx.x / kCols;
  const std::int64_t o = static_cast<std::int64_t>(blockIdx.x) * kCols + col;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.y) * kRows;
  const bool o_ok = o < n;
  const float scb_o = o_ok ? scb[o] : 0.0f;

  float y_val[kPerThread];
#pragma unroll
  for (int q = 0; q < kPerThread; ++q) {
    const std::int64_t i = i0 + group + q * kRowGroups;
    y_val[q] = 0.0f;
    if (o_ok && i < m) {
      const float v = quant::llm_int8_dequantize_mm(c[i * n + o], sca[i], scb_o, 0.0f);  // no add to contract
      y_val[q] = round_to_act<T>(__half2float(__float2half_rn(v)));  // fp16 first, then x's dtype
    }
  }

  const std::int64_t nc = *ncols_ptr;  // the same for every thread: the branch below is uniform
  if (nc > 0) {
    float acc[kPerThread];
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) acc[q] = 0.0f;
    for (std::int64_t j0 = 0; j0 < nc; j0 += kChunk) {
      const int chunk = static_cast<int>(nc - j0 < kChunk ? nc - j0 : kChunk);
      if (threadIdx.x < kChunk) s_cols[threadIdx.x] = threadIdx.x < chunk ? cols[j0 + threadIdx.x] : 0;
      __syncthreads();
      for (int e = threadIdx.x; e < kRows * kChunk; e += kLlmInt8EpilogueThreads) {
        const int r = e / kChunk, jj = e % kChunk;
        const std::int64_t i = i0 + r, j = j0 + jj;
        float v = 0.0f;
        if (jj < chunk && i < m) {
          v = j < kLlmInt8PanelCols ? sub_a[i * kLlmInt8PanelCols + j] : to_float(x[i * k + s_cols[jj]]);
        }
        s_a[r][jj] = v;
      }
      for (int e = threadIdx.x; e < kCols * kChunk; e += kLlmInt8EpilogueThreads) {
        const int cc = e % kCols, jj = e / kCols;  // consecutive threads: consecutive features (coalesced)
        const std::int64_t oo = static_cast<std::int64_t>(blockIdx.x) * kCols + cc, j = j0 + jj;
        float v = 0.0f;
        if (jj < chunk && oo < n) {
          v = j < kLlmInt8PanelCols ? sub_b[j * n + oo]
                                    : round_to_act<T>(dequantize_weight(cb[oo * k + s_cols[jj]], scb[oo]));
        }
        s_b[cc][jj] = v;
      }
      __syncthreads();
      for (int jj = 0; jj < chunk; ++jj) {
        const float b = s_b[col][jj];
#pragma unroll
        for (int q = 0; q < kPerThread; ++q) {
          // Both factors are 16-bit values, so the product is exact in fp32 and the FMA rounds once, as
          // the reference's acc + fl32(a * b) does.
          acc[q] = fmaf(s_a[group + q * kRowGroups][jj], b, acc[q]);
        }
      }
      __syncthreads();  // before the next chunk overwrites s_a, s_b, s_cols
    }
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) y_val[q] = round_to_act<T>(__fadd_rn(acc[q], y_val[q]));
  }

#pragma unroll
  for (int q = 0; q < kPerThread; ++q) {
    const std::int64_t i = i0 + group + q * kRowGroups;
    if (o_ok && i < m) y[i * n + o] = from_float<T>(y_val[q]);
  }
}


// Regime::Gemv (m <= 8), after the rows kernel: one kernel for steps 2-5. Each warp owns kLlmInt8GemvRowsPerWarp
// output features; lanes stream 8-byte chunks of their CB rows (4 chunks in flight per row) and of the
// kM rows of CA (shared by the warp's rows), zero CA bytes whose column bit is set in the mask (the whole
// outlier columns), and accumulate with dp4a: exact int32, so the lane split and the butterfly reduction
// cannot change a bit. The outlier product walks the mask in ascending column order (ballot over the
// mask words, then the bits of each word), the order the reference sums in.
template <typename T, int kM>
__global__ void __launch_bounds__(kLlmInt8GemvThreads) llm_int8_gemv_kernel(
    const std::int8_t* __restrict__ cb, const float* __restrict__ scb, const std::int8_t* __restrict__ ca,
    const float* __restrict__ sca, const std::uint32_t* __restrict__ mask, const T* __restrict__ x, std::int64_t m,
    std::int64_t n, std::int64_t k, T* __restrict__ y) {
  constexpr int kRows = kLlmInt8GemvRowsPerWarp;  // 2
  constexpr int kUnroll = 4;
  static_assert(kRows * kM <= 32, "one lane per (row, m) pair in the epilogue");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t o_first = static_cast<std::int64_t>(blockIdx.x) * kLlmInt8GemvRowsPerBlock + warp * kRows;
  const std::int64_t chunks = k / 8;  // 8 columns = 8 bytes of CB or CA
  bool row_ok[kRows];
  const uint2* w_rows[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    row_ok[r] = o_first + r < n;
    w_rows[r] = reinterpret_cast<const uint2*>(cb + (row_ok[r] ? (o_first + r) * k : 0));
  }
  int acc[kRows][kM];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int i = 0; i < kM; ++i) acc[r][i] = 0;
  }

  for (std::int64_t base = 0; base < chunks; base += 32 * kUnroll) {
    uint2 wv[kRows][kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t c = base + lane + 32 * u;
#pragma unroll
      for (int r = 0; r < kRows; ++r) wv[r][u] = (c < chunks && row_ok[r]) ? __ldg(w_rows[r] + c) : make_uint2(0u, 0u);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t c = base + lane + 32 * u;
      if (c >= chunks) continue;
      const std::uint32_t bits = llm_int8_chunk_bits(__ldg(mask + llm_int8_mask_word(c)), c);
      std::uint32_t keep_lo = 0xffffffffu, keep_hi = 0xffffffffu;
      if (bits != 0u) {  // rare: an outlier column in this chunk
        const std::uint64_t keep = llm_int8_keep_bytes(bits);
        keep_lo = static_cast<std::uint32_t>(keep);
        keep_hi = static_cast<std::uint32_t>(keep >> 32);
      }
#pragma unroll
      for (int i = 0; i < kM; ++i) {
        if (i < m) {
          uint2 a = __ldg(reinterpret_cast<const uint2*>(ca + i * k) + c);
          a.x &= keep_lo;
          a.y &= keep_hi;
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            acc[r][i] = __dp4a(static_cast<int>(a.x), static_cast<int>(wv[r][u].x), acc[r][i]);
            acc[r][i] = __dp4a(static_cast<int>(a.y), static_cast<int>(wv[r][u].y), acc[r][i]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int i = 0; i < kM; ++i) {
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) acc[r][i] += __shfl_xor_sync(0xffffffffu, acc[r][i], offset);
    }
  }

  // Lane (r, i) = (lane / kM, lane % kM) finishes output [i, o_first + r].
  const int my_r = lane / kM, my_i = lane % kM;
  const std::int64_t o = o_first + my_r;
  const bool active = lane < kRows * kM && my_i < m && o < n;
  int c_int = 0;  // this lane's int32 dot product, picked with constant indices (no local memory)
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int i = 0; i < kM; ++i) {
      if (r * kM + i == lane) c_int = acc[r][i];
    }
  }

  // Outlier product in ascending column order; the control flow is uniform across the warp.
  float outlier_sum = 0.0f;
  bool any_outlier = false;
  const std::int64_t words = (k + 31) / 32;
  for (std::int64_t w0 = 0; w0 < words; w0 += 32) {
    const std::int64_t w = w0 + lane;
    const std::uint32_t word = w < words ? __ldg(mask + w) : 0u;
    std::uint32_t nonzero = __ballot_sync(0xffffffffu, word != 0u);
    any_outlier = any_outlier || nonzero != 0u;
    while (nonzero != 0u) {
      const int src = __ffs(static_cast<int>(nonzero)) - 1;
      nonzero &= nonzero - 1u;
      std::uint32_t col_bits = __shfl_sync(0xffffffffu, word, src);
      while (col_bits != 0u) {
        const int bit = __ffs(static_cast<int>(col_bits)) - 1;
        col_bits &= col_bits - 1u;
        const std::int64_t col = (w0 + src) * 32 + bit;
        if (active) {
          const float b = round_to_act<T>(dequantize_weight(cb[o * k + col], scb[o]));
          outlier_sum = fmaf(to_float(x[my_i * k + col]), b, outlier_sum);  // exact product: one rounding
        }
      }
    }
  }

  if (active) {
    const float v = quant::llm_int8_dequantize_mm(c_int, sca[my_i], scb[o], 0.0f);
    float out = round_to_act<T>(__half2float(__float2half_rn(v)));
    if (any_outlier) out = round_to_act<T>(__fadd_rn(outlier_sum, out));
    y[my_i * n + o] = from_float<T>(out);
  }
}

template <typename T>
void run_prepare_x(const LlmInt8Pointers& p, Stream stream) {
  const std::int64_t words = (p.k + 31) / 32;
  LOWBIT_CUDA_CHECK(cudaMemsetAsync(p.mask, 0, static_cast<std::size_t>(words) * sizeof(std::uint32_t), stream));
  const T* x = static_cast<const T*>(p.x);
  llm_int8_rows_kernel<T><<<static_cast<unsigned>(p.m), kRowThreads, 0, stream>>>(x, p.k, p.threshold16, p.decompose,
                                                                                 p.mask, p.sca, p.ca);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
  llm_int8_compact_kernel<<<1, kCompactThreads, 0, stream>>>(p.mask, words, p.cols, p.ncols);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
  const unsigned blocks = static_cast<unsigned>(p.sm_count > 0 ? 4 * p.sm_count : 4);
  llm_int8_outliers_kernel<T><<<blocks, kFixThreads, 0, stream>>>(x, p.cb, p.scb, p.cols, p.ncols, p.m, p.n, p.k,
                                                                  p.ca, p.sub_a, p.sub_b);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void run_epilogue(const LlmInt8Pointers& p, Stream stream) {
  const dim3 grid(static_cast<unsigned>((p.n + kLlmInt8EpilogueCols - 1) / kLlmInt8EpilogueCols),
                  static_cast<unsigned>((p.m + kLlmInt8EpilogueRows - 1) / kLlmInt8EpilogueRows));
  llm_int8_epilogue_kernel<T><<<grid, kLlmInt8EpilogueThreads, 0, stream>>>(
      p.c, p.sca, p.scb, static_cast<const T*>(p.x), p.cb, p.cols, p.ncols, p.sub_a, p.sub_b, p.m, p.n, p.k,
      static_cast<T*>(p.y));
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}


template <typename T, int kM>
void launch_gemv_instance(const LlmInt8Pointers& p, unsigned blocks, Stream stream) {
  llm_int8_gemv_kernel<T, kM><<<blocks, kLlmInt8GemvThreads, 0, stream>>>(
      p.cb, p.scb, p.ca, p.sca, p.mask, static_cast<const T*>(p.x), p.m, p.n, p.k, static_cast<T*>(p.y));
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void run_gemv(const LlmInt8Pointers& p, Stream stream) {
  const std::int64_t words = (p.k + 31) / 32;
  LOWBIT_CUDA_CHECK(cudaMemsetAsync(p.mask, 0, static_cast<std::size_t>(words) * sizeof(std::uint32_t), stream));
  const T* x = static_cast<const T*>(p.x);
  llm_int8_rows_kernel<T><<<static_cast<unsigned>(p.m), kRowThreads, 0, stream>>>(x, p.k, p.threshold16, p.decompose,
                                                                                 p.mask, p.sca, p.ca);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
  const unsigned blocks = static_cast<unsigned>((p.n + kLlmInt8GemvRowsPerBlock - 1) / kLlmInt8GemvRowsPerBlock);
  switch (llm_int8_gemv_bucket(p.m)) {
    case 1: return launch_gemv_instance<T, 1>(p, blocks, stream);
    case 2: return launch_gemv_instance<T, 2>(p, blocks, stream);
    case 4: return launch_gemv_instance<T, 4>(p, blocks, stream);
    case 8: return launch_gemv_instance<T, 8>(p, blocks, stream);
    default: break;
  }
  LOWBIT_THROW(ErrorCode::Unsupported, "llm_int8 gemv: m = {}; built for m <= {} (instances 1, 2, 4, 8)", p.m,
               kLlmInt8GemvMaxM);
}

}  // namespace

void launch_llm_int8_prepare_x(const LlmInt8Pointers& p, Stream stream) {
  switch (p.act) {
    case DType::F16: return run_prepare_x<__half>(p, stream);
    case DType::BF16: return run_prepare_x<__nv_bfloat16>(p, stream);
    default: break;
  }
  LOWBIT_THROW(ErrorCode::Unsupported, "llm_int8: no kernel for activations of {}; built: f16, bf16",
               dtype_name(p.act));
}

void launch_llm_int8_epilogue(const LlmInt8Pointers& p, Stream stream) {
  switch (p.act) {
    case DType::F16: return run_epilogue<__half>(p, stream);
    case DType::BF16: return run_epilogue<__nv_bfloat16>(p, stream);
    default: break;
  }
  LOWBIT_THROW(ErrorCode::Unsupported, "llm_int8: no kernel for activations of {}; built: f16, bf16",
               dtype_name(p.act));
}

void launch_llm_int8_gemv(const LlmInt8Pointers& p, Stream stream) {
  switch (p.act) {
    case DType::F16: return run_gemv<__half>(p, stream);
    case DType::BF16: return run_gemv<__nv_bfloat16>(p, stream);
    default: break;
  }
  LOWBIT_THROW(ErrorCode::Unsupported, "llm_int8: no kernel for activations of {}; built: f16, bf16",
               dtype_name(p.act));
}

}  // namespace lowbit::cuda::detail
