// Planning shared by the weight-only formats (src/cuda/weight_only.hpp).
#include "weight_only.hpp"

#include <algorithm>

namespace lowbit::cuda::detail {

MatmulPlan plan_weight_only(int bits, bool tensor_core, std::int64_t m, std::int64_t n, std::int64_t k, int sm_count) {
  MatmulPlan p;
  if (m <= 8) {
    p.regime = Regime::Gemv;
    p.threads = 128;
    p.rows_per_block = 8;
    p.m_tile = m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : 8;
    return p;
  }
  if (m <= 256 && tensor_core) {
    p.regime = Regime::TensorCore;
    p.threads = 128;
    p.rows_per_block = 64;
    p.m_tile = m <= 16 ? 16 : 64;
    const std::int64_t blocks = ((n + 63) / 64) * ((m + p.m_tile - 1) / p.m_tile);
    const std::int64_t steps = (k + 63) / 64;
    const std::int64_t target = 4 * static_cast<std::int64_t>(sm_count);
    std::int64_t splits = blocks >= target ? 1 : (target + blocks - 1) / blocks;
    splits = std::min<std::int64_t>({splits, std::max<std::int64_t>(1, steps / 4), 16});
    // fp32 partials written and read again: keep them under a quarter of the weight's bytes
    while (splits > 1 && 8.0 * static_cast<double>(splits * m * n) > static_cast<double>(n * k * bits) / 32.0) --splits;
    p.k_splits = static_cast<int>(splits);
    return p;
  }
  p.regime = Regime::Dequantize;
  p.threads = 256;
  return p;
}

}  // namespace lowbit::cuda::detail
