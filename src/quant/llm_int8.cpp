#include "lowbit/quant/llm_int8.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "lowbit/core/parallel.hpp"

// Hot loops get an AVX2 clone beside the baseline one, picked at load time (GCC/Clang function
// multi-versioning); results are identical, the arithmetic being exact or fixed per element.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(LOWBIT_NO_TARGET_CLONES)
#define LOWBIT_LLM_INT8_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LOWBIT_LLM_INT8_CLONES
#endif

namespace lowbit::quant {
namespace {

constexpr const char* kMethod = "llm_int8";

void check_threshold(double threshold, std::string_view operation) {
  LOWBIT_CHECK(std::isfinite(threshold) && threshold >= 0.0, ErrorCode::InvalidArgument,
               "{}: threshold = {} is not allowed; use a finite value >= 0 (0 disables outlier decomposition, "
               "6.0 is the transformers default)",
               operation, threshold);
}

// A finite fp16 pattern to fp32 without branches (so loops vectorize): move sign, exponent and mantissa
// into place, then rebias the exponent by 2^(127 - 15) with one exact multiplication; fp16 subnormals
// become fp32 subnormals first and are normalized by the same product.
inline float finite_f16_to_f32(std::uint16_t h) noexcept {
  const std::uint32_t bits =
      (static_cast<std::uint32_t>(h & 0x8000u) << 16) | (static_cast<std::uint32_t>(h & 0x7fffu) << 13);
  return bits_float(bits) * 0x1p112f;
}

// Max |x| of a row of fp16 patterns, as a magnitude pattern (for non-NaN fp16, ordering the magnitude bits
// as integers orders the values).
LOWBIT_LLM_INT8_CLONES std::uint16_t row_absmax_bits(const std::uint16_t* row, std::int64_t k) noexcept {
  std::uint16_t m = 0;
  for (std::int64_t j = 0; j < k; ++j) m = std::max<std::uint16_t>(m, static_cast<std::uint16_t>(row[j] & 0x7fffu));
  return m;
}

LOWBIT_LLM_INT8_CLONES void quantize_row(const std::uint16_t* row, std::int64_t k, float scale,
                                         std::int8_t* codes) noexcept {
  // llm_int8_quantize_value without its NaN test (scale is finite here, so no product is NaN), which
  // would keep the loop from vectorizing; LlmInt8Quantize.EveryFiniteF16PatternMatchesNaiveRounding
  // checks the two agree.
  constexpr float kMagic = 12582912.0f;
  for (std::int64_t j = 0; j < k; ++j) {
    const float p = finite_f16_to_f32(row[j]) * scale;
    codes[j] = static_cast<std::int8_t>(static_cast<int>((p + kMagic) - kMagic));
  }
}

LOWBIT_LLM_INT8_CLONES std::int32_t dot_i8(const std::int8_t* a, const std::int8_t* b, std::int64_t k) noexcept {
  std::int32_t sum = 0;
  for (std::int64_t j = 0; j < k; ++j) sum += static_cast<std::int16_t>(a[j]) * static_cast<std::int16_t>(b[j]);
  return sum;
}

float round_to(DType dtype, float v) noexcept {
  switch (dtype) {
    case DType::F16:
      return f16_bits_to_f32(f32_to_f16_bits(v));
    case DType::BF16:
      return bf16_bits_to_f32(f32_to_bf16_bits(v));
    default:
      return v;
  }
}

// fp32 values, each exactly representable in `dtype`, as a tensor of that dtype.
Tensor values_as(std::vector<float> values, const Shape& shape, DType dtype) {
  Tensor t = Tensor::from_values(std::span<const float>(values), shape);
  return dtype == DType::F32 ? t : t.to(dtype);
}

struct Components {
  std::int64_t n = 0, k = 0;
  Tensor cb, scb;  // contiguous
};

Components components_of(const QuantizedTensor& q, std::string_view operation) {
  check_llm_int8(q, operation);
  return {q.shape[0], q.shape[1], q.component("CB").contiguous(), q.component("SCB").contiguous()};
}

}  // namespace

void check_llm_int8(const QuantizedTensor& q, std::string_view operation) {
  LOWBIT_CHECK(q.method == kMethod, ErrorCode::InvalidArgument, "{}: quantized tensor is '{}', not '{}'", operation,
               q.method, kMethod);
  LOWBIT_CHECK(q.shape.rank() == 2, ErrorCode::Corrupt, "{}: llm_int8 weight has shape {}; expected [n, k]", operation,
               q.shape.to_string());
  const Tensor& cb = q.component("CB");
  const Tensor& scb = q.component("SCB");
  LOWBIT_CHECK(cb.dtype() == DType::I8 && cb.shape() == q.shape, ErrorCode::Corrupt,
               "{}: llm_int8 component CB is {}; expected i8{}", operation, cb.describe(), q.shape.to_string());
  LOWBIT_CHECK(scb.dtype() == DType::F32 && scb.rank() == 1 && scb.size(0) == q.shape[0], ErrorCode::Corrupt,
               "{}: llm_int8 component SCB is {}; expected f32[{}] (one absmax per output row)", operation,
               scb.describe(), q.shape[0]);
  LOWBIT_CHECK(cb.device().is_cpu() && scb.device().is_cpu(), ErrorCode::Unsupported,
               "{}: llm_int8 components must be host tensors, got CB {} and SCB {}", operation, cb.describe(),
               scb.describe());
}

QuantizedTensor quantize_llm_int8(const Tensor& weight, const LlmInt8Config& config) {
  constexpr std::string_view op = "quantize_llm_int8";
  check_threshold(config.threshold, op);
  LOWBIT_CHECK(weight.defined() && weight.rank() == 2, ErrorCode::ShapeMismatch,
               "{}: expected a 2-D weight [n, k], got {}", op, weight.defined() ? weight.describe() : "undefined");
  const DType dt = weight.dtype();
  LOWBIT_CHECK(dt == DType::F32 || dt == DType::F16 || dt == DType::BF16 || dt == DType::F64, ErrorCode::DTypeMismatch,
               "{}: weight is {}; expected f32, f16, bf16 or f64", op, weight.describe());
  LOWBIT_CHECK(weight.device().is_cpu(), ErrorCode::Unsupported, "{}: weight {} is not a host tensor", op,
               weight.describe());

  // bitsandbytes quantizes only fp16: W.to(float16) first, rounding to nearest even.
  const Tensor w16 = dt == DType::F16 ? weight.contiguous() : weight.to(DType::F16);
  const std::int64_t n = weight.size(0), k = weight.size(1);
  Tensor cb = Tensor::empty({n, k}, DType::I8);
  Tensor scb = Tensor::empty({n}, DType::F32);
  const auto* src = static_cast<const std::uint16_t*>(w16.raw_data());
  auto* codes = cb.data<std::int8_t>();
  auto* absmax = scb.data<float>();

  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 16) / std::max<std::int64_t>(k, 1));
  parallel_for(n, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t o = begin; o < end; ++o) {
      const std::uint16_t* row = src + o * k;
      const std::uint16_t max_bits = row_absmax_bits(row, k);
      if (max_bits >= 0x7c00u) [[unlikely]] {  // NaN or Inf: name the first one, with its original value
        std::int64_t j = 0;
        while ((row[j] & 0x7fffu) < 0x7c00u) ++j;
        const double original = weight.get({o, j});
        if (std::isfinite(original)) {
          LOWBIT_THROW(ErrorCode::Numerical,
                       "{}: weight {} has {} at (row {}, column {}), beyond the fp16 range (|w| <= 65504); "
                       "bitsandbytes rounds weights to fp16 first, so this row would become Inf/NaN; rescale "
                       "the layer or keep it unquantized",
                       op, weight.describe(), original, o, j);
        }
        LOWBIT_THROW(ErrorCode::Numerical, "{}: weight {} has {} at element {} (row {}, column {})", op,
                     weight.describe(), original, o * k + j, o, j);
      }
      const float a = f16_bits_to_f32(max_bits);
      absmax[o] = a;
      if (a == 0.0f) {  // scale Inf, 0 * Inf = NaN -> code 0 (what bitsandbytes writes)
        std::memset(codes + o * k, 0, static_cast<std::size_t>(k));
        continue;
      }
      quantize_row(row, k, llm_int8_scale(a), codes + o * k);
    }
  });

  QuantizedTensor q;
  q.method = kMethod;
  q.shape = weight.shape();
  q.dtype = dt;
  q.params.bits = 8;
  q.params.group_size = -1;
  q.params.symmetric = true;
  q.params.threshold = config.threshold;
  q.components.emplace("CB", std::move(cb));
  q.components.emplace("SCB", std::move(scb));
  return q;
}

