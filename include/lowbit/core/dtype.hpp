// Element types of tensors, and their names in our API and in safetensors files.
//
// Packed sub-byte types (U4, I4, U2, U1) store several elements per byte, element 0 in the lowest bits:
//
//     U4:  byte = | e1 (bits 7..4) | e0 (bits 3..0) |
//     U2:  byte = | e3 | e2 | e1 | e0 |
//
// A packed tensor's strides still count elements, and every view of one must start and step on whole
// bytes (tensor.hpp checks this). Formats whose packing crosses bytes (GPTQ's 3-bit words) are stored as
// I32/U32 words, and their methods document the bit layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace lowbit {

enum class DType : std::uint8_t {
  F32,
  F16,
  BF16,
  F64,
  F8E4M3,  // OCP fp8 e4m3fn (no infinities): read, written and listed; not converted
  F8E5M2,
  I8,
  U8,
  I16,
  U16,
  I32,
  U32,
  I64,
  U64,
  Bool,  // one byte per element, 0 or 1
  U4,    // packed, 2 per byte
  I4,    // packed two's complement, 2 per byte
  U2,    // packed, 4 per byte
  U1,    // packed, 8 per byte
};

inline constexpr DType kAllDTypes[] = {DType::F32, DType::F16, DType::BF16, DType::F64, DType::F8E4M3,
                                       DType::F8E5M2, DType::I8, DType::U8, DType::I16, DType::U16,
                                       DType::I32, DType::U32, DType::I64, DType::U64, DType::Bool,
                                       DType::U4, DType::I4, DType::U2, DType::U1};

// Bits one element occupies: 32 for F32, 4 for U4.
constexpr int dtype_bits(DType t) noexcept {
  switch (t) {
    case DType::F64: case DType::I64: case DType::U64: return 64;
    case DType::F32: case DType::I32: case DType::U32: return 32;
    case DType::F16: case DType::BF16: case DType::I16: case DType::U16: return 16;
    case DType::F8E4M3: case DType::F8E5M2: case DType::I8: case DType::U8: case DType::Bool: return 8;
    case DType::U4: case DType::I4: return 4;
    case DType::U2: return 2;
    case DType::U1: return 1;
  }
  return 0;
}

constexpr bool is_packed(DType t) noexcept { return dtype_bits(t) < 8; }
// Elements per byte of a packed type; 1 for every other type.
constexpr int elements_per_byte(DType t) noexcept { return is_packed(t) ? 8 / dtype_bits(t) : 1; }
// Bytes per element of a byte-addressable type; 1 for packed types (use storage_bytes for sizes).
constexpr std::size_t dtype_size(DType t) noexcept {
  return is_packed(t) ? 1 : static_cast<std::size_t>(dtype_bits(t) / 8);
}
constexpr bool is_floating(DType t) noexcept {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64 || t == DType::F8E4M3 ||
         t == DType::F8E5M2;
}
constexpr bool is_signed_integer(DType t) noexcept {
  return t == DType::I8 || t == DType::I16 || t == DType::I32 || t == DType::I64 || t == DType::I4;
}

// Our short name: "f32", "bf16", "u4", ...
std::string_view dtype_name(DType t) noexcept;
// Parse our short name; nullopt when unknown.
std::optional<DType> dtype_from_name(std::string_view name) noexcept;
// The safetensors name ("F32", "BF16", "F8_E4M3", ...) where one exists; empty for packed types, which
// safetensors files hold as U8 bytes.
std::string_view safetensors_dtype_name(DType t) noexcept;
std::optional<DType> dtype_from_safetensors_name(std::string_view name) noexcept;

// The C++ type behind a byte-addressable dtype, for Tensor::data<T>() checks.
template <typename T>
struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };
template <> struct dtype_of<std::int8_t> { static constexpr DType value = DType::I8; };
template <> struct dtype_of<std::uint8_t> { static constexpr DType value = DType::U8; };
template <> struct dtype_of<std::int16_t> { static constexpr DType value = DType::I16; };
template <> struct dtype_of<std::uint16_t> { static constexpr DType value = DType::U16; };
template <> struct dtype_of<std::int32_t> { static constexpr DType value = DType::I32; };
template <> struct dtype_of<std::uint32_t> { static constexpr DType value = DType::U32; };
template <> struct dtype_of<std::int64_t> { static constexpr DType value = DType::I64; };
template <> struct dtype_of<std::uint64_t> { static constexpr DType value = DType::U64; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::Bool; };

}  // namespace lowbit
