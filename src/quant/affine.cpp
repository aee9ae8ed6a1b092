#include "lowbit/quant/affine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "lowbit/core/half.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/quant/common.hpp"
#include "weight_rows.hpp"

namespace lowbit::quant {

namespace {

constexpr std::string_view kQuantize = "quantize_affine";

bool valid_bits(int bits) {
  return std::find(std::begin(kAffineBits), std::end(kAffineBits), bits) != std::end(kAffineBits);
}

void check_config(const AffineConfig& c) {
  LOWBIT_CHECK(valid_bits(c.bits), ErrorCode::InvalidArgument, "{}: bits = {} is not supported; valid: 2, 3, 4, 8",
               kQuantize, c.bits);
  LOWBIT_CHECK(c.group_size >= -1, ErrorCode::InvalidArgument,
               "{}: group_size = {} is not valid; use >= 1 (elements of a row per group), -1 (one group per "
               "row) or 0 (one group for the whole tensor)",
               kQuantize, c.group_size);
  LOWBIT_CHECK(c.clip_ratio > 0.0f && c.clip_ratio <= 1.0f, ErrorCode::InvalidArgument,
               "{}: clip_ratio = {} is outside (0, 1]", kQuantize, c.clip_ratio);
  LOWBIT_CHECK(c.scale_dtype == DType::F16 || c.scale_dtype == DType::F32, ErrorCode::InvalidArgument,
               "{}: scale_dtype {} is not supported; valid: f16, f32", kQuantize, dtype_name(c.scale_dtype));
}

// Everything one row task needs, fixed for the whole tensor.
struct Plan {
  int bits = 4;
  AffineMode mode = AffineMode::Asymmetric;
  float shrink = 1.0f;
  std::int64_t n = 0, k = 0;
  std::int64_t group_size = 0;  // elements per group along the row (k for per-row and per-tensor)
  std::int64_t groups = 1;      // per row
  const float* clip = nullptr;  // [n, groups] or [1, 1] (per tensor), f32
  bool per_tensor = false;
};

AffineGroupParams group_params(const Plan& p, float lo, float hi, float absmax) {
  if (p.mode == AffineMode::Absmax) return affine_params_absmax(absmax, p.bits, p.shrink);
  return affine_params_minmax(lo, hi, p.bits, p.mode == AffineMode::Symmetric, p.shrink);
}

// Range of one group: min, max, max |w| (what clamping with clip_max left).
struct Range {
  float lo, hi, absmax;
};
Range group_range(const float* w, std::int64_t len) {
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  std::int64_t i = 0;
#if defined(__SSE2__)
  // Four lanes each; min and max are exact, so the order of the reduction does not matter.
  __m128 vlo = _mm_set1_ps(lo), vhi = _mm_set1_ps(hi);
  for (; i + 4 <= len; i += 4) {
    const __m128 v = _mm_loadu_ps(w + i);
    vlo = _mm_min_ps(vlo, v);
    vhi = _mm_max_ps(vhi, v);
  }
  alignas(16) float l[4], h[4];
  _mm_store_ps(l, vlo);
  _mm_store_ps(h, vhi);
  for (int j = 0; j < 4; ++j) lo = std::min(lo, l[j]), hi = std::max(hi, h[j]);
#endif
  for (; i < len; ++i) {
    lo = w[i] < lo ? w[i] : lo;
    hi = w[i] > hi ? w[i] : hi;
  }
  return {lo, hi, std::max(std::fabs(lo), std::fabs(hi))};
}

void clamp_group(float* w, std::int64_t len, float m) {
  for (std::int64_t i = 0; i < len; ++i) w[i] = std::min(std::max(w[i], -m), m);
}

// The codes of one group: affine_quantize_value() for each element, without a call to nearbyint. t is
// clamped to [-1024, 1024] first (codes are clamped to [0, 255] after adding a zero <= 255, so this changes
// nothing), which keeps |t| < 2^22: there, adding and removing 1.5 * 2^23 rounds half to even in the
// default rounding mode. SSE2 (every x86-64) does 16 values a step; GCC does not vectorize the plain
// loop itself unless -fno-trapping-math. tests/quant/affine_test.cpp checks this path against
// affine_quantize_value() on every mode, bit width and group size.
template <bool kMultiply>
void encode_group_as(const float* w, std::int64_t len, float factor, float zero, float maxq, std::uint8_t* out) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  std::int64_t i = 0;
#if defined(__SSE2__)
  const __m128 vfactor = _mm_set1_ps(factor), vzero = _mm_set1_ps(zero), vmaxq = _mm_set1_ps(maxq);
  const __m128 vmagic = _mm_set1_ps(kMagic), vlo = _mm_set1_ps(-1024.0f), vhi = _mm_set1_ps(1024.0f);
  const __m128 v0 = _mm_setzero_ps();
  const auto code4 = [&](const float* x) {
    __m128 t = kMultiply ? _mm_mul_ps(_mm_loadu_ps(x), vfactor) : _mm_div_ps(_mm_loadu_ps(x), vfactor);
    t = _mm_min_ps(_mm_max_ps(t, vlo), vhi);
    __m128 c = _mm_add_ps(_mm_sub_ps(_mm_add_ps(t, vmagic), vmagic), vzero);
    c = _mm_min_ps(_mm_max_ps(c, v0), vmaxq);
    return _mm_cvttps_epi32(c);  // exact: c is an integer in [0, 255]
  };
  for (; i + 16 <= len; i += 16) {
    const __m128i a = _mm_packs_epi32(code4(w + i), code4(w + i + 4));
    const __m128i b = _mm_packs_epi32(code4(w + i + 8), code4(w + i + 12));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_packus_epi16(a, b));
  }
#endif
  for (; i < len; ++i) {
    float t = kMultiply ? w[i] * factor : w[i] / factor;
    t = std::min(std::max(t, -1024.0f), 1024.0f);
    const float c = ((t + kMagic) - kMagic) + zero;
    out[i] = static_cast<std::uint8_t>(static_cast<int>(std::min(std::max(c, 0.0f), maxq)));
  }
}

