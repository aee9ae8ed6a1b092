// Weight-only kernel framework: y[m, n] = sum_k x[m, k] * W_hat[n, k] for any format whose codes are
// repacked into "packs" of 32 consecutive k of one row, decoded by a `Decoder` policy. Three templates:
//
//   gemv_kernel<D, kM>        m <= kM <= 8: one warp owns kRowsPerWarp rows, lanes stride over packs in
//                             16-byte loads, every weight byte read once, warp-shuffle reduction
//   mma_kernel<D, kBM>        9 <= m <= 256: a block owns kBN = 64 rows x kBM rows of x; packed W and x tiles
//                             stream through a cp.async ring (kStages), W is decoded into shared memory as
//                             fp16/bf16, fragments by ldmatrix.x4, mma.sync m16n8k16 with fp32 accumulation;
//                             optional split-k
//                             writes fp32 partials [k_splits, m, n] that reduce_partials_kernel sums in order
//   dequantize_kernel<D>      m > 256: W_hat [n, k] in fp16/bf16 into a scratch buffer; cuBLAS does the rest
//                             (detail::gemm_x_wt() in src/cuda/weight_only.hpp, with permute_columns() for
//                             act-order and StreamScratch for per-call scratch)
//
// The host side (src/cuda/weight_only.hpp, plain C++): plan_weight_only() picks the regime, kM / kBM and
// k_splits for a format (use it from plan_<format>() so every format has the same regimes);
// StreamScratch gives the split-k partials; DeviceGuard makes the weight's device current.
//
// Packed weight operand (every format):
//   codes   u32 [n, words_per_row]   words_per_row = k_pad / 32 * D::kBits,
//                                    k_pad = weight_only_padded_k(k) = round_up(k, 64); row r's pack p
//                                    (k = 32p .. 32p+31) is the D::kBits words at
//                                    codes[r * words_per_row + p * D::kBits]; padded k (>= k) holds any code
//                                    whose decode is finite (the kernels multiply it by x = 0).
//   The order of the codes inside a pack is the decoder's business (docs/kernels.md, one section a format).
//
// ---- the Decoder concept ----------------------------------------------------------------------------
//
//   struct MyDecoder {
//     using T = half;                    // activation / decoded weight type: half or __nv_bfloat16
//     static constexpr int kBits = 4;    // a pack of 32 codes is kBits u32 words (2, 3, 4 or 8)
//     struct Params { ... };             // trivially copyable, passed by value in the kernel arguments:
//                                        //   device pointers to scales / zeros / absmax, row strides, ...
//     struct Meta { ... };               // what decoding one pack needs (its group's scale and zero, ...)
//     // Meta of row `row` for the pack whose first column is k0 (a multiple of 32, k0 < k_pad: clamp the
//     // group index for padded columns). A group / block boundary never falls inside a pack: group and
//     // block sizes are multiples of 32 (the shorter last group of a row ends at k, inside the padding).
//     __device__ static Meta load_meta(const Params& p, std::int64_t row, int k0);
//     // The 32 weights of the pack: out[i] = (W_hat[row, k0 + 2i], W_hat[row, k0 + 2i + 1]), i < 16.
//     __device__ static void decode(const std::uint32_t (&words)[kBits], const Meta& meta,
//                                   typename Vec2<T>::type (&out)[16]);
//   };
//
// A minimal decoder (4-bit codes, w = (code - 8) * scale, one fp16 scale per 64 columns, codes in nibble
// order k0 -> bits 0..3, k1 -> bits 16..19, k2 -> 4..7, k3 -> 20..23, ... so that one mask + OR gives two
// fp16 numbers 1024 + code at once):
//
//   struct Int4Sym64 {
//     using T = half;
//     static constexpr int kBits = 4;
//     struct Params { const half* scales; std::int64_t groups; };   // scales [n, groups]
//     struct Meta { half2 scale; };
//     __device__ static Meta load_meta(const Params& p, std::int64_t row, int k0) {
//       const std::int64_t g = min<std::int64_t>(k0 / 64, p.groups - 1);
//       return {__half2half2(p.scales[row * p.groups + g])};
//     }
//     __device__ static void decode(const std::uint32_t (&w)[4], const Meta& m, half2 (&out)[16]) {
//       const half2 bias = __half2half2(__ushort_as_half(0x6408));          // 1024 + 8
//       for (int i = 0; i < 16; ++i) {
//         const std::uint32_t v = ((w[i / 4] >> (4 * (i % 4))) & 0x000f000fu) | 0x64006400u;
//         out[i] = __hmul2(__hsub2(bit_cast<half2>(v), bias), m.scale);
//       }
//     }
//   };
//   // kernels/int4sym.cu: launch_gemv<Int4Sym64, 1>(args, stream); ... one line per built instance.
//
// The kernels take WeightOnlyArgs<D> (below); the host fills codes, n, k, words_per_row, x, y, m and
// D::Params. x and y are row-major [m, k] and [m, n], 16-byte aligned (x's rows are: k % 8 == 0).
// Determinism: every output is summed in a fixed order (fixed lane butterfly in gemv, fixed mma order and
// an ordered partial sum in mma); no atomics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../src/cuda/check.hpp"
#include "../src/cuda/weight_only.hpp"
#include "lowbit/core/dtype.hpp"
#include "lowbit/cuda/device.hpp"

