// GPU tests of the NF4/FP4 kernels through prepare()/matmul(): every kNf4Built entry, both table types,
// double quantization, block sizes 32 .. 4096, k not a multiple of 32 (packs spanning two blocks, padded
// columns), a tensor-parallel shard's k (7392), split-k, one real shape, the batch list 1 .. 1024.
//
// Each run: output poisoned with NaN, compared with dequantize_nf4_reference() times the fp16/bf16-rounded
// x in double, by relative Frobenius error ||y - ref|| / ||ref||. Tolerances: 4e-3 for fp16 (the kernel
// forms fl16(fl16(T[code]) * fl16(a_b)), within 1.5 ulp of the reference weight, and sums products of 4 in
// fp16 before fp32: ~6e-4 expected), 2.5e-2 for bf16 (8 significant bits: ~5e-3 expected); an indexing
// error gives O(1). Every case runs twice and must be bitwise identical. Skipped without a CUDA device.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/cuda_test_util.hpp"
#include "io/io_test_util.hpp"
#include "lowbit/cuda/matmul.hpp"
#include "lowbit/cuda/nf4.hpp"
#include "lowbit/quant/nf4.hpp"

namespace lowbit::cuda {
namespace {

using test::check_weight_only_matmul;

// W [n, k] ~ N(0, 0.02) in `dtype` with one all-zero run of 256 elements (a_b = 0 blocks; with double
// quantization the rebuilt a_b is only near 0).
quant::QuantizedTensor make_nf4(std::int64_t n, std::int64_t k, quant::Nf4Type type, int block, bool dq,
                                std::uint64_t seed, DType dtype = DType::F16) {
  Tensor w = io::test::random_weight(n, k, seed);
  if (n * k >= 1024) std::memset(w.data<float>() + 512, 0, 256 * sizeof(float));
  return quant::quantize_nf4(w.to(dtype), {type, block, dq});
}

// Every table entry, reached through the plan, on n = 264 (not a multiple of the tensor-core block's 64
// rows) and k = 200 (not a multiple of 32: packs span two blocks of 64, and the last pack is padding).
TEST(CudaNf4Kernel, EveryBuiltKernelMatchesTheReference) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 1;
  for (int i = 0; i < kNf4BuiltCount; ++i) {
    const Nf4Kernel& e = kNf4Built[i];
    std::vector<std::int64_t> ms;
    switch (e.regime) {
      case Regime::Gemv: ms = {e.tile}; if (e.tile == 4) ms.push_back(3); break;
      case Regime::TensorCore: ms = e.tile == 16 ? std::vector<std::int64_t>{9, 16} : std::vector<std::int64_t>{33, 64}; break;
      case Regime::Dequantize: ms = {300}; break;
    }
    const quant::Nf4Type type = i % 2 ? quant::Nf4Type::FP4 : quant::Nf4Type::NF4;
    const quant::QuantizedTensor q = make_nf4(264, 200, type, 64, e.double_quant, ++seed);
    const PreparedWeight w = prepare(q, 0);
    const Tensor w_ref = quant::dequantize_nf4_reference(q);
    for (const std::int64_t m : ms) {
      ASSERT_EQ(nf4_kernel_index(e.double_quant, e.dtype, plan_matmul(q.method, q.params, m, 264, 200, 132)), i) << m;
      check_weight_only_matmul(w, w_ref, m, e.dtype, ++seed);
    }
  }
}

TEST(CudaNf4Kernel, BatchSweepBothTypesWithAndWithoutDoubleQuant) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 100;
  for (const quant::Nf4Type type : {quant::Nf4Type::NF4, quant::Nf4Type::FP4}) {
    for (const bool dq : {false, true}) {
      const DType dt = dq ? DType::BF16 : DType::F16;
      const quant::QuantizedTensor q = make_nf4(136, 1024, type, 64, dq, ++seed);
      const PreparedWeight w = prepare(q, 0);
      const Tensor w_ref = quant::dequantize_nf4_reference(q);
      for (const std::int64_t m : {1, 2, 3, 8, 16, 33, 64, 256, 1024}) check_weight_only_matmul(w, w_ref, m, dt, ++seed);
    }
  }
}

// Block sizes 32, 128 and 4096 (blocks across many rows), bf16 and f32 originals, k = 7392 (a 72B model's
// tensor-parallel shard) and k = 520 (a pack of 8 real columns at the end of each row).
TEST(CudaNf4Kernel, BlockSizesOriginalDtypesAndRaggedK) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 200;
  struct Case {
    std::int64_t n, k;
    int block;
    bool dq;
    DType original;
  };
  const Case cases[] = {{64, 7392, 64, true, DType::BF16},  {72, 520, 32, false, DType::F32},
                        {72, 520, 128, true, DType::F16},   {48, 1000, 4096, true, DType::BF16},
                        {40, 7392, 128, false, DType::F16}};
  for (const Case& c : cases) {
    const quant::QuantizedTensor q = make_nf4(c.n, c.k, quant::Nf4Type::NF4, c.block, c.dq, ++seed, c.original);
    const PreparedWeight w = prepare(q, 0);
    const Tensor w_ref = quant::dequantize_nf4_reference(q);
    for (const std::int64_t m : {1, 5, 16, 300}) {
      check_weight_only_matmul(w, w_ref, m, m % 2 ? DType::F16 : DType::BF16, ++seed);
    }
  }
}

TEST(CudaNf4Kernel, SplitKAndARealShape) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  const quant::QuantizedTensor tall = make_nf4(128, 4096, quant::Nf4Type::NF4, 64, true, 300);
  ASSERT_GT(plan_matmul("nf4", tall.params, 16, 128, 4096, 132).k_splits, 1);
  const PreparedWeight wt = prepare(tall, 0);
  const Tensor wt_ref = quant::dequantize_nf4_reference(tall);
  check_weight_only_matmul(wt, wt_ref, 16, DType::F16, 301);
  check_weight_only_matmul(wt, wt_ref, 100, DType::BF16, 302);
  // Llama-2-7B's up_proj shape, QLoRA's format (NF4, block 64, double quantization).
  const quant::QuantizedTensor real = make_nf4(4096, 4096, quant::Nf4Type::NF4, 64, true, 303, DType::BF16);
  const PreparedWeight w = prepare(real, 0);
  const Tensor w_ref = quant::dequantize_nf4_reference(real);
  check_weight_only_matmul(w, w_ref, 1, DType::BF16, 304);
  check_weight_only_matmul(w, w_ref, 16, DType::F16, 305);
}

TEST(CudaNf4Kernel, RejectsMismatchedOperands) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  const quant::QuantizedTensor q = make_nf4(64, 128, quant::Nf4Type::NF4, 64, false, 400);
  const PreparedWeight w = prepare(q, 0);
  const Tensor x = filled({2, 64}, DType::F16, 1.0);
  Tensor y = filled({2, 64}, DType::F16, 0.0);
  EXPECT_THROW(matmul(w, x, y), Error);  // x has k = 64, the weight 128
}

}  // namespace
}  // namespace lowbit::cuda