void encode_group(const float* w, std::int64_t len, const AffineGroupParams& p, int bits, std::uint8_t* out) {
  const float maxq = static_cast<float>((1 << bits) - 1);
  const float zero = static_cast<float>(p.zero);
  if (p.multiplier != 0.0f) {
    encode_group_as<true>(w, len, p.multiplier, zero, maxq, out);
  } else {
    encode_group_as<false>(w, len, p.scale, zero, maxq, out);
  }
}

void check_scale(const AffineGroupParams& gp, std::int64_t row, std::int64_t group) {
  LOWBIT_CHECK(std::isfinite(gp.scale), ErrorCode::Numerical,
               "{}: the range of row {}, group {} overflows fp32 (scale {}); the weight holds values near "
               "+-3.4e38",
               kQuantize, row, group, gp.scale);
}

Tensor checked_clip_max(const AffineConfig& c, const Plan& p) {
  if (!c.clip_max.defined()) return {};
  const std::int64_t rows = p.per_tensor ? 1 : p.n;
  const std::int64_t cols = p.per_tensor ? 1 : p.groups;
  LOWBIT_CHECK(c.clip_max.rank() == 2 && c.clip_max.size(0) == rows && c.clip_max.size(1) == cols,
               ErrorCode::ShapeMismatch, "{}: clip_max is {}; expected [{}, {}] (one value per {})", kQuantize,
               c.clip_max.describe(), rows, cols, p.per_tensor ? "tensor" : "row and group");
  LOWBIT_CHECK(is_floating(c.clip_max.dtype()), ErrorCode::DTypeMismatch, "{}: clip_max is {}; expected a float type",
               kQuantize, c.clip_max.describe());
  Tensor m = c.clip_max.to(DType::F32);
  const float* v = m.data<float>();
  for (std::int64_t i = 0; i < m.numel(); ++i) {
    LOWBIT_CHECK(std::isfinite(v[i]) && v[i] >= 0.0f, ErrorCode::InvalidArgument,
                 "{}: clip_max[{}, {}] = {}; every clip value must be finite and >= 0", kQuantize, i / cols, i % cols,
                 v[i]);
  }
  return m;
}


}  // namespace

