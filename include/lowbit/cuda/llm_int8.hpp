// LLM.int8() on a CUDA device: the per-call pipeline behind cuda::matmul() for method "llm_int8", its
// scratch layout and its plan, as plain C++ (no CUDA syntax).
//
// Ground truth: quant::trace_llm_int8_matmul() with LlmInt8Backend::Cuda (quant/llm_int8.hpp; spec
// /work/shared/methods/llm-int8.md section 4). The device pipeline computes the same function step by step
// and, for f16 and bf16 x, the same bits: every intermediate is either exact (int32 sums, products of two
// 16-bit values in fp32) or rounded once in the reference's order with explicitly rounded intrinsics.
//
// Prepared buffers (prepare(), docs/kernels.md#llm_int8):
//     "CB"   i8  [n, k]  the quantized weight exactly as quant::quantize_llm_int8 made it, row-major
//     "SCB"  f32 [n]     its per-row absmax
// weight_bytes() = n*k + 4n: one byte per weight (8.004 bits at k = 8192).
//
// Per call, on `stream`, for x [m, k] (f16 or bf16) and threshold t (QuantParams.threshold):
//   0. memset   the outlier-column bit mask (k bits) to 0
//   1. rows     one block per row i: x16 = fp16(x); SCA[i] = max |x16[i, j]| over elements below t16 (the
//               fp16-rounded threshold); each element >= t16 sets bit j of the mask (atomicOr: OR is
//               order-free, so the mask is the same whichever block comes first); CA[i, j] =
//               RNE(x16 * fl32(fl32(1/SCA[i]) * 127)) for elements below t16, 0 for outliers
//   2. compact  one block: the mask's set bits, ascending, into cols[], their count into ncols
//   3. outliers grid-stride over (i, j < ncols): CA[i, cols[j]] = 0 (whole outlier columns, m > 1),
//               sub_a[i, j] = x[i, cols[j]] (x's own dtype, unrounded); and over (j, o):
//               sub_b[j, o] = dtype(fl32(fl32(CB[o, cols[j]] * SCB[o]) * fl32(1/127))), for the first
//               kLlmInt8PanelCols outlier columns (later ones are gathered in step 5 directly)
//   4. gemm     C [m, n] i32 = CA CB^T through cuBLASLt (i8 x i8 -> i32, exact; TN in its column-major
//               terms, k and n multiples of 4 as it requires; both are multiples of 8 here)
//   5. epilogue y[i, o] = dtype(fp16(fmaf(fl32(fl32(C * SCA[i]) * SCB[o]), 1/16129, 0)))  (int8 part)
//               then, when ncols > 0, y = dtype(fl32(sum_j sub_a[i, j] sub_b[j, o] (ascending j, fp32) + y))
// No host synchronisation: ncols stays on the device, so the call can be captured in a CUDA graph.
//
// Regimes (plan_matmul):
//   Gemv        m <= kLlmInt8GemvMaxM (8): steps 0-1, then ONE kernel for the rest: each warp owns 2 output
//               features, streams their CB rows in 8-byte chunks and the m rows of CA (bytes of outlier
//               columns masked to 0 on the fly from the bit mask), dp4a into exact int32, butterfly
//               reduction, then the epilogue of step 5 with the outlier product summed while walking the
//               mask in ascending column order. No C buffer, no cuBLASLt; 3 launches instead of 6.
//               Instances kM in {1, 2, 4, 8} (m rounded up: llm_int8_gemv_bucket) x {f16, bf16}.
//   TensorCore  m > 8: steps 0-5 as above.
// MatmulPlan: threads 256; Gemv: rows_per_block 16, m_tile = the bucket; TensorCore: the epilogue's block
// (rows_per_block 64 features, m_tile 16 rows). Results are bitwise deterministic and, for a given x, the
// same in both regimes (the int32 sums are exact, the rest is the same arithmetic in the same order).
//
// Refuses: k > quant::kLlmInt8MaxK (int32 could overflow), x not 16-byte aligned, activations other than
// f16/bf16 (kLlmInt8Built).
#pragma once

#include <cstddef>
#include <cstdint>

#include "lowbit/core/config.hpp"
#include "lowbit/core/dtype.hpp"
#include "lowbit/cuda/device.hpp"

