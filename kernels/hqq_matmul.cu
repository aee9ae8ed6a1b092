// y[m, n] = x[m, k] W_hat^T for HQQ 4-bit weights (axis 1, power-of-two groups), every regime: GEMV
// (m <= 2), tensor cores (3 <= m <= 64), dequantize + cuBLAS (m > 64).
//
// Operands   x: fp16|bf16 [m, k] row-major. codes u32 [n, k_pad/8] (8 consecutive k a word, pairs
//            interleaved), meta f16|bf16 [groups, 2] = (scale, zero) (cuda/hqq.hpp, docs/kernels.md#hqq).
// Reference  dequantize_hqq_reference() + fp32 matmul; tests/cuda/hqq_kernel_test.cpp.
// Design     the kernel templates of kernels/weight_only.cuh with HqqDecoder. Per pack of 32 columns:
//            load_meta reads the group's (scale, zero) in one 4-byte load (two where the pack spans two
//            groups), widens them exactly to fp32 and forms scale and -zero * scale in the activation type;
//            decode turns each pair of codes into (magic + code) with one shift + LOP3 (hqq_pair_magic),
//            subtracts the magic (HSUB2, exact) and applies one HFMA2: code * scale + (-zero * scale).
// Launch     plan_hqq() = plan_weight_only(4, ...) (src/cuda/weight_only.hpp): as the nf4 kernels.
// Refuses    (dtype, regime, tile) outside kHqqBuilt: Unsupported listing the table. (bits, axis, group
//            size and meta dtype are refused earlier, at prepare.)
// Instances  kHqqBuilt (cuda/hqq.hpp): 10 kernels.
#include <type_traits>
#include <utility>

#include "../src/cuda/weight_only.hpp"
#include "lowbit/cuda/hqq.hpp"
#include "weight_only.cuh"

namespace lowbit::cuda::kernels {

struct HqqParams {
  const std::uint32_t* meta = nullptr;  // [groups]: scale bits 0..15, zero bits 16..31
  std::int64_t k = 0;
  std::int64_t groups = 0;
  int log2_group = 0;
  bool meta_bf16 = false;
};

template <typename TV>
struct HqqDecoder {
  using T = TV;
  using T2 = vec2_t<T>;
  static constexpr int kBits = 4;
  static constexpr std::uint32_t kMagic2 = std::is_same_v<T, half> ? kHqqMagicF16x2 : kHqqMagicBF16x2;
  using Params = HqqParams;
  struct Meta {
    T2 scale[4];       // per 8-column word of the pack (equal unless the pack spans two groups)
    T2 neg_zs[4];      // -zero * scale
  };

  __device__ static void group_meta(const Params& p, std::int64_t g, T2& scale, T2& neg_zs) {
    const std::uint32_t mg = __ldg(p.meta + g);
    const float s = hqq_meta_value(static_cast<std::uint16_t>(mg & 0xffffu), p.meta_bf16);
    const float z = hqq_meta_value(static_cast<std::uint16_t>(mg >> 16), p.meta_bf16);
    const float nzs = -(z * s);
    if constexpr (std::is_same_v<T, half>) {
      scale = __float2half2_rn(s);
      neg_zs = __float2half2_rn(nzs);
    } else {
      scale = __float2bfloat162_rn(s);
      neg_zs = __float2bfloat162_rn(nzs);
    }
  }

  __device__ static Meta load_meta(const Params& p, std::int64_t row, int k0) {
    Meta m;
    const std::int64_t e0 = row * p.k + k0;  // flat index of the pack's first column
    const std::int64_t last = p.groups - 1;
    const std::int64_t g0 = pack_word_block(e0, 0, p.log2_group, last);
    const std::int64_t g3 = pack_word_block(e0, 3, p.log2_group, last);
    if (g0 == g3) {  // always when k % 32 == 0 and g >= 32; then one 4-byte load
      T2 s, nzs;
      group_meta(p, g0, s, nzs);
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        m.scale[t] = s;
        m.neg_zs[t] = nzs;
      }
    } else {
      group_meta(p, g0, m.scale[0], m.neg_zs[0]);
      group_meta(p, pack_word_block(e0, 1, p.log2_group, last), m.scale[1], m.neg_zs[1]);
      group_meta(p, pack_word_block(e0, 2, p.log2_group, last), m.scale[2], m.neg_zs[2]);
      group_meta(p, g3, m.scale[3], m.neg_zs[3]);
    }
    return m;
  }

  __device__ static void decode(const std::uint32_t (&w)[4], const Meta& m, T2 (&out)[16]) {
    const T2 magic = bits_as<T2>(kMagic2);
#pragma unroll
    for (int t = 0; t < 4; ++t) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const T2 code = __hsub2(bits_as<T2>(hqq_pair_magic(w[t], q, kMagic2)), magic);  // exact
        out[4 * t + q] = __hfma2(code, m.scale[t], m.neg_zs[t]);
      }
    }
  }
};

template <HqqKernel E>
using HqqDecoderOf = HqqDecoder<std::conditional_t<E.dtype == DType::F16, half, __nv_bfloat16>>;

namespace {

template <typename D>
WeightOnlyArgs<D> make_hqq_args(const HqqLaunch& a) {
  WeightOnlyArgs<D> args;
  args.codes = a.codes;
  args.n = a.n;
  args.k = a.k;
  args.words_per_row = packed_row_words(a.k);
  args.x = static_cast<const typename D::T*>(a.x);
  args.y = static_cast<typename D::T*>(a.y);
  args.m = static_cast<int>(a.m);
  args.params.meta = a.meta;
  args.params.k = a.k;
  args.params.groups = a.groups;
  args.params.log2_group = a.log2_group;
  args.params.meta_bf16 = a.meta_bf16;
  return args;
}

template <HqqKernel E>
void run_hqq(const HqqLaunch& a, const MatmulPlan& plan, void* w_hat, Stream stream) {
  using D = HqqDecoderOf<E>;
  WeightOnlyArgs<D> args = make_hqq_args<D>(a);
  run_weight_only<D, E.regime, E.tile>(args, plan, w_hat, a.dtype, a.device, stream);
}

template <std::size_t... I>
void dispatch_hqq(int index, const HqqLaunch& a, const MatmulPlan& plan, void* w_hat, Stream stream,
                  std::index_sequence<I...>) {
  (void)((static_cast<int>(I) == index ? (run_hqq<kHqqBuilt[I]>(a, plan, w_hat, stream), true) : false) || ...);
}

}  // namespace
}  // namespace lowbit::cuda::kernels

namespace lowbit::cuda {

void launch_hqq(const HqqLaunch& a, const MatmulPlan& plan, void* w_hat, Stream stream) {
  const int index = hqq_kernel_index(a.dtype, plan);
  LOWBIT_CHECK(index >= 0, ErrorCode::Unsupported, "hqq matmul: no kernel for {} regime {} tile {}; built: {}",
               dtype_name(a.dtype), name(plan.regime), plan.m_tile, describe_hqq_built());
  LOWBIT_CHECK(plan.regime != Regime::Dequantize || w_hat != nullptr, ErrorCode::InvalidArgument,
               "hqq matmul: the dequantize regime needs an [{}, {}] scratch buffer", a.n, a.k);
  kernels::dispatch_hqq(index, a, plan, w_hat, stream, std::make_index_sequence<kHqqBuiltCount>{});
}

}  // namespace lowbit::cuda
