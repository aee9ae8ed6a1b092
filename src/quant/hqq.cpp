// HQQ quantization (include/lowbit/quant/hqq.hpp): grouping, the legacy proximal solver in the
// reference's precision, hqq's bit packing, dequantization.
//
// Bit-exactness notes (what makes our codes equal hqq's):
// - Every torch op rounds to its dtype, so each product and sum below is rounded separately; nothing
//   may be fused into an FMA (the pragma below; -march=native would otherwise contract).
// - `qmax / denom` in Python is `denom.reciprocal() * qmax` (Tensor.__rtruediv__), two roundings;
//   `1.0 / scale` likewise is a reciprocal.
// - torch's CPU mean is a float sum divided by the count; we sum in double and round once, which equals
//   torch's result whenever its float sum is correctly rounded (nearly always), and otherwise differs in
//   the last bit of a zero (the spec's "near-tie flips").
#include "lowbit/quant/hqq.hpp"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "lowbit/core/half.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/quant/common.hpp"
#include "f16_batch.hpp"

namespace lowbit::quant {
namespace {

constexpr std::string_view kPackingNames[] = {"8bit_u8", "4bit_u8", "3bit_32", "2bit_u8", "1bit_u8"};

// ---- rounding -------------------------------------------------------------------------------------------

// round_half_even for |x| <= 2^22: adding 1.5 * 2^23 leaves no fraction bits, so the FPU's
// round-to-nearest-even does the work (cheaper than nearbyint, which is a libm call without SSE4.1).
LOWBIT_FORCEINLINE float rne_small(float x) {
  constexpr float kMagic = 12582912.0f;
  return (x + kMagic) - kMagic;
}

// clamp(round_half_even(x), 0, qmax). Clamping to [-1, qmax + 1] first changes no result and keeps
// rne_small in range.
LOWBIT_FORCEINLINE float quantize_code(float x, float qmax) {
  x = std::min(std::max(x, -1.0f), qmax + 1.0f);
  return std::min(std::max(rne_small(x), 0.0f), qmax);
}

LOWBIT_FORCEINLINE float round_f16(float x) { return f16_bits_to_f32(f32_to_f16_bits(x)); }
LOWBIT_FORCEINLINE float round_bf16(float x) { return bf16_bits_to_f32(f32_to_bf16_bits(x)); }

// out[i] = fp16 bits of round_f16(round_f16(code[i] - zero[i]) * scale[i]): hqq's dequantizer in fp16.
// The F16C instructions convert with round-to-nearest-even exactly as f32_to_f16_bits does (subnormals
// and overflow included), so both paths give the same bits; tests compare them.
void f16_values_portable(const float* code, const float* zero, const float* scale, std::uint16_t* out,
                         std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = f32_to_f16_bits(round_f16(code[i] - zero[i]) * scale[i]);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx,f16c"))) void f16_values_f16c(const float* code, const float* zero, const float* scale,
                                                         std::uint16_t* out, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(code + i), _mm256_loadu_ps(zero + i));
    const __m256 d16 = _mm256_cvtph_ps(_mm256_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT));
    const __m256 v = _mm256_mul_ps(d16, _mm256_loadu_ps(scale + i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  f16_values_portable(code + i, zero + i, scale + i, out + i, n - i);
}
#endif

void f16_values(const float* code, const float* zero, const float* scale, std::uint16_t* out, std::int64_t n) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (detail::have_f16c()) return f16_values_f16c(code, zero, scale, out, n);
#endif
  f16_values_portable(code, zero, scale, out, n);
}

// Rounds to the solver's dtype: identity for fp32, fp16 for the emulated CUDA path.
template <bool kF16>
LOWBIT_FORCEINLINE float rd(float x) {
  if constexpr (kF16) {
    return round_f16(x);
  } else {
    return x;
  }
}

std::string bits_list() { return fmt::format("{}", fmt::join(kHqqBits, ", ")); }

bool valid_bits(int bits) { return std::find(std::begin(kHqqBits), std::end(kHqqBits), bits) != std::end(kHqqBits); }

// ---- solver ------------------------------------------------------------------------------------------------

struct SolverConstants {
  float qmax = 15;
  bool l1 = false;            // lp_norm == 1: shrink is |x| - 1/beta
  float inv_beta = 0.1f;      // float(1.0 / beta), as torch casts the Python scalar
  float exponent = -0.3f;     // float(lp_norm - 1)
  float shrink_floor = 0;     // |x| below this shrinks to exactly 0 (a safe bound under the threshold)
};

SolverConstants solver_constants(const HqqConfig& c, double beta, bool f16) {
  SolverConstants k;
  k.qmax = static_cast<float>((1 << c.bits) - 1);
  k.l1 = c.lp_norm == 1.0;
  k.inv_beta = static_cast<float>(1.0 / beta);
  k.exponent = static_cast<float>(c.lp_norm - 1.0);
  // shrink_p(x) > 0 exactly when |x|^(2-p) > 1/beta. Below 0.999 (fp16: 0.95) of that threshold the
  // rounded expression |x| - |x|^(p-1)/beta stays negative by a margin far above its rounding error, so
  // skipping the pow there changes no bit.
  const double threshold = k.l1 ? 1.0 / beta : std::pow(1.0 / beta, 1.0 / (2.0 - c.lp_norm));
  k.shrink_floor = static_cast<float>(threshold * (f16 ? 0.95 : 0.999));
  return k;
}

// hqq's shrink_lp_op on one element: out = |x|; out -= (1/beta) * out^(p-1); clamp_min(0); * sign(x),
// each op rounded to the solver dtype.
template <bool kF16>
LOWBIT_FORCEINLINE float shrink(float d, float a, const SolverConstants& k) {
  if (!(a > k.shrink_floor)) return 0.0f;
  float out;
  if (k.l1) {
    out = rd<kF16>(a - k.inv_beta);
  } else {
    const float p = rd<kF16>(std::pow(a, k.exponent));
    out = rd<kF16>(a - rd<kF16>(k.inv_beta * p));
  }
  out = std::max(out, 0.0f);
  return d < 0 ? -out : out;
}

// One element of one solver iteration (optimize_weights_proximal_legacy_step): adds |W - W_r| to
// `abs_err` and the element's term of the zero update, codes - (W - W_e) * s, to `update`.
template <bool kF16>
LOWBIT_FORCEINLINE void solver_element(float w, float s, float z, const SolverConstants& k, double& abs_err,
                                       double& update) {
  const float q = quantize_code(rd<kF16>(rd<kF16>(w * s) + z), k.qmax);
  const float w_r = rd<kF16>(rd<kF16>(q - z) / s);
  const float d = rd<kF16>(w - w_r);
  const float a = std::fabs(d);
  const float w_e = shrink<kF16>(d, a, k);
  abs_err += a;
  update += rd<kF16>(q - rd<kF16>(rd<kF16>(w - w_e) * s));
}

// The mean torch computes for a group or the whole tensor: the sum rounded to the dtype, divided by the
// count (CPU mean = sum then div_; fp16: summed in fp32, divided, rounded).
template <bool kF16>
float mean_of(double sum, std::int64_t count) {
  return rd<kF16>(static_cast<float>(sum) / static_cast<float>(count));
}

// Columns of G handled together when groups are columns (axis 0): wide enough to stream rows, small
// enough for the accumulators to stay in L1.
constexpr std::int64_t kColumnBlock = 256;

// Runs one iteration over all groups: z -> z_next, and each group's sum |W - W_r| into err.
template <bool kF16>
void solver_iteration(const float* g_mat, const HqqGrouping& gr, const float* s, const float* z, float* z_next,
                      double* err, const SolverConstants& k) {
  const std::int64_t g = gr.group_size;
  if (gr.axis == 1) {
    const std::int64_t grain = std::max<std::int64_t>(1, 16384 / g);
    parallel_for(gr.rows, grain, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t r = b; r < e; ++r) {
        const float* row = g_mat + r * g;
        const float sr = s[r], zr = z[r];
        // Four partial sums in a fixed pattern: independent chains, same result on every run.
        double ae[4] = {0, 0, 0, 0}, au[4] = {0, 0, 0, 0};
        std::int64_t j = 0;
        for (; j + 4 <= g; j += 4) {
          for (int l = 0; l < 4; ++l) solver_element<kF16>(row[j + l], sr, zr, k, ae[l], au[l]);
        }
        for (; j < g; ++j) solver_element<kF16>(row[j], sr, zr, k, ae[0], au[0]);
        err[r] = (ae[0] + ae[1]) + (ae[2] + ae[3]);
        z_next[r] = mean_of<kF16>((au[0] + au[1]) + (au[2] + au[3]), g);
      }
    });
  } else {
    const std::int64_t cols = gr.cols;
    parallel_for(cols, 64, [&](std::int64_t b, std::int64_t e) {
      double ae[kColumnBlock], au[kColumnBlock];
      for (std::int64_t c0 = b; c0 < e; c0 += kColumnBlock) {
        const std::int64_t nb = std::min(kColumnBlock, e - c0);
        std::fill(ae, ae + nb, 0.0);
        std::fill(au, au + nb, 0.0);
        for (std::int64_t j = 0; j < g; ++j) {
          const float* row = g_mat + j * cols + c0;
          for (std::int64_t t = 0; t < nb; ++t) solver_element<kF16>(row[t], s[c0 + t], z[c0 + t], k, ae[t], au[t]);
        }
        for (std::int64_t t = 0; t < nb; ++t) {
          err[c0 + t] = ae[t];
          z_next[c0 + t] = mean_of<kF16>(au[t], g);
        }
      }
    });
  }
}

