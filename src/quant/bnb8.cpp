#include "lowbit/quant/bnb8.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "lowbit/core/parallel.hpp"
#include "lowbit/quant/common.hpp"
#include "weight_rows.hpp"

namespace lowbit::quant {

namespace {

constexpr std::string_view kQuantize = "quantize_bnb8";

std::array<float, 256> map_from_bits(const std::uint32_t (&bits)[256]) {
  std::array<float, 256> m{};
  for (std::size_t i = 0; i < 256; ++i) m[i] = bits_float(bits[i]);
  return m;
}

// Blocks of elements per parallel task: about 64K elements, whole blocks.
std::int64_t block_grain(std::int64_t block_size) {
  return std::max<std::int64_t>(1, (std::int64_t{1} << 16) / block_size);
}

// One block: absmax, then codes. `x` holds the block's values (finite).
float encode_block(const float* x, std::int64_t len, const Bnb8Encoder& encoder, std::uint8_t* codes) {
  float absmax = 0.0f;
  std::int64_t i = 0;
#if defined(__SSE2__)
  // max |x| over four lanes (exact, so the order does not matter); |x| by clearing the sign bit.
  const __m128 magnitude = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
  __m128 acc = _mm_setzero_ps();
  for (; i + 4 <= len; i += 4) acc = _mm_max_ps(acc, _mm_and_ps(_mm_loadu_ps(x + i), magnitude));
  alignas(16) float lanes[4];
  _mm_store_ps(lanes, acc);
  for (const float l : lanes) absmax = std::max(absmax, l);
#endif
  for (; i < len; ++i) absmax = std::max(absmax, std::fabs(x[i]));
  if (absmax == 0.0f) {
    // The CUDA kernel computes 0 * (1 / 0) = NaN for every element, and NaN takes code 0 (verified on an
    // H100 with bnb 0.50.2: codes 0, dequantized -0.0).
    std::fill(codes, codes + len, std::uint8_t{0});
    return absmax;
  }
  encoder.encode_scaled(x, len, 1.0f / absmax, codes);
  return absmax;
}

}  // namespace

std::array<float, 256> bnb8_map(Bnb8Map map) {
  return map == Bnb8Map::Linear ? map_from_bits(kBnbLinearMapBits) : map_from_bits(kBnbDynamicMapBits);
}

Bnb8Encoder::Bnb8Encoder(std::span<const float, 256> map) {
  std::copy(map.begin(), map.end(), map_.begin());
  fast_ = true;
  for (int k = 0; k + 1 < 256; ++k) fast_ = fast_ && map_[k] < map_[k + 1];
  if (!fast_) return;
  // Boundary k lies at the fp32 midpoint of codes k and k + 1; the tie goes to the even code, so for
  // odd k the tie stays at k and the boundary starts one float above the midpoint.
  for (int k = 0; k < 255; ++k) {
    const float mid = (map_[k] + map_[k + 1]) * 0.5f;
    thresholds_[k] = (k + 1) % 2 == 0 ? mid : std::nextafter(mid, std::numeric_limits<float>::infinity());
    if (k > 0 && !(thresholds_[k] >= thresholds_[k - 1])) fast_ = false;
  }
  for (std::size_t k = 255; k < thresholds_.size(); ++k) thresholds_[k] = std::numeric_limits<float>::infinity();
  if (!fast_) return;
  const auto count = [&](float y) {
    return static_cast<int>(std::upper_bound(thresholds_.begin(), thresholds_.begin() + 255, y) - thresholds_.begin());
  };
  // The counting rule must reproduce the kernel's search at every boundary and on both sides of it.
  for (int k = 0; k < 255 && fast_; ++k) {
    const float t = thresholds_[k];
    const float below = std::nextafter(t, -std::numeric_limits<float>::infinity());
    fast_ = count(t) == bnb8_encode(map_.data(), t) && count(below) == bnb8_encode(map_.data(), below);
  }
  if (!fast_) return;
  // Bucket = the top 16 bits of y (sign, exponent, 7 mantissa bits): all its floats lie between lo and hi.
  start_.assign(65536, 0);
  int probes = 0;
  for (std::uint32_t key = 0; key < 65536; ++key) {
    if (((key >> 7) & 0xffu) == 0xffu) continue;  // Inf and NaN never use the table
    const bool negative = (key & 0x8000u) != 0;
    const float lo = bits_float(negative ? (key << 16) | 0xffffu : key << 16);
    const float hi = bits_float(negative ? key << 16 : (key << 16) | 0xffffu);
    const int c_lo = count(lo);
    start_[key] = static_cast<std::uint8_t>(c_lo);
    probes = std::max(probes, count(hi) - c_lo);
  }
  fast_ = probes <= kMaxProbes;
  probes_ = std::max(probes, 1);
}

namespace {

// Bnb8Encoder::operator() over many values, with the probe count fixed at compile time.
template <int kProbes>
void encode_table(const float* map, const float* x, std::int64_t count, float scale, const std::uint8_t* start,
                  const float* t, std::uint8_t* out) {
  for (std::int64_t i = 0; i < count; ++i) {
    const float y = x[i] * scale;
    if ((float_bits(y) & 0x7f800000u) == 0x7f800000u) [[unlikely]] {  // an overflowing product
      out[i] = bnb8_encode(map, y);
      continue;
    }
    int code = start[float_bits(y) >> 16];
    const float* tc = t + code;
    for (int j = 0; j < kProbes; ++j) code += y >= tc[j] ? 1 : 0;
    out[i] = static_cast<std::uint8_t>(code);
  }
}

}  // namespace

void Bnb8Encoder::encode_scaled(const float* x, std::int64_t count, float scale, std::uint8_t* out) const {
  if (!fast_ || !std::isfinite(scale)) {
    for (std::int64_t i = 0; i < count; ++i) out[i] = bnb8_encode(map_.data(), x[i] * scale);
    return;
  }
  switch (probes_) {
    case 1:
      return encode_table<1>(map_.data(), x, count, scale, start_.data(), thresholds_.data(), out);
    case 2:
      return encode_table<2>(map_.data(), x, count, scale, start_.data(), thresholds_.data(), out);
    default:
      return encode_table<kMaxProbes>(map_.data(), x, count, scale, start_.data(), thresholds_.data(), out);
  }
}

void bnb8_quantize_blocks(std::span<const float> x, std::int64_t block_size, const Bnb8Encoder& encoder,
                          std::span<std::uint8_t> codes, std::span<float> absmax) {
  LOWBIT_CHECK(block_size >= 1, ErrorCode::InvalidArgument, "bnb8_quantize_blocks: block_size = {} must be >= 1",
               block_size);
  const auto n = static_cast<std::int64_t>(x.size());
  const std::int64_t blocks = (n + block_size - 1) / block_size;
  LOWBIT_CHECK(static_cast<std::int64_t>(codes.size()) == n && static_cast<std::int64_t>(absmax.size()) == blocks,
               ErrorCode::ShapeMismatch,
               "bnb8_quantize_blocks: {} values in blocks of {} need {} codes and {} absmax; got {} and {}", n,
               block_size, n, blocks, codes.size(), absmax.size());
  parallel_for(blocks, block_grain(block_size), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t b = begin; b < end; ++b) {
      const std::int64_t first = b * block_size;
      const std::int64_t len = std::min(block_size, n - first);
      absmax[static_cast<std::size_t>(b)] = encode_block(x.data() + first, len, encoder, codes.data() + first);
    }
  });
}

