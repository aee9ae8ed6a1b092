// NF4 / FP4 on the device: repack (host, CPU-tested), CPU decode of the repacked layout, planning, and the
// matmul entry behind cuda::matmul() for methods "nf4" and "fp4". Layout: cuda/nf4.hpp, docs/kernels.md.
#include "lowbit/cuda/nf4.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>

#include "formats.hpp"
#include "lowbit/core/parallel.hpp"
#include "lowbit/quant/nf4.hpp"
#include "weight_only.hpp"

namespace lowbit::cuda {
namespace {

bool is_pow2_at_least_8(std::int64_t v) { return v >= 8 && std::has_single_bit(static_cast<std::uint64_t>(v)); }

int log2_of(std::int64_t v) { return std::countr_zero(static_cast<std::uint64_t>(v)); }

const Tensor& host_buffer(const PreparedWeight& w, const char* name, const char* operation) {
  const auto it = w.buffers.find(name);
  LOWBIT_CHECK(it != w.buffers.end(), ErrorCode::InvalidArgument, "{}: the prepared {} weight has no buffer '{}'",
               operation, w.method, name);
  LOWBIT_CHECK(it->second.device().is_cpu(), ErrorCode::InvalidArgument,
               "{}: buffer '{}' is on a device; decode the host buffers of repack_*()", operation, name);
  return it->second;
}

}  // namespace

Nf4Lut make_nf4_lut(const float (&table)[16], bool bf16) {
  Nf4Lut t;
  for (int c = 0; c < 16; ++c) {
    const std::uint16_t bits = bf16 ? f32_to_bf16_bits(table[c]) : f32_to_f16_bits(table[c]);
    t.lo[c / 4] |= static_cast<std::uint32_t>(bits & 0xffu) << (8 * (c % 4));
    t.hi[c / 4] |= static_cast<std::uint32_t>(bits >> 8) << (8 * (c % 4));
  }
  return t;
}

PreparedWeight repack_nf4(const quant::QuantizedTensor& q) {
  quant::validate_nf4(q, "cuda::prepare");
  const quant::QuantParams& p = q.params;
  LOWBIT_CHECK(q.shape.rank() == 2, ErrorCode::ShapeMismatch,
               "cuda::prepare: {} weight of shape {}; kernels take a linear layer's [n, k]", q.method,
               q.shape.to_string());
  const std::int64_t n = q.shape[0], k = q.shape[1];
  LOWBIT_CHECK(n % 8 == 0 && k % 8 == 0, ErrorCode::ShapeMismatch,
               "cuda::prepare: {} weight [{}, {}]: n and k must be multiples of 8", q.method, n, k);
  LOWBIT_CHECK(is_pow2_at_least_8(p.block_size), ErrorCode::Unsupported,
               "cuda::prepare: {} block_size = {}; the kernels take powers of two >= 8 (bitsandbytes writes 32 .. "
               "4096)",
               q.method, p.block_size);
  if (p.double_quant) {
    LOWBIT_CHECK(is_pow2_at_least_8(p.nested_block_size), ErrorCode::Unsupported,
                 "cuda::prepare: {} nested_block_size = {}; the kernels take powers of two >= 8 (bitsandbytes "
                 "writes 256)",
                 q.method, p.nested_block_size);
  }

  PreparedWeight w;
  w.method = q.method;
  w.params = p;
  w.n = n;
  w.k = k;
  w.device = -1;

  // 4 bnb bytes = 8 flat elements of one row (k % 8 == 0) -> one word, nibbles of each byte swapped.
  const std::int64_t kw = packed_row_words(k);
  const std::int64_t words = k / 8;
  Tensor codes = Tensor::zeros({n, kw}, DType::U32);
  const Tensor src = q.component("codes").contiguous();
  const std::uint8_t* in = src.data<std::uint8_t>();
  std::uint32_t* out = codes.data<std::uint32_t>();
  parallel_for(n, std::max<std::int64_t>(1, 16384 / k), [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      for (std::int64_t c = 0; c < words; ++c) {
        std::uint32_t bnb_word = 0;
        std::memcpy(&bnb_word, in + (r * k + 8 * c) / 2, 4);  // little-endian host (core/config.hpp)
        out[r * kw + c] = nf4_repack_word(bnb_word);
      }
    }
  });
  w.buffers.emplace("codes", std::move(codes));
  w.buffers.emplace("absmax", q.component("absmax").contiguous().clone());
  if (p.double_quant) {
    for (const char* name : {"nested_absmax", "nested_quant_map", "nested_offset"}) {
      w.buffers.emplace(name, q.component(name).contiguous().clone());
    }
  }
  return w;
}