// optimize_weights_proximal_legacy: refines z in place (s only changes dtype). `w` is G in fp32 (for
// the fp16 path already rounded to fp16), s and z already in the solver dtype.
template <bool kF16>
void run_solver(const float* w, const HqqGrouping& gr, const HqqConfig& c, const float* s, std::vector<float>& z,
                HqqSolverTrace* trace) {
  const std::int64_t groups = gr.groups();
  const std::int64_t numel = gr.rows * gr.cols;
  std::vector<float> z_next(static_cast<std::size_t>(groups));
  std::vector<double> err(static_cast<std::size_t>(groups));
  float best = std::numeric_limits<float>::infinity();
  double beta = c.beta;
  for (int it = 0; it < c.iters; ++it) {
    const SolverConstants k = solver_constants(c, beta, kF16);
    solver_iteration<kF16>(w, gr, s, z.data(), z_next.data(), err.data(), k);
    double total = 0;
    for (const double e : err) total += e;
    const float current = mean_of<kF16>(total, numel);
    z.swap(z_next);  // the update happens before the test, as in the reference
    if (c.beta_schedule) beta *= c.kappa;
    if (trace) trace->objective.push_back(current);
    if (c.early_stop) {
      if (current < best) {
        best = current;
      } else {
        if (trace) trace->stopped_early = true;
        break;
      }
    }
  }
}