QuantizedTensor quantize_bnb8(const Tensor& weight, const Bnb8Config& config) {
  LOWBIT_CHECK(config.block_size >= 1, ErrorCode::InvalidArgument,
               "{}: block_size = {} is not valid; use any size >= 1 (bitsandbytes' default is 4096, its CUDA kernels "
               "take 64, 128, 256, 512, 1024, 2048, 4096)",
               kQuantize, config.block_size);
  const WeightRows rows = WeightRows::open(weight, kQuantize, /*any_rank=*/true);
  const std::int64_t n = rows.numel();
  const std::int64_t block = config.block_size;
  const std::int64_t blocks = (n + block - 1) / block;

  const std::array<float, 256> map = bnb8_map(config.map);
  const Bnb8Encoder encoder(map);
  Tensor codes = Tensor::empty(weight.shape(), DType::U8);
  Tensor absmax = Tensor::empty({blocks}, DType::F32);
  std::uint8_t* code_data = codes.data<std::uint8_t>();
  float* absmax_data = absmax.data<float>();
  parallel_for(blocks, block_grain(block), [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> buffer(static_cast<std::size_t>(block));
    for (std::int64_t b = begin; b < end; ++b) {
      const std::int64_t first = b * block;
      const std::int64_t len = std::min(block, n - first);
      rows.read_flat(first, first + len, buffer.data());
      absmax_data[b] = encode_block(buffer.data(), len, encoder, code_data + first);
    }
  });

  QuantizedTensor q;
  q.method = "bnb8";
  q.shape = weight.shape();
  q.dtype = weight.dtype();
  q.params = bnb8_params_from_config(config);
  q.components.emplace("codes", std::move(codes));
  q.components.emplace("quant_map", Tensor::from_values(std::span<const float>(map), Shape{256}));
  if (!config.nested) {
    q.components.emplace("absmax", std::move(absmax));
    return q;
  }
  // functional.quantize_blockwise(nested=True): offset = absmax.mean(); absmax -= offset; then the same
  // blockwise quantizer with the same block size and the (cached) dynamic map. The mean is summed in
  // fp64 and rounded once; torch sums in fp32 in its device's order, so its last bit may differ (it is
  // stored, so readers are unaffected).
  double sum = 0;
  for (std::int64_t b = 0; b < blocks; ++b) sum += absmax_data[b];
  const float offset = static_cast<float>(sum / static_cast<double>(blocks));
  std::vector<float> centred(static_cast<std::size_t>(blocks));
  for (std::int64_t b = 0; b < blocks; ++b) centred[static_cast<std::size_t>(b)] = absmax_data[b] - offset;
  const std::array<float, 256> dynamic = bnb8_map(Bnb8Map::Dynamic);
  const std::int64_t nested_blocks = (blocks + block - 1) / block;
  Tensor q_absmax = Tensor::empty({blocks}, DType::U8);
  Tensor nested_absmax = Tensor::empty({nested_blocks}, DType::F32);
  bnb8_quantize_blocks(centred, block, Bnb8Encoder(dynamic),
                       std::span<std::uint8_t>(q_absmax.data<std::uint8_t>(), static_cast<std::size_t>(blocks)),
                       std::span<float>(nested_absmax.data<float>(), static_cast<std::size_t>(nested_blocks)));
  q.components.emplace("absmax", std::move(q_absmax));
  q.components.emplace("nested_absmax", std::move(nested_absmax));
  q.components.emplace("nested_quant_map", Tensor::from_values(std::span<const float>(dynamic), Shape{256}));
  q.components.emplace("nested_offset", Tensor::from_values({offset}, Shape{1}));
  return q;
}

