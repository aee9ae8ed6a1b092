#include "lowbit/quant/awq.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "lowbit/core/error.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/quant/common.hpp"

namespace lowbit::quant {
namespace {

bool valid_bits(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }

// The groups of one row: `count` runs of g columns, the last one shorter where g does not divide k (the
// references reshape W into whole groups and refuse such k; we follow affine's convention instead, so that
// g128 works on K = 288: groups of 128, 128 and 32).
struct Groups {
  std::int64_t g = 0, count = 0, k = 0;
  std::int64_t len(std::int64_t gi) const { return std::min(g, k - gi * g); }
};

Groups checked_groups(std::int64_t k, std::int64_t group_size, std::string_view operation) {
  const std::int64_t g = group_size == -1 ? k : group_size;
  LOWBIT_CHECK(g >= 1 && k >= 1, ErrorCode::InvalidArgument,
               "{}: group_size = {} must be -1 or positive (k = {})", operation, group_size, k);
  return Groups{g, (k + g - 1) / g, k};
}

// Quantizes and dequantizes one group in place (clamped to [-m, m] first when m >= 0).
void pseudo_quantize_group(float* w, std::int64_t len, int bits, float m) {
  if (m >= 0.0f) {
    for (std::int64_t j = 0; j < len; ++j) w[j] = std::clamp(w[j], -m, m);
  }
  float lo = w[0], hi = w[0];
  for (std::int64_t j = 1; j < len; ++j) {
    lo = std::min(lo, w[j]);
    hi = std::max(hi, w[j]);
  }
  const AffineGroupParams p = awq_group_params(lo, hi, bits);
  for (std::int64_t j = 0; j < len; ++j) {
    w[j] = affine_dequantize_value(affine_quantize_value(w[j], p, bits), p.scale, p.zero);
  }
}

const float* contiguous_f32(const Tensor& t, Tensor& holder, std::string_view operation) {
  holder = float_matrix(t, operation);
  return holder.data<float>();
}

}  // namespace

AffineGroupParams awq_group_params(float group_min, float group_max, int bits) {
  const float maxq = static_cast<float>((1 << bits) - 1);
  // pseudo_quantize_tensor: scales = (max - min).clamp(min=1e-5) / max_int; zeros = (-round(min / scales))
  // .clamp(0, max_int). The scale is the f16 the checkpoint stores (AutoAWQ computes in fp16).
  const float range = std::max(group_max - group_min, 1e-5f);
  const float scale = f16_bits_to_f32(f32_to_f16_bits(range / maxq));
  AffineGroupParams p;
  p.scale = scale;
  p.zero = static_cast<int>(std::clamp(-affine_round(group_min / scale), 0.0f, maxq));
  return p;
}

void awq_pseudo_quantize(float* w, std::int64_t n, std::int64_t k, int bits, std::int64_t group_size,
                         std::span<const float> clip_max) {
  const Groups gs = checked_groups(k, group_size, "awq_pseudo_quantize");
  const std::int64_t g = gs.g, groups = gs.count;
  LOWBIT_CHECK(clip_max.empty() || static_cast<std::int64_t>(clip_max.size()) == n * groups,
               ErrorCode::ShapeMismatch, "awq_pseudo_quantize: clip_max has {} values, W [{}, {}] has {} groups",
               clip_max.size(), n, k, n * groups);
  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 15) / std::max<std::int64_t>(k, 1));
  parallel_for(n, grain, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      for (std::int64_t gi = 0; gi < groups; ++gi) {
        const float m = clip_max.empty() ? -1.0f : clip_max[static_cast<std::size_t>(r * groups + gi)];
        pseudo_quantize_group(w + r * k + gi * g, gs.len(gi), bits, m);
      }
    }
  });
}

