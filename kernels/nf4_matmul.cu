// y[m, n] = x[m, k] W_hat^T for NF4 / FP4 weights (bitsandbytes 4-bit), with or without double quantization,
// every regime: GEMV (m <= 2), tensor cores (3 <= m <= 64), dequantize + cuBLAS (m > 64).
//
// Operands   x: fp16|bf16 [m, k] row-major. codes u32 [n, k_pad/8] (8 consecutive k a word, nibble j =
//            element j), absmax f32 [nb] or u8 [nb] + nested_absmax f32, nested_quant_map f32 [256],
//            nested_offset f32 [1] (cuda/nf4.hpp, docs/kernels.md#nf4-and-fp4).
// Reference  dequantize_nf4_reference() + fp32 matmul; tests/cuda/nf4_kernel_test.cpp.
// Design     the kernel templates of kernels/weight_only.cuh with Nf4Decoder. Per pack of 32 columns:
//            load_meta finds the pack's flat block(s) (a pack spans two blocks only where k % 32 != 0) and
//            rebuilds a_b (double quantization: u8 code -> map -> * nested absmax + offset, two explicit
//            roundings), rounded once to the activation type; decode looks the 32 codes up in a 16-entry
//            table held in registers (8 words of kernel arguments, prmt-indexed: nf4_lut4 in cuda/nf4.hpp,
//            11 instructions per 4 codes, no shared memory, no bank conflicts) and multiplies each pair by
//            a_b with one HMUL2.
// Launch     plan_nf4() = plan_weight_only(4, ...) (src/cuda/weight_only.hpp): Gemv 128 threads, 8 rows a
//            block, kM in {1, 2}; TensorCore 128 threads, 64 rows a block, kBM 16 or 64, split-k to
//            fill the SMs; Dequantize a block a row, then cuBLAS.
// Refuses    (double_quant, dtype, regime, tile) outside kNf4Built: Unsupported listing the table.
// Instances  kNf4Built (cuda/nf4.hpp): 20 kernels.
#include <type_traits>
#include <utility>

#include "../src/cuda/weight_only.hpp"
#include "lowbit/cuda/nf4.hpp"
#include "weight_only.cuh"

namespace lowbit::cuda::kernels {

struct Nf4Params {
  Nf4Lut lut;                            // the 16 table values in T, prmt-indexed
  const void* absmax = nullptr;          // f32 [nb] or u8 [nb]
  const float* nested_absmax = nullptr;  // [ceil(nb / nested block)]
  const float* nested_map = nullptr;     // [256]
  const float* nested_offset = nullptr;  // [1]
  std::int64_t k = 0;
  std::int64_t blocks = 0;
  int log2_block = 0;
  int log2_nested = 0;
};

template <bool kDoubleQuant, typename TV>
struct Nf4Decoder {
  using T = TV;
  using T2 = vec2_t<T>;
  static constexpr int kBits = 4;
  using Params = Nf4Params;
  struct Meta {
    Nf4Lut lut;
    T2 scale[4];  // a_b of the pack's four 8-column words (equal unless the pack spans two blocks)
  };

  __device__ static float absmax_of(const Params& p, std::int64_t b) {
    if constexpr (kDoubleQuant) {
      const unsigned code = __ldg(static_cast<const std::uint8_t*>(p.absmax) + b);
      return nf4_dq_absmax(__ldg(p.nested_map + code), __ldg(p.nested_absmax + (b >> p.log2_nested)),
                           __ldg(p.nested_offset));
    } else {
      return __ldg(static_cast<const float*>(p.absmax) + b);
    }
  }

  __device__ static T2 broadcast(float a) {
    if constexpr (std::is_same_v<T, half>) {
      return __float2half2_rn(a);
    } else {
      return __float2bfloat162_rn(a);
    }
  }