Tensor affine_store_scales(const Tensor& scales32, DType dtype, std::string_view operation) {
  if (dtype == DType::F32) return scales32;
  Tensor out = Tensor::empty(scales32.shape(), DType::F16);
  const float* s = scales32.data<float>();
  Half* h = out.data<Half>();
  const std::int64_t cols = scales32.size(1);
  for (std::int64_t i = 0; i < scales32.numel(); ++i) {
    h[i] = Half::from_float(s[i]);
    LOWBIT_CHECK((h[i].bits & 0x7c00u) != 0x7c00u, ErrorCode::Numerical,
                 "{}: scale {} of row {}, group {} overflows f16 (largest 65504); use scale_dtype f32", operation, s[i],
                 i / cols, i % cols);
    LOWBIT_CHECK((h[i].bits & 0x7fffu) != 0, ErrorCode::Numerical,
                 "{}: scale {} of row {}, group {} underflows f16 to 0 (smallest 5.96e-08); use scale_dtype f32",
                 operation, s[i], i / cols, i % cols);
  }
  return out;
}

AffineConfig affine_int8_config() {
  AffineConfig c;
  c.bits = 8;
  c.group_size = -1;
  c.mode = AffineMode::Absmax;
  c.scale_dtype = DType::F32;
  return c;
}

AffineConfig affine_rtn_config() { return AffineConfig{}; }

QuantizedTensor quantize_affine(const Tensor& weight, const AffineConfig& config) {
  check_config(config);
  const WeightRows rows = WeightRows::open(weight, kQuantize);

  Plan p;
  p.bits = config.bits;
  p.mode = config.mode;
  p.shrink = config.clip_ratio;
  p.n = rows.n();
  p.k = rows.k();
  p.per_tensor = config.group_size == 0;
  p.group_size = config.group_size >= 1 ? config.group_size : p.k;
  p.groups = affine_groups_per_row(p.k, config.group_size);
  const Tensor clip = checked_clip_max(config, p);
  p.clip = clip.defined() ? clip.data<float>() : nullptr;

  const std::int64_t scale_rows = p.per_tensor ? 1 : p.n;
  Tensor codes = Tensor::empty({p.n, p.k}, DType::U8);
  Tensor scales32 = Tensor::empty({scale_rows, p.groups}, DType::F32);
  Tensor zeros = Tensor::empty({scale_rows, p.groups}, DType::U8);
  std::uint8_t* code_data = codes.data<std::uint8_t>();
  float* scale_data = scales32.data<float>();
  std::uint8_t* zero_data = zeros.data<std::uint8_t>();

  // Rows per task: enough elements to amortise the task, never more rows than there are.
  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 16) / std::max<std::int64_t>(p.k, 1));

  AffineGroupParams tensor_params;
  if (p.per_tensor) {
    // Pass 1: each row's range (after clipping), combined in row order.
    std::vector<Range> row_range(static_cast<std::size_t>(p.n));
    parallel_for(p.n, grain, [&](std::int64_t begin, std::int64_t end) {
      std::vector<float> buffer(static_cast<std::size_t>(p.k));
      for (std::int64_t r = begin; r < end; ++r) {
        rows.read(r, buffer.data());
        if (p.clip) clamp_group(buffer.data(), p.k, p.clip[0]);
        row_range[static_cast<std::size_t>(r)] = group_range(buffer.data(), p.k);
      }
    });
    Range all = row_range[0];
    for (const Range& r : row_range)
      all = {std::min(all.lo, r.lo), std::max(all.hi, r.hi), std::max(all.absmax, r.absmax)};
    tensor_params = group_params(p, all.lo, all.hi, all.absmax);
    check_scale(tensor_params, 0, 0);
    scale_data[0] = tensor_params.scale;
    zero_data[0] = static_cast<std::uint8_t>(tensor_params.zero);
  }

  parallel_for(p.n, grain, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> buffer(static_cast<std::size_t>(p.k));
    for (std::int64_t r = begin; r < end; ++r) {
      float* w = buffer.data();
      rows.read(r, w);
      std::uint8_t* out = code_data + r * p.k;
      if (p.per_tensor) {
        if (p.clip) clamp_group(w, p.k, p.clip[0]);
        encode_group(w, p.k, tensor_params, p.bits, out);
        continue;
      }
      for (std::int64_t g = 0; g < p.groups; ++g) {
        const std::int64_t begin_col = g * p.group_size;
        const std::int64_t len = affine_group_length(p.k, p.group_size, g);
        if (p.clip) clamp_group(w + begin_col, len, p.clip[r * p.groups + g]);
        const Range range = group_range(w + begin_col, len);
        const AffineGroupParams gp = group_params(p, range.lo, range.hi, range.absmax);
        check_scale(gp, r, g);
        scale_data[r * p.groups + g] = gp.scale;
        zero_data[r * p.groups + g] = static_cast<std::uint8_t>(gp.zero);
        encode_group(w + begin_col, len, gp, p.bits, out + begin_col);
      }
    }
  });

  QuantizedTensor q;
  q.method = "affine";
  q.shape = Shape{p.n, p.k};
  q.dtype = weight.dtype();
  q.params = affine_params_from_config(config);
  q.components.emplace("codes", std::move(codes));
  q.components.emplace("scales", affine_store_scales(scales32, config.scale_dtype, kQuantize));
  q.components.emplace("zeros", std::move(zeros));
  return q;
}