// ---- packing -------------------------------------------------------------------------------------------------

std::int64_t packed_rows(HqqPacking p, std::int64_t rows) {
  const std::int64_t per = hqq_codes_per_word(p);
  return p == HqqPacking::Bit3I32 ? (rows + per - 1) / per : rows / per;
}

void check_packable(HqqPacking p, std::int64_t rows, const HqqGrouping& gr, std::string_view operation) {
  const int per = hqq_codes_per_word(p);
  if (p == HqqPacking::Bit3I32 || p == HqqPacking::Bit8U8) return;
  LOWBIT_CHECK(rows % per == 0, ErrorCode::InvalidArgument,
               "{}: {} packing pairs row r of the code matrix with rows r + R/{} .., so R must be a multiple of {}, "
               "but R = {} ({}, group_size = {}); choose a group_size (or axis) that makes R a multiple of {}",
               operation, hqq_packing_name(p), per, per, rows,
               gr.axis == 1 ? "axis 1: R = n*k/group_size" : "axis 0: R = group_size", gr.group_size, per);
}

// ---- validation of a QuantizedTensor ----------------------------------------------------------------------

struct Layout {
  HqqGrouping grouping;
  HqqPacking packing = HqqPacking::Bit4U8;
  DType meta_dtype = DType::F16;
  const Tensor* w_q = nullptr;
  const Tensor* scale = nullptr;
  const Tensor* zero = nullptr;
};

Layout check_quantized(const QuantizedTensor& q, std::string_view operation) {
  LOWBIT_CHECK(q.method == "hqq", ErrorCode::InvalidArgument, "{}: expected a QuantizedTensor of method 'hqq', got '{}'",
               operation, q.method);
  LOWBIT_CHECK(q.shape.rank() == 2, ErrorCode::ShapeMismatch, "{}: hqq weight shape {} is not 2-D", operation,
               q.shape.to_string());
  LOWBIT_CHECK(valid_bits(q.params.bits), ErrorCode::InvalidArgument, "{}: bits = {} is not supported; valid: {}",
               operation, q.params.bits, bits_list());
  Layout l;
  l.grouping = hqq_grouping(q.shape, q.params.group_size, q.params.axis, operation);
  l.packing = hqq_packing_for_bits(q.params.bits);
  l.w_q = &q.component("W_q");
  l.scale = &q.component("scale");
  l.zero = &q.component("zero");
  const HqqGrouping& gr = l.grouping;
  const Shape packed{packed_rows(l.packing, gr.rows), gr.cols};
  LOWBIT_CHECK(l.w_q->dtype() == hqq_packing_dtype(l.packing), ErrorCode::DTypeMismatch,
               "{}: W_q is {}; {}-bit codes ({}) are stored as {}", operation, l.w_q->describe(), q.params.bits,
               hqq_packing_name(l.packing), dtype_name(hqq_packing_dtype(l.packing)));
  LOWBIT_CHECK(l.w_q->shape() == packed, ErrorCode::ShapeMismatch,
               "{}: W_q is {}; shape {} with group_size {} and axis {} needs {} ({} packing of a [{}, {}] code matrix)",
               operation, l.w_q->describe(), q.shape.to_string(), gr.group_size, gr.axis, packed.to_string(),
               hqq_packing_name(l.packing), gr.rows, gr.cols);
  check_packable(l.packing, gr.rows, gr, operation);
  l.meta_dtype = l.scale->dtype();
  for (const Tensor* t : {l.scale, l.zero}) {
    const char* name = t == l.scale ? "scale" : "zero";
    LOWBIT_CHECK(t->dtype() == DType::F16 || t->dtype() == DType::BF16 || t->dtype() == DType::F32,
                 ErrorCode::DTypeMismatch, "{}: {} is {}; expected f16, bf16 or f32", operation, name, t->describe());
    LOWBIT_CHECK(t->dtype() == l.meta_dtype, ErrorCode::DTypeMismatch, "{}: scale is {} but zero is {}; they share the compute dtype",
                 operation, l.scale->describe(), l.zero->describe());
    LOWBIT_CHECK(t->shape() == gr.meta_shape(), ErrorCode::ShapeMismatch,
                 "{}: {} is {}; axis {} with {} groups needs {}", operation, name, t->describe(), gr.axis, gr.groups(),
                 gr.meta_shape().to_string());
  }
  return l;
}