QuantizedTensor quantize_awq(const Tensor& weight, int bits, std::int64_t group_size, const Tensor& clip_max) {
  constexpr std::string_view kOp = "quantize_awq";
  LOWBIT_CHECK(valid_bits(bits), ErrorCode::InvalidArgument, "{}: bits = {} is not one of 2, 3, 4, 8", kOp, bits);
  Tensor holder;
  const float* w = contiguous_f32(weight, holder, kOp);
  const std::int64_t n = holder.size(0), k = holder.size(1);
  const Groups gs = checked_groups(k, group_size, kOp);
  const std::int64_t g = gs.g, groups = gs.count;
  Tensor clip;
  if (clip_max.defined()) {
    LOWBIT_CHECK(clip_max.shape() == (Shape{n, groups}), ErrorCode::ShapeMismatch,
                 "{}: clip_max is {} but W [{}, {}] has [{}, {}] groups", kOp, clip_max.describe(), n, k, n, groups);
    clip = clip_max.to(DType::F32).contiguous();
    for (std::int64_t i = 0; i < clip.numel(); ++i) {
      const float m = clip.data<float>()[i];
      LOWBIT_CHECK(std::isfinite(m) && m >= 0.0f, ErrorCode::InvalidArgument, "{}: clip_max[{}] = {} is not finite and >= 0",
                   kOp, i, m);
    }
  }
  const float* cm = clip.defined() ? clip.data<float>() : nullptr;
  Tensor codes = Tensor::empty({n, k}, DType::U8);
  Tensor scales = Tensor::empty({n, groups}, DType::F16);
  Tensor zeros = Tensor::empty({n, groups}, DType::U8);
  auto* code_data = codes.data<std::uint8_t>();
  auto* scale_data = scales.data<Half>();
  auto* zero_data = zeros.data<std::uint8_t>();
  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 15) / std::max<std::int64_t>(k, 1));
  parallel_for(n, grain, [&](std::int64_t r0, std::int64_t r1) {
    std::vector<float> buffer(static_cast<std::size_t>(g));
    for (std::int64_t r = r0; r < r1; ++r) {
      for (std::int64_t gi = 0; gi < groups; ++gi) {
        const float* src = w + r * k + gi * g;
        const std::int64_t len = gs.len(gi);
        float lo = std::numeric_limits<float>::infinity(), hi = -lo;
        for (std::int64_t j = 0; j < len; ++j) {
          float v = src[j];
          if (cm != nullptr) v = std::clamp(v, -cm[r * groups + gi], cm[r * groups + gi]);
          buffer[static_cast<std::size_t>(j)] = v;
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
        const AffineGroupParams p = awq_group_params(lo, hi, bits);
        scale_data[r * groups + gi] = Half::from_float(p.scale);  // exact: p.scale is an f16 value
        zero_data[r * groups + gi] = static_cast<std::uint8_t>(p.zero);
        for (std::int64_t j = 0; j < len; ++j) {
          code_data[r * k + gi * g + j] =
              static_cast<std::uint8_t>(affine_quantize_value(buffer[static_cast<std::size_t>(j)], p, bits));
        }
      }
    }
  });
  AffineConfig config;
  config.bits = bits;
  config.group_size = group_size;
  QuantizedTensor q;
  q.method = "affine";
  q.shape = Shape{n, k};
  q.dtype = weight.dtype();
  q.params = affine_params_from_config(config);
  q.components.emplace("codes", std::move(codes));
  q.components.emplace("scales", std::move(scales));
  q.components.emplace("zeros", std::move(zeros));
  return q;
}

std::vector<float> awq_weight_mean(std::span<const Tensor> weights, std::int64_t group_size) {
  LOWBIT_CHECK(!weights.empty(), ErrorCode::InvalidArgument, "awq_weight_mean: no weight given");
  const std::int64_t k = weights[0].size(1);
  const std::int64_t g = checked_groups(k, group_size, "awq_weight_mean").g;
  std::vector<double> sum(static_cast<std::size_t>(k), 0.0);
  std::int64_t rows = 0;
  for (const Tensor& t : weights) {
    LOWBIT_CHECK(t.rank() == 2 && t.size(1) == k && t.dtype() == DType::F32 && t.is_contiguous(),
                 ErrorCode::ShapeMismatch, "awq_weight_mean: weights must be contiguous f32 [n, {}], got {}", k,
                 t.describe());
    const float* w = t.data<float>();
    for (std::int64_t r = 0; r < t.size(0); ++r) {
      for (std::int64_t c0 = 0; c0 < k; c0 += g) {
        const std::int64_t len = std::min(g, k - c0);
        float m = 0.0f;
        for (std::int64_t j = 0; j < len; ++j) m = std::max(m, std::abs(w[r * k + c0 + j]));
        const double denom = static_cast<double>(m) + 1e-6;  // AutoAWQ: / (max + 1e-6)
        for (std::int64_t j = 0; j < len; ++j) sum[static_cast<std::size_t>(c0 + j)] += std::abs(w[r * k + c0 + j]) / denom;
      }
    }
    rows += t.size(0);
  }
  std::vector<float> out(static_cast<std::size_t>(k));
  for (std::int64_t j = 0; j < k; ++j) out[static_cast<std::size_t>(j)] = static_cast<float>(sum[static_cast<std::size_t>(j)] / static_cast<double>(rows));
  return out;
}

