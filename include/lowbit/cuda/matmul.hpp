// Fused dequantize-matmul on a CUDA device: y[m, n] = sum_k x[m, k] * w_hat[n, k] for a quantized weight.
//
// Plain C++ (no CUDA syntax), so an engine includes it from any .cpp; link lowbit::cuda. Two steps:
//
//   PreparedWeight w = prepare(q);          // once, at load: repack q for the kernels, copy to the device
//   matmul(w, x, y, stream);                // per call: x [m, k] fp16|bf16 on the device, y [m, n] same dtype
//
// prepare() turns every QuantizedTensor the library makes or reads (affine from RTN/GPTQ/AWQ checkpoints,
// act-order g_idx included; nf4/fp4 with or without double quantization; hqq; llm_int8) into the layout its
// kernels read (docs/kernels.md, one section a format). The repacking is a host function per format, tested
// on the CPU: repack, decode the repacked layout on the CPU, get dequantize_*_reference() back exactly.
// Act-order weights have their columns reordered once here; matmul() then permutes x on the device in a
// pre-pass, never gathers W per call.
//
// matmul() picks a regime with plan_matmul() (a pure host function, tested on the CPU):
//   Gemv         small m (weight-only formats: m <= 2; 2/3-bit affine and LLM.int8(): m <= 8): each weight
//                byte read once in 16-byte loads; deterministic reduction, no atomics
//   TensorCore   weight-only 3 <= m <= 64: W tiles decoded into shared memory, mma.sync; LLM.int8() m > 8:
//                int8 x int8 -> int32 cuBLASLt GEMM plus the outlier product
//   Dequantize   weight-only m > 64 (2/3 bits: m > 8): the whole weight dequantized to fp16/bf16, then cuBLAS
// (the boundaries and why: docs/kernels.md#regimes, measured on an H100)
// n and k must be multiples of 8 (tensor-parallel shards such as k = 7392 included); anything else is an
// Error naming the shape. Results are bitwise deterministic run to run for a given plan.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "lowbit/core/tensor.hpp"
#include "lowbit/cuda/device.hpp"
#include "lowbit/quant/quantized_tensor.hpp"

namespace lowbit::cuda {

enum class Regime : std::uint8_t { Gemv, TensorCore, Dequantize };
std::string_view name(Regime regime) noexcept;

// The launch choice for one (format, m, n, k) on a device with `sm_count` SMs. Fields a regime does not use
// stay 0. describe() gives "gemv rows_per_block=4 k_splits=1 ..." for logs and benchmark labels.
struct MatmulPlan {
  Regime regime = Regime::Gemv;
  int threads = 0;         // per block
  int rows_per_block = 0;  // output features (n) one block owns
  int m_tile = 0;          // TensorCore: rows of x per block
  int k_splits = 1;        // > 1: k split across blocks, partials reduced in a fixed order
  std::string describe() const;
};

// A weight repacked for the kernels and resident on one device. `buffers` holds device tensors whose names
// and layouts each format documents in docs/kernels.md; `params` are the QuantizedTensor's.
struct PreparedWeight {
  std::string method;  // "affine", "nf4", "fp4", "hqq", "llm_int8"
  quant::QuantParams params;
  std::int64_t n = 0;  // output features
  std::int64_t k = 0;  // input features
  int device = 0;
  std::map<std::string, Tensor> buffers;
  // Bytes of `buffers`: what one matmul must stream from device memory for the weight.
  std::uint64_t weight_bytes() const;
  // Scratch the Dequantize regime reuses (an [n, k] fp16/bf16 buffer), allocated on first use. A
  // PreparedWeight is therefore not safe to use from two streams at once.
  std::shared_ptr<Tensor> scratch = std::make_shared<Tensor>();
};

// Repack q for the kernels and copy it to `device`. Throws Unsupported naming the method and parameters
// when no kernel takes it (the message lists what is built), ShapeMismatch when n or k is not a multiple
// of 8.
PreparedWeight prepare(const quant::QuantizedTensor& q, int device = 0, Stream stream = nullptr);

// The regime and launch shape matmul() uses. Pure: no device calls.
MatmulPlan plan_matmul(std::string_view method, const quant::QuantParams& params, std::int64_t m,
                       std::int64_t n, std::int64_t k, int sm_count);

// y = x w_hat^T. x: [m, k] F16 or BF16, contiguous, on w.device; y: [m, n] of x's dtype, contiguous, on the
// same device (written, never read). Throws ShapeMismatch / DTypeMismatch naming the operand.
void matmul(const PreparedWeight& w, const Tensor& x, Tensor& y, Stream stream = nullptr);

}  // namespace lowbit::cuda