std::vector<float> meta_values(const Tensor& t) {
  const Tensor f = t.to(DType::F32);
  const float* p = f.data<float>();
  return std::vector<float>(p, p + f.numel());
}

void check_config(const HqqConfig& c, std::string_view op) {
  LOWBIT_CHECK(valid_bits(c.bits), ErrorCode::InvalidArgument, "{}: bits = {} is not supported; choose one of {}", op,
               c.bits, bits_list());
  LOWBIT_CHECK(c.axis == 0 || c.axis == 1, ErrorCode::InvalidArgument, "{}: axis = {}; choose 0 or 1", op, c.axis);
  LOWBIT_CHECK(c.lp_norm > 0 && c.lp_norm <= 1, ErrorCode::InvalidArgument,
               "{}: lp_norm = {} is outside (0, 1] (the reference default is 0.7)", op, c.lp_norm);
  LOWBIT_CHECK(c.beta > 0 && std::isfinite(c.beta), ErrorCode::InvalidArgument,
               "{}: beta = {} must be finite and > 0 (the reference default is 10)", op, c.beta);
  LOWBIT_CHECK(c.kappa > 1 && std::isfinite(c.kappa), ErrorCode::InvalidArgument,
               "{}: kappa = {} must be finite and > 1 (the reference default is 1.01)", op, c.kappa);
  LOWBIT_CHECK(c.iters >= 1, ErrorCode::InvalidArgument, "{}: iters = {} must be >= 1 (the reference default is 20)",
               op, c.iters);
  LOWBIT_CHECK(c.solver_dtype == DType::F32 || c.solver_dtype == DType::F16, ErrorCode::InvalidArgument,
               "{}: solver_dtype = {}; choose f32 (hqq on CPU) or f16 (hqq on CUDA)", op, dtype_name(c.solver_dtype));
  LOWBIT_CHECK(c.compute_dtype == DType::F16 || c.compute_dtype == DType::BF16 || c.compute_dtype == DType::F32,
               ErrorCode::InvalidArgument, "{}: compute_dtype = {}; choose f16, bf16 or f32", op,
               dtype_name(c.compute_dtype));
}

Tensor meta_tensor(const std::vector<float>& values, const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  const std::size_t n = values.size();
  switch (dtype) {
    case DType::F32: std::memcpy(t.data<float>(), values.data(), n * sizeof(float)); break;
    case DType::F16: {
      Half* p = t.data<Half>();
      for (std::size_t i = 0; i < n; ++i) p[i] = Half::from_float(values[i]);
      break;
    }
    default: {
      BFloat16* p = t.data<BFloat16>();
      for (std::size_t i = 0; i < n; ++i) p[i] = BFloat16::from_float(values[i]);
      break;
    }
  }
  return t;
}

}  // namespace

// ---- public: names, packing -------------------------------------------------------------------------------

std::string_view hqq_packing_name(HqqPacking p) noexcept { return kPackingNames[static_cast<int>(p)]; }

std::optional<HqqPacking> hqq_packing_from_name(std::string_view name) noexcept {
  for (const HqqPacking p : kAllHqqPackings) {
    if (hqq_packing_name(p) == name) return p;
  }
  return std::nullopt;
}

DType hqq_packing_dtype(HqqPacking p) noexcept { return p == HqqPacking::Bit3I32 ? DType::I32 : DType::U8; }

Tensor hqq_pack(const Tensor& codes, HqqPacking packing) {
  LOWBIT_CHECK(codes.defined() && codes.rank() == 2 && codes.dtype() == DType::U8, ErrorCode::InvalidArgument,
               "hqq_pack: codes must be a u8 [R, C] matrix, got {}", codes.defined() ? codes.describe() : "undefined");
  const Tensor src = codes.contiguous();
  const std::int64_t rows = src.size(0), cols = src.size(1);
  const int per = hqq_codes_per_word(packing);
  const int bits = hqq_packing_bits(packing);
  LOWBIT_CHECK(packing == HqqPacking::Bit3I32 || rows % per == 0, ErrorCode::ShapeMismatch,
               "hqq_pack: {} needs R a multiple of {}, got codes {}", hqq_packing_name(packing), per, src.describe());
  const std::uint8_t* in = src.data<std::uint8_t>();
  for (std::int64_t i = 0; i < rows * cols; ++i) {
    LOWBIT_CHECK(in[i] < (1u << bits), ErrorCode::InvalidArgument,
                 "hqq_pack: code {} at row {}, column {} does not fit {} bits ({})", in[i], i / cols, i % cols, bits,
                 hqq_packing_name(packing));
  }
  const std::int64_t prow = packed_rows(packing, rows);
  const std::int64_t step = prow;  // slab height (3 bit: of the zero-padded matrix)
  Tensor out = Tensor::empty({prow, cols}, hqq_packing_dtype(packing));
  parallel_for(prow, std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(cols, 1)), [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t r = b; r < e; ++r) {
      for (std::int64_t c = 0; c < cols; ++c) {
        std::uint32_t word = 0;
        for (int j = 0; j < per; ++j) {
          const std::int64_t src_row = r + j * step;
          const std::uint32_t code = src_row < rows ? in[src_row * cols + c] : 0u;  // 3 bit: zero padding
          word |= code << hqq_code_shift(packing, j);
        }
        if (packing == HqqPacking::Bit3I32) {
          out.data<std::int32_t>()[r * cols + c] = static_cast<std::int32_t>(word);
        } else {
          out.data<std::uint8_t>()[r * cols + c] = static_cast<std::uint8_t>(word);
        }
      }
    }
  });
  return out;
}