namespace lowbit::cuda::kernels {

// ---- element types -----------------------------------------------------------------------------------

template <typename T>
struct Vec2;
template <>
struct Vec2<half> {
  using type = half2;
};
template <>
struct Vec2<__nv_bfloat16> {
  using type = __nv_bfloat162;
};
template <typename T>
using vec2_t = typename Vec2<T>::type;

template <typename T>
__device__ __forceinline__ float2 to_float2(vec2_t<T> v) {
  if constexpr (std::is_same_v<T, half>) {
    return __half22float2(v);
  } else {
    return __bfloat1622float2(v);
  }
}
template <typename T>
__device__ __forceinline__ vec2_t<T> from_float2(float a, float b) {
  if constexpr (std::is_same_v<T, half>) {
    return __floats2half2_rn(a, b);
  } else {
    return __floats2bfloat162_rn(a, b);
  }
}
template <typename T>
__device__ __forceinline__ T from_float(float a) {
  if constexpr (std::is_same_v<T, half>) {
    return __float2half_rn(a);
  } else {
    return __float2bfloat16_rn(a);
  }
}
template <typename V>
__device__ __forceinline__ V bits_as(std::uint32_t u) {
  static_assert(sizeof(V) == 4);
  V v;
  __builtin_memcpy(&v, &u, 4);
  return v;
}
template <typename V>
__device__ __forceinline__ std::uint32_t as_bits(V v) {
  static_assert(sizeof(V) == 4);
  std::uint32_t u;
  __builtin_memcpy(&u, &v, 4);
  return u;
}

// ---- arguments ---------------------------------------------------------------------------------------

template <typename D>
struct WeightOnlyArgs {
  const std::uint32_t* codes = nullptr;  // [n, words_per_row]
  std::int64_t n = 0;
  std::int64_t k = 0;                    // multiple of 8
  std::int64_t words_per_row = 0;        // k_pad / 32 * D::kBits
  const typename D::T* x = nullptr;      // [m, k]
  typename D::T* y = nullptr;            // [m, n]
  float* partials = nullptr;             // [k_splits, m, n] when k_splits > 1 (mma only)
  int m = 0;
  int k_splits = 1;
  typename D::Params params{};
};

// ---- pack and x loads --------------------------------------------------------------------------------

template <int kBits>
__device__ __forceinline__ void load_pack(const std::uint32_t* p, std::uint32_t (&w)[kBits]) {
  if constexpr (kBits == 4) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else if constexpr (kBits == 8) {
    const uint4 a = __ldg(reinterpret_cast<const uint4*>(p));
    const uint4 b = __ldg(reinterpret_cast<const uint4*>(p) + 1);
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
  } else if constexpr (kBits == 2) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x, w[1] = v.y;
  } else {
#pragma unroll
    for (int i = 0; i < kBits; ++i) w[i] = __ldg(p + i);
  }
}

