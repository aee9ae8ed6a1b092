// The affine Decoder (kernels/weight_only.cuh's concept) for the repacked layout of cuda/affine.hpp:
// w_hat = scale * (code - zero), per (row, group), 2/3/4/8-bit codes, fp16 or bf16 activations.
//
// Per pair of columns the decode is one LOP3 (or PRMT at 8 bits) giving (magic + code) as two 16-bit
// floats, one HSUB2 of (magic + zero) (exact: both are integers below 2^11 in fp16 / 2^8 in bf16), one HMUL2
// by the scale rounded to T. fp16: the product of an fp16 scale and an integer below 2^8 is exact before
// the one rounding, so w_hat is RNE_fp16(reference); bf16: the scale is first rounded to bf16 (relative
// error <= 2^-9), then the product. 8-bit with bf16 goes through fp32 (2^23 + code, exact subtraction,
// fp32 multiply, one rounding), since 128 + code does not fit bf16's 8 significant bits.
#pragma once

#include <type_traits>
#include <utility>

#include "../src/cuda/affine_kernels.hpp"
#include "lowbit/cuda/affine.hpp"
#include "weight_only.cuh"

namespace lowbit::cuda::kernels {

struct AffineParams {
  const void* scales = nullptr;  // f16 or f32 [n, groups]
  const std::uint8_t* zeros = nullptr;  // [n, groups]
  std::int64_t groups = 1;
  FastDivU32 group_div{};  // column -> group
  bool scales_f32 = false;
};

template <int kBitsV, typename TV>
struct AffineDecoder {
  using T = TV;
  using T2 = vec2_t<T>;
  static constexpr int kBits = kBitsV;
  static constexpr bool kViaF32 = kBits == 8 && std::is_same_v<T, __nv_bfloat16>;
  using Params = AffineParams;
  struct Meta {
    T2 scale2;
    T2 zero2;  // magic + zero in both halves
    float scale;
    float zero_magic;  // 2^23 + zero (kViaF32)
  };

  __device__ static Meta load_meta(const Params& p, std::int64_t row, int k0) {
    std::int64_t g = p.group_div(static_cast<std::uint32_t>(k0));
    if (g >= p.groups) g = p.groups - 1;  // padded columns
    const std::int64_t idx = row * p.groups + g;
    const float s = p.scales_f32 ? __ldg(static_cast<const float*>(p.scales) + idx)
                                 : __half2float(__ldg(static_cast<const half*>(p.scales) + idx));
    const std::uint32_t z = __ldg(p.zeros + idx);
    Meta m;
    if constexpr (kViaF32) {
      m.scale = s;
      m.zero_magic = __uint_as_float(0x4B000000u | z);
    } else if constexpr (std::is_same_v<T, half>) {
      m.scale2 = __float2half2_rn(s);
      m.zero2 = bits_as<T2>((0x6400u | z) * 0x00010001u);
    } else {
      m.scale2 = __float2bfloat162_rn(s);
      m.zero2 = bits_as<T2>((0x4300u | z) * 0x00010001u);
    }
    return m;
  }

  __device__ static void decode(const std::uint32_t (&w)[kBits], const Meta& m, T2 (&out)[16]) {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      if constexpr (kViaF32) {
        const float a = __uint_as_float(affine_code8_magic_f32(w, 2 * i)) - m.zero_magic;
        const float b = __uint_as_float(affine_code8_magic_f32(w, 2 * i + 1)) - m.zero_magic;
        out[i] = __floats2bfloat162_rn(a * m.scale, b * m.scale);
      } else {
        std::uint32_t v;
        if constexpr (kBits == 8) {
          v = affine_pair_magic8_f16(w, i);
        } else if constexpr (std::is_same_v<T, half>) {
          v = affine_pair_magic<kBits>(w, i, kMagicF16x2);
        } else {
          v = affine_pair_magic<kBits>(w, i, kMagicBF16x2);
        }
        out[i] = __hmul2(__hsub2(bits_as<T2>(v), m.zero2), m.scale2);
      }
    }
  }
};

// The decoder of a kAffineBuilt entry.
template <AffineKernel E>
using AffineDecoderOf = AffineDecoder<E.bits, std::conditional_t<E.dtype == DType::F16, half, __nv_bfloat16>>;

template <typename D>
WeightOnlyArgs<D> make_affine_args(const detail::AffineLaunch& a) {
  WeightOnlyArgs<D> args;
  args.codes = a.qweight;
  args.n = a.n;
  args.k = a.k;
  args.words_per_row = a.k_pad / 32 * D::kBits;
  args.x = static_cast<const typename D::T*>(a.x);
  args.y = static_cast<typename D::T*>(a.y);
  args.partials = a.partials;
  args.m = a.m;
  args.k_splits = a.k_splits;
  args.params.scales = a.scales;
  args.params.scales_f32 = a.scales_f32;
  args.params.zeros = a.zeros;
  args.params.groups = a.groups;
  args.params.group_div = FastDivU32::make(static_cast<std::uint32_t>(a.group));
  return args;
}

// Calls launch(entry-typed) for the kAffineBuilt entry of `regime` matching (a.bits, a.dtype, tile); false
// when none does. Every entry of the regime is instantiated, nothing else.
template <Regime kRegime, typename Launch, std::size_t... I>
bool dispatch_affine(const detail::AffineLaunch& a, int tile, Launch&& launch, std::index_sequence<I...>) {
  const auto one = [&]<std::size_t J>(std::integral_constant<std::size_t, J>) {
    constexpr AffineKernel e = kAffineBuilt[J];
    if constexpr (e.regime != kRegime) {
      return false;
    } else {
      if (a.bits != e.bits || a.dtype != e.dtype || tile != e.tile) return false;
      launch.template operator()<e>();
      return true;
    }
  };
  return (one(std::integral_constant<std::size_t, I>{}) || ...);
}

}  // namespace lowbit::cuda::kernels