Tensor hqq_unpack(const Tensor& packed, HqqPacking packing, std::int64_t rows) {
  const DType want = hqq_packing_dtype(packing);
  LOWBIT_CHECK(packed.defined() && packed.rank() == 2 && packed.dtype() == want, ErrorCode::InvalidArgument,
               "hqq_unpack: {} codes must be a {} [P, C] matrix, got {}", hqq_packing_name(packing), dtype_name(want),
               packed.defined() ? packed.describe() : "undefined");
  const Tensor src = packed.contiguous();
  const std::int64_t prow = src.size(0), cols = src.size(1);
  const int per = hqq_codes_per_word(packing);
  const std::int64_t all = prow * per;
  if (rows < 0) rows = all;
  LOWBIT_CHECK(rows <= all, ErrorCode::ShapeMismatch, "hqq_unpack: {} rows asked of {} holding {}", rows,
               src.describe(), all);
  Tensor out = Tensor::empty({rows, cols}, DType::U8);
  std::uint8_t* o = out.data<std::uint8_t>();
  const bool words = packing == HqqPacking::Bit3I32;
  const std::uint8_t* in8 = words ? nullptr : src.data<std::uint8_t>();
  const std::int32_t* in32 = words ? src.data<std::int32_t>() : nullptr;
  parallel_for(prow, std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(cols, 1)), [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t r = b; r < e; ++r) {
      for (int j = 0; j < per; ++j) {
        const std::int64_t dst_row = r + j * prow;
        if (dst_row >= rows) continue;
        std::uint8_t* dst = o + dst_row * cols;
        for (std::int64_t c = 0; c < cols; ++c) {
          const std::uint32_t word =
              words ? static_cast<std::uint32_t>(in32[r * cols + c]) : static_cast<std::uint32_t>(in8[r * cols + c]);
          dst[c] = static_cast<std::uint8_t>(hqq_code_at(word, packing, j));
        }
      }
    }
  });
  return out;
}

// ---- public: grouping -------------------------------------------------------------------------------------

HqqGrouping hqq_grouping(const Shape& weight_shape, std::int64_t group_size, int axis, std::string_view operation) {
  LOWBIT_CHECK(weight_shape.rank() == 2, ErrorCode::ShapeMismatch, "{}: expected a 2-D weight [n, k], got shape {}",
               operation, weight_shape.to_string());
  LOWBIT_CHECK(axis == 0 || axis == 1, ErrorCode::InvalidArgument, "{}: axis = {}; choose 0 or 1", operation, axis);
  const std::int64_t n = weight_shape[0], k = weight_shape[1];
  const std::int64_t numel = n * k;
  LOWBIT_CHECK(numel > 0, ErrorCode::ShapeMismatch, "{}: weight shape {} is empty", operation, weight_shape.to_string());
  HqqGrouping gr;
  gr.axis = axis;
  if (group_size == -1) {
    gr.group_size = axis == 1 ? k : n;
  } else {
    LOWBIT_CHECK(group_size > 0, ErrorCode::InvalidArgument,
                 "{}: group_size = {}; choose a positive divisor of n*k, or -1 for one group per {}", operation,
                 group_size, axis == 1 ? "row" : "column");
    gr.group_size = group_size;
  }
  LOWBIT_CHECK(numel % gr.group_size == 0, ErrorCode::InvalidArgument,
               "{}: weight {} has n*k = {}, not a multiple of group_size = {} (remainder {}); hqq groups the flattened "
               "weight, so choose a group_size that divides n*k, or -1",
               operation, weight_shape.to_string(), numel, gr.group_size, numel % gr.group_size);
  gr.rows = axis == 1 ? numel / gr.group_size : gr.group_size;
  gr.cols = axis == 1 ? gr.group_size : numel / gr.group_size;
  return gr;
}

// ---- public: quantize ---------------------------------------------------------------------------------------

QuantizedTensor quantize_hqq(const Tensor& weight, const HqqConfig& config) {
  return quantize_hqq(weight, config, nullptr);
}

