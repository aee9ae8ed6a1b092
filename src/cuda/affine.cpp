// The affine family's host side: repacking (cuda/affine.hpp), its CPU decode, planning, and the prepare()
// and matmul() halves that src/cuda/matmul.cpp dispatches to (formats.hpp).
#include "lowbit/cuda/affine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "affine_kernels.hpp"
#include "formats.hpp"
#include "lowbit/core/error.hpp"
#include "lowbit/core/half.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/quant/affine.hpp"
#include "weight_only.hpp"

namespace lowbit::cuda {

std::string describe_affine_built() {
  std::string out;
  for (const AffineKernel& e : kAffineBuilt) {
    if (!out.empty()) out += ", ";
    switch (e.regime) {
      case Regime::Gemv: out += fmt::format("gemv {}-bit {} m<={}", e.bits, dtype_name(e.dtype), e.tile); break;
      case Regime::TensorCore:
        out += fmt::format("tensor-core {}-bit {} m_tile={}", e.bits, dtype_name(e.dtype), e.tile);
        break;
      case Regime::Dequantize: out += fmt::format("dequantize {}-bit {}", e.bits, dtype_name(e.dtype)); break;
    }
  }
  return out;
}

// ---- pack positions ----------------------------------------------------------------------------------

namespace {

// Where code j (0..31) of a pack lives: bit `shift` of word `word` (3-bit columns 30 and 31 excepted).
struct Slot {
  int word = 0;
  int shift = 0;
};

Slot slot_of(int bits, int j) {
  switch (bits) {
    case 4: return {j / 8, 4 * ((j % 8) / 2) + 16 * (j % 2)};
    case 2: return {j / 16, 2 * ((j % 16) / 2) + 16 * (j % 2)};
    case 3: return {j / 10, 3 * ((j % 10) / 2) + 16 * (j % 2)};  // j < 30
    case 8: return {j / 4, 8 * (j % 4)};
    default: break;
  }
  LOWBIT_THROW(ErrorCode::InvalidArgument, "affine pack: bits = {}; built for 2, 3, 4, 8", bits);
}

// The words of one pack from its 32 codes (each already < 2^bits): affine_pack_set_code without checks.
void pack_words(int bits, const int (&codes)[32], std::uint32_t* words) {
  for (int w = 0; w < bits; ++w) words[w] = 0;
  const int last = bits == 3 ? 30 : 32;
  for (int j = 0; j < last; ++j) {
    const Slot s = slot_of(bits, j);
    words[s.word] |= static_cast<std::uint32_t>(codes[j]) << s.shift;
  }
  if (bits == 3) {
    for (int b = 0; b < 3; ++b) {
      words[b] |= static_cast<std::uint32_t>((codes[30] >> b) & 1) << 15;
      words[b] |= static_cast<std::uint32_t>((codes[31] >> b) & 1) << 31;
    }
  }
}

}  // namespace

int affine_pack_code_at(const std::uint32_t* words, int bits, int j) {
  LOWBIT_CHECK(j >= 0 && j < 32, ErrorCode::InvalidArgument, "affine pack: code index {} outside 0..31", j);
  if (bits == 3 && j >= 30) {
    const int bit = j == 30 ? 15 : 31;
    int code = 0;
    for (int b = 0; b < 3; ++b) code |= static_cast<int>((words[b] >> bit) & 1u) << b;
    return code;
  }
  const Slot s = slot_of(bits, j);
  return static_cast<int>((words[s.word] >> s.shift) & ((1u << bits) - 1u));
}

void affine_pack_set_code(std::uint32_t* words, int bits, int j, int code) {
  LOWBIT_CHECK(j >= 0 && j < 32, ErrorCode::InvalidArgument, "affine pack: code index {} outside 0..31", j);
  LOWBIT_CHECK(code >= 0 && code < (1 << bits), ErrorCode::InvalidArgument, "affine pack: code {} for {} bits", code,
               bits);
  if (bits == 3 && j >= 30) {
    const int bit = j == 30 ? 15 : 31;
    for (int b = 0; b < 3; ++b) {
      words[b] = (words[b] & ~(1u << bit)) | (static_cast<std::uint32_t>((code >> b) & 1) << bit);
    }
    return;
  }
  const Slot s = slot_of(bits, j);
  const std::uint32_t mask = ((1u << bits) - 1u) << s.shift;
  words[s.word] = (words[s.word] & ~mask) | (static_cast<std::uint32_t>(code) << s.shift);
}

// ---- repacking ---------------------------------------------------------------------------------------

AffineRepacked repack_affine(const quant::QuantizedTensor& q) {
  constexpr std::string_view op = "cuda::prepare(affine)";
  LOWBIT_CHECK(q.method == "affine", ErrorCode::InvalidArgument, "{}: quantized tensor is '{}'", op, q.method);
  LOWBIT_CHECK(q.shape.rank() == 2, ErrorCode::Corrupt, "{}: shape {} is not 2-D", op, q.shape.to_string());
  const int bits = q.params.bits;
  LOWBIT_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8, ErrorCode::Unsupported,
               "{}: bits = {}; kernels are built for 2, 3, 4 and 8 bits", op, bits);
  const std::int64_t n = q.shape[0];
  const std::int64_t k = q.shape[1];
  LOWBIT_CHECK(n > 0 && k > 0 && k < (std::int64_t{1} << 30), ErrorCode::ShapeMismatch, "{}: weight [{}, {}]", op, n,
               k);
  const std::int64_t gs = q.params.group_size;
  LOWBIT_CHECK(gs >= -1, ErrorCode::Corrupt, "{}: group_size = {} is not valid", op, gs);
  const bool per_tensor = gs == 0;
  const std::int64_t groups_in = quant::affine_groups_per_row(k, gs);
  const std::int64_t scale_rows = per_tensor ? 1 : n;

