// HQQ 4-bit on the device: repack (host, CPU-tested), CPU decode of the repacked layout, planning, and the
// matmul entry behind cuda::matmul() for method "hqq". Layout: cuda/hqq.hpp, docs/kernels.md#hqq.
#include "lowbit/cuda/hqq.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>

#include "formats.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/quant/hqq.hpp"
#include "weight_only.hpp"

namespace lowbit::cuda {
namespace {

constexpr const char* kHqqSupported =
    "the hqq kernels take bits 4, axis 1, a group size that is a power of two >= 8 (hqq uses 32, 64, 128) and "
    "f16 or bf16 scale/zero";

const Tensor& host_buffer(const PreparedWeight& w, const char* name) {
  const auto it = w.buffers.find(name);
  LOWBIT_CHECK(it != w.buffers.end(), ErrorCode::InvalidArgument,
               "decode_hqq_repacked: the prepared weight has no buffer '{}'", name);
  LOWBIT_CHECK(it->second.device().is_cpu(), ErrorCode::InvalidArgument,
               "decode_hqq_repacked: buffer '{}' is on a device; decode the host buffers of repack_hqq()", name);
  return it->second;
}

// The 16-bit patterns of a contiguous f16 / bf16 tensor.
const std::uint16_t* bits16(const Tensor& t) { return static_cast<const std::uint16_t*>(t.raw_data()); }

}  // namespace

PreparedWeight repack_hqq(const quant::QuantizedTensor& q) {
  LOWBIT_CHECK(q.method == "hqq", ErrorCode::InvalidArgument, "cuda::prepare: expected method 'hqq', got '{}'",
               q.method);
  LOWBIT_CHECK(q.shape.rank() == 2, ErrorCode::ShapeMismatch,
               "cuda::prepare: hqq weight of shape {}; kernels take a linear layer's [n, k]", q.shape.to_string());
  const std::int64_t n = q.shape[0], k = q.shape[1];
  LOWBIT_CHECK(n % 8 == 0 && k % 8 == 0, ErrorCode::ShapeMismatch,
               "cuda::prepare: hqq weight [{}, {}]: n and k must be multiples of 8", n, k);
  LOWBIT_CHECK(q.params.bits == 4, ErrorCode::Unsupported, "cuda::prepare: hqq weight with bits = {}; {}",
               q.params.bits, kHqqSupported);
  LOWBIT_CHECK(q.params.axis == 1, ErrorCode::Unsupported, "cuda::prepare: hqq weight with axis = {}; {}",
               q.params.axis, kHqqSupported);
  const quant::HqqGrouping gr = quant::hqq_grouping(q.shape, q.params.group_size, q.params.axis, "cuda::prepare");
  const std::int64_t g = gr.group_size;
  LOWBIT_CHECK(g >= 8 && std::has_single_bit(static_cast<std::uint64_t>(g)), ErrorCode::Unsupported,
               "cuda::prepare: hqq weight with group_size = {}; {}", g, kHqqSupported);
  const Tensor& scale_in = q.component("scale");
  const Tensor& zero_in = q.component("zero");
  LOWBIT_CHECK((scale_in.dtype() == DType::F16 || scale_in.dtype() == DType::BF16) &&
                   zero_in.dtype() == scale_in.dtype(),
               ErrorCode::Unsupported, "cuda::prepare: hqq weight with scale {} and zero {}; {}", scale_in.describe(),
               zero_in.describe(), kHqqSupported);
  // hqq_codes validates W_q, scale and zero against the params and unpacks the slabs: G [R, g], flat = W's.
  const Tensor codes_g = quant::hqq_codes(q);
  const std::uint8_t* flat = codes_g.data<std::uint8_t>();

  PreparedWeight w;
  w.method = "hqq";
  w.params = q.params;
  w.n = n;
  w.k = k;
  w.device = -1;

  const std::int64_t kw = packed_row_words(k);
  Tensor codes = Tensor::zeros({n, kw}, DType::U32);
  std::uint32_t* out = codes.data<std::uint32_t>();
  parallel_for(n, std::max<std::int64_t>(1, 16384 / k), [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      for (std::int64_t c = 0; c < k / 8; ++c) {
        std::uint8_t eight[8];
        std::memcpy(eight, flat + r * k + 8 * c, 8);
        out[r * kw + c] = hqq_pack_word(eight);
      }
    }
  });