QuantizedTensor quantize_hqq(const Tensor& weight, const HqqConfig& config, HqqSolverTrace* trace) {
  constexpr std::string_view op = "quantize_hqq";
  check_config(config, op);
  LOWBIT_CHECK(weight.defined() && weight.rank() == 2, ErrorCode::ShapeMismatch, "{}: expected a 2-D weight [n, k], got {}",
               op, weight.defined() ? weight.describe() : "undefined");
  const HqqGrouping gr = hqq_grouping(weight.shape(), config.group_size, config.axis, op);
  const HqqPacking packing = hqq_packing_for_bits(config.bits);
  check_packable(packing, gr.rows, gr, op);
  const Tensor wt = float_matrix(weight, op);  // fp32, contiguous: G is the same memory, reshaped
  const float* w = wt.data<float>();
  const std::int64_t groups = gr.groups();
  const std::int64_t g = gr.group_size;
  const std::int64_t cols = gr.cols;
  const bool axis1 = gr.axis == 1;
  const float qmax = static_cast<float>((1 << config.bits) - 1);
  const bool round_zero = config.round_zero.value_or(config.bits == 4);
  if (trace) *trace = HqqSolverTrace{};

  // 1. min-max inverse scale and zero, in fp32.
  std::vector<float> s(static_cast<std::size_t>(groups)), z(static_cast<std::size_t>(groups));
  parallel_for(groups, axis1 ? std::max<std::int64_t>(1, 16384 / g) : kColumnBlock, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      float mn = std::numeric_limits<float>::infinity(), mx = -mn;
      for (std::int64_t j = 0; j < g; ++j) {
        const float v = axis1 ? w[i * g + j] : w[j * cols + i];
        mn = std::min(mn, v);
        mx = std::max(mx, v);
      }
      const float den = mx - mn;
      float si = (1.0f / den) * qmax;           // Python's qmax / den: reciprocal, then multiply
      if (std::fabs(den) <= 1e-4f) si = 1.0f;   // hqq >= 0.2.7: constant groups get s = 1
      si = std::min(si, 2e4f);
      float zi = -mn * si;
      if (round_zero) zi = round_half_even(zi);
      s[static_cast<std::size_t>(i)] = si;
      z[static_cast<std::size_t>(i)] = zi;
    }
  });

  // 2. the solver, in its dtype.
  if (config.optimize) {
    if (config.solver_dtype == DType::F16) {
      Tensor wh = Tensor::empty(wt.shape(), DType::F32);  // W_f = tensor.to(float16)
      float* ph = wh.data<float>();
      parallel_for(wt.numel(), 1 << 16, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t i = b; i < e; ++i) ph[i] = round_f16(w[i]);
      });
      for (std::int64_t i = 0; i < groups; ++i) {
        s[static_cast<std::size_t>(i)] = round_f16(s[static_cast<std::size_t>(i)]);
        const float zh = round_f16(z[static_cast<std::size_t>(i)]);
        LOWBIT_CHECK(std::isfinite(zh), ErrorCode::Numerical,
                     "{}: the zero point {} of group {} overflows fp16 in the f16 solver (hqq on CUDA would give NaN); "
                     "use solver_dtype f32",
                     op, z[static_cast<std::size_t>(i)], i);
        z[static_cast<std::size_t>(i)] = zh;
      }
      run_solver<true>(ph, gr, config, s.data(), z, trace);
    } else {
      run_solver<false>(w, gr, config, s.data(), z, trace);
    }
  }

  // 3. final codes in fp32 arithmetic (fp32 weights times s and z in the solver's dtype).
  Tensor codes = Tensor::empty({gr.rows, gr.cols}, DType::U8);
  std::uint8_t* cp = codes.data<std::uint8_t>();
  std::vector<double> final_err(trace ? static_cast<std::size_t>(groups) : 0);
  parallel_for(groups, axis1 ? std::max<std::int64_t>(1, 16384 / g) : kColumnBlock, [&](std::int64_t b, std::int64_t e) {
    if (axis1) {
      for (std::int64_t r = b; r < e; ++r) {
        const float sr = s[static_cast<std::size_t>(r)], zr = z[static_cast<std::size_t>(r)];
        double acc = 0;
        for (std::int64_t j = 0; j < g; ++j) {
          const float v = w[r * g + j];
          const float q = quantize_code(v * sr + zr, qmax);
          cp[r * g + j] = static_cast<std::uint8_t>(q);
          if (!final_err.empty()) acc += std::fabs(v - (q - zr) / sr);
        }
        if (!final_err.empty()) final_err[static_cast<std::size_t>(r)] = acc;
      }
    } else {
      for (std::int64_t j = 0; j < g; ++j) {
        for (std::int64_t c = b; c < e; ++c) {
          const float sc = s[static_cast<std::size_t>(c)], zc = z[static_cast<std::size_t>(c)];
          const float v = w[j * cols + c];
          const float q = quantize_code(v * sc + zc, qmax);
          cp[j * cols + c] = static_cast<std::uint8_t>(q);
          if (!final_err.empty()) final_err[static_cast<std::size_t>(c)] += std::fabs(v - (q - zc) / sc);
        }
      }
    }
  });
  if (!final_err.empty()) {
    double total = 0;
    for (const double e : final_err) total += e;
    trace->final_objective = static_cast<float>(total / static_cast<double>(gr.rows * gr.cols));
  }

  // 4. stored scale = 1 / s (a reciprocal in the solver's dtype), then both cast to the compute dtype.
  const bool f16_solver = config.optimize && config.solver_dtype == DType::F16;
  std::vector<float> scale(static_cast<std::size_t>(groups));
  for (std::size_t i = 0; i < scale.size(); ++i) {
    scale[i] = 1.0f / s[i];
    if (f16_solver) scale[i] = round_f16(scale[i]);
  }

  QuantizedTensor q;
  q.method = "hqq";
  q.shape = weight.shape();
  q.dtype = weight.dtype();
  q.params.bits = config.bits;
  q.params.group_size = g;
  q.params.axis = gr.axis;
  q.components["W_q"] = hqq_pack(codes, packing);
  q.components["scale"] = meta_tensor(scale, gr.meta_shape(), config.compute_dtype);
  q.components["zero"] = meta_tensor(z, gr.meta_shape(), config.compute_dtype);
  return q;
}