namespace {

// Reads and checks one f32 component of an exact shape.
Tensor f32_component(const QuantizedTensor& q, std::string_view name, const Shape& shape, std::string_view operation) {
  const Tensor& t = q.component(name);
  LOWBIT_CHECK(t.dtype() == DType::F32 && t.shape() == shape, ErrorCode::Corrupt, "{}: {} is {}; expected f32{}",
               operation, name, t.describe(), shape.to_string());
  return t.contiguous();
}

}  // namespace

namespace {

// The validated components of a bnb8 QuantizedTensor, with every block's absmax rebuilt in fp32.
struct Bnb8View {
  std::int64_t n = 0, block = 0, blocks = 0;
  Tensor codes, map;          // contiguous u8 [numel], f32 [256]
  std::vector<float> absmax;  // [blocks]
};

Bnb8View open_bnb8(const QuantizedTensor& q, std::string_view op) {
  LOWBIT_CHECK(q.method == "bnb8", ErrorCode::InvalidArgument, "{}: quantized tensor is '{}', not 'bnb8'", op,
               q.method);
  Bnb8View v;
  v.block = q.params.block_size;
  LOWBIT_CHECK(v.block >= 1, ErrorCode::Corrupt, "{}: block_size = {} is not valid", op, v.block);
  v.n = q.shape.numel();
  v.blocks = (v.n + v.block - 1) / v.block;
  const Tensor& codes_t = q.component("codes");
  LOWBIT_CHECK(codes_t.dtype() == DType::U8 && codes_t.shape() == q.shape, ErrorCode::Corrupt,
               "{}: codes are {}; expected u8{}", op, codes_t.describe(), q.shape.to_string());
  v.codes = codes_t.contiguous();
  v.map = f32_component(q, "quant_map", Shape{256}, op);
  v.absmax.resize(static_cast<std::size_t>(v.blocks));
  if (!q.params.double_quant) {
    const Tensor a = f32_component(q, "absmax", Shape{v.blocks}, op);
    std::copy(a.data<float>(), a.data<float>() + v.blocks, v.absmax.begin());
    return v;
  }
  const std::int64_t nested_block = q.params.nested_block_size != 0 ? q.params.nested_block_size : v.block;
  LOWBIT_CHECK(nested_block >= 1, ErrorCode::Corrupt, "{}: nested_block_size = {} is not valid", op, nested_block);
  const std::int64_t nested_blocks = (v.blocks + nested_block - 1) / nested_block;
  const Tensor& qa_t = q.component("absmax");
  LOWBIT_CHECK(qa_t.dtype() == DType::U8 && qa_t.shape() == Shape{v.blocks}, ErrorCode::Corrupt,
               "{}: nested absmax codes are {}; expected u8[{}]", op, qa_t.describe(), v.blocks);
  const Tensor qa = qa_t.contiguous();
  const Tensor nested = f32_component(q, "nested_absmax", Shape{nested_blocks}, op);
  const Tensor nested_map = f32_component(q, "nested_quant_map", Shape{256}, op);
  const Tensor offset = f32_component(q, "nested_offset", Shape{1}, op);
  for (std::int64_t b = 0; b < v.blocks; ++b) {
    v.absmax[static_cast<std::size_t>(b)] =
        bnb8_nested_absmax(nested_map.data<float>(), qa.data<std::uint8_t>()[b], nested.data<float>()[b / nested_block],
                           offset.data<float>()[0]);
  }
  return v;
}

}  // namespace

