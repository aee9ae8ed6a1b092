// GPTQ (Frantar et al. 2022; reference IST-DASLab/gptq, gptq.py GPTQ.fasterquant + quant.py Quantizer):
// quantizes W [n, k] onto the affine min-max grid column by column, moving the columns not yet quantized
// to compensate each column's error through the layer's Hessian H = (2/N) sum_t x_t x_t^T [k, k]. It
// minimises the proxy loss
//
//     L(W_hat) = tr((W - W_hat) H (W - W_hat)^T) = sum over rows r of (w_r - w_hat_r) H (w_r - w_hat_r)^T,
//
// the squared output error ||W X - W_hat X||^2 (up to the factor 2/N), greedily. Spec: shared/methods/gptq.md
// (sections 2.2 and 2.3 are followed step by step; the numbers below are its steps).
//
// The solve, in the reference's order:
//   1. per-row grid from the whole of W (used when group_size = -1), before step 2;
//   2. dead columns (H_ii == 0): H_ii = 1, W[:, i] = 0 (their code is the zero point);
//   3. static groups: every group's grid from W after step 2, before any update;
//   4. act-order: columns in order of decreasing diag(H) (a stable sort; torch's is not, see below);
//   5. damping: H_ii += damp * mean(diag H) (after 2 and 4);
//   6. U = the upper Cholesky factor of H^-1 (U^T U = H^-1), here as U = J chol_lower(J H J)^-1 J (J reverses
//      the index order), computed in fp64 (or fp32: factor_dtype) and rounded to fp32 one block of rows at a
//      time;
//   7. blocks of block_size columns; inside a block, column by column (all rows at once, rows being
//      independent): a group starting at column c takes its grid from W[:, c : c+g] as it stood when the
//      block began (the reference reads its outer W, which lacks the updates made inside the current block:
//      gptq.md section 6.5), w_hat = scale * (code - zero) with the fp32 scale, e = (w - w_hat) / U_cc,
//      the rest of the block -= e U[c, c+1 : block end]; after the block, the columns right of it
//      -= E U[block, right] (the lazy batch update, one GEMM).
//
// Output: a QuantizedTensor of method "affine" (quant/affine.hpp): codes u8 [n, k] in the ORIGINAL column
// order, scales [n, groups] and zeros u8 [n, groups], groups = ceil(k / group_size) (1 for -1), and for
// act-order with dynamic groups g_idx i32 [k]: g_idx[c] = rank(c) / group_size, rank(c) = c's position in
// the processing order (gptq.md section 2.3, AutoGPTQ's g_idx), so that scale row j belongs to the columns
// processed j-th. Static groups (and no act-order) keep groups contiguous and store no g_idx.
//
// Scales: codes, zeros and the error propagated to the other columns all use the fp32 scale, as the
// reference does during its solve. The stored scales are fp16 by default (scale_dtype), as GPTQ
// checkpoints hold them; dequantizing then gives fp16(scale) * (code - zero), which is what AutoGPTQ,
// vLLM and every GPTQ kernel compute from the checkpoint. With scale_dtype = F32 the dequantized weight
// equals the reference's fp32 Q (before its cast to the layer dtype) bit for bit wherever the codes agree.
//
// Agreement with the reference (tests/data/gptq, made by IST-DASLab's own fasterquant on the CPU): the
// reference factors H in fp32 and its result carries fp32 rounding error of order cond(H) * 2^-24; we factor
// in fp64 by default, so codes agree up to the rare values the two roundings put on different sides of a
// rounding boundary (after which the rows' later columns may differ too); docs/methods/gptq.md has the numbers.
// Ties in diag(H) (dead columns, duplicated channels) are broken by column index; torch's argsort leaves
// their order unspecified, which can move a tied column to another act-order group.
//
// Not positive definite (gptq.md section 4): the reference aborts; we follow GPTQModel's schedule: damp,
// damp + damp_auto_increment, ... while below 1; then up to 6 floors f = 1e-6 max|diag| 10^(a-1) with
// diag <- max(diag + f, f), each rerunning the damp schedule; then the fallback: no propagation (U = I),
// i.e. round-to-nearest on GPTQ's grid and grouping. The result says which happened (damp_used,
// diag_floor, fallback, fallback_reason); nothing is printed. A failed attempt costs up to one Cholesky
// (k^3/3 flops) each; a positive semi-definite H (any X X^T) never fails in fp64 at damp > 0.
//
// Memory: besides W's fp32 working copy [n, k] and the codes, one [k, k] matrix (the factor, fp64 or fp32) and
// O(block_size * k) of panels; H itself is only read. Threads: lowbit::parallel_for over row ranges and
// tiles; the result is the same for any thread count (every value is accumulated in an order fixed by the
// shapes). SIMD kernels (AVX2+FMA, AVX-512) are picked at run time; a CPU without them runs plain loops,
// whose results may differ in the last bits (no fused multiply-add).
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/core/tensor.hpp"
#include "lowbit/quant/quantized_tensor.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::quant {

