// Planning shared by the weight-only formats (src/cuda/weight_only.hpp).
#include "weight_only.hpp"

#include <algorithm>

namespace lowbit::cuda::detail {

PreparedWeight upload(PreparedWeight w, int device, Stream stream) {
  for (auto& [name, tensor] : w.buffers) tensor = to_device(tensor, device, stream);
  w.device = device;
  return w;
}

void check_aligned16(const PreparedWeight& w, const Tensor& x, const Tensor& y) {
  LOWBIT_CHECK(reinterpret_cast<std::uintptr_t>(x.raw_data()) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(y.raw_data()) % 16 == 0,
               ErrorCode::InvalidArgument,
               "cuda::matmul({}): x and y must be 16-byte aligned (views at an offset of {} and {} bytes are not)",
               w.method, x.byte_offset(), y.byte_offset());
}

MatmulPlan plan_weight_only(int bits, bool tensor_core, std::int64_t m, std::int64_t n, std::int64_t k, int sm_count) {
  MatmulPlan p;
  if (m <= (tensor_core ? kGemvMaxM : 8)) {
    p.regime = Regime::Gemv;
    p.threads = 128;
    p.rows_per_block = 8;
    p.m_tile = m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : 8;
    return p;
  }
  if (m <= kTensorCoreMaxM && tensor_core) {
    p.regime = Regime::TensorCore;
    p.threads = 128;
    p.rows_per_block = 64;
    p.m_tile = m <= 16 ? 16 : 64;
    const std::int64_t blocks = ((n + 63) / 64) * ((m + p.m_tile - 1) / p.m_tile);
    const std::int64_t steps = (k + 63) / 64;
    // Blocks resident at once: kBM = 16 blocks (26 KB of shared memory, 71-80 registers x 128 threads) fit 6
    // an SM for every decoder, kBM = 64 blocks (54-62 KB, 96-128 registers) 3. A grid smaller than one such
    // wave is split so that blocks x splits fill it without starting a second, partly empty wave.
    const std::int64_t resident = (p.m_tile == 16 ? 6 : 3) * static_cast<std::int64_t>(sm_count);
    std::int64_t splits = blocks >= resident ? 1 : resident / blocks;
    splits = std::min<std::int64_t>({splits, std::max<std::int64_t>(1, steps / 4), 16});
    // fp32 partials written and read again (mostly in L2): keep them under half the weight's bytes
    while (splits > 1 && 8.0 * static_cast<double>(splits * m * n) > static_cast<double>(n * k * bits) / 16.0) --splits;
    p.k_splits = static_cast<int>(splits);
    return p;
  }
  p.regime = Regime::Dequantize;
  p.threads = 128;
  return p;
}

}  // namespace lowbit::cuda::detail