// x[row, k0 .. k0+31] as 16 pairs; columns >= k read as 0 (k is a multiple of 8, so whole uint4s).
template <typename T>
__device__ __forceinline__ void load_x32(const T* xrow, int k0, std::int64_t k, vec2_t<T> (&out)[16]) {
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    uint4 v = make_uint4(0, 0, 0, 0);
    if (k0 + 8 * c < k) v = __ldg(reinterpret_cast<const uint4*>(xrow + k0 + 8 * c));
    out[4 * c + 0] = bits_as<vec2_t<T>>(v.x);
    out[4 * c + 1] = bits_as<vec2_t<T>>(v.y);
    out[4 * c + 2] = bits_as<vec2_t<T>>(v.z);
    out[4 * c + 3] = bits_as<vec2_t<T>>(v.w);
  }
}

// sum_i x[i] . w[i] over one pack: products summed in T pairs over 8 columns (4 fma2), then in fp32, so
// no partial sum in fp16/bf16 covers more than 4 products.
template <typename T>
__device__ __forceinline__ float dot32(const vec2_t<T> (&x)[16], const vec2_t<T> (&w)[16]) {
  float acc = 0.0f;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    vec2_t<T> s = __hmul2(x[4 * c], w[4 * c]);
    s = __hfma2(x[4 * c + 1], w[4 * c + 1], s);
    s = __hfma2(x[4 * c + 2], w[4 * c + 2], s);
    s = __hfma2(x[4 * c + 3], w[4 * c + 3], s);
    const float2 f = to_float2<T>(s);
    acc += f.x + f.y;
  }
  return acc;
}

// ---- GEMV (m <= 8) -----------------------------------------------------------------------------------
//
// Block: kGemvWarps warps; warp w owns rows [blockIdx.x * kGemvRows + w * kRowsPerWarp, + kRowsPerWarp).
// Lane l reads packs l, l + 32, ... of those rows (a warp's load is 32 consecutive packs: 512 bytes at 4
// bits), decodes each once and multiplies it with the m rows of x. The lane sums are reduced by a fixed
// xor butterfly. n must be a multiple of 8 = kGemvRows.
inline constexpr int kGemvWarps = 4;
inline constexpr int kRowsPerWarp = 2;
inline constexpr int kGemvRows = kGemvWarps * kRowsPerWarp;  // rows per block

template <typename D, int kM>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(const WeightOnlyArgs<D> args) {
  using T = typename D::T;
  using T2 = vec2_t<T>;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * kGemvRows + warp * kRowsPerWarp;
  if (row0 >= args.n) return;  // warp-uniform; n % kRowsPerWarp == 0
  const int packs = static_cast<int>((args.k + 31) / 32);
  const int m = args.m;

  float acc[kRowsPerWarp][kM];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int i = 0; i < kM; ++i) acc[r][i] = 0.0f;
  }

#pragma unroll 2
  for (int p = lane; p < packs; p += 32) {
    const int k0 = p * 32;
    std::uint32_t words[kRowsPerWarp][D::kBits];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      load_pack<D::kBits>(args.codes + (row0 + r) * args.words_per_row + static_cast<std::int64_t>(p) * D::kBits,
                          words[r]);
    }
    T2 w[kRowsPerWarp][16];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const typename D::Meta meta = D::load_meta(args.params, row0 + r, k0);
      D::decode(words[r], meta, w[r]);
    }
#pragma unroll
    for (int i = 0; i < kM; ++i) {
      if (i < m) {
        T2 xv[16];
        load_x32<T>(args.x + static_cast<std::int64_t>(i) * args.k, k0, args.k, xv);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) acc[r][i] += dot32<T>(xv, w[r]);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int i = 0; i < kM; ++i) {
      float v = acc[r][i];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
      acc[r][i] = v;
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < kM; ++i) {
      if (i < m) {
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; r += 2) {
          // rows row0 + r, row0 + r + 1 are adjacent outputs: one 4-byte store
          *reinterpret_cast<T2*>(args.y + static_cast<std::int64_t>(i) * args.n + row0 + r) =
              from_float2<T>(acc[r][i], acc[r + 1][i]);
        }
      }
    }
  }
}

