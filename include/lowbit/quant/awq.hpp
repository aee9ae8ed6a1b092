// AWQ (activation-aware weight quantization): the search math, independent of any model.
//
// For a linear y = W x (W [n, k]) and any s > 0 per input channel, W x = (W diag(s)) (diag(s)^-1 x): AWQ
// quantizes W diag(s) and folds diag(s)^-1 into the op that makes x (an RMSNorm weight, or the output
// rows of the previous linear), so inference costs the same (awq.md section 1). This header holds the
// pieces of the references' per-block procedure (awq.md section 2) that do not need the model; the
// per-layer procedure that runs the model's attention and MLP blocks is model/awq_layer.hpp.
//
//   grid (2.10)   per group of `group_size` consecutive inputs of a row, zero point, NOT widened to 0:
//                   scale = max(max - min, 1e-5) / (2^b - 1)      (stored as f16; see below)
//                   zero  = clamp(-RNE(min / scale), 0, 2^b - 1)
//                   code  = clamp(RNE(w / scale) + zero, 0, 2^b - 1);  w_hat = (code - zero) scale
//   statistics    x_mean[j] = mean over tokens of |x_j|  (2.5)
//                 w_mean[j] = mean over the rows of all scaled linears of |w_rj| / max|w| of its group
//   scale (2.6)   alpha = i / n_grid, i = 0 .. n_grid - 1 (n_grid 20: 0, 0.05, ..., 0.95);
//                   llm-awq (default):       s = x_mean^alpha
//                   AutoAWQ duo scaling:     s = x_mean^alpha / (w_mean^(1 - alpha) + 1e-4)
//                 then s = max(s, 1e-4), s = s / sqrt(max(s) min(s)), and inf/NaN entries -> 1 (AutoAWQ's
//                 guard). The loss of each candidate is the caller's (mean squared output error of the
//                 inspected module with W <- Q(W diag(s)) diag(s)^-1); the first strict minimum wins.
//   clip (2.8)    per (row, group): m0 = max|w|; for i = 0 .. int(max_shrink n_grid) - 1, m = m0 (1 - i /
//                 n_grid), w_c = clamp(w, -m, m), err = mean over sampled tokens of
//                 (sum_{j in group} x_j Q(w_c)_j - sum_{j in group} x_j w_j)^2; the first strict minimum
//                 wins. Tokens: every step-th row, step = max(1, T / n_sample_token) (AutoAWQ's max(1, .)).
//
// Precision: the references run all of this in the model's fp16; lowbit runs it in fp32 with fp64 sums
// (statistics, losses), on fp32 activations of the CPU forward. The grid's scale is rounded to f16 before
// the zero and the codes are derived from it, in the search as in the final tensor, so the pseudo-quantized
// weight the search scores is exactly the one the checkpoint decodes to (AutoAWQ computes it in fp16 too).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "lowbit/core/tensor.hpp"
#include "lowbit/quant/affine.hpp"
#include "lowbit/quant/quantized_tensor.hpp"
#include "lowbit/quant/registry.hpp"