Tensor dequantize_llm_int8_reference(const QuantizedTensor& q) {
  const Components c = components_of(q, "dequantize_llm_int8_reference");
  Tensor w = Tensor::empty({c.n, c.k}, DType::F32);
  const auto* codes = c.cb.data<std::int8_t>();
  const auto* absmax = c.scb.data<float>();
  float* out = w.data<float>();
  for (std::int64_t o = 0; o < c.n; ++o) {
    for (std::int64_t j = 0; j < c.k; ++j) out[o * c.k + j] = llm_int8_dequantize_value(codes[o * c.k + j], absmax[o]);
  }
  return w;
}

LlmInt8Activations quantize_llm_int8_activations(const Tensor& x16, double threshold) {
  constexpr std::string_view op = "quantize_llm_int8_activations";
  check_threshold(threshold, op);
  LOWBIT_CHECK(x16.defined() && x16.rank() == 2, ErrorCode::ShapeMismatch,
               "{}: expected 2-D activations [m, k], got {}", op, x16.defined() ? x16.describe() : "undefined");
  LOWBIT_CHECK(x16.dtype() == DType::F16, ErrorCode::DTypeMismatch,
               "{}: activations are {}; expected f16 (bitsandbytes quantizes x.to(float16))", op, x16.describe());
  const Tensor xc = x16.contiguous();
  const std::int64_t m = xc.size(0), k = xc.size(1);
  const auto* x = static_cast<const std::uint16_t*>(xc.raw_data());

  // PyTorch compares an fp16 tensor with a Python float in fp16 (`A.abs() >= threshold`), so the threshold
  // is rounded to fp16 (through fp32, as c10::Half does); it may become Inf, which only Inf reaches.
  const bool decompose = threshold > 0.0;
  const float t16 = f16_bits_to_f32(f32_to_f16_bits(static_cast<float>(threshold)));
  auto is_outlier = [&](float magnitude) { return decompose && magnitude >= t16; };

  LlmInt8Activations out;
  out.ca = Tensor::empty({m, k}, DType::I8);
  out.sca = Tensor::empty({m}, DType::F32);
  auto* ca = out.ca.data<std::int8_t>();
  auto* sca = out.sca.data<float>();
  std::vector<char> outlier_col(static_cast<std::size_t>(k), 0);
  for (std::int64_t i = 0; i < m; ++i) {
    float absmax = 0.0f;  // outliers count as 0, as the PyTorch backend zeroes them before its row max
    for (std::int64_t j = 0; j < k; ++j) {
      const float v = f16_bits_to_f32(x[i * k + j]);
      const float magnitude = std::fabs(v);
      if (std::isnan(v) || (std::isinf(v) && !decompose)) {
        LOWBIT_THROW(ErrorCode::Numerical,
                     "{}: activations {} have {} at (row {}, column {}); NaN is never an outlier and an Inf with "
                     "threshold 0 makes the reference's whole row NaN",
                     op, x16.describe(), v, i, j);
      }
      if (is_outlier(magnitude)) {
        outlier_col[static_cast<std::size_t>(j)] = 1;
      } else {
        absmax = std::max(absmax, magnitude);
      }
    }
    sca[i] = absmax;
    const float scale = llm_int8_scale(absmax);  // Inf when absmax = 0: codes 0
    for (std::int64_t j = 0; j < k; ++j) {
      const float v = f16_bits_to_f32(x[i * k + j]);
      ca[i * k + j] =
          is_outlier(std::fabs(v)) ? std::int8_t{0} : static_cast<std::int8_t>(llm_int8_quantize_value(v, scale));
    }
  }
  for (std::int64_t j = 0; j < k; ++j) {
    if (outlier_col[static_cast<std::size_t>(j)]) out.outlier_cols.push_back(j);
  }
  // With m > 1 whole outlier columns are zeroed, inlier elements included (with m = 1 only the outliers
  // themselves are, which is the same thing).
  if (m > 1) {
    for (const std::int64_t j : out.outlier_cols) {
      for (std::int64_t i = 0; i < m; ++i) ca[i * k + j] = 0;
    }
  }
  return out;
}