namespace {

// The components of an affine QuantizedTensor, checked against its shape and params.
struct AffineView {
  int bits = 0;
  std::int64_t n = 0, k = 0, group_size = 0, groups = 0;
  bool per_tensor = false;
  Tensor codes, scales, zeros;  // contiguous; scales as f32
  Tensor g_idx;                 // i32 [k] when the columns' groups are permuted (GPTQ act-order), else undefined
};

AffineView open_affine(const QuantizedTensor& q, std::string_view operation) {
  LOWBIT_CHECK(q.method == "affine", ErrorCode::InvalidArgument, "{}: quantized tensor is '{}', not 'affine'",
               operation, q.method);
  AffineView v;
  v.bits = q.params.bits;
  LOWBIT_CHECK(valid_bits(v.bits), ErrorCode::Corrupt, "{}: bits = {} is not an affine width (2, 3, 4, 8)", operation,
               v.bits);
  LOWBIT_CHECK(q.shape.rank() == 2, ErrorCode::Corrupt, "{}: shape {} is not 2-D", operation, q.shape.to_string());
  LOWBIT_CHECK(q.params.group_size >= -1, ErrorCode::Corrupt, "{}: group_size = {} is not valid", operation,
               q.params.group_size);
  v.n = q.shape[0];
  v.k = q.shape[1];
  v.per_tensor = q.params.group_size == 0;
  v.group_size = q.params.group_size >= 1 ? q.params.group_size : v.k;
  v.groups = affine_groups_per_row(v.k, q.params.group_size);
  const std::int64_t scale_rows = v.per_tensor ? 1 : v.n;

  const Tensor& codes = q.component("codes");
  const Tensor& scales = q.component("scales");
  const Tensor& zeros = q.component("zeros");
  LOWBIT_CHECK(codes.dtype() == DType::U8 && codes.shape() == q.shape, ErrorCode::Corrupt,
               "{}: codes are {}; expected u8{}", operation, codes.describe(), q.shape.to_string());
  const Shape group_shape{scale_rows, v.groups};
  LOWBIT_CHECK((scales.dtype() == DType::F16 || scales.dtype() == DType::F32) && scales.shape() == group_shape,
               ErrorCode::Corrupt, "{}: scales are {}; expected f16 or f32 {} (k = {}, group_size = {})", operation,
               scales.describe(), group_shape.to_string(), v.k, q.params.group_size);
  LOWBIT_CHECK(zeros.dtype() == DType::U8 && zeros.shape() == group_shape, ErrorCode::Corrupt,
               "{}: zeros are {}; expected u8{}", operation, zeros.describe(), group_shape.to_string());
  v.codes = codes.contiguous();
  v.scales = scales.to(DType::F32);
  v.zeros = zeros.contiguous();
  if (q.has("g_idx")) {
    const Tensor& g_idx = q.component("g_idx");
    LOWBIT_CHECK(g_idx.dtype() == DType::I32 && g_idx.shape() == Shape{v.k}, ErrorCode::Corrupt,
                 "{}: g_idx is {}; expected i32[{}]", operation, g_idx.describe(), v.k);
    v.g_idx = g_idx.contiguous();
    const std::int32_t* gi = v.g_idx.data<std::int32_t>();
    for (std::int64_t c = 0; c < v.k; ++c) {
      LOWBIT_CHECK(gi[c] >= 0 && gi[c] < v.groups, ErrorCode::Corrupt,
                   "{}: g_idx[{}] = {} is outside the {} groups of a row", operation, c, gi[c], v.groups);
    }
  }

  const int maxq = (1 << v.bits) - 1;
  const std::uint8_t* z = v.zeros.data<std::uint8_t>();
  for (std::int64_t i = 0; i < v.zeros.numel(); ++i) {
    LOWBIT_CHECK(z[i] <= maxq, ErrorCode::Corrupt, "{}: zero {} at row {}, group {} exceeds 2^{} - 1 = {}", operation,
                 z[i], i / v.groups, i % v.groups, v.bits, maxq);
  }
  const std::uint8_t* c = v.codes.data<std::uint8_t>();
  const std::int64_t count = v.codes.numel();  // hoisted: numel() may throw, which keeps loops scalar
  std::uint8_t code_max = 0;
  for (std::int64_t i = 0; i < count; ++i) code_max = std::max(code_max, c[i]);
  if (code_max > maxq) {
    const std::int64_t i = std::find_if(c, c + count, [&](std::uint8_t x) { return x > maxq; }) - c;
    LOWBIT_THROW(ErrorCode::Corrupt, "{}: code {} at row {}, column {} exceeds 2^{} - 1 = {}", operation, c[i], i / v.k,
                 i % v.k, v.bits, maxq);
  }
  return v;
}

}  // namespace