Tensor dequantize_bnb8_reference(const QuantizedTensor& q) {
  const Bnb8View v = open_bnb8(q, "dequantize_bnb8_reference");
  Tensor out = Tensor::empty(q.shape, DType::F32);
  const std::uint8_t* c = v.codes.data<std::uint8_t>();
  const float* m = v.map.data<float>();
  float* w = out.data<float>();
  parallel_for(v.blocks, block_grain(v.block), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t b = begin; b < end; ++b) {
      for (std::int64_t e = b * v.block; e < std::min(v.n, (b + 1) * v.block); ++e) {
        w[e] = bnb8_decode(m, c[e], v.absmax[static_cast<std::size_t>(b)]);
      }
    }
  });
  return out;
}

Tensor dequantize_bnb8(const QuantizedTensor& q, DType dtype) {
  constexpr std::string_view op = "dequantize_bnb8";
  LOWBIT_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, ErrorCode::InvalidArgument,
               "{}: output dtype {} is not supported; valid: f32, f16, bf16", op, dtype_name(dtype));
  if (dtype == DType::F32) return dequantize_bnb8_reference(q);
  const Bnb8View v = open_bnb8(q, op);
  Tensor out = Tensor::empty(q.shape, dtype);
  const std::uint8_t* c = v.codes.data<std::uint8_t>();
  const float* m = v.map.data<float>();
  auto* w = static_cast<std::uint16_t*>(out.raw_data());
  const bool f16 = dtype == DType::F16;
  parallel_for(v.blocks, block_grain(v.block), [&](std::int64_t begin, std::int64_t end) {
    std::array<std::uint16_t, 256> table{};
    for (std::int64_t b = begin; b < end; ++b) {
      const std::int64_t first = b * v.block, last = std::min(v.n, first + v.block);
      const float a = v.absmax[static_cast<std::size_t>(b)];
      if (last - first >= 256) {
        // The block's 256 possible outputs once, then one lookup per element.
        for (int code = 0; code < 256; ++code) {
          const float x = bnb8_decode(m, static_cast<std::uint8_t>(code), a);
          table[static_cast<std::size_t>(code)] = f16 ? f32_to_f16_bits(x) : f32_to_bf16_bits(x);
        }
        for (std::int64_t e = first; e < last; ++e) w[e] = table[c[e]];
      } else {
        for (std::int64_t e = first; e < last; ++e) {
          const float x = bnb8_decode(m, c[e], a);
          w[e] = f16 ? f32_to_f16_bits(x) : f32_to_bf16_bits(x);
        }
      }
    }
  });
  return out;
}