Tensor decode_nf4_repacked(const PreparedWeight& w) {
  constexpr const char* kOp = "decode_nf4_repacked";
  const quant::Nf4Type type = w.method == "fp4" ? quant::Nf4Type::FP4 : quant::Nf4Type::NF4;
  float table[16];
  for (unsigned c = 0; c < 16; ++c) table[c] = quant::nf4_type_value(type, c);
  const std::int64_t n = w.n, k = w.k, kw = packed_row_words(k);
  const std::uint32_t* codes = host_buffer(w, "codes", kOp).data<std::uint32_t>();
  const bool dq = w.params.double_quant;
  const Tensor& absmax = host_buffer(w, "absmax", kOp);
  const int log2_block = log2_of(w.params.block_size);
  const int log2_nested = dq ? log2_of(w.params.nested_block_size) : 0;
  const float* nested = dq ? host_buffer(w, "nested_absmax", kOp).data<float>() : nullptr;
  const float* map = dq ? host_buffer(w, "nested_quant_map", kOp).data<float>() : nullptr;
  const float offset = dq ? host_buffer(w, "nested_offset", kOp).data<float>()[0] : 0.0f;
  Tensor out = Tensor::empty({n, k}, DType::F32);
  float* o = out.data<float>();
  const std::int64_t last = absmax.numel() - 1;
  // Pack by pack, word by word, as the kernels walk it (pack_word_block is their block lookup).
  parallel_for(n, std::max<std::int64_t>(1, 16384 / k), [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      for (std::int64_t k0 = 0; k0 < k; k0 += 32) {
        for (int t = 0; t < 4 && k0 + 8 * t < k; ++t) {
          const std::int64_t b = pack_word_block(r * k + k0, t, log2_block, last);
          const float a = dq ? nf4_dq_absmax(map[absmax.data<std::uint8_t>()[b]], nested[b >> log2_nested], offset)
                             : absmax.data<float>()[b];
          const std::int64_t c = k0 / 8 + t;
          const std::uint32_t word = codes[r * kw + c];
          for (int j = 0; j < 8; ++j) o[r * k + 8 * c + j] = nf4_dequant_value(table[nf4_packed_code(word, j)], a);
        }
      }
    }
  });
  return out;
}

std::string describe_nf4_built() {
  std::string s;
  for (const Nf4Kernel& e : kNf4Built) {
    if (!s.empty()) s += ", ";
    s += fmt::format("{} dq={} {}", name(e.regime), e.double_quant ? 1 : 0, dtype_name(e.dtype));
    if (e.regime == Regime::Gemv) s += fmt::format(" m<={}", e.tile);
    if (e.regime == Regime::TensorCore) s += fmt::format(" m_tile={}", e.tile);
  }
  return s;
}

namespace detail {

void* dequantize_scratch(const PreparedWeight& w, DType dtype) {
  Tensor& scratch = *w.scratch;
  if (!scratch.defined() || scratch.dtype() != dtype || scratch.shape() != Shape{w.n, w.k} ||
      scratch.device().index != w.device) {
    scratch = empty({w.n, w.k}, dtype, w.device);
  }
  return scratch.raw_data();
}

PreparedWeight prepare_nf4(const quant::QuantizedTensor& q, int device, Stream stream) {
  return upload(repack_nf4(q), device, stream);
}

MatmulPlan plan_nf4(const quant::QuantParams& params, std::int64_t m, std::int64_t n, std::int64_t k,
                    int sm_count) {
  (void)params;  // block size and double quantization change the decode, not the launch shape
  return plan_weight_only(4, true, m, n, k, sm_count);
}

void matmul_nf4(const PreparedWeight& w, const MatmulPlan& plan, const Tensor& x, Tensor& y, Stream stream) {
  check_aligned16(w, x, y);
  const auto buffer = [&](const char* name) { return w.buffers.at(name).raw_data(); };
  const quant::Nf4Type type = w.method == "fp4" ? quant::Nf4Type::FP4 : quant::Nf4Type::NF4;
  float table[16];
  for (unsigned c = 0; c < 16; ++c) table[c] = quant::nf4_type_value(type, c);
  Nf4Launch a;
  a.dtype = x.dtype();
  a.double_quant = w.params.double_quant;
  a.codes = static_cast<const std::uint32_t*>(buffer("codes"));
  a.absmax = buffer("absmax");
  a.blocks = w.buffers.at("absmax").numel();
  a.lut = make_nf4_lut(table, x.dtype() == DType::BF16);
  a.log2_block = log2_of(w.params.block_size);
  if (w.params.double_quant) {
    a.nested_absmax = static_cast<const float*>(buffer("nested_absmax"));
    a.nested_map = static_cast<const float*>(buffer("nested_quant_map"));
    a.nested_offset = static_cast<const float*>(buffer("nested_offset"));
    a.log2_nested_block = log2_of(w.params.nested_block_size);
  }
  a.x = x.raw_data();
  a.y = y.raw_data();
  a.m = x.shape()[0];
  a.n = w.n;
  a.k = w.k;
  a.device = w.device;
  const DeviceGuard guard(w.device);
  void* w_hat = plan.regime == Regime::Dequantize ? dequantize_scratch(w, x.dtype()) : nullptr;
  launch_nf4(a, plan, w_hat, stream);
}

}  // namespace detail
}  // namespace lowbit::cuda