Tensor dequantize_affine_reference(const QuantizedTensor& q) {
  const AffineView v = open_affine(q, "dequantize_affine_reference");
  Tensor out = Tensor::empty({v.n, v.k}, DType::F32);
  const std::uint8_t* codes = v.codes.data<std::uint8_t>();
  const float* scales = v.scales.data<float>();
  const std::uint8_t* zeros = v.zeros.data<std::uint8_t>();
  float* w = out.data<float>();
  const std::int32_t* g_idx = v.g_idx.defined() ? v.g_idx.data<std::int32_t>() : nullptr;
  parallel_for(
      v.n, std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(v.k, 1)), [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t r = b; r < e; ++r) {
          const std::int64_t sr = v.per_tensor ? 0 : r;
          if (g_idx != nullptr) {  // column c reads the grid of group g_idx[c]
            for (std::int64_t c = 0; c < v.k; ++c) {
              const std::int64_t i = sr * v.groups + g_idx[c];
              w[r * v.k + c] = affine_dequantize_value(codes[r * v.k + c], scales[i], zeros[i]);
            }
            continue;
          }
          for (std::int64_t g = 0; g < v.groups; ++g) {
            const float scale = scales[sr * v.groups + g];
            const int zero = zeros[sr * v.groups + g];
            const std::int64_t first = g * v.group_size, last = first + affine_group_length(v.k, v.group_size, g);
            for (std::int64_t c = first; c < last; ++c)
              w[r * v.k + c] = affine_dequantize_value(codes[r * v.k + c], scale, zero);
          }
        }
      });
  return out;
}

Tensor dequantize_affine(const QuantizedTensor& q, DType dtype) {
  constexpr std::string_view op = "dequantize_affine";
  LOWBIT_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, ErrorCode::InvalidArgument,
               "{}: output dtype {} is not supported; valid: f32, f16, bf16", op, dtype_name(dtype));
  if (dtype == DType::F32) return dequantize_affine_reference(q);
  if (q.has("g_idx")) return dequantize_affine_reference(q).to(dtype);  // permuted groups: no per-group table
  const AffineView v = open_affine(q, op);
  Tensor out = Tensor::empty({v.n, v.k}, dtype);
  const std::uint8_t* codes = v.codes.data<std::uint8_t>();
  const float* scales = v.scales.data<float>();
  const std::uint8_t* zeros = v.zeros.data<std::uint8_t>();
  auto* w = static_cast<std::uint16_t*>(out.raw_data());
  const bool f16 = dtype == DType::F16;
  const int levels = 1 << v.bits;
  parallel_for(v.n, std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(v.k, 1)),
               [&](std::int64_t b, std::int64_t e) {
                 std::array<std::uint16_t, 256> table{};
                 for (std::int64_t r = b; r < e; ++r) {
                   const std::int64_t sr = v.per_tensor ? 0 : r;
                   for (std::int64_t g = 0; g < v.groups; ++g) {
                     const float scale = scales[sr * v.groups + g];
                     const int zero = zeros[sr * v.groups + g];
                     const std::int64_t first = r * v.k + g * v.group_size;
                     const std::int64_t last = first + affine_group_length(v.k, v.group_size, g);
                     const auto convert = [&](int code) {
                       const float x = affine_dequantize_value(code, scale, zero);
                       return f16 ? f32_to_f16_bits(x) : f32_to_bf16_bits(x);
                     };
                     if (last - first >= levels) {  // the group's 2^bits outputs once, then a lookup per element
                       for (int code = 0; code < levels; ++code) table[static_cast<std::size_t>(code)] = convert(code);
                       for (std::int64_t i = first; i < last; ++i) w[i] = table[codes[i]];
                     } else {
                       for (std::int64_t i = first; i < last; ++i) w[i] = convert(codes[i]);
                     }
                   }
                 }
               });
  return out;
}

