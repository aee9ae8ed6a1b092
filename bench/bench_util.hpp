// Helpers shared by the CPU benchmarks in this folder (all linked into one binary, lowbit_bench).
#pragma once

#include <cstdint>
#include <map>
#include <random>
#include <utility>

#include "lowbit/core/tensor.hpp"

namespace lowbit::bench {

// N(0, sigma) fp16 matrix of n x k, drawn in fp32 from mt19937(seed) so every run times the same data.
inline Tensor random_f16(std::int64_t n, std::int64_t k, float sigma, std::uint32_t seed) {
  Tensor t = Tensor::empty({n, k}, DType::F32);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return t.to(DType::F16);
}

// N(0, 0.02) fp16 weight of n x k (seed 7), made once per shape and kept for the whole process: 45M normals
// take a while, and the benchmarks only read it.
inline const Tensor& weight(std::int64_t n, std::int64_t k) {
  static std::map<std::pair<std::int64_t, std::int64_t>, Tensor> cache;
  auto it = cache.find({n, k});
  if (it == cache.end()) it = cache.emplace(std::make_pair(n, k), random_f16(n, k, 0.02f, 7)).first;
  return it->second;
}

}  // namespace lowbit::bench