namespace lowbit::quant {

struct AwqConfig {
  int bits = 4;                   // 2, 3 or 4 (8 works too)
  std::int64_t group_size = 128;  // >= 1 (a shorter last group where it does not divide k), -1: the row
  bool duo_scaling = false;       // AutoAWQ's x_mean^a / (w_mean^(1-a) + 1e-4); default: llm-awq's x_mean^a
  bool clip = true;               // the clip search (llm-awq / AutoAWQ apply_clip)
  int n_grid = 20;                // alpha grid and clip shrink steps
  double max_shrink = 0.5;        // clip: factors 1, 1 - 1/n_grid, ... down to > 1 - max_shrink
  std::int64_t n_sample_token = 512;  // clip: tokens sampled from the cached inputs
};

// ---- the grid ------------------------------------------------------------------------------------------

// One group's AWQ grid from its min and max (scale rounded to f16, zero clamped; see the header).
AffineGroupParams awq_group_params(float group_min, float group_max, int bits);

// W_hat = Q(W) in place: W f32 row-major [n, k], each group quantized and dequantized on the AWQ grid.
// `clip_max` empty or [n, groups]: each group is first clamped to [-m, m]. Deterministic, multi-threaded.
void awq_pseudo_quantize(float* w, std::int64_t n, std::int64_t k, int bits, std::int64_t group_size,
                         std::span<const float> clip_max = {});

// The checkpoint form: method "affine" (codes u8, scales f16, zeros u8; params bits, group_size, symmetric
// false, variant "minmax:f16"), holding Q(clamp(W)) on the AWQ grid; dequantize_affine_reference of it
// equals awq_pseudo_quantize of the same input exactly. W: any float dtype [n, k]. Throws InvalidArgument
// for bits outside {2, 3, 4, 8}, a group size of 0 or below -1, a bad clip_max; Numerical naming a NaN/Inf
// weight. Where group_size does not divide k the last group of each row is shorter (k - (groups-1) g
// columns), as affine's; the references refuse such k, so only our own format and the lowbit checkpoint
// hold it (the AutoAWQ writer still refuses it).
QuantizedTensor quantize_awq(const Tensor& weight, int bits, std::int64_t group_size, const Tensor& clip_max = {});

// ---- statistics and scales ------------------------------------------------------------------------------

// w_mean over the rows of all `weights` (each f32 row-major [n_i, k], same k): one value per input channel.
std::vector<float> awq_weight_mean(std::span<const Tensor> weights, std::int64_t group_size);

// The candidate s for one alpha (normalised and guarded as in the header). w_mean may be empty unless duo.
std::vector<float> awq_candidate_scales(std::span<const float> x_mean, std::span<const float> w_mean, double alpha,
                                        bool duo_scaling);

struct AwqScaleSearch {
  std::vector<float> scales;  // the chosen s
  double alpha = 0;
  double loss = 0;            // its loss
  std::vector<double> losses; // every grid point's loss (NaN where the loss was not finite)
};

// The grid search: `loss(s)` for each candidate; non-finite losses are skipped (recorded NaN). Throws
// Numerical if no candidate gave a finite loss (the references raise too).
AwqScaleSearch awq_search_scale(std::span<const float> x_mean, std::span<const float> w_mean, const AwqConfig& config,
                                const std::function<double(std::span<const float> s)>& loss);

// ---- clipping ---------------------------------------------------------------------------------------------

// The clip search for one linear: W f32 [n, k] (already scaled), x f32 [T, k] (already divided by s).
// Returns max_val f32 [n, groups], the clamp bound per group (m0 where no shrink helps). Throws
// InvalidArgument for an empty x or mismatched k.
Tensor awq_search_clip(const Tensor& weight, const Tensor& inputs, const AwqConfig& config);

// Per (row, group) mean squared output error over the clip search's sampled tokens, with W clamped to
// clip_max (empty: unclipped) before quantization: what the clip search minimises, for tests and reports.
double awq_clip_loss(const Tensor& weight, const Tensor& inputs, const AwqConfig& config, const Tensor& clip_max = {});

// ---- folding ------------------------------------------------------------------------------------------

// W[:, j] *= s[j] (W f32 row-major [n, k], s [k]).
void awq_scale_columns(float* w, std::int64_t n, std::int64_t k, std::span<const float> s);
// The last s.size() rows of W (f32 [n, k]) and of the bias (if any, [n]) divided by s.
void awq_divide_rows(float* w, std::int64_t n, std::int64_t k, float* bias, std::span<const float> s);
// x[:, j] /= s[j] for x f32 row-major [rows, k].
void awq_divide_columns(float* x, std::int64_t rows, std::int64_t k, std::span<const float> s);

// Registry entry "awq": defaults bits 4, group 128; `quantize` throws InvalidArgument (AWQ transforms a
// whole decoder layer on calibration text: `lowbit quantize --method awq --calib FILE`); dequantize and
// matmul are affine's.
MethodInfo awq_method_info();

}  // namespace lowbit::quant