template <typename D, int kM>
void launch_gemv(const WeightOnlyArgs<D>& args, Stream stream) {
  static_assert(kRowsPerWarp % 2 == 0);
  const std::int64_t blocks = (args.n + kGemvRows - 1) / kGemvRows;
  gemv_kernel<D, kM><<<static_cast<unsigned>(blocks), kGemvWarps * 32, 0, stream>>>(args);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}

// ---- tensor cores (9 <= m <= 256) --------------------------------------------------------------------
//
// Block tile: kBN = 64 rows of W (n) x kBM rows of x (m), k in steps of kBK = 64 (two packs). 4 warps;
// warp w owns W rows [16w, 16w + 16) (two n8 tiles) for all kBM/16 m16 tiles. Shared memory per stage:
// the packed W tile (kBN x 2*kBits words) and the x tile (kBM x kBK, rows padded to 72 elements so the
// ldmatrix row addresses of one matrix hit distinct banks); one decoded W tile (kBN x 72 elements). Per k-step:
// wait for stage s, barrier, issue the cp.async of step + kStages - 1, decode the packed W of stage s into
// the decoded tile (thread t decodes pack t % 2 of row t / 2), barrier, mma over the four k16 slices.
// Split-k: blockIdx.z takes k-steps [z * steps / k_splits, (z+1) * steps / k_splits).
inline constexpr int kMmaThreads = 128;
inline constexpr int kBN = 64;
inline constexpr int kBK = 64;
inline constexpr int kStages = 3;
inline constexpr int kSmemRow = kBK + 8;  // elements per padded smem row (144 bytes)

template <typename D, int kBM>
constexpr int mma_smem_bytes() {
  return kStages * (kBN * 2 * D::kBits * 4 + kBM * kSmemRow * 2) + kBN * kSmemRow * 2;
}

__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte async copy; src_bytes = 0 writes zeros (rows past m, columns past k).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async8(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kN>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kN) : "memory");
}

