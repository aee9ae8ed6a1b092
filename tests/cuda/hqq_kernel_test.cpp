// GPU tests of the HQQ 4-bit kernels through prepare()/matmul(): every kHqqBuilt entry, group sizes 32, 64,
// 128 and -1, f16 and bf16 scale/zero with either activation dtype, k not a multiple of 32 (packs spanning
// two groups, padded columns), k = 7392, split-k, one real shape, the batch list 1 .. 1024.
//
// Error measure, tolerances (4e-3 fp16, 2.5e-2 bf16: the kernel forms fl(code * fl(scale) + fl(-zero *
// scale)) in the activation type) and the determinism check: check_weight_only_matmul (cuda_test_util.hpp).
// Skipped without a CUDA device.
#include <cstdint>

#include "cuda/cuda_test_util.hpp"
#include "io/io_test_util.hpp"
#include "lowbit/cuda/hqq.hpp"
#include "lowbit/cuda/matmul.hpp"
#include "lowbit/quant/hqq.hpp"

namespace lowbit::cuda {
namespace {

using test::check_weight_only_matmul;

quant::QuantizedTensor make_hqq(std::int64_t n, std::int64_t k, std::int64_t group, DType meta, std::uint64_t seed,
                                bool optimize = false) {
  quant::HqqConfig c;
  c.bits = 4;
  c.group_size = group;
  c.axis = 1;
  c.optimize = optimize;
  c.iters = 4;
  c.compute_dtype = meta;
  return quant::quantize_hqq(io::test::random_weight(n, k, seed), c);
}

// Every table entry, reached through the plan, on n = 272 and k = 200 (g = 64: groups span rows, packs span
// two groups, the last pack of a row is padding).
TEST(CudaHqqKernel, EveryBuiltKernelMatchesTheReference) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 1;
  for (int i = 0; i < kHqqBuiltCount; ++i) {
    const HqqKernel& e = kHqqBuilt[i];
    std::vector<std::int64_t> ms;
    switch (e.regime) {
      case Regime::Gemv: ms = {e.tile}; if (e.tile == 4) ms.push_back(3); break;
      case Regime::TensorCore: ms = e.tile == 16 ? std::vector<std::int64_t>{9, 16} : std::vector<std::int64_t>{33, 64}; break;
      case Regime::Dequantize: ms = {300}; break;
    }
    const quant::QuantizedTensor q = make_hqq(272, 200, 64, e.dtype, ++seed, i % 3 == 0);
    const PreparedWeight w = prepare(q, 0);
    const Tensor w_ref = quant::dequantize_hqq_reference(q);
    for (const std::int64_t m : ms) {
      ASSERT_EQ(hqq_kernel_index(e.dtype, plan_matmul("hqq", q.params, m, 272, 200, 132)), i) << m;
      check_weight_only_matmul(w, w_ref, m, e.dtype, ++seed);
    }
  }
}

TEST(CudaHqqKernel, BatchSweepAndMetaDtypeAcrossActivationDtypes) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 100;
  for (const DType meta : {DType::F16, DType::BF16}) {
    const quant::QuantizedTensor q = make_hqq(136, 1024, 64, meta, ++seed, true);
    const PreparedWeight w = prepare(q, 0);
    const Tensor w_ref = quant::dequantize_hqq_reference(q);
    for (const std::int64_t m : {1, 2, 3, 8, 16, 33, 64, 256, 1024}) {
      check_weight_only_matmul(w, w_ref, m, m % 2 ? DType::F16 : DType::BF16, ++seed);
    }
  }
}

// Groups of 32, 128 and one per row (g = k = 256); k = 7392 and k = 520.
TEST(CudaHqqKernel, GroupSizesAndRaggedK) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  std::uint64_t seed = 200;
  struct Case {
    std::int64_t n, k, group;
  };
  const Case cases[] = {{64, 7392, 64}, {64, 7392, 128}, {64, 520, 32}, {32, 256, -1}, {128, 520, 128}};
  for (const Case& c : cases) {
    const quant::QuantizedTensor q = make_hqq(c.n, c.k, c.group, DType::F16, ++seed);
    const PreparedWeight w = prepare(q, 0);
    const Tensor w_ref = quant::dequantize_hqq_reference(q);
    for (const std::int64_t m : {1, 5, 16, 300}) {
      check_weight_only_matmul(w, w_ref, m, m % 2 ? DType::F16 : DType::BF16, ++seed);
    }
  }
}

TEST(CudaHqqKernel, SplitKAndARealShape) {
  LOWBIT_REQUIRE_CUDA_DEVICE();
  const quant::QuantizedTensor tall = make_hqq(128, 4096, 64, DType::F16, 300);
  ASSERT_GT(plan_matmul("hqq", tall.params, 16, 128, 4096, 132).k_splits, 1);
  const PreparedWeight wt = prepare(tall, 0);
  const Tensor wt_ref = quant::dequantize_hqq_reference(tall);
  check_weight_only_matmul(wt, wt_ref, 16, DType::F16, 301);
  check_weight_only_matmul(wt, wt_ref, 100, DType::BF16, 302);
  // hqq's default for Llama (4 bit, g 64, axis 1, fp16 scale/zero) on a 4096 x 4096 projection.
  const quant::QuantizedTensor real = make_hqq(4096, 4096, 64, DType::F16, 303);
  const PreparedWeight w = prepare(real, 0);
  const Tensor w_ref = quant::dequantize_hqq_reference(real);
  check_weight_only_matmul(w, w_ref, 1, DType::F16, 304);
  check_weight_only_matmul(w, w_ref, 16, DType::BF16, 305);
}

}  // namespace
}  // namespace lowbit::cuda