  const std::int64_t groups = gr.groups();
  const Tensor scale = scale_in.contiguous();
  const Tensor zero = zero_in.contiguous();
  Tensor meta = Tensor::empty({groups, 2}, scale.dtype());  // [g, 0] scale, [g, 1] zero: one u32 a group
  std::uint16_t* m = static_cast<std::uint16_t*>(meta.raw_data());
  for (std::int64_t i = 0; i < groups; ++i) {
    m[2 * i] = bits16(scale)[i];
    m[2 * i + 1] = bits16(zero)[i];
  }
  w.buffers.emplace("codes", std::move(codes));
  w.buffers.emplace("meta", std::move(meta));
  return w;
}

Tensor decode_hqq_repacked(const PreparedWeight& w) {
  const std::int64_t n = w.n, k = w.k, kw = packed_row_words(k);
  const quant::HqqGrouping gr =
      quant::hqq_grouping(Shape{n, k}, w.params.group_size, w.params.axis, "decode_hqq_repacked");
  const int log2_group = std::countr_zero(static_cast<std::uint64_t>(gr.group_size));
  const std::uint32_t* codes = host_buffer(w, "codes").data<std::uint32_t>();
  const Tensor& meta_t = host_buffer(w, "meta");
  const bool bf16 = meta_t.dtype() == DType::BF16;
  const auto* meta = static_cast<const std::uint32_t*>(meta_t.raw_data());
  Tensor out = Tensor::empty({n, k}, DType::F32);
  float* o = out.data<float>();
  const std::int64_t last = gr.groups() - 1;
  // Pack by pack, word by word, as the kernels walk it (pack_word_block is their group lookup).
  parallel_for(n, std::max<std::int64_t>(1, 16384 / k), [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      for (std::int64_t k0 = 0; k0 < k; k0 += 32) {
        for (int t = 0; t < 4 && k0 + 8 * t < k; ++t) {
          const std::uint32_t mg = meta[pack_word_block(r * k + k0, t, log2_group, last)];
          const float scale = hqq_meta_value(static_cast<std::uint16_t>(mg & 0xffffu), bf16);
          const float zero = hqq_meta_value(static_cast<std::uint16_t>(mg >> 16), bf16);
          const std::int64_t c = k0 / 8 + t;
          const std::uint32_t word = codes[r * kw + c];
          for (int j = 0; j < 8; ++j) o[r * k + 8 * c + j] = hqq_packed_value(hqq_packed_code(word, j), zero, scale);
        }
      }
    }
  });
  return out;
}

std::string describe_hqq_built() {
  std::string s;
  for (const HqqKernel& e : kHqqBuilt) {
    if (!s.empty()) s += ", ";
    s += fmt::format("{} {}", name(e.regime), dtype_name(e.dtype));
    if (e.regime == Regime::Gemv) s += fmt::format(" m<={}", e.tile);
    if (e.regime == Regime::TensorCore) s += fmt::format(" m_tile={}", e.tile);
  }
  return s;
}

namespace detail {

PreparedWeight prepare_hqq(const quant::QuantizedTensor& q, int device, Stream stream) {
  return upload(repack_hqq(q), device, stream);
}

MatmulPlan plan_hqq(const quant::QuantParams& params, std::int64_t m, std::int64_t n, std::int64_t k,
                    int sm_count) {
  (void)params;  // group size and meta dtype change the decode, not the launch shape
  return plan_weight_only(4, true, m, n, k, sm_count);
}

void matmul_hqq(const PreparedWeight& w, const MatmulPlan& plan, const Tensor& x, Tensor& y, Stream stream) {
  check_aligned16(w, x, y);
  const quant::HqqGrouping gr = quant::hqq_grouping(Shape{w.n, w.k}, w.params.group_size, w.params.axis, "cuda::matmul");
  HqqLaunch a;
  a.dtype = x.dtype();
  a.codes = static_cast<const std::uint32_t*>(w.buffers.at("codes").raw_data());
  a.meta = static_cast<const std::uint32_t*>(w.buffers.at("meta").raw_data());
  a.meta_bf16 = w.buffers.at("meta").dtype() == DType::BF16;
  a.groups = gr.groups();
  a.log2_group = std::countr_zero(static_cast<std::uint64_t>(gr.group_size));
  a.x = x.raw_data();
  a.y = y.raw_data();
  a.m = x.shape()[0];
  a.n = w.n;
  a.k = w.k;
  a.device = w.device;
  const DeviceGuard guard(w.device);
  void* w_hat = plan.regime == Regime::Dequantize ? dequantize_scratch(w, x.dtype()) : nullptr;
  launch_hqq(a, plan, w_hat, stream);
}

}  // namespace detail
}  // namespace lowbit::cuda