// Four 8x8 b16 matrices from shared memory; lanes 8q .. 8q+7 give the row addresses of matrix q.
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t addr, std::uint32_t& r0, std::uint32_t& r1, std::uint32_t& r2,
                                            std::uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr)
               : "memory");
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  if constexpr (std::is_same_v<T, half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <typename D, int kBM>
__global__ void __launch_bounds__(kMmaThreads) mma_kernel(const WeightOnlyArgs<D> args) {
  using T = typename D::T;
  using T2 = vec2_t<T>;
  constexpr int kWordsPerRow = 2 * D::kBits;             // packed words of one row per k-step
  constexpr int kWStageWords = kBN * kWordsPerRow;        // [kBN, kWordsPerRow]
  constexpr int kXStageElems = kBM * kSmemRow;            // [kBM, kSmemRow]
  constexpr int kMTiles = kBM / 16;
  static_assert(kBM % 16 == 0 && kBN * 2 == kMmaThreads);

  extern __shared__ __align__(16) unsigned char smem[];
  std::uint32_t* w_stage = reinterpret_cast<std::uint32_t*>(smem);                       // [kStages][kWStageWords]
  T* x_stage = reinterpret_cast<T*>(smem + kStages * kWStageWords * 4);                  // [kStages][kXStageElems]
  T* w_dec = x_stage + kStages * kXStageElems;                                           // [kBN][kSmemRow]

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const std::int64_t n0 = static_cast<std::int64_t>(blockIdx.x) * kBN;
  const int m0 = blockIdx.y * kBM;
  const int steps_total = static_cast<int>((args.k + kBK - 1) / kBK);
  const int step_begin = static_cast<int>(static_cast<std::int64_t>(blockIdx.z) * steps_total / args.k_splits);
  const int step_end = static_cast<int>(static_cast<std::int64_t>(blockIdx.z + 1) * steps_total / args.k_splits);
  const int steps = step_end - step_begin;

  // Issue the copies of k-step `step` into ring slot `slot`.
  auto load_stage = [&](int step, int slot) {
    const int kb = step * kBK;
    // packed W: kBN rows x kWordsPerRow words; rows past n are clamped (n % 8 == 0 but kBN = 64)
    std::uint32_t* wdst = w_stage + slot * kWStageWords;
    if constexpr (kWordsPerRow % 4 == 0) {
      constexpr int kChunks = kBN * kWordsPerRow / 4;  // 16-byte chunks
#pragma unroll
      for (int c = tid; c < kChunks; c += kMmaThreads) {
        const int r = c / (kWordsPerRow / 4);
        const int j = c % (kWordsPerRow / 4);
        std::int64_t row = n0 + r;
        if (row >= args.n) row = args.n - 1;
        cp_async16(wdst + r * kWordsPerRow + 4 * j,
                   args.codes + row * args.words_per_row + static_cast<std::int64_t>(step) * kWordsPerRow + 4 * j, 16);
      }
    } else {
      constexpr int kChunks = kBN * kWordsPerRow / 2;  // 8-byte chunks
#pragma unroll
      for (int c = tid; c < kChunks; c += kMmaThreads) {
        const int r = c / (kWordsPerRow / 2);
        const int j = c % (kWordsPerRow / 2);
        std::int64_t row = n0 + r;
        if (row >= args.n) row = args.n - 1;
        cp_async8(wdst + r * kWordsPerRow + 2 * j,
                  args.codes + row * args.words_per_row + static_cast<std::int64_t>(step) * kWordsPerRow + 2 * j);
      }
    }
    // x: kBM rows x 8 chunks of 8 elements
    T* xdst = x_stage + slot * kXStageElems;
#pragma unroll
    for (int c = tid; c < kBM * 8; c += kMmaThreads) {
      const int r = c / 8;
      const int j = c % 8;
      const int xrow = m0 + r;
      const std::int64_t col = static_cast<std::int64_t>(kb) + 8 * j;
      const bool valid = xrow < args.m && col < args.k;
      const T* src = valid ? args.x + static_cast<std::int64_t>(xrow) * args.k + col : args.x;
      cp_async16(xdst + r * kSmemRow + 8 * j, src, valid ? 16 : 0);
    }
  };

  float acc[kMTiles][2][4];
#pragma unroll
  for (int i = 0; i < kMTiles; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
    }
  }

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < steps) load_stage(step_begin + s, s);
    cp_async_commit();
  }

  const int g = lane / 4;  // fragment row group
  const int t = lane % 4;  // fragment column pair
  const int a_lane_offset = (lane % 16) * kSmemRow + (lane / 16) * 8;
  const int b_lane_offset = (warp * 16 + lane % 8 + (lane / 16) * 8) * kSmemRow + ((lane / 8) % 2) * 8;
  const int dec_row = tid / 2;
  const int dec_pack = tid % 2;
  std::int64_t meta_row = n0 + dec_row;
  if (meta_row >= args.n) meta_row = args.n - 1;

  for (int it = 0; it < steps; ++it) {
    const int slot = it % kStages;
    cp_async_wait<kStages - 2>();
    __syncthreads();
    {
      const int next = it + kStages - 1;
      if (next < steps) load_stage(step_begin + next, next % kStages);
      cp_async_commit();
    }
    // decode one pack: row dec_row, columns 32 * dec_pack .. + 31 of this k-step
    {
      const int k0 = (step_begin + it) * kBK + 32 * dec_pack;
      std::uint32_t words[D::kBits];
      const std::uint32_t* src = w_stage + slot * kWStageWords + dec_row * kWordsPerRow + dec_pack * D::kBits;
#pragma unroll
      for (int i = 0; i < D::kBits; ++i) words[i] = src[i];
      const typename D::Meta meta = D::load_meta(args.params, meta_row, k0);
      T2 w[16];
      D::decode(words, meta, w);
      uint4* dst = reinterpret_cast<uint4*>(w_dec + dec_row * kSmemRow + 32 * dec_pack);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        dst[c] = make_uint4(as_bits(w[4 * c]), as_bits(w[4 * c + 1]), as_bits(w[4 * c + 2]), as_bits(w[4 * c + 3]));
      }
    }
    __syncthreads();
    // Fragments by ldmatrix.x4. A (x, m16 x k16): lane l addresses row l % 16, column (l / 16) * 8, so the
    // four 8x8 matrices are (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) = a[0..3]. B (decoded W,
    // two n8 tiles x k16): lane l addresses W row (l % 8) + (l / 16) * 8, column ((l / 8) % 2) * 8, giving
    // (tile 0, k 0-7), (tile 0, k 8-15), (tile 1, k 0-7), (tile 1, k 8-15) = b[0][0], b[0][1], b[1][0], b[1][1].
    // Rows are 144 bytes apart, so the 8 row addresses of one matrix fall in 8 distinct 4-bank groups.
    const std::uint32_t xs_addr = smem_addr(x_stage + slot * kXStageElems + a_lane_offset);
    const std::uint32_t wd_addr = smem_addr(w_dec + b_lane_offset);
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      std::uint32_t b[2][2];
      ldmatrix_x4(wd_addr + kk * 2, b[0][0], b[0][1], b[1][0], b[1][1]);