  const Tensor& codes_t = q.component("codes");
  const Tensor& scales_t = q.component("scales");
  const Tensor& zeros_t = q.component("zeros");
  const Shape group_shape{scale_rows, groups_in};
  LOWBIT_CHECK(codes_t.dtype() == DType::U8 && codes_t.shape() == q.shape, ErrorCode::Corrupt,
               "{}: codes are {}; expected u8{}", op, codes_t.describe(), q.shape.to_string());
  LOWBIT_CHECK((scales_t.dtype() == DType::F16 || scales_t.dtype() == DType::F32) && scales_t.shape() == group_shape,
               ErrorCode::Corrupt, "{}: scales are {}; expected f16 or f32 {} (k = {}, group_size = {})", op,
               scales_t.describe(), group_shape.to_string(), k, gs);
  LOWBIT_CHECK(zeros_t.dtype() == DType::U8 && zeros_t.shape() == group_shape, ErrorCode::Corrupt,
               "{}: zeros are {}; expected u8{}", op, zeros_t.describe(), group_shape.to_string());
  const Tensor codes = codes_t.contiguous();
  const Tensor scales_in = scales_t.contiguous();
  const Tensor zeros_in = zeros_t.contiguous();
  const int maxq = (1 << bits) - 1;
  {
    const std::uint8_t* z = zeros_in.data<std::uint8_t>();
    for (std::int64_t i = 0; i < zeros_in.numel(); ++i) {
      LOWBIT_CHECK(z[i] <= maxq, ErrorCode::Corrupt, "{}: zero {} at row {}, group {} exceeds 2^{} - 1 = {}", op, z[i],
                   i / groups_in, i % groups_in, bits, maxq);
    }
  }

  // Column order: act-order's stable sort by g_idx (exllama's q_perm), or the identity.
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  std::vector<std::int32_t> group_of_sorted(static_cast<std::size_t>(k));  // group of sorted column j
  const std::int64_t group_nominal = gs >= 1 ? gs : k;
  for (std::int64_t c = 0; c < k; ++c) group_of_sorted[static_cast<std::size_t>(c)] = static_cast<std::int32_t>(c / group_nominal);
  if (q.has("g_idx")) {
    const Tensor& gi_t = q.component("g_idx");
    LOWBIT_CHECK(gi_t.dtype() == DType::I32 && gi_t.shape() == Shape{k}, ErrorCode::Corrupt,
                 "{}: g_idx is {}; expected i32[{}]", op, gi_t.describe(), k);
    const Tensor gi_c = gi_t.contiguous();
    const std::int32_t* gi = gi_c.data<std::int32_t>();
    for (std::int64_t c = 0; c < k; ++c) {
      LOWBIT_CHECK(gi[c] >= 0 && gi[c] < groups_in, ErrorCode::Corrupt,
                   "{}: g_idx[{}] = {} is outside the {} groups of a row", op, c, gi[c], groups_in);
    }
    std::stable_sort(perm.begin(), perm.end(), [&](std::int32_t a, std::int32_t b) { return gi[a] < gi[b]; });
    for (std::int64_t j = 0; j < k; ++j) group_of_sorted[static_cast<std::size_t>(j)] = gi[perm[static_cast<std::size_t>(j)]];
  }
  bool identity = true;
  for (std::int64_t j = 0; j < k && identity; ++j) identity = perm[static_cast<std::size_t>(j)] == j;