Tensor llm_int8_gemm(const Tensor& a, const Tensor& b) {
  constexpr std::string_view op = "llm_int8_gemm";
  LOWBIT_CHECK(a.defined() && b.defined() && a.dtype() == DType::I8 && b.dtype() == DType::I8, ErrorCode::DTypeMismatch,
               "{}: operands are {} and {}; expected i8 and i8", op, a.defined() ? a.describe() : "undefined",
               b.defined() ? b.describe() : "undefined");
  LOWBIT_CHECK(a.rank() == 2 && b.rank() == 2 && a.size(1) == b.size(1), ErrorCode::ShapeMismatch,
               "{}: A {} and B {} do not agree (need A [m, k], B [n, k])", op, a.describe(), b.describe());
  const std::int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  LOWBIT_CHECK(k <= kLlmInt8MaxK, ErrorCode::InvalidArgument,
               "{}: k = {} exceeds {}, beyond which int32 accumulation of int8 products can overflow", op, k,
               kLlmInt8MaxK);
  const Tensor ac = a.contiguous();
  const Tensor bc = b.contiguous();
  const auto* pa = ac.data<std::int8_t>();
  const auto* pb = bc.data<std::int8_t>();
  Tensor c = Tensor::empty({m, n}, DType::I32);
  auto* pc = c.data<std::int32_t>();
  // Output columns in parallel, one weight row at a time: that row stays in L1 while every activation
  // row (m * k bytes, in L2 for decode-sized m) passes over it. Each element is one exact dot product.
  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 18) / std::max<std::int64_t>(m * k, 1));
  parallel_for(n, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t o = begin; o < end; ++o) {
      for (std::int64_t i = 0; i < m; ++i) pc[i * n + o] = dot_i8(pa + i * k, pb + o * k, k);
    }
  });
  return c;
}