namespace lowbit::cuda {

// Activation dtypes the kernels are built for (one instance of each kernel per entry).
inline constexpr DType kLlmInt8Built[] = {DType::F16, DType::BF16};

// Outlier columns whose dequantized weight columns step 3 stores as a dense panel (sub_a, sub_b); further
// outlier columns still count, gathered from CB and x inside the epilogue (slower, same result).
inline constexpr std::int64_t kLlmInt8PanelCols = 64;
// cuBLASLt workspace inside the scratch.
inline constexpr std::size_t kLlmInt8WorkspaceBytes = std::size_t{16} << 20;
// m up to this runs the Gemv kernel.
inline constexpr std::int64_t kLlmInt8GemvMaxM = 8;
inline constexpr int kLlmInt8GemvThreads = 256;
inline constexpr int kLlmInt8GemvRowsPerWarp = 2;
inline constexpr int kLlmInt8GemvRowsPerBlock = kLlmInt8GemvThreads / 32 * kLlmInt8GemvRowsPerWarp;  // 16
// The Gemv instance (rows of x it is built for) that serves m: 1, 2, 4 or 8; 0 when m is out of range.
constexpr int llm_int8_gemv_bucket(std::int64_t m) noexcept {
  return m < 1 ? 0 : m == 1 ? 1 : m == 2 ? 2 : m <= 4 ? 4 : m <= kLlmInt8GemvMaxM ? 8 : 0;
}
// Epilogue tile: rows of x and output features per 256-thread block.
inline constexpr int kLlmInt8EpilogueRows = 16;
inline constexpr int kLlmInt8EpilogueCols = 64;
inline constexpr int kLlmInt8EpilogueThreads = 256;

// ---- the outlier-column bit mask, shared by the kernels and the CPU tests ----------------------------------
// Column j is bit j % 32 of u32 word j / 32. The kernels walk x and CA in chunks of 8 columns (16 bytes of
// x, 8 bytes of CA); chunk c (columns 8c .. 8c+7) is the byte at bit llm_int8_mask_shift(c) of word
// llm_int8_mask_word(c), column 8c+e at bit e of that byte.
LOWBIT_HOST_DEVICE constexpr std::int64_t llm_int8_mask_word(std::int64_t chunk) noexcept { return chunk / 4; }
LOWBIT_HOST_DEVICE constexpr int llm_int8_mask_shift(std::int64_t chunk) noexcept {
  return static_cast<int>(8 * (chunk % 4));
}
// The 8 flag bits of chunk c from its mask word.
LOWBIT_HOST_DEVICE constexpr std::uint32_t llm_int8_chunk_bits(std::uint32_t word, std::int64_t chunk) noexcept {
  return (word >> llm_int8_mask_shift(chunk)) & 0xffu;
}
// AND-mask for 8 int8 codes read as one little-endian u64 (byte e = column 8c+e): 0x00 in byte e where
// flag bit e is set (an outlier column, zeroed), 0xff elsewhere.
LOWBIT_HOST_DEVICE constexpr std::uint64_t llm_int8_keep_bytes(std::uint32_t bits) noexcept {
  std::uint64_t keep = ~std::uint64_t{0};
  for (int e = 0; e < 8; ++e) {
    if ((bits >> e) & 1u) keep &= ~(std::uint64_t{0xff} << (8 * e));
  }
  return keep;
}

// Byte offsets of one call's temporaries inside PreparedWeight::scratch (one U8 buffer of `total` bytes;
// every region starts at a multiple of 256 bytes, so vector loads and cuBLASLt's alignment rules hold).
struct LlmInt8ScratchLayout {
  std::size_t mask = 0;       // u32 [ceil(k / 32)]   outlier-column bits
  std::size_t ncols = 0;      // i32 [1]              number of outlier columns
  std::size_t cols = 0;       // i32 [k]              outlier columns, ascending
  std::size_t sca = 0;        // f32 [m]              row absmax over inliers
  std::size_t ca = 0;         // i8  [m, k]           quantized activations
  std::size_t c = 0;          // i32 [m, n]           CA CB^T
  std::size_t sub_a = 0;      // f32 [m, kLlmInt8PanelCols]
  std::size_t sub_b = 0;      // f32 [kLlmInt8PanelCols, n]
  std::size_t workspace = 0;  // kLlmInt8WorkspaceBytes for cuBLASLt
  std::size_t total = 0;
};
LlmInt8ScratchLayout llm_int8_scratch_layout(std::int64_t m, std::int64_t n, std::int64_t k);

// The threshold as the comparison sees it: fl16(fl32(threshold)) (PyTorch compares an fp16 tensor with a
// Python float in fp16). May be Inf, which only Inf reaches. Throws InvalidArgument for a negative or
// non-finite threshold.
float llm_int8_threshold16(double threshold);

namespace detail {

// Launchers of kernels/llm_int8.cu (device pointers; `act` is F16 or BF16). Each checks its launch.
struct LlmInt8Pointers {
  const void* x = nullptr;            // [m, k] act
  const std::int8_t* cb = nullptr;    // [n, k]
  const float* scb = nullptr;         // [n]
  std::uint32_t* mask = nullptr;
  std::int32_t* ncols = nullptr;
  std::int32_t* cols = nullptr;
  float* sca = nullptr;
  std::int8_t* ca = nullptr;
  const std::int32_t* c = nullptr;    // [m, n]
  float* sub_a = nullptr;
  float* sub_b = nullptr;
  void* y = nullptr;                  // [m, n] act
  std::int64_t m = 0, n = 0, k = 0;
  DType act = DType::F16;
  float threshold16 = 0.0f;           // llm_int8_threshold16
  bool decompose = false;             // threshold > 0
  int sm_count = 1;
};
// Steps 0-3 of the pipeline (before the GEMM).
void launch_llm_int8_prepare_x(const LlmInt8Pointers& p, Stream stream);
// Regime::Gemv: steps 0-1 and the fused GEMV + epilogue (uses mask, sca, ca; not cols, c, sub_a, sub_b).
void launch_llm_int8_gemv(const LlmInt8Pointers& p, Stream stream);
// Step 5 (after the GEMM).
void launch_llm_int8_epilogue(const LlmInt8Pointers& p, Stream stream);

}  // namespace detail
}  // namespace lowbit::cuda
