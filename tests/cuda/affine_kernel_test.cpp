// GPU tests of the affine kernels through prepare()/matmul(): every kAffineBuilt entry, act-order, short
// last groups, per-row and per-tensor scales, a tensor-parallel shard's k (7392), split-k, one real shape.
//
// Each run: output poisoned with NaN, compared with dequantize_affine_reference() times the fp16/bf16-
// rounded x in double, by relative Frobenius error ||y - ref|| / ||ref||. Tolerances: 4e-3 for fp16 (the
// decoded weight is the reference rounded to fp16, products of 4 summed in fp16 before fp32: ~5e-4 expected),
// 2.5e-2 for bf16 (scale rounded to bf16, 8 significant bits: ~4e-3 expected); an indexing error gives O(1).
// Every case runs twice and must be bitwise identical. Skipped without a CUDA device.
#include <cmath>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "cuda/affine_test_util.hpp"
#include "cuda/cuda_test_util.hpp"
#include "lowbit/cuda/affine.hpp"
#include "lowbit/cuda/matmul.hpp"

namespace lowbit::cuda {
namespace {

using test::random_affine;

// Runs matmul twice on a NaN-poisoned y; checks determinism, every element written, and the error against
// dequantize_affine_reference().
void check(const quant::QuantizedTensor& q, const PreparedWeight& w, std::int64_t m, DType dt, std::uint64_t seed) {
  SCOPED_TRACE(q.describe());
  test::check_weight_only_matmul(w, quant::dequantize_affine_reference(q), m, dt, seed);
}

void check(const quant::QuantizedTensor& q, std::int64_t m, DType dt, std::uint64_t seed) {
  const PreparedWeight w = prepare(q, 0);
  check(q, w, m, dt, seed);
}

// Every table entry, reached through the plan, on n = 264 (not a multiple of the tensor-core block's 64
// rows) and k = 288 (group 128: a last group of 32).
TEST(CudaAffineKernel, EveryBuiltKernelMatchesTheReference) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 1;
  for (int i = 0; i < kAffineBuiltCount; ++i) {
    const AffineKernel& e = kAffineBuilt[i];
    std::vector<std::int64_t> ms;
    switch (e.regime) {
      case Regime::Gemv: ms = {e.tile}; if (e.tile == 4) ms.push_back(3); break;
      case Regime::TensorCore: ms = e.tile == 16 ? std::vector<std::int64_t>{9, 16} : std::vector<std::int64_t>{33, 64}; break;
      case Regime::Dequantize: ms = {300}; break;
    }
    const quant::QuantizedTensor q = random_affine(264, 288, e.bits, 128, DType::F16, false, ++seed);
    const PreparedWeight w = prepare(q, 0);
    for (const std::int64_t m : ms) {
      ASSERT_EQ(affine_kernel_index(e.bits, e.dtype, plan_matmul("affine", q.params, m, 264, 288, 132)), i) << m;
      check(q, w, m, e.dtype, ++seed);
    }
  }
}

TEST(CudaAffineKernel, BatchSweepOnFourBitGroup128) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  for (const DType dt : {DType::F16, DType::BF16}) {
    const quant::QuantizedTensor q = random_affine(136, 1024, 4, 128, DType::F16, false, 20);
    const PreparedWeight w = prepare(q, 0);
    for (const std::int64_t m : {1, 2, 3, 8, 16, 33, 64, 256, 1024}) check(q, w, m, dt, 21 + m);
  }
}

// GPTQ desc_act: columns sorted once at prepare, x permuted per call; k = 7392 (a 72B model's TP shard),
// whose last group of 128 has 96 columns.
TEST(CudaAffineKernel, ActOrderOnATensorParallelShard) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  for (const DType dt : {DType::F16, DType::BF16}) {
    const quant::QuantizedTensor q = random_affine(128, 7392, 4, 128, DType::F16, true, 30);
    const PreparedWeight w = prepare(q, 0);
    ASSERT_EQ(w.buffers.count("perm"), 1u);
    for (const std::int64_t m : {1, 5, 16, 64, 300}) check(q, w, m, dt, 31 + m);
  }
  const quant::QuantizedTensor q8 = random_affine(64, 1024, 8, 128, DType::F16, true, 40);
  check(q8, 1, DType::F16, 41);
  check(q8, 16, DType::BF16, 42);
}

// Group sizes 32 and 64, per row (-1) and per tensor (0), f32 scales, k = 520 (packs past k, a last
// group of 8 at g = 32... 520 = 16 * 32 + 8).
TEST(CudaAffineKernel, GroupSizesScaleDtypesAndRaggedK) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 50;
  for (const std::int64_t g : {32, 64, -1, 0}) {
    for (const DType sd : {DType::F16, DType::F32}) {
      const quant::QuantizedTensor q = random_affine(72, 520, 4, g, sd, false, ++seed);
      const PreparedWeight w = prepare(q, 0);
      for (const std::int64_t m : {1, 16, 300}) check(q, w, m, m == 16 ? DType::BF16 : DType::F16, ++seed);
    }
  }
}

// 2, 3 and 8 bits at m <= 8 on both dtypes; per-channel int8 (the "int8" CLI's f32 absmax grid shape).
TEST(CudaAffineKernel, LowAndEightBitGemv) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 70;
  for (const int bits : {2, 3, 8}) {
    const quant::QuantizedTensor q = random_affine(200, 1000, bits, bits == 8 ? -1 : 64, DType::F16, false, ++seed);
    const PreparedWeight w = prepare(q, 0);
    for (const DType dt : {DType::F16, DType::BF16}) {
      for (const std::int64_t m : {1, 2, 7}) check(q, w, m, dt, ++seed);
    }
  }
  const quant::QuantizedTensor int8 = random_affine(96, 776, 8, -1, DType::F32, false, 80);
  check(int8, 1, DType::BF16, 81);
  check(int8, 40, DType::F16, 82);
}

// Shapes smaller than one pack or one tensor-core block: k = 8 and 40 (padded to 64), n = 8.
TEST(CudaAffineKernel, TinyShapes) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 85;
  for (const auto& [n, k] : {std::pair<std::int64_t, std::int64_t>{8, 8}, {16, 40}, {24, 200}}) {
    for (const std::int64_t g : {std::int64_t{-1}, std::int64_t{32}}) {
      const quant::QuantizedTensor q = random_affine(n, k, 4, g, DType::F16, g == 32 && k >= 64, ++seed);
      const PreparedWeight w = prepare(q, 0);
      for (const std::int64_t m : {1, 3, 16, 300}) check(q, w, m, m == 3 ? DType::BF16 : DType::F16, ++seed);
    }
  }
}

TEST(CudaAffineKernel, SplitKAndARealShape) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  const quant::QuantizedTensor tall = random_affine(128, 4096, 4, 128, DType::F16, false, 90);
  ASSERT_GT(plan_matmul("affine", tall.params, 16, 128, 4096, 132).k_splits, 1);
  check(tall, 16, DType::F16, 91);
  check(tall, 100, DType::BF16, 92);
  const quant::QuantizedTensor real = random_affine(4096, 4096, 4, 128, DType::F16, false, 93);
  const PreparedWeight w = prepare(real, 0);
  check(real, w, 1, DType::F16, 94);
  check(real, w, 16, DType::F16, 95);
}

}  // namespace
}  // namespace lowbit::cuda