#pragma unroll
      for (int i = 0; i < kMTiles; ++i) {
        std::uint32_t a[4];
        ldmatrix_x4(xs_addr + (i * 16 * kSmemRow + kk) * 2, a[0], a[1], a[2], a[3]);
#pragma unroll
        for (int j = 0; j < 2; ++j) mma16816<T>(acc[i][j], a, b[j][0], b[j][1]);
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue: c0, c1 -> (x row g, W rows 2t, 2t + 1); c2, c3 -> x row g + 8.
#pragma unroll
  for (int i = 0; i < kMTiles; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const std::int64_t col = n0 + warp * 16 + j * 8 + 2 * t;
      if (col >= args.n) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int xrow = m0 + i * 16 + g + 8 * h;
        if (xrow >= args.m) continue;
        const float v0 = acc[i][j][2 * h];
        const float v1 = acc[i][j][2 * h + 1];
        if (args.k_splits == 1) {
          *reinterpret_cast<T2*>(args.y + static_cast<std::int64_t>(xrow) * args.n + col) = from_float2<T>(v0, v1);
        } else {
          float* out = args.partials + (static_cast<std::int64_t>(blockIdx.z) * args.m + xrow) * args.n + col;
          *reinterpret_cast<float2*>(out) = make_float2(v0, v1);
        }
      }
    }
  }
}

// y[i] = sum over s = 0 .. splits-1, in that order, of partials[s][i].
template <typename T>
__global__ void reduce_partials_kernel(const float* partials, T* y, std::int64_t count, int splits) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  float s = 0.0f;
  for (int z = 0; z < splits; ++z) s += partials[z * count + i];
  y[i] = from_float<T>(s);
}

