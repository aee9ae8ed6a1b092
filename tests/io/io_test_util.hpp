// Helpers shared by the tests of lowbit/io: crafted safetensors images, file contents, tensor comparisons and
// the checkpoint-format tests' tensor maps; test_util.hpp's temporary folder and error expectation.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <iterator>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/core/error.hpp"
#include "lowbit/io/atomic_file.hpp"
#include "lowbit/quant/quantized_tensor.hpp"
#include "lowbit/quant/registry.hpp"
#include "test_util.hpp"

namespace lowbit::io::test {

using ::lowbit::test::bytes_of;
using ::lowbit::test::contains;
using ::lowbit::test::error_message;
using ::lowbit::test::floats_of;
using ::lowbit::test::TempDir;

// Restores "no injected failure" however a test ends.
struct FailWritesGuard {
  explicit FailWritesGuard(std::int64_t bytes) { testing::fail_writes_after_bytes(bytes); }
  ~FailWritesGuard() { testing::fail_writes_after_bytes(-1); }
};

inline std::vector<std::byte> to_bytes(std::string_view text) {
  std::vector<std::byte> out(text.size());
  if (!text.empty()) std::memcpy(out.data(), text.data(), text.size());
  return out;
}

// A safetensors image: `declared_length` (the u64 N) + `header` + `data_bytes` bytes of data (value i & 0xff).
inline std::vector<std::byte> make_image(std::string_view header, std::size_t data_bytes,
                                         std::uint64_t declared_length) {
  std::vector<std::byte> out(8);
  std::memcpy(out.data(), &declared_length, 8);
  const std::vector<std::byte> h = to_bytes(header);
  out.insert(out.end(), h.begin(), h.end());
  for (std::size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<std::byte>(i & 0xff));
  return out;
}
inline std::vector<std::byte> make_image(std::string_view header, std::size_t data_bytes = 0) {
  return make_image(header, data_bytes, header.size());
}

inline void write_bytes(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}
inline void write_text(const std::filesystem::path& path, std::string_view text) { write_bytes(path, to_bytes(text)); }

inline std::vector<std::byte> read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  if (!chars.empty()) std::memcpy(out.data(), chars.data(), chars.size());
  return out;
}

// Same dtype, shape and bytes (any strides).
inline bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  const Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

// Same method, shape, dtype, params and component bytes.
inline bool same_quantized(const quant::QuantizedTensor& a, const quant::QuantizedTensor& b) {
  if (a.method != b.method || a.shape != b.shape || a.dtype != b.dtype || !(a.params == b.params) ||
      a.components.size() != b.components.size())
    return false;
  for (const auto& [name, t] : a.components) {
    if (!b.has(name) || !same_bytes(t, b.component(name))) return false;
  }
  return true;
}

// ---- shared by the checkpoint-format tests ------------------------------------------------------------------

using TensorMap = std::map<std::string, Tensor>;

// The 32-bit words of an int32/uint32 tensor.
inline std::vector<std::uint32_t> words_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  const auto* p = static_cast<const std::uint32_t*>(c.raw_data());
  return {p, p + c.numel()};
}

// u8 [1, values.size()].
inline Tensor u8_row(const std::vector<int>& values) {
  std::vector<std::uint8_t> v(values.begin(), values.end());
  return Tensor::from_values<std::uint8_t>(std::span<const std::uint8_t>(v), {1, static_cast<std::int64_t>(v.size())});
}

inline TensorMap as_map(const std::vector<std::pair<std::string, Tensor>>& v) { return {v.begin(), v.end()}; }

// A tensor lookup over a map, as the format readers take one (the map must outlive it).
inline std::function<std::optional<Tensor>(const std::string&)> lookup_of(const TensorMap& tensors) {
  return [&tensors](const std::string& name) -> std::optional<Tensor> {
    const auto it = tensors.find(name);
    if (it == tensors.end()) return std::nullopt;
    return it->second;
  };
}

// f32 [n, k] ~ N(0, 0.02), seeded.
inline Tensor random_weight(std::int64_t n, std::int64_t k, std::uint64_t seed) {
  Tensor t = Tensor::empty({n, k}, DType::F32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(rng);
  return t;
}

// RTN on GPTQ's min-max grid with f16 scales: what the GPTQ and AWQ layouts store.
inline quant::QuantizedTensor quantize_minmax(const Tensor& w, int bits, std::int64_t group_size, bool sym = false) {
  const quant::MethodInfo& affine = quant::find_method("affine");
  quant::QuantParams p = affine.defaults;
  p.bits = bits;
  p.group_size = group_size;
  p.symmetric = sym;
  p.variant = "minmax:f16";
  return affine.quantize(w, p);
}

}  // namespace lowbit::io::test