LlmInt8MatmulTrace trace_llm_int8_matmul(const QuantizedTensor& q, const Tensor& x,
                                         const LlmInt8MatmulOptions& options) {
  constexpr std::string_view op = "matmul_llm_int8_reference";
  const Components w = components_of(q, op);
  const double threshold = q.params.threshold;
  check_threshold(threshold, op);
  LOWBIT_CHECK(x.defined() && (x.dtype() == DType::F16 || x.dtype() == DType::BF16 || x.dtype() == DType::F32),
               ErrorCode::DTypeMismatch, "{}: x is {}; expected f16, bf16 or f32", op,
               x.defined() ? x.describe() : "undefined");
  LOWBIT_CHECK(x.rank() >= 1 && x.size(-1) == w.k, ErrorCode::ShapeMismatch,
               "{}: x {} does not fit W {} (need x [..., {}])", op, x.describe(), q.shape.to_string(), w.k);
  LOWBIT_CHECK(x.device().is_cpu(), ErrorCode::Unsupported, "{}: x {} is not a host tensor", op, x.describe());
  const DType dt = x.dtype();
  const std::int64_t n = w.n, k = w.k;
  std::int64_t m = 1;
  for (int d = 0; d + 1 < x.rank(); ++d) m *= x.size(d);

  std::vector<float> bias;  // cast to x's dtype first, as Linear8bitLt.forward does
  if (options.bias.defined()) {
    const Tensor& b = options.bias;
    LOWBIT_CHECK(
        b.dtype() == DType::F16 || b.dtype() == DType::BF16 || b.dtype() == DType::F32 || b.dtype() == DType::F64,
        ErrorCode::DTypeMismatch, "{}: bias is {}; expected a float dtype", op, b.describe());
    LOWBIT_CHECK(b.rank() == 1 && b.size(0) == n, ErrorCode::ShapeMismatch, "{}: bias is {}; expected [{}]", op,
                 b.describe(), n);
    const Tensor bx = b.to(dt).to(DType::F32);
    bias.assign(bx.data<float>(), bx.data<float>() + n);
  }

  LlmInt8MatmulTrace tr;
  const Tensor x2 = x.contiguous().reshape({m, k});
  const Tensor xf = x2.to(DType::F32);  // exact for every accepted dtype
  const float* px = xf.data<float>();
  for (std::int64_t e = 0; e < m * k; ++e) {
    if (!std::isfinite(px[e])) [[unlikely]] {
      LOWBIT_THROW(ErrorCode::Numerical, "{}: x {} has {} at (row {}, column {}) of its [{}, {}] flattening", op,
                   x.describe(), px[e], e / k, e % k, m, k);
    }
    if (threshold == 0.0 && std::fabs(px[e]) > 65504.0f && !std::isfinite(round_to(DType::F16, px[e]))) [[unlikely]] {
      LOWBIT_THROW(ErrorCode::Numerical,
                   "{}: x {} has {} at (row {}, column {}), which overflows fp16; with threshold 0 the reference "
                   "(bitsandbytes casts x to fp16) gives a NaN row; use a threshold > 0 so the column takes the "
                   "16-bit path",
                   op, x.describe(), px[e], e / k, e % k);
    }
  }
  tr.x16 = dt == DType::F16 ? x2 : x2.to(DType::F16);
  tr.activations = quantize_llm_int8_activations(tr.x16, threshold);
  tr.c = llm_int8_gemm(tr.activations.ca, w.cb);

  const auto* c = tr.c.data<std::int32_t>();
  const auto* sca = tr.activations.sca.data<float>();
  const auto* scb = w.scb.data<float>();
  std::vector<float> out(static_cast<std::size_t>(m * n));
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t o = 0; o < n; ++o) {
      const std::int32_t acc = c[i * n + o];
      const float b = bias.empty() ? 0.0f : bias[static_cast<std::size_t>(o)];
      float v;
      if (options.backend == LlmInt8Backend::Cuda) {
        // kdequant_mm_int32_fp16 fuses only an fp16 bias; any other is added to its fp16 output
        // (out.add_(bias): fp32 arithmetic, fp16 result); then .to(x's dtype).
        const bool fused = !bias.empty() && dt == DType::F16;
        v = round_to(DType::F16, llm_int8_dequantize_mm(acc, sca[i], scb[o], fused ? b : 0.0f));
        if (!bias.empty() && !fused) v = round_to(DType::F16, v + b);
      } else {
        v = llm_int8_dequantize_mm_torch(acc, sca[i], scb[o]);
        if (!bias.empty()) v = v + b;
      }
      out[static_cast<std::size_t>(i * n + o)] = round_to(dt, v);
    }
  }
  tr.int8_out = values_as(out, {m, n}, dt);

  const std::vector<std::int64_t>& cols = tr.activations.outlier_cols;
  const auto nc = static_cast<std::int64_t>(cols.size());
  if (nc > 0) {
    const auto* codes = w.cb.data<std::int8_t>();
    std::vector<float> sub_a(static_cast<std::size_t>(m * nc)), sub_b(static_cast<std::size_t>(n * nc));
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < nc; ++j) sub_a[static_cast<std::size_t>(i * nc + j)] = px[i * k + cols[j]];
    }
    for (std::int64_t o = 0; o < n; ++o) {
      for (std::int64_t j = 0; j < nc; ++j) {
        sub_b[static_cast<std::size_t>(o * nc + j)] =
            round_to(dt, llm_int8_dequantize_value(codes[o * k + cols[j]], scb[o]));
      }
    }
    // output.addmm(sub_a, sub_b^T) in x's dtype: an fp32 sum in ascending column order, added to the int8
    // part, one rounding to x's dtype at the end. cuBLAS (H100, tests/data/llm_int8/vectors_cuda.*) rounded
    // each product before adding it; MKL's sgemm (the CPU golden vectors) fused them. Only fp32 x can tell
    // the two apart: fp16/bf16 products are exact in fp32.
    const bool fused = options.backend == LlmInt8Backend::Torch;
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t o = 0; o < n; ++o) {
        float acc = 0.0f;
        for (std::int64_t j = 0; j < nc; ++j) {
          const float a = sub_a[static_cast<std::size_t>(i * nc + j)];
          const float b = sub_b[static_cast<std::size_t>(o * nc + j)];
          // The double product is exact, so its conversion is the one fp32 rounding of a * b (and no
          // compiler can contract it into an fma).
          acc = fused ? std::fma(a, b, acc) : acc + static_cast<float>(static_cast<double>(a) * b);
        }
        float& y = out[static_cast<std::size_t>(i * n + o)];
        y = round_to(dt, acc + y);
      }
    }
    tr.sub_a = values_as(std::move(sub_a), {m, nc}, dt);
    tr.sub_b = values_as(std::move(sub_b), {n, nc}, dt);
  } else {
    tr.sub_a = Tensor::empty({m, 0}, dt);
    tr.sub_b = Tensor::empty({n, 0}, dt);
  }
  tr.y = values_as(std::move(out), {m, n}, dt);
  return tr;
}

