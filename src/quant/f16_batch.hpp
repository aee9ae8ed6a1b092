// fp32 -> fp16 conversion of many values at once (internal to src/quant). F16C's VCVTPS2PH rounds to nearest
// even with subnormals and overflow handled as f32_to_f16_bits does, so both paths give the same bits for
// every non-NaN input; the portable loop runs where the CPU lacks F16C.
#pragma once

#include <cstdint>

namespace lowbit::quant::detail {

// Whether the CPU (and the OS, for the YMM state) runs AVX + F16C.
bool have_f16c();

// out[i] = f32_to_f16_bits(in[i]) for i < n.
void f32_to_f16_batch(const float* in, std::uint16_t* out, std::int64_t n);

}  // namespace lowbit::quant::detail