Tensor matmul_affine_reference(const QuantizedTensor& q, const Tensor& x) {
  return matmul_reference(x, dequantize_affine_reference(q));
}

void affine_require_whole_groups(const QuantizedTensor& q, std::string_view format) {
  const std::int64_t g = q.params.group_size;
  if (g < 1 || q.shape.rank() != 2) return;
  const std::int64_t k = q.shape[1];
  LOWBIT_CHECK(k % g == 0, ErrorCode::Unsupported,
               "{}: affine weight {} has k = {}, not a multiple of group_size = {} (remainder {}, a shorter last "
               "group); this format needs whole groups: quantize with a group_size that divides k, or -1 for one "
               "group per row",
               format, q.shape.to_string(), k, g, k % g);
}

AffineConfig affine_config_from_params(const QuantParams& params) {
  AffineConfig c;
  c.bits = params.bits;
  c.group_size = params.group_size;
  std::string_view variant = params.variant;
  std::string_view grid = variant.substr(0, variant.find(':'));
  std::string_view dtype = variant.find(':') == std::string_view::npos ? "" : variant.substr(variant.find(':') + 1);
  if (grid.empty() || grid == "minmax") {
    c.mode = params.symmetric ? AffineMode::Symmetric : AffineMode::Asymmetric;
    c.scale_dtype = DType::F16;
  } else if (grid == "absmax") {
    LOWBIT_CHECK(params.symmetric, ErrorCode::InvalidArgument,
                 "affine: variant 'absmax' is a symmetric grid; set symmetric = true (or use variant 'minmax')");
    c.mode = AffineMode::Absmax;
    c.scale_dtype = DType::F32;
  } else {
    LOWBIT_THROW(ErrorCode::InvalidArgument,
                 "affine: unknown variant '{}'; valid: '<grid>[:<scale dtype>]' with grid minmax or absmax and scale "
                 "dtype f16 or f32 (e.g. 'minmax:f16', 'absmax:f32')",
                 params.variant);
  }
  if (dtype == "f16") {
    c.scale_dtype = DType::F16;
  } else if (dtype == "f32") {
    c.scale_dtype = DType::F32;
  } else {
    LOWBIT_CHECK(dtype.empty(), ErrorCode::InvalidArgument,
                 "affine: unknown scale dtype '{}' in variant '{}'; valid: f16, f32", dtype, params.variant);
  }
  return c;
}

QuantParams affine_params_from_config(const AffineConfig& config) {
  QuantParams p;
  p.bits = config.bits;
  p.group_size = config.group_size;
  p.symmetric = config.mode != AffineMode::Asymmetric;
  p.variant =
      fmt::format("{}:{}", config.mode == AffineMode::Absmax ? "absmax" : "minmax", dtype_name(config.scale_dtype));
  return p;
}

MethodInfo affine_method_info() {
  MethodInfo m;
  m.name = "affine";
  m.summary =
      "round-to-nearest affine (GPTQ min-max grid, symmetric or zero-point) or absmax (bitsandbytes) "
      "quantization, 2/3/4/8 bits, per tensor, row or group";
  m.defaults = affine_params_from_config(AffineConfig{});
  m.quantize = [](const Tensor& weight, const QuantParams& params) {
    return quantize_affine(weight, affine_config_from_params(params));
  };
  m.dequantize = [](const QuantizedTensor& q) { return dequantize_affine_reference(q); };
  m.matmul = [](const QuantizedTensor& q, const Tensor& x) { return matmul_affine_reference(q, x); };
  return m;
}

}  // namespace lowbit::quant