  // Effective group: the nominal one when every sorted column j is in group j / group_size (always without
  // g_idx, and for GPTQ's act-order), else 32 when every run of equal groups starts at a multiple of 32.
  const std::int64_t k_pad = detail::weight_only_padded_k(k);
  bool nominal = true;
  for (std::int64_t j = 0; j < k && nominal; ++j) nominal = group_of_sorted[static_cast<std::size_t>(j)] == j / group_nominal;
  std::int64_t group = 0;
  if (nominal) {
    group = groups_in == 1 ? k_pad : group_nominal;
    LOWBIT_CHECK(group % 32 == 0, ErrorCode::Unsupported,
                 "{}: group_size = {}; the kernels need a multiple of 32 (32, 64, 128, ...), -1 (per row) or 0 (per "
                 "tensor)",
                 op, gs);
  } else {
    for (std::int64_t j = 1; j < k; ++j) {
      if (group_of_sorted[static_cast<std::size_t>(j)] != group_of_sorted[static_cast<std::size_t>(j - 1)]) {
        LOWBIT_CHECK(j % 32 == 0, ErrorCode::Unsupported,
                     "{}: act-order g_idx puts a group boundary at sorted column {}, not a multiple of 32; the kernels "
                     "need groups whose sizes are multiples of 32 (GPTQ's act-order gives group_size columns a group)",
                     op, j);
      }
    }
    group = 32;
  }
  const std::int64_t groups = (k + group - 1) / group;

  AffineRepacked r;
  r.bits = bits;
  r.n = n;
  r.k = k;
  r.k_pad = k_pad;
  r.group = group;
  r.groups = groups;
  const std::int64_t words_per_row = k_pad / 32 * bits;
  r.qweight = Tensor::zeros({n, words_per_row}, DType::U32);
  r.scales = Tensor::empty({n, groups}, scales_in.dtype());
  r.zeros = Tensor::empty({n, groups}, DType::U8);
  if (!identity) r.perm = Tensor::from_values(std::span<const std::int32_t>(perm), Shape{k});

  const std::uint8_t* code = codes.data<std::uint8_t>();
  std::uint32_t* qw = r.qweight.data<std::uint32_t>();
  const std::size_t scale_bytes = storage_bytes(scales_in.dtype(), 1);
  const auto* s_in = static_cast<const std::uint8_t*>(scales_in.raw_data());
  auto* s_out = static_cast<std::uint8_t*>(r.scales.raw_data());
  const std::uint8_t* z_in = zeros_in.data<std::uint8_t>();
  std::uint8_t* z_out = r.zeros.data<std::uint8_t>();
  // First bad code, found per row range and reported after the loop (no throw inside parallel_for).
  std::vector<std::int64_t> bad_code(static_cast<std::size_t>(n), -1);
  parallel_for(n, std::max<std::int64_t>(1, 65536 / k), [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t row = b; row < e; ++row) {
      const std::uint8_t* src = code + row * k;
      std::uint32_t* dst = qw + row * words_per_row;
      for (std::int64_t j0 = 0; j0 < k; j0 += 32) {
        int pack[32] = {};
        for (std::int64_t j = j0; j < std::min(j0 + 32, k); ++j) {
          const int c = src[perm[static_cast<std::size_t>(j)]];
          if (c > maxq && bad_code[static_cast<std::size_t>(row)] < 0) bad_code[static_cast<std::size_t>(row)] = perm[static_cast<std::size_t>(j)];
          pack[j - j0] = c & maxq;
        }
        pack_words(bits, pack, dst + (j0 / 32) * bits);
      }
      const std::int64_t srow = per_tensor ? 0 : row;
      for (std::int64_t v = 0; v < groups; ++v) {
        const std::int64_t g = group_of_sorted[static_cast<std::size_t>(v * group)];
        std::memcpy(s_out + (row * groups + v) * scale_bytes, s_in + (srow * groups_in + g) * scale_bytes, scale_bytes);
        z_out[row * groups + v] = z_in[srow * groups_in + g];
      }
    }
  });
  for (std::int64_t row = 0; row < n; ++row) {
    const std::int64_t c = bad_code[static_cast<std::size_t>(row)];
    LOWBIT_CHECK(c < 0, ErrorCode::Corrupt, "{}: code {} at row {}, column {} exceeds 2^{} - 1 = {}", op,
                 code[row * k + c], row, c, bits, maxq);
  }
  return r;
}

Tensor decode_affine_repacked(const AffineRepacked& r) {
  Tensor out = Tensor::empty({r.n, r.k}, DType::F32);
  float* w = out.data<float>();
  const std::uint32_t* qw = r.qweight.data<std::uint32_t>();
  const std::uint8_t* z = r.zeros.data<std::uint8_t>();
  const Tensor scales = r.scales.to(DType::F32);
  const float* s = scales.data<float>();
  const std::int32_t* perm = r.perm.defined() ? r.perm.data<std::int32_t>() : nullptr;
  const std::int64_t words_per_row = r.k_pad / 32 * r.bits;
  for (std::int64_t row = 0; row < r.n; ++row) {
    for (std::int64_t j = 0; j < r.k; ++j) {
      const int c = affine_pack_code_at(qw + row * words_per_row + (j / 32) * r.bits, r.bits, static_cast<int>(j % 32));
      const std::int64_t g = std::min(j / r.group, r.groups - 1);
      const std::int64_t col = perm != nullptr ? perm[j] : j;
      w[row * r.k + col] = quant::affine_dequantize_value(c, s[row * r.groups + g], z[row * r.groups + g]);
    }
  }
  return out;
}

