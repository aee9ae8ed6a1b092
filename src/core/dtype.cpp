#include "lowbit/core/dtype.hpp"

namespace lowbit {
namespace {

struct DTypeNames {
  DType dtype;
  std::string_view ours;
  std::string_view safetensors;
};

constexpr DTypeNames kNames[] = {
    {DType::F32, "f32", "F32"},       {DType::F16, "f16", "F16"},         {DType::BF16, "bf16", "BF16"},
    {DType::F64, "f64", "F64"},       {DType::F8E4M3, "f8e4m3", "F8_E4M3"}, {DType::F8E5M2, "f8e5m2", "F8_E5M2"},
    {DType::I8, "i8", "I8"},          {DType::U8, "u8", "U8"},            {DType::I16, "i16", "I16"},
    {DType::U16, "u16", "U16"},       {DType::I32, "i32", "I32"},         {DType::U32, "u32", "U32"},
    {DType::I64, "i64", "I64"},       {DType::U64, "u64", "U64"},         {DType::Bool, "bool", "BOOL"},
    {DType::U4, "u4", ""},            {DType::I4, "i4", ""},              {DType::U2, "u2", ""},
    {DType::U1, "u1", ""},
};
static_assert(std::size(kNames) == std::size(kAllDTypes));

}  // namespace

std::string_view dtype_name(DType t) noexcept {
  for (const auto& n : kNames) {
    if (n.dtype == t) return n.ours;
  }
  return "?";
}

std::optional<DType> dtype_from_name(std::string_view name) noexcept {
  for (const auto& n : kNames) {
    if (n.ours == name) return n.dtype;
  }
  return std::nullopt;
}

std::string_view safetensors_dtype_name(DType t) noexcept {
  for (const auto& n : kNames) {
    if (n.dtype == t) return n.safetensors;
  }
  return {};
}

std::optional<DType> dtype_from_safetensors_name(std::string_view name) noexcept {
  if (name.empty()) return std::nullopt;
  for (const auto& n : kNames) {
    if (n.safetensors == name) return n.dtype;
  }
  return std::nullopt;
}

}  // namespace lowbit