std::vector<float> awq_candidate_scales(std::span<const float> x_mean, std::span<const float> w_mean, double alpha,
                                        bool duo_scaling) {
  LOWBIT_CHECK(!duo_scaling || w_mean.size() == x_mean.size(), ErrorCode::ShapeMismatch,
               "awq_candidate_scales: duo scaling needs w_mean for each of the {} channels, got {}", x_mean.size(),
               w_mean.size());
  const std::size_t k = x_mean.size();
  std::vector<float> s(k);
  const auto a = static_cast<float>(alpha);
  float lo = std::numeric_limits<float>::infinity(), hi = 0.0f;
  for (std::size_t j = 0; j < k; ++j) {
    float v = std::pow(x_mean[j], a);
    if (duo_scaling) v = v / (std::pow(w_mean[j], 1.0f - a) + 1e-4f);
    v = std::max(v, 1e-4f);  // clamp(min=1e-4); NaN stays NaN here and is replaced below
    s[j] = v;
    if (std::isfinite(v)) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  const float norm = std::sqrt(hi * lo);
  for (float& v : s) {
    v = v / norm;
    if (!std::isfinite(v) || v <= 0.0f) v = 1.0f;  // AutoAWQ: inf and NaN scales -> 1
  }
  return s;
}

AwqScaleSearch awq_search_scale(std::span<const float> x_mean, std::span<const float> w_mean, const AwqConfig& config,
                                const std::function<double(std::span<const float> s)>& loss) {
  LOWBIT_CHECK(config.n_grid >= 1, ErrorCode::InvalidArgument, "awq: n_grid = {} must be at least 1", config.n_grid);
  AwqScaleSearch out;
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < config.n_grid; ++i) {
    const double alpha = static_cast<double>(i) / config.n_grid;
    std::vector<float> s = awq_candidate_scales(x_mean, w_mean, alpha, config.duo_scaling);
    const double l = loss(s);
    out.losses.push_back(std::isfinite(l) ? l : std::numeric_limits<double>::quiet_NaN());
    if (std::isfinite(l) && l < best) {
      best = l;
      out.alpha = alpha;
      out.loss = l;
      out.scales = std::move(s);
    }
  }
  LOWBIT_CHECK(!out.scales.empty(), ErrorCode::Numerical,
               "awq: no scale candidate of the {} gave a finite loss (non-finite module outputs)", config.n_grid);
  return out;
}

