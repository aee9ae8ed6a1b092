// y[m, n] = x[m, k] W_hat^T for affine 2/3/4/8-bit weights, m <= 2 at 4 and 8 bits, m <= 8 at 2 and 3 bits (decode-time GEMV).
//
// Operands   x: fp16|bf16 [m, k] row-major (act-order: already permuted). qweight u32 [n, k_pad/32*bits],
//            scales f16|f32 [n, groups], zeros u8 [n, groups] (cuda/affine.hpp, docs/kernels.md#affine).
// Reference  dequantize_affine_reference() + fp32 matmul; tests/cuda/affine_kernel_test.cpp.
// Design     at m <= 8 the time is weight bytes / bandwidth: kernels::gemv_kernel (weight_only.cuh), a
//            warp per 2 rows, each lane streaming 16-byte packs, decoded with AffineDecoder (one LOP3 +
//            HSUB2 + HMUL2 per column pair), fixed xor-butterfly reduction.
// Launch     plan_affine(): 128 threads, 8 rows a block, m rounded up to kM in {1, 2} (4 and 8 bits) or {1, 2, 4, 8} (2 and 3 bits).
// Refuses    (bits, dtype, kM) outside kAffineBuilt: Unsupported listing the table.
// Instances  the Gemv rows of kAffineBuilt (cuda/affine.hpp).
#include "affine_decoder.cuh"


namespace lowbit::cuda::detail {

void launch_affine_gemv(const AffineLaunch& a, int tile, Stream stream) {
  using namespace kernels;
  const bool done = dispatch_affine<Regime::Gemv>(
      a, tile,
      [&]<AffineKernel E>() {
        using D = AffineDecoderOf<E>;
        launch_gemv<D, E.tile>(make_affine_args<D>(a), stream);
      },
      std::make_index_sequence<kAffineBuiltCount>{});
  LOWBIT_CHECK(done, ErrorCode::Unsupported, "affine gemv: no kernel for {}-bit {} m<={}; built: {}", a.bits,
               dtype_name(a.dtype), tile, describe_affine_built());
}

}  // namespace lowbit::cuda::detail
