// Random affine QuantizedTensors for the CUDA affine tests (repack on the CPU, kernels on the GPU).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "lowbit/quant/affine.hpp"

namespace lowbit::cuda::test {

// codes uniform in [0, 2^bits - 1], zeros likewise, scales in [0.5, 2) / 2^bits stored as `scale_dtype`
// ([1, 1] for group_size 0). act_order: g_idx as GPTQ's desc_act writes it, the group of column c being
// rank(c) / group_size for a random column order.
inline quant::QuantizedTensor random_affine(std::int64_t n, std::int64_t k, int bits, std::int64_t group_size,
                                            DType scale_dtype, bool act_order, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  quant::AffineConfig config;
  config.bits = bits;
  config.group_size = group_size;
  config.scale_dtype = scale_dtype;
  quant::QuantizedTensor q;
  q.method = "affine";
  q.shape = Shape{n, k};
  q.dtype = DType::F16;
  q.params = quant::affine_params_from_config(config);
  const int maxq = (1 << bits) - 1;
  std::uniform_int_distribution<int> code(0, maxq);
  Tensor codes = Tensor::empty({n, k}, DType::U8);
  for (std::int64_t i = 0; i < codes.numel(); ++i) codes.data<std::uint8_t>()[i] = static_cast<std::uint8_t>(code(rng));
  const std::int64_t groups = quant::affine_groups_per_row(k, group_size);
  const std::int64_t rows = group_size == 0 ? 1 : n;
  Tensor scales = Tensor::empty({rows, groups}, DType::F32);
  Tensor zeros = Tensor::empty({rows, groups}, DType::U8);
  std::uniform_real_distribution<float> scale(0.5f, 2.0f);
  for (std::int64_t i = 0; i < rows * groups; ++i) {
    scales.data<float>()[i] = scale(rng) / static_cast<float>(1 << bits);
    zeros.data<std::uint8_t>()[i] = static_cast<std::uint8_t>(code(rng));
  }
  q.components.emplace("codes", codes);
  q.components.emplace("scales", scales.to(scale_dtype));
  q.components.emplace("zeros", zeros);
  if (act_order) {
    std::vector<std::int32_t> order(static_cast<std::size_t>(k));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    const std::int64_t g = group_size >= 1 ? group_size : k;
    Tensor g_idx = Tensor::empty({k}, DType::I32);
    for (std::int64_t r = 0; r < k; ++r) g_idx.data<std::int32_t>()[order[static_cast<std::size_t>(r)]] = static_cast<std::int32_t>(r / g);
    q.components.emplace("g_idx", g_idx);
  }
  return q;
}

}  // namespace lowbit::cuda::test