namespace {

struct ClipProblem {
  std::int64_t n = 0, k = 0, g = 0, groups = 0;
  std::int64_t len(std::int64_t gi) const { return std::min(g, k - gi * g); }
  std::vector<float> x;  // sampled tokens [ts, k]
  std::int64_t ts = 0;
  const float* w = nullptr;
  // Per column group gi, the Gram matrix of the sampled tokens' slice, G = sum_t x_t x_t^T (len x len, fp64,
  // row-major), at gram_offset[gi]. mean_t (x_t . d)^2 = d^T G d / ts for any d: the error of a candidate
  // costs len^2 instead of 2 ts len, and G is shared by every row and shrink step.
  std::vector<double> gram;
  std::vector<std::size_t> gram_offset;
};

ClipProblem clip_problem(const Tensor& weight, const Tensor& inputs, const AwqConfig& config, Tensor& wholder) {
  ClipProblem p;
  p.w = contiguous_f32(weight, wholder, "awq_search_clip");
  p.n = wholder.size(0);
  p.k = wholder.size(1);
  const Groups gs = checked_groups(p.k, config.group_size, "awq_search_clip");
  p.g = gs.g;
  p.groups = gs.count;
  LOWBIT_CHECK(inputs.rank() == 2 && inputs.size(1) == p.k && inputs.size(0) >= 1, ErrorCode::InvalidArgument,
               "awq_search_clip: inputs must be [tokens >= 1, {}], got {}", p.k, inputs.describe());
  const Tensor x = inputs.to(DType::F32).contiguous();
  const std::int64_t t = x.size(0);
  const std::int64_t step = std::max<std::int64_t>(1, t / std::max<std::int64_t>(1, config.n_sample_token));
  // input_feat[:, 0::step]: tokens 0, step, 2 step, ...
  for (std::int64_t r = 0; r < t; r += step) {
    p.x.insert(p.x.end(), x.data<float>() + r * p.k, x.data<float>() + (r + 1) * p.k);
    ++p.ts;
  }
  p.gram_offset.resize(static_cast<std::size_t>(p.groups));
  std::size_t total = 0;
  for (std::int64_t gi = 0; gi < p.groups; ++gi) {
    p.gram_offset[static_cast<std::size_t>(gi)] = total;
    total += static_cast<std::size_t>(p.len(gi) * p.len(gi));
  }
  p.gram.assign(total, 0.0);
  parallel_for(p.groups, 1, [&](std::int64_t g0, std::int64_t g1) {
    std::vector<double> xd;
    for (std::int64_t gi = g0; gi < g1; ++gi) {
      const std::int64_t c0 = gi * p.g, len = p.len(gi);
      double* gram = p.gram.data() + p.gram_offset[static_cast<std::size_t>(gi)];
      xd.resize(static_cast<std::size_t>(len));
      for (std::int64_t tok = 0; tok < p.ts; ++tok) {
        const float* xr = p.x.data() + tok * p.k + c0;
        for (std::int64_t j = 0; j < len; ++j) xd[static_cast<std::size_t>(j)] = xr[j];
        for (std::int64_t i = 0; i < len; ++i) {
          const double xi = xd[static_cast<std::size_t>(i)];
          double* row = gram + i * len;
          for (std::int64_t j = 0; j <= i; ++j) row[j] += xi * xd[static_cast<std::size_t>(j)];
        }
      }
      for (std::int64_t i = 0; i < len; ++i)
        for (std::int64_t j = i + 1; j < len; ++j) gram[i * len + j] = gram[j * len + i];
    }
  });
  return p;
}

// Mean over sampled tokens of (x . (q - w))^2 for one group (w the original group, q its candidate), as
// d^T G d / ts in fp64. The references sum x.q and x.w separately in fp32 and subtract; this is the same
// quantity without that rounding, so a shrink step that ties with its neighbour to within fp32 error may be
// chosen differently (never one with a larger error).
double group_error(const ClipProblem& p, std::int64_t gi, const float* w, const float* q, std::vector<double>& d) {
  const std::int64_t len = p.len(gi);
  const double* gram = p.gram.data() + p.gram_offset[static_cast<std::size_t>(gi)];
  d.resize(static_cast<std::size_t>(len));
  for (std::int64_t j = 0; j < len; ++j) {
    d[static_cast<std::size_t>(j)] = static_cast<double>(q[j]) - static_cast<double>(w[j]);
  }
  double err = 0;
  for (std::int64_t i = 0; i < len; ++i) {
    const double di = d[static_cast<std::size_t>(i)];
    if (di == 0.0) continue;
    const double* row = gram + i * len;
    double acc = 0;
    for (std::int64_t j = 0; j < len; ++j) acc += row[j] * d[static_cast<std::size_t>(j)];
    err += di * acc;
  }
  return err / static_cast<double>(p.ts);
}

}  // namespace

Tensor awq_search_clip(const Tensor& weight, const Tensor& inputs, const AwqConfig& config) {
  Tensor wholder;
  const ClipProblem p = clip_problem(weight, inputs, config, wholder);
  const int steps = static_cast<int>(config.max_shrink * config.n_grid);
  Tensor out = Tensor::empty({p.n, p.groups}, DType::F32);
  float* max_val = out.data<float>();
  parallel_for(p.n * p.groups, 1, [&](std::int64_t i0, std::int64_t i1) {
    std::vector<float> q(static_cast<std::size_t>(p.g));
    std::vector<double> d;
    for (std::int64_t i = i0; i < i1; ++i) {
      const std::int64_t r = i / p.groups, c0 = (i % p.groups) * p.g, len = p.len(i % p.groups);
      const float* w = p.w + r * p.k + c0;
      float m0 = 0.0f;
      for (std::int64_t j = 0; j < len; ++j) m0 = std::max(m0, std::abs(w[j]));
      double best = 1e9;  // the references' initial min_errs
      float best_m = m0;
      for (int s = 0; s < steps; ++s) {
        const float m = m0 * (1.0f - static_cast<float>(s) / static_cast<float>(config.n_grid));
        std::copy(w, w + len, q.begin());
        pseudo_quantize_group(q.data(), len, config.bits, m);
        const double err = group_error(p, i % p.groups, w, q.data(), d);
        if (err < best) {
          best = err;
          best_m = m;
        }
      }
      max_val[i] = best_m;
    }
  });
  return out;
}