// ---- public: dequantize --------------------------------------------------------------------------------------

Tensor hqq_codes(const QuantizedTensor& q) {
  const Layout l = check_quantized(q, "hqq_codes");
  return hqq_unpack(*l.w_q, l.packing, l.grouping.rows);
}

Tensor dequantize_hqq_reference(const QuantizedTensor& q) {
  const Layout l = check_quantized(q, "dequantize_hqq_reference");
  const HqqGrouping& gr = l.grouping;
  const Tensor codes = hqq_unpack(*l.w_q, l.packing, gr.rows);
  const std::vector<float> scale = meta_values(*l.scale);
  const std::vector<float> zero = meta_values(*l.zero);
  Tensor out = Tensor::empty(q.shape, DType::F32);
  float* o = out.data<float>();
  const std::uint8_t* c = codes.data<std::uint8_t>();
  // G [R, C] is W reshaped, so G[r, c] is flat element r*C + c for either axis.
  for (std::int64_t r = 0; r < gr.rows; ++r) {
    for (std::int64_t col = 0; col < gr.cols; ++col) {
      const std::size_t group = static_cast<std::size_t>(gr.axis == 1 ? r : col);
      o[r * gr.cols + col] = hqq_dequant_value(c[r * gr.cols + col], zero[group], scale[group]);
    }
  }
  return out;
}