// Needs args.partials ([k_splits, m, n] fp32, device) when args.k_splits > 1.
template <typename D, int kBM>
void launch_mma(const WeightOnlyArgs<D>& args, Stream stream) {
  constexpr int smem = mma_smem_bytes<D, kBM>();
  if constexpr (smem > 48 * 1024) {  // above the default limit: raise it (per device, so every launch)
    LOWBIT_CUDA_CHECK(cudaFuncSetAttribute(mma_kernel<D, kBM>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  }
  const dim3 grid(static_cast<unsigned>((args.n + kBN - 1) / kBN), static_cast<unsigned>((args.m + kBM - 1) / kBM),
                  static_cast<unsigned>(args.k_splits));
  mma_kernel<D, kBM><<<grid, kMmaThreads, smem, stream>>>(args);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
  if (args.k_splits > 1) {
    const std::int64_t count = static_cast<std::int64_t>(args.m) * args.n;
    reduce_partials_kernel<typename D::T>
        <<<static_cast<unsigned>((count + 255) / 256), 256, 0, stream>>>(args.partials, args.y, count, args.k_splits);
    LOWBIT_CUDA_CHECK(cudaGetLastError());
  }
}

// ---- dequantize (m above the tensor-core range) -------------------------------------------------------
//
// out [n, k] (row-major, the unpadded k) = W_hat in D::T. One block per row (no 64-bit division), threads
// stride over the row's packs: every 16-byte pack load is coalesced, each thread decodes its pack into a
// shared staging buffer (64 bytes a thread), and the block then writes the staged run with consecutive
// threads on consecutive 16-byte words (512 contiguous bytes a warp store), the words past k skipped.
inline constexpr int kDequantThreads = 128;

template <typename D>
__global__ void __launch_bounds__(kDequantThreads) dequantize_kernel(const WeightOnlyArgs<D> args, typename D::T* out) {
  using T2 = vec2_t<typename D::T>;
  __shared__ uint4 stage[kDequantThreads * 4];
  const std::int64_t row = blockIdx.x;
  const int packs = static_cast<int>((args.k + 31) / 32);
  const int words_k = static_cast<int>(args.k / 8);  // 16-byte words of the output row (k % 8 == 0)
  const std::uint32_t* codes = args.codes + row * args.words_per_row;
  uint4* dst = reinterpret_cast<uint4*>(out + row * args.k);
  for (int p0 = 0; p0 < packs; p0 += kDequantThreads) {
    const int p = p0 + static_cast<int>(threadIdx.x);
    if (p < packs) {
      std::uint32_t words[D::kBits];
      load_pack<D::kBits>(codes + static_cast<std::int64_t>(p) * D::kBits, words);
      const typename D::Meta meta = D::load_meta(args.params, row, p * 32);
      T2 w[16];
      D::decode(words, meta, w);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        stage[threadIdx.x * 4 + c] =
            make_uint4(as_bits(w[4 * c]), as_bits(w[4 * c + 1]), as_bits(w[4 * c + 2]), as_bits(w[4 * c + 3]));
      }
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int j = c * kDequantThreads + static_cast<int>(threadIdx.x);  // staged word j = word 4 p0 + j of the row
      if (4 * p0 + j < words_k) dst[4 * p0 + j] = stage[j];
    }
    __syncthreads();  // the staging buffer is rewritten by the next round
  }
}

template <typename D>
void launch_dequantize(const WeightOnlyArgs<D>& args, typename D::T* out, Stream stream) {
  if (args.n == 0) return;
  dequantize_kernel<D><<<static_cast<unsigned>(args.n), kDequantThreads, 0, stream>>>(args, out);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}

// One built entry (decoder D, regime R, tile) run on args, for the formats whose every regime lives in one
// .cu (nf4, hqq): the GEMV; the tensor-core kernel with its split-k partials in stream-ordered scratch; or
// the dequantize pass into w_hat followed by cuBLAS.
template <typename D, Regime R, int kTile>
void run_weight_only(WeightOnlyArgs<D>& args, const MatmulPlan& plan, void* w_hat, DType dtype, int device,
                     Stream stream) {
  if constexpr (R == Regime::Gemv) {
    launch_gemv<D, kTile>(args, stream);
  } else if constexpr (R == Regime::TensorCore) {
    args.k_splits = plan.k_splits;
    const std::size_t bytes =
        plan.k_splits > 1 ? static_cast<std::size_t>(plan.k_splits) * args.m * args.n * sizeof(float) : 0;
    detail::StreamScratch partials(bytes, stream);
    args.partials = static_cast<float*>(partials.get());
    launch_mma<D, kTile>(args, stream);
  } else {
    launch_dequantize<D>(args, static_cast<typename D::T*>(w_hat), stream);
    detail::gemm_x_wt(args.x, w_hat, args.y, args.m, args.n, args.k, dtype, device, stream);
  }
}

}  // namespace lowbit::cuda::kernels