// Defaults: the reference's column of gptq.md section 3 (IST-DASLab llama.py/opt.py and fasterquant's
// signature): asymmetric, one group per row, no act-order, damp 0.01, blocks of 128, no MSE search; bits 4
// (the reference's CLI default is 16 = no quantization). The reference has no auto-increment; 0.01 is
// GPTQModel HEAD's, the value gptq.md section 4 asks for.
struct GptqConfig {
  int bits = 4;                       // 2, 3, 4 or 8
  std::int64_t group_size = -1;       // >= 1 columns per group (the last may be shorter), or -1: one per row
  bool symmetric = false;             // quant.py sym: zero fixed at 2^(bits-1) (affine.hpp, AffineMode)
  bool act_order = false;             // desc_act: process columns by decreasing diag(H)
  bool static_groups = false;         // group grids fixed from W before any update (with act_order: in
                                      // original column order, so the checkpoint needs no g_idx)
  double damp = 0.01;                 // percdamp: fraction of mean(diag H) added to the diagonal, [0, 1)
  double damp_auto_increment = 0.01;  // added to damp after each failed Cholesky; 0: no schedule, go straight
                                      // to the diagonal floors and the fallback
  std::int64_t block_size = 128;      // columns per lazy-batch block, >= 1
  // quant.py's grid search (mse=True): shrink factors p = 1, 1 - 1/grid, ... (floor(maxshrink * grid)
  // of them); keeps the first p whose sum over the group of |w_hat - w|^norm is strictly smallest. norm is
  // applied in fp32 (torch's pow on fp32 tensors); maxshrink is a double so that floor(maxshrink * grid) is
  // Python's.
  bool mse = false;
  double mse_norm = 2.4;
  int mse_grid = 100;
  double mse_maxshrink = 0.8;
  DType scale_dtype = DType::F16;  // stored scales: F16 (checkpoints) or F32 (see above)
  // Precision of the factor U (steps 5-6). F64: one fp64 [k, k] buffer, accurate for any H the damping makes
  // positive definite. F32: the reference's precision, half the memory, the factor about twice as fast; a Cholesky
  // that fails in fp32 goes through the damp schedule (the reference would abort there).
  DType factor_dtype = DType::F64;
};

struct GptqResult {
  QuantizedTensor q;  // method "affine"
  // The reference's `error`: sum over rows and columns of (w - w_hat)^2 / (2 U_cc^2) with the fp32-scale
  // w_hat, accumulated in fp64. Equals 1/2 tr((W' - Q) H_d (W' - Q)^T) with W' = W after dead-column
  // zeroing and H_d the damped Hessian (gptq.md section 1), so it is NOT gptq_proxy_loss() (no damping,
  // no 1/2), which costs another n k^2 multiply-adds.
  double loss = 0;
  double damp_used = 0;           // the fraction of mean(diag H) finally added (0 after a fallback)
  double diag_floor = 0;          // the diagonal floor f applied (0: none was needed)
  int factor_attempts = 0;        // Cholesky factorizations tried
  std::int64_t dead_columns = 0;  // columns with H_ii == 0
  bool fallback = false;          // no factor was found: round-to-nearest on GPTQ's grid (U = I)
  std::string fallback_reason;    // why, naming the damps tried; empty without fallback
};

// weight: f32/f16/bf16/f64 [n, k]. hessian: f64 or f32 [k, k], symmetric (which triangle an element is read
// from depends on the act-order permutation).
// Throws InvalidArgument for a bad config (naming the value and the valid set), ShapeMismatch for an H
// that is not [k, k], DTypeMismatch for non-float inputs, Numerical naming the first NaN/Inf element of W
// or H, or a scale that does not fit fp16 (use scale_dtype F32); OutOfMemory naming what did not fit.
GptqResult quantize_gptq(const Tensor& weight, const Tensor& hessian, const GptqConfig& config);

// tr((W - W_hat) H (W - W_hat)^T) in fp64: weight and w_hat [n, k] (any float dtype), hessian [k, k]
// (f64 or f32; any H, the formula needs no symmetry). n k^2 multiply-adds, multi-threaded, memory
// O(256 k + 64 k per thread) besides the inputs.
double gptq_proxy_loss(const Tensor& weight, const Tensor& hessian, const Tensor& w_hat);

// QuantParams (bits, group_size -1 or >= 1, symmetric, variant "minmax:f16" | "minmax:f32" | "") and the
// registry's SolverOptions -> GptqConfig. Throws InvalidArgument for group_size 0 (per tensor) or an
// absmax variant, which GPTQ's grid does not have.
GptqConfig gptq_config_from(const QuantParams& params, const SolverOptions& options);
// The encoding a config produces (what QuantizedTensor::params holds): affine's, variant "minmax:<dtype>".
QuantParams gptq_params_from_config(const GptqConfig& config);

// Registry entry "gptq": needs.hessian; quantize() throws InvalidArgument (calibration needed);
// quantize_calibrated() runs quantize_gptq on calibration.hessian(); dequantize/matmul are affine's.
MethodInfo gptq_method_info();

}  // namespace lowbit::quant