Tensor matmul_llm_int8_reference(const QuantizedTensor& q, const Tensor& x, const LlmInt8MatmulOptions& options) {
  const LlmInt8MatmulTrace tr = trace_llm_int8_matmul(q, x, options);
  std::vector<std::int64_t> dims(x.shape().begin(), x.shape().end());
  dims.back() = q.shape[0];
  const Shape shape{std::span<const std::int64_t>(dims)};
  if (tr.y.numel() == 0) return Tensor::empty(shape, DType::F32);  // (an empty to() copy is not reshapeable)
  return tr.y.to(DType::F32).reshape(shape);
}

MethodInfo llm_int8_method_info() {
  MethodInfo info;
  info.name = kMethod;
  info.summary =
      "LLM.int8() (bitsandbytes Linear8bitLt): int8 per output row, int8 activations per row at run time, "
      "outlier input columns (|x| >= threshold) in 16 bit";
  info.defaults.bits = 8;
  info.defaults.group_size = -1;
  info.defaults.symmetric = true;
  info.defaults.threshold = LlmInt8Config{}.threshold;
  info.quantize = [](const Tensor& weight, const QuantParams& params) {
    LOWBIT_CHECK(params.bits == 8 || params.bits == 0, ErrorCode::InvalidArgument,
                 "quantize_llm_int8: bits = {} is not supported; LLM.int8() stores 8-bit codes (bits 8)", params.bits);
    LOWBIT_CHECK(params.group_size == -1 || params.group_size == 0, ErrorCode::InvalidArgument,
                 "quantize_llm_int8: group_size = {} is not supported; LLM.int8() has one scale per output row "
                 "(group_size -1)",
                 params.group_size);
    LlmInt8Config config;
    config.threshold = params.threshold;
    return quantize_llm_int8(weight, config);
  };
  info.dequantize = [](const QuantizedTensor& q) { return dequantize_llm_int8_reference(q); };
  info.matmul = [](const QuantizedTensor& q, const Tensor& x) { return matmul_llm_int8_reference(q, x); };
  return info;
}

}  // namespace lowbit::quant