Tensor matmul_bnb8_reference(const QuantizedTensor& q, const Tensor& x) {
  LOWBIT_CHECK(q.shape.rank() == 2, ErrorCode::ShapeMismatch,
               "matmul_bnb8_reference: the quantized weight is {}, not a 2-D [n, k] matrix", q.shape.to_string());
  return matmul_reference(x, dequantize_bnb8_reference(q));
}

Bnb8Config bnb8_config_from_params(const QuantParams& params) {
  Bnb8Config c;
  LOWBIT_CHECK(params.bits == 8 || params.bits == 0, ErrorCode::InvalidArgument,
               "bnb8: bits = {} is not supported; bitsandbytes' blockwise quantizer is 8-bit only", params.bits);
  c.block_size = params.block_size;
  c.nested = params.double_quant;
  LOWBIT_CHECK(!c.nested || params.nested_block_size == 0 || params.nested_block_size == params.block_size,
               ErrorCode::InvalidArgument,
               "bnb8: nested_block_size = {} differs from block_size = {}; bitsandbytes' 8-bit nesting uses the "
               "same block size for both levels",
               params.nested_block_size, params.block_size);
  if (params.variant.empty() || params.variant == "dynamic") {
    c.map = Bnb8Map::Dynamic;
  } else if (params.variant == "linear") {
    c.map = Bnb8Map::Linear;
  } else {
    LOWBIT_THROW(ErrorCode::InvalidArgument, "bnb8: unknown map '{}'; valid: dynamic, linear", params.variant);
  }
  return c;
}

QuantParams bnb8_params_from_config(const Bnb8Config& config) {
  QuantParams p;
  p.bits = 8;
  p.block_size = config.block_size;
  p.double_quant = config.nested;
  p.nested_block_size = config.nested ? config.block_size : 0;
  p.variant = config.map == Bnb8Map::Linear ? "linear" : "dynamic";
  return p;
}

MethodInfo bnb8_method_info() {
  MethodInfo m;
  m.name = "bnb8";
  m.summary =
      "bitsandbytes blockwise 8-bit (quantize_blockwise): dynamic or linear 256-entry map, one fp32 absmax per "
      "block, optional nested absmax";
  m.defaults = bnb8_params_from_config(Bnb8Config{});
  m.quantize = [](const Tensor& weight, const QuantParams& params) {
    return quantize_bnb8(weight, bnb8_config_from_params(params));
  };
  m.dequantize = [](const QuantizedTensor& q) { return dequantize_bnb8_reference(q); };
  m.matmul = [](const QuantizedTensor& q, const Tensor& x) { return matmul_bnb8_reference(q, x); };
  return m;
}

}  // namespace lowbit::quant
