// LLM.int8() host side without a GPU: the plan, the scratch layout and the threshold the kernels compare
// with (checked against the reference's own outlier decision).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "lowbit/core/half.hpp"
#include "lowbit/cuda/llm_int8.hpp"
#include "lowbit/cuda/matmul.hpp"
#include "lowbit/quant/llm_int8.hpp"

namespace lowbit {
namespace {

quant::QuantParams llm_int8_params(double threshold) {
  quant::QuantParams p;
  p.bits = 8;
  p.group_size = -1;
  p.symmetric = true;
  p.threshold = threshold;
  return p;
}

TEST(CudaLlmInt8Plan, SmallBatchesAreGemvLargerOnesTensorCore) {
  const quant::QuantParams p = llm_int8_params(6.0);
  for (const std::int64_t m : {1, 2, 7, 8, 9, 16, 255, 256, 257, 4096}) {
    const cuda::MatmulPlan plan = cuda::plan_matmul("llm_int8", p, m, 4096, 7392, 132);
    if (m <= cuda::kLlmInt8GemvMaxM) {
      EXPECT_EQ(plan.regime, cuda::Regime::Gemv) << m;
      EXPECT_EQ(plan.threads, cuda::kLlmInt8GemvThreads);
      EXPECT_EQ(plan.rows_per_block, cuda::kLlmInt8GemvRowsPerBlock);
      EXPECT_GE(plan.m_tile, m);  // the instance covers every row
      EXPECT_LT(plan.m_tile, 2 * m);
    } else {
      EXPECT_EQ(plan.regime, cuda::Regime::TensorCore) << m;
      EXPECT_EQ(plan.threads, cuda::kLlmInt8EpilogueThreads);
      EXPECT_EQ(plan.m_tile, cuda::kLlmInt8EpilogueRows);
      EXPECT_EQ(plan.rows_per_block, cuda::kLlmInt8EpilogueCols);
    }
    EXPECT_EQ(plan.k_splits, 1);  // the int8 GEMM is exact, but no split is planned either
  }
  static_assert(cuda::kLlmInt8EpilogueThreads % cuda::kLlmInt8EpilogueCols == 0);
  static_assert(cuda::kLlmInt8GemvRowsPerWarp * 8 <= 32);  // a lane per (row, m) pair at the largest bucket
  for (std::int64_t m = 1; m <= cuda::kLlmInt8GemvMaxM; ++m) {
    const int b = cuda::llm_int8_gemv_bucket(m);
    EXPECT_TRUE(b == 1 || b == 2 || b == 4 || b == 8) << m;
    EXPECT_GE(b, m);
  }
  EXPECT_EQ(cuda::llm_int8_gemv_bucket(0), 0);
  EXPECT_EQ(cuda::llm_int8_gemv_bucket(cuda::kLlmInt8GemvMaxM + 1), 0);
  static_assert(cuda::kLlmInt8EpilogueRows % (cuda::kLlmInt8EpilogueThreads / cuda::kLlmInt8EpilogueCols) == 0);
}

TEST(CudaLlmInt8Plan, RefusesWhatTheKernelsCannotDo) {
  auto code_of = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.code();
    }
    ADD_FAILURE() << "expected an error";
    return ErrorCode::IO;
  };
  EXPECT_EQ(code_of([] { (void)cuda::plan_matmul("llm_int8", llm_int8_params(-1.0), 1, 64, 64, 132); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(code_of([] { (void)cuda::plan_matmul("llm_int8", llm_int8_params(NAN), 1, 64, 64, 132); }),
            ErrorCode::InvalidArgument);
  // k = 131072 = kLlmInt8MaxK + 1: 131072 * 127 * 127 could overflow int32.
  EXPECT_EQ(code_of([] {
              (void)cuda::plan_matmul("llm_int8", llm_int8_params(6.0), 1, 64, quant::kLlmInt8MaxK + 1, 132);
            }),
            ErrorCode::Unsupported);
  EXPECT_EQ(code_of([] { (void)cuda::plan_matmul("llm_int8", llm_int8_params(6.0), 1, 60, 64, 132); }),
            ErrorCode::ShapeMismatch);
}

TEST(CudaLlmInt8Plan, ScratchRegionsAreAlignedDisjointAndLargeEnough) {
  std::mt19937 rng(5);
  std::vector<std::array<std::int64_t, 3>> shapes = {{1, 8, 8}, {1024, 8192, 28672}, {3, 4096, 7392}};
  for (int t = 0; t < 50; ++t) {
    shapes.push_back({1 + static_cast<std::int64_t>(rng() % 2000), 8 * (1 + static_cast<std::int64_t>(rng() % 4000)),
                      8 * (1 + static_cast<std::int64_t>(rng() % 4000))});
  }
  for (const auto& [m, n, k] : shapes) {
    SCOPED_TRACE(fmt::format("m={} n={} k={}", m, n, k));
    const cuda::LlmInt8ScratchLayout s = cuda::llm_int8_scratch_layout(m, n, k);
    const std::size_t panel = static_cast<std::size_t>(cuda::kLlmInt8PanelCols);
    const auto um = static_cast<std::size_t>(m), un = static_cast<std::size_t>(n), uk = static_cast<std::size_t>(k);
    // (offset, bytes) in layout order.
    const std::vector<std::pair<std::size_t, std::size_t>> regions = {
        {s.mask, (uk + 31) / 32 * 4}, {s.ncols, 4},           {s.cols, uk * 4},
        {s.sca, um * 4},              {s.ca, um * uk},        {s.c, um * un * 4},
        {s.sub_a, um * panel * 4},    {s.sub_b, panel * un * 4}, {s.workspace, cuda::kLlmInt8WorkspaceBytes}};
    std::size_t end = 0;
    for (const auto& [offset, bytes] : regions) {
      EXPECT_EQ(offset % 256, 0u);
      EXPECT_GE(offset, end) << "overlaps the previous region";
      end = offset + bytes;
    }
    EXPECT_GE(s.total, end);
    EXPECT_LT(s.total, end + 256);
  }
  EXPECT_THROW((void)cuda::llm_int8_scratch_layout(0, 8, 8), Error);
}

// The mask helpers the kernels index with: every column lands on its own bit, and the keep-mask clears
// exactly the flagged bytes, for every one of the 256 flag patterns.
TEST(CudaLlmInt8Plan, MaskHelpersAddressEveryColumnOnce) {
  for (std::int64_t c = 0; c < 5000; ++c) {
    for (int e = 0; e < 8; ++e) {
      const std::int64_t j = 8 * c + e;
      ASSERT_EQ(cuda::llm_int8_mask_word(c), j / 32) << j;
      ASSERT_EQ(cuda::llm_int8_mask_shift(c) + e, j % 32) << j;
      const std::uint32_t word = 1u << (j % 32);
      ASSERT_EQ(cuda::llm_int8_chunk_bits(word, c), 1u << e) << j;
      ASSERT_EQ(cuda::llm_int8_chunk_bits(~word, c), 0xffu & ~(1u << e)) << j;
    }
  }
  std::mt19937_64 rng(3);
  for (std::uint32_t bits = 0; bits < 256; ++bits) {
    const std::uint64_t codes = rng();
    const std::uint64_t kept = codes & cuda::llm_int8_keep_bytes(bits);
    for (int e = 0; e < 8; ++e) {
      const auto byte = static_cast<std::uint8_t>(kept >> (8 * e));
      const auto original = static_cast<std::uint8_t>(codes >> (8 * e));
      ASSERT_EQ(byte, ((bits >> e) & 1u) ? 0 : original) << bits << " byte " << e;
    }
  }
}

// The kernels call an element an outlier when |x16| >= llm_int8_threshold16(t); the reference decides in
// quantize_llm_int8_activations. Both must agree on every fp16 value, for thresholds that are and are not
// fp16 numbers.
TEST(CudaLlmInt8Plan, ThresholdAgreesWithTheReferenceOnEveryFp16Value) {
  std::vector<float> values;
  for (std::uint32_t h = 0; h < 0x7c00u; h += 1) values.push_back(f16_bits_to_f32(static_cast<std::uint16_t>(h)));
  values.push_back(INFINITY);
  const std::int64_t k = static_cast<std::int64_t>(values.size());
  Tensor x = Tensor::from_values(std::span<const float>(values), {1, k}).to(DType::F16);
  for (const double t : {6.0, 6.001, 5.99, 0.1, 1e-7, 3.0e4, 65504.0, 65520.0, 1.0e6}) {
    SCOPED_TRACE(t);
    const float t16 = cuda::llm_int8_threshold16(t);
    const quant::LlmInt8Activations a = quant::quantize_llm_int8_activations(x, t);
    std::vector<std::int64_t> expected;
    for (std::int64_t j = 0; j < k; ++j) {
      if (std::fabs(values[static_cast<std::size_t>(j)]) >= t16) expected.push_back(j);
    }
    EXPECT_EQ(a.outlier_cols, expected);
  }
  EXPECT_EQ(cuda::llm_int8_threshold16(6.0), 6.0f);
  EXPECT_EQ(cuda::llm_int8_threshold16(6.001), 6.0f);  // fp16 spacing at 6 is 2^-8
  EXPECT_TRUE(std::isinf(cuda::llm_int8_threshold16(1.0e6)));
  EXPECT_THROW((void)cuda::llm_int8_threshold16(-1.0), Error);
}

// The epilogue and the activation codes in the kernels are written with explicitly rounded operations in
// the order below; this is the same arithmetic on the CPU, checked against the reference trace step by
// step, so a reordering that changes bits shows here first.
TEST(CudaLlmInt8Plan, StepwiseEmulationEqualsTheReferenceTrace) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::int64_t m = 5, n = 24, k = 64;
  Tensor w = Tensor::empty({n, k}, DType::F32);
  for (std::int64_t e = 0; e < w.numel(); ++e) w.data<float>()[e] = 0.02f * normal(rng);
  const quant::QuantizedTensor q = quant::quantize_llm_int8(w);
  Tensor xf = Tensor::empty({m, k}, DType::F32);
  for (std::int64_t e = 0; e < xf.numel(); ++e) xf.data<float>()[e] = std::clamp(normal(rng), -5.0f, 5.0f);
  xf.data<float>()[2 * k + 9] = 7.5f;
  xf.data<float>()[4 * k + 30] = -6.0f;
  const Tensor x = xf.to(DType::F16);
  const quant::LlmInt8MatmulTrace tr = quant::trace_llm_int8_matmul(q, x);
  const float t16 = cuda::llm_int8_threshold16(q.params.threshold);
  const Tensor x32 = x.to(DType::F32);
  const float* px = x32.data<float>();

  // Step 1: row absmax over inliers and codes, outlier elements 0; step 3: whole columns zeroed.
  std::vector<int> outlier_col(static_cast<std::size_t>(k), 0);
  std::vector<std::int8_t> ca(static_cast<std::size_t>(m * k));
  for (std::int64_t i = 0; i < m; ++i) {
    float absmax = 0.0f;
    for (std::int64_t j = 0; j < k; ++j) {
      const float mag = std::fabs(px[i * k + j]);
      if (mag >= t16) {
        outlier_col[static_cast<std::size_t>(j)] = 1;
      } else {
        absmax = std::max(absmax, mag);
      }
    }
    EXPECT_EQ(absmax, tr.activations.sca.data<float>()[i]);
    const float scale = (1.0f / absmax) * 127.0f;
    for (std::int64_t j = 0; j < k; ++j) {
      const float v = px[i * k + j];
      ca[static_cast<std::size_t>(i * k + j)] =
          std::fabs(v) >= t16 ? 0 : static_cast<std::int8_t>(std::nearbyint(v * scale));
    }
  }
  std::vector<std::int64_t> cols;
  for (std::int64_t j = 0; j < k; ++j) {
    if (outlier_col[static_cast<std::size_t>(j)]) cols.push_back(j);
  }
  ASSERT_EQ(cols, tr.activations.outlier_cols);
  ASSERT_EQ(cols.size(), 2u);
  for (const std::int64_t j : cols) {
    for (std::int64_t i = 0; i < m; ++i) ca[static_cast<std::size_t>(i * k + j)] = 0;
  }
  for (std::int64_t e = 0; e < m * k; ++e) ASSERT_EQ(ca[static_cast<std::size_t>(e)], tr.activations.ca.data<std::int8_t>()[e]) << e;

  // Step 5: the epilogue, int8 part then the outlier product, in the kernel's order.
  const auto* c = tr.c.data<std::int32_t>();
  const auto* scb = q.component("SCB").data<float>();
  const auto* cb = q.component("CB").data<std::int8_t>();
  const Tensor y_ref = tr.y.to(DType::F32);
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t o = 0; o < n; ++o) {
      const float v = quant::llm_int8_dequantize_mm(c[i * n + o], tr.activations.sca.data<float>()[i], scb[o], 0.0f);
      float y = f16_bits_to_f32(f32_to_f16_bits(v));
      float acc = 0.0f;
      for (const std::int64_t j : cols) {
        const float b = f16_bits_to_f32(f32_to_f16_bits(quant::llm_int8_dequantize_value(cb[o * k + j], scb[o])));
        acc = std::fma(px[i * k + j], b, acc);
      }
      y = f16_bits_to_f32(f32_to_f16_bits(acc + y));
      ASSERT_EQ(y, y_ref.data<float>()[i * n + o]) << i << ", " << o;
    }
  }
}

}  // namespace
}  // namespace lowbit