double awq_clip_loss(const Tensor& weight, const Tensor& inputs, const AwqConfig& config, const Tensor& clip_max) {
  Tensor wholder;
  const ClipProblem p = clip_problem(weight, inputs, config, wholder);
  const Tensor clip = clip_max.defined() ? clip_max.to(DType::F32).contiguous() : Tensor{};
  double total = 0;
  std::vector<float> q(static_cast<std::size_t>(p.g));
  std::vector<double> d;
  for (std::int64_t i = 0; i < p.n * p.groups; ++i) {
    const std::int64_t r = i / p.groups, c0 = (i % p.groups) * p.g, len = p.len(i % p.groups);
    const float* w = p.w + r * p.k + c0;
    std::copy(w, w + len, q.begin());
    pseudo_quantize_group(q.data(), len, config.bits, clip.defined() ? clip.data<float>()[i] : -1.0f);
    total += group_error(p, i % p.groups, w, q.data(), d);
  }
  return total / static_cast<double>(p.n * p.groups);
}

void awq_scale_columns(float* w, std::int64_t n, std::int64_t k, std::span<const float> s) {
  LOWBIT_CHECK(static_cast<std::int64_t>(s.size()) == k, ErrorCode::ShapeMismatch,
               "awq_scale_columns: {} scales for k = {}", s.size(), k);
  for (std::int64_t r = 0; r < n; ++r)
    for (std::int64_t j = 0; j < k; ++j) w[r * k + j] *= s[static_cast<std::size_t>(j)];
}

void awq_divide_rows(float* w, std::int64_t n, std::int64_t k, float* bias, std::span<const float> s) {
  const auto m = static_cast<std::int64_t>(s.size());
  LOWBIT_CHECK(m <= n, ErrorCode::ShapeMismatch, "awq_divide_rows: {} scales for n = {} rows", m, n);
  for (std::int64_t i = 0; i < m; ++i) {
    const std::int64_t r = n - m + i;
    const float v = s[static_cast<std::size_t>(i)];
    for (std::int64_t j = 0; j < k; ++j) w[r * k + j] /= v;
    if (bias != nullptr) bias[r] /= v;
  }
}

void awq_divide_columns(float* x, std::int64_t rows, std::int64_t k, std::span<const float> s) {
  LOWBIT_CHECK(static_cast<std::int64_t>(s.size()) == k, ErrorCode::ShapeMismatch,
               "awq_divide_columns: {} scales for k = {}", s.size(), k);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < k; ++j) x[r * k + j] /= s[static_cast<std::size_t>(j)];
}

MethodInfo awq_method_info() {
  MethodInfo m;
  m.name = "awq";
  m.layer_level = true;
  m.summary =
      "AWQ (llm-awq / AutoAWQ): per-channel scales from activation statistics folded into the previous op, "
      "clip search, zero-point groups; needs --calib (default 4 bits, group 128; --duo-scaling, --no-clip)";
  AffineConfig defaults;
  defaults.bits = 4;
  defaults.group_size = 128;
  m.defaults = affine_params_from_config(defaults);
  m.quantize = [](const Tensor&, const QuantParams&) -> QuantizedTensor {
    LOWBIT_THROW(ErrorCode::InvalidArgument,
                 "awq: needs calibration text (it scales and clips whole decoder layers from their activations); "
                 "run `lowbit quantize --method awq --calib FILE`, or use 'rtn' for round to nearest without it");
  };
  m.dequantize = [](const QuantizedTensor& q) { return dequantize_affine_reference(q); };
  m.matmul = [](const QuantizedTensor& q, const Tensor& x) { return matmul_affine_reference(q, x); };
  return m;
}

}  // namespace lowbit::quant
