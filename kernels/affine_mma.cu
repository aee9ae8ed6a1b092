// y[m, n] = x[m, k] W_hat^T for affine 4/8-bit weights, 3 <= m <= 64, on tensor cores.
//
// Operands   as kernels/affine_gemv.cu; partials f32 [k_splits, m, n] when the plan splits k.
// Reference  dequantize_affine_reference() + fp32 matmul; tests/cuda/affine_kernel_test.cpp.
// Design     kernels::mma_kernel (weight_only.cuh): packed W and x tiles through a 4-stage cp.async ring,
//            W decoded by AffineDecoder into a padded fp16/bf16 shared tile, mma.sync m16n8k16 with fp32
//            accumulation; split-k partials summed in split order by a second kernel (no atomics).
// Launch     plan_affine(): 128 threads, 64 rows of W a block, kBM = 16 (m <= 16) or 64; k_splits so
//            that about 4 blocks per SM exist, bounded by the partials' traffic.
// Refuses    (bits, dtype, kBM) outside kAffineBuilt: Unsupported listing the table.
// Instances  the TensorCore rows of kAffineBuilt (cuda/affine.hpp).
#include "affine_decoder.cuh"


namespace lowbit::cuda::detail {

void launch_affine_mma(const AffineLaunch& a, int tile, Stream stream) {
  using namespace kernels;
  const bool done = dispatch_affine<Regime::TensorCore>(
      a, tile,
      [&]<AffineKernel E>() {
        using D = AffineDecoderOf<E>;
        launch_mma<D, E.tile>(make_affine_args<D>(a), stream);
      },
      std::make_index_sequence<kAffineBuiltCount>{});
  LOWBIT_CHECK(done, ErrorCode::Unsupported, "affine tensor-core: no kernel for {}-bit {} m_tile={}; built: {}",
               a.bits, dtype_name(a.dtype), tile, describe_affine_built());
}

}  // namespace lowbit::cuda::detail