  __device__ static Meta load_meta(const Params& p, std::int64_t row, int k0) {
    Meta m;
    m.lut = p.lut;
    const std::int64_t e0 = row * p.k + k0;  // flat index of the pack's first column
    const std::int64_t last = p.blocks - 1;
    const std::int64_t b0 = pack_word_block(e0, 0, p.log2_block, last);
    const std::int64_t b3 = pack_word_block(e0, 3, p.log2_block, last);
    if (b0 == b3) {  // always when k % 32 == 0 (blocks are >= 32 and aligned); then one lookup
      const T2 s = broadcast(absmax_of(p, b0));
#pragma unroll
      for (int t = 0; t < 4; ++t) m.scale[t] = s;
    } else {
      m.scale[0] = broadcast(absmax_of(p, b0));
      m.scale[1] = broadcast(absmax_of(p, pack_word_block(e0, 1, p.log2_block, last)));
      m.scale[2] = broadcast(absmax_of(p, pack_word_block(e0, 2, p.log2_block, last)));
      m.scale[3] = broadcast(absmax_of(p, b3));
    }
    return m;
  }

  __device__ static void decode(const std::uint32_t (&w)[4], const Meta& m, T2 (&out)[16]) {
    std::uint32_t pairs[16];
    nf4_pack_pairs(w, m.lut, pairs);
#pragma unroll
    for (int i = 0; i < 16; ++i) out[i] = __hmul2(bits_as<T2>(pairs[i]), m.scale[i / 4]);
  }
};

template <Nf4Kernel E>
using Nf4DecoderOf = Nf4Decoder<E.double_quant, std::conditional_t<E.dtype == DType::F16, half, __nv_bfloat16>>;

namespace {

template <typename D>
WeightOnlyArgs<D> make_nf4_args(const Nf4Launch& a) {
  WeightOnlyArgs<D> args;
  args.codes = a.codes;
  args.n = a.n;
  args.k = a.k;
  args.words_per_row = packed_row_words(a.k);
  args.x = static_cast<const typename D::T*>(a.x);
  args.y = static_cast<typename D::T*>(a.y);
  args.m = static_cast<int>(a.m);
  args.params.lut = a.lut;
  args.params.absmax = a.absmax;
  args.params.nested_absmax = a.nested_absmax;
  args.params.nested_map = a.nested_map;
  args.params.nested_offset = a.nested_offset;
  args.params.k = a.k;
  args.params.blocks = a.blocks;
  args.params.log2_block = a.log2_block;
  args.params.log2_nested = a.log2_nested_block;
  return args;
}

template <Nf4Kernel E>
void run_nf4(const Nf4Launch& a, const MatmulPlan& plan, void* w_hat, Stream stream) {
  using D = Nf4DecoderOf<E>;
  WeightOnlyArgs<D> args = make_nf4_args<D>(a);
  run_weight_only<D, E.regime, E.tile>(args, plan, w_hat, a.dtype, a.device, stream);
}

template <std::size_t... I>
void dispatch_nf4(int index, const Nf4Launch& a, const MatmulPlan& plan, void* w_hat, Stream stream,
                  std::index_sequence<I...>) {
  (void)((static_cast<int>(I) == index ? (run_nf4<kNf4Built[I]>(a, plan, w_hat, stream), true) : false) || ...);
}

}  // namespace
}  // namespace lowbit::cuda::kernels

namespace lowbit::cuda {

void launch_nf4(const Nf4Launch& a, const MatmulPlan& plan, void* w_hat, Stream stream) {
  const int index = nf4_kernel_index(a.double_quant, a.dtype, plan);
  LOWBIT_CHECK(index >= 0, ErrorCode::Unsupported,
               "nf4 matmul: no kernel for double_quant={} {} regime {} tile {}; built: {}", a.double_quant ? 1 : 0,
               dtype_name(a.dtype), name(plan.regime), plan.m_tile, describe_nf4_built());
  LOWBIT_CHECK(plan.regime != Regime::Dequantize || w_hat != nullptr, ErrorCode::InvalidArgument,
               "nf4 matmul: the dequantize regime needs an [{}, {}] scratch buffer", a.n, a.k);
  kernels::dispatch_nf4(index, a, plan, w_hat, stream, std::make_index_sequence<kNf4BuiltCount>{});
}

}  // namespace lowbit::cuda