namespace detail {

// ---- prepare / plan / matmul -------------------------------------------------------------------------

PreparedWeight prepare_affine(const quant::QuantizedTensor& q, int device, Stream stream) {
  AffineRepacked r = repack_affine(q);
  PreparedWeight w;
  w.method = "affine";
  w.params = q.params;
  w.n = r.n;
  w.k = r.k;
  w.device = device;
  w.buffers.emplace("qweight", cuda::to_device(r.qweight, device, stream));
  w.buffers.emplace("scales", cuda::to_device(r.scales, device, stream));
  w.buffers.emplace("zeros", cuda::to_device(r.zeros, device, stream));
  if (r.perm.defined()) w.buffers.emplace("perm", cuda::to_device(r.perm, device, stream));
  return w;
}

MatmulPlan plan_affine(const quant::QuantParams& params, std::int64_t m, std::int64_t n, std::int64_t k,
                       int sm_count) {
  const int bits = params.bits;
  LOWBIT_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8, ErrorCode::Unsupported,
               "cuda::plan_matmul(affine): bits = {}; built: {}", bits, describe_affine_built());
  return plan_weight_only(bits, bits == 4 || bits == 8, m, n, k, sm_count);
}

void matmul_affine(const PreparedWeight& w, const MatmulPlan& plan, const Tensor& x, Tensor& y, Stream stream) {
  const Tensor& qweight = w.buffers.at("qweight");
  const Tensor& scales = w.buffers.at("scales");
  const Tensor& zeros = w.buffers.at("zeros");
  const auto perm_it = w.buffers.find("perm");
  const bool act_order = perm_it != w.buffers.end();
  const std::int64_t m = x.shape()[0];
  LOWBIT_CHECK(m <= INT32_MAX, ErrorCode::ShapeMismatch, "cuda::matmul(affine): m = {} rows", m);
  check_aligned16(w, x, y);
  DeviceGuard guard(w.device);

  AffineLaunch a;
  a.bits = w.params.bits;
  a.dtype = x.dtype();
  a.qweight = static_cast<const std::uint32_t*>(qweight.raw_data());
  a.scales = scales.raw_data();
  a.scales_f32 = scales.dtype() == DType::F32;
  a.zeros = static_cast<const std::uint8_t*>(zeros.raw_data());
  a.n = w.n;
  a.k = w.k;
  a.k_pad = qweight.shape()[1] / a.bits * 32;
  a.groups = scales.shape()[1];
  // The effective group (repack_affine): one group a row -> k_pad; the nominal group when the scales have
  // ceil(k / group_size) columns; else act-order's runs of 32.
  if (a.groups == 1) {
    a.group = a.k_pad;
  } else if (w.params.group_size >= 1 && a.groups == (w.k + w.params.group_size - 1) / w.params.group_size) {
    a.group = w.params.group_size;
  } else {
    a.group = 32;
  }
  a.x = x.raw_data();
  a.y = y.raw_data();
  a.m = static_cast<int>(m);
  a.k_splits = plan.regime == Regime::TensorCore ? plan.k_splits : 1;

  StreamScratch x_perm(act_order ? static_cast<std::size_t>(m * w.k * 2) : 0, stream);
  if (act_order) {
    permute_columns(x.raw_data(), static_cast<const std::int32_t*>(perm_it->second.raw_data()), x_perm.get(), m, w.k,
                    stream);
    a.x = x_perm.get();
  }
  switch (plan.regime) {
    case Regime::Gemv: return launch_affine_gemv(a, plan.m_tile, stream);
    case Regime::TensorCore: {
      StreamScratch partials(a.k_splits > 1 ? static_cast<std::size_t>(a.k_splits) * m * w.n * 4 : 0, stream);
      a.partials = static_cast<float*>(partials.get());
      return launch_affine_mma(a, plan.m_tile, stream);
    }
    case Regime::Dequantize: {
      Tensor& scratch = *w.scratch;
      if (!scratch.defined() || scratch.dtype() != x.dtype() || scratch.numel() != w.n * w.k) {
        scratch = cuda::empty({w.n, w.k}, x.dtype(), w.device);
      }
      launch_affine_dequantize(a, scratch.raw_data(), stream);
      return gemm_x_wt(a.x, scratch.raw_data(), y.raw_data(), m, w.n, w.k, x.dtype(), w.device, stream);
    }
  }
}

}  // namespace detail
}  // namespace lowbit::cuda