Tensor dequantize_hqq(const QuantizedTensor& q) {
  const Layout l = check_quantized(q, "dequantize_hqq");
  const HqqGrouping& gr = l.grouping;
  const std::vector<float> scale = meta_values(*l.scale);
  const std::vector<float> zero = meta_values(*l.zero);
  const DType dt = l.meta_dtype;
  Tensor out = Tensor::empty(q.shape, dt);
  const Tensor packed = l.w_q->contiguous();
  const std::int64_t prow = packed.size(0), cols = gr.cols;
  const int levels = 1 << q.params.bits;
  const bool words = l.packing == HqqPacking::Bit3I32;
  const auto* in8 = words ? nullptr : packed.data<std::uint8_t>();
  const auto* in32 = words ? packed.data<std::int32_t>() : nullptr;
  const std::uint32_t mask = (1u << hqq_packing_bits(l.packing)) - 1u;
  // Row r of G is slab r / P of packed row r % P: codes are read straight from W_q, never unpacked whole.
  auto decode_row = [&](std::int64_t r, std::int64_t c0, std::int64_t count, float* codes_f) {
    const int shift = hqq_code_shift(l.packing, static_cast<int>(r / prow));
    const std::int64_t src = (r % prow) * cols + c0;
    if (words) {
      for (std::int64_t c = 0; c < count; ++c) codes_f[c] = static_cast<float>((static_cast<std::uint32_t>(in32[src + c]) >> shift) & mask);
    } else {
      for (std::int64_t c = 0; c < count; ++c) codes_f[c] = static_cast<float>((static_cast<std::uint32_t>(in8[src + c]) >> shift) & mask);
    }
  };
  // out[i] = value of codes_f[i] with zero z[i], scale s[i], as dt bits.
  auto values = [&](const float* codes_f, const float* z, const float* s, std::int64_t index, std::int64_t count) {
    if (dt == DType::F16) {
      f16_values(codes_f, z, s, static_cast<std::uint16_t*>(out.raw_data()) + index, count);
    } else if (dt == DType::BF16) {
      auto* o = static_cast<std::uint16_t*>(out.raw_data()) + index;
      for (std::int64_t i = 0; i < count; ++i) o[i] = f32_to_bf16_bits(round_bf16(codes_f[i] - z[i]) * s[i]);
    } else {
      float* o = static_cast<float*>(out.raw_data()) + index;
      for (std::int64_t i = 0; i < count; ++i) o[i] = (codes_f[i] - z[i]) * s[i];
    }
  };
  constexpr std::int64_t kChunk = 1024;
  parallel_for(gr.rows, std::max<std::int64_t>(1, 16384 / cols), [&](std::int64_t b, std::int64_t e) {
    std::vector<float> codes_f(kChunk), zs(kChunk), ss(kChunk);
    std::array<float, 256> level_f{};
    for (int v = 0; v < levels; ++v) level_f[static_cast<std::size_t>(v)] = static_cast<float>(v);
    const std::size_t elem = dtype_size(dt);
    for (std::int64_t r = b; r < e; ++r) {
      if (gr.axis == 1 && levels * 2 <= cols) {
        // One group per row: its `levels` values once, then a table lookup per element.
        std::fill(zs.begin(), zs.begin() + levels, zero[static_cast<std::size_t>(r)]);
        std::fill(ss.begin(), ss.begin() + levels, scale[static_cast<std::size_t>(r)]);
        std::uint32_t scratch32[256];  // the table, as f32 bits or (first half) 16-bit patterns
        std::uint16_t* scratch16 = reinterpret_cast<std::uint16_t*>(scratch32);
        if (dt == DType::F16) {
          f16_values(level_f.data(), zs.data(), ss.data(), scratch16, levels);
        } else if (dt == DType::BF16) {
          for (int v = 0; v < levels; ++v) scratch16[v] = f32_to_bf16_bits(round_bf16(level_f[static_cast<std::size_t>(v)] - zs[0]) * ss[0]);
        } else {
          for (int v = 0; v < levels; ++v) scratch32[v] = float_bits((level_f[static_cast<std::size_t>(v)] - zs[0]) * ss[0]);
        }
        const int shift = hqq_code_shift(l.packing, static_cast<int>(r / prow));
        const std::int64_t src = (r % prow) * cols;
        if (elem == 2) {
          auto* o = static_cast<std::uint16_t*>(out.raw_data()) + r * cols;
          for (std::int64_t c = 0; c < cols; ++c) {
            const std::uint32_t w = words ? static_cast<std::uint32_t>(in32[src + c]) : in8[src + c];
            o[c] = scratch16[(w >> shift) & mask];
          }
        } else {
          auto* o = static_cast<std::uint32_t*>(out.raw_data()) + r * cols;
          for (std::int64_t c = 0; c < cols; ++c) {
            const std::uint32_t w = words ? static_cast<std::uint32_t>(in32[src + c]) : in8[src + c];
            o[c] = scratch32[(w >> shift) & mask];
          }
        }
        continue;
      }
      for (std::int64_t c0 = 0; c0 < cols; c0 += kChunk) {
        const std::int64_t count = std::min(kChunk, cols - c0);
        decode_row(r, c0, count, codes_f.data());
        if (gr.axis == 1) {
          std::fill(zs.begin(), zs.begin() + count, zero[static_cast<std::size_t>(r)]);
          std::fill(ss.begin(), ss.begin() + count, scale[static_cast<std::size_t>(r)]);
          values(codes_f.data(), zs.data(), ss.data(), r * cols + c0, count);
        } else {
          values(codes_f.data(), zero.data() + c0, scale.data() + c0, r * cols + c0, count);
        }
      }
    }
  });
  return out;
}

Tensor matmul_hqq_reference(const QuantizedTensor& q, const Tensor& x) {
  return matmul_reference(x, dequantize_hqq_reference(q));
}

// ---- public: registry ----------------------------------------------------------------------------------------

MethodInfo hqq_method_info() {
  MethodInfo info;
  info.name = "hqq";
  info.summary =
      "HQQ (mobiusml/hqq): calibration-free 8/6/5/4/3/2/1-bit with min-max scales and zero points refined by a "
      "half-quadratic solver; hqq's bit packing; axis 0 or 1";
  info.defaults.bits = 4;
  info.defaults.group_size = 64;
  info.defaults.axis = 1;
  info.quantize = [](const Tensor& weight, const QuantParams& p) {
    LOWBIT_CHECK(!p.symmetric && p.block_size == 0 && !p.double_quant && p.nested_block_size == 0 && p.threshold == 0 &&
                     p.variant.empty(),
                 ErrorCode::InvalidArgument,
                 "quantize_hqq: hqq takes bits, group_size and axis only; got symmetric={} block_size={} double_quant={} "
                 "threshold={} variant='{}'",
                 p.symmetric, p.block_size, p.double_quant, p.threshold, p.variant);
    HqqConfig c;
    c.bits = p.bits;
    c.group_size = p.group_size;
    c.axis = p.axis;
    return quantize_hqq(weight, c);
  };
  info.dequantize = [](const QuantizedTensor& q) { return dequantize_hqq_reference(q); };
  info.matmul = [](const QuantizedTensor& q, const Tensor& x) { return matmul_hqq_reference(q, x); };
  return info;
}

}  // namespace lowbit::quant
