// dtype.hpp: names in our API and in safetensors, and the size facts of every DType.
#include "lowbit/core/dtype.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <string>
#include <string_view>

namespace lowbit {
namespace {

// Written out by hand, not derived from the header, so a changed constant shows up here.
struct DTypeFacts {
  DType dtype;
  std::string_view name;
  std::string_view safetensors;  // empty: no safetensors name (packed types travel as U8)
  int bits;
  bool floating;
  bool signed_integer;
};

constexpr DTypeFacts kFacts[] = {
    {DType::F32, "f32", "F32", 32, true, false},
    {DType::F16, "f16", "F16", 16, true, false},
    {DType::BF16, "bf16", "BF16", 16, true, false},
    {DType::F64, "f64", "F64", 64, true, false},
    {DType::F8E4M3, "f8e4m3", "F8_E4M3", 8, true, false},
    {DType::F8E5M2, "f8e5m2", "F8_E5M2", 8, true, false},
    {DType::I8, "i8", "I8", 8, false, true},
    {DType::U8, "u8", "U8", 8, false, false},
    {DType::I16, "i16", "I16", 16, false, true},
    {DType::U16, "u16", "U16", 16, false, false},
    {DType::I32, "i32", "I32", 32, false, true},
    {DType::U32, "u32", "U32", 32, false, false},
    {DType::I64, "i64", "I64", 64, false, true},
    {DType::U64, "u64", "U64", 64, false, false},
    {DType::Bool, "bool", "BOOL", 8, false, false},
    {DType::U4, "u4", "", 4, false, false},
    {DType::I4, "i4", "", 4, false, true},
    {DType::U2, "u2", "", 2, false, false},
    {DType::U1, "u1", "", 1, false, false},
};

const DTypeFacts& facts_of(DType t) {
  for (const auto& f : kFacts) {
    if (f.dtype == t) return f;
  }
  ADD_FAILURE() << "no facts for dtype " << static_cast<int>(t);
  return kFacts[0];
}

TEST(DType, AllDTypesListsEveryEnumeratorOnce) {
  EXPECT_EQ(std::size(kAllDTypes), std::size(kFacts));
  std::set<DType> seen(std::begin(kAllDTypes), std::end(kAllDTypes));
  EXPECT_EQ(seen.size(), std::size(kAllDTypes));
  // The enumerators are 0..N-1 in order; kAllDTypes must reach the last one (U1).
  for (std::size_t i = 0; i < std::size(kAllDTypes); ++i) {
    EXPECT_EQ(static_cast<std::size_t>(kAllDTypes[i]), i);
  }
}

TEST(DType, BitsSizesAndFlagsOfEveryDType) {
  for (const DType t : kAllDTypes) {
    const DTypeFacts& f = facts_of(t);
    SCOPED_TRACE(std::string(f.name));
    EXPECT_EQ(dtype_bits(t), f.bits);
    const bool packed = f.bits < 8;
    EXPECT_EQ(is_packed(t), packed);
    EXPECT_EQ(elements_per_byte(t), packed ? 8 / f.bits : 1);
    EXPECT_EQ(dtype_size(t), packed ? 1u : static_cast<std::size_t>(f.bits / 8));
    EXPECT_EQ(is_floating(t), f.floating);
    EXPECT_EQ(is_signed_integer(t), f.signed_integer);
  }
}

TEST(DType, SizeFactsAreConstexpr) {
  static_assert(dtype_bits(DType::BF16) == 16);
  static_assert(dtype_size(DType::F64) == 8);
  static_assert(is_packed(DType::U2) && !is_packed(DType::Bool));
  static_assert(elements_per_byte(DType::U1) == 8 && elements_per_byte(DType::I4) == 2);
  static_assert(is_floating(DType::F8E5M2) && !is_floating(DType::I32));
  static_assert(is_signed_integer(DType::I4) && !is_signed_integer(DType::U4));
  SUCCEED();
}

TEST(DType, OurNamesRoundTrip) {
  std::set<std::string_view> names;
  for (const DType t : kAllDTypes) {
    const DTypeFacts& f = facts_of(t);
    EXPECT_EQ(dtype_name(t), f.name);
    const auto parsed = dtype_from_name(f.name);
    ASSERT_TRUE(parsed.has_value()) << f.name;
    EXPECT_EQ(*parsed, t) << f.name;
    names.insert(dtype_name(t));
  }
  EXPECT_EQ(names.size(), std::size(kAllDTypes));  // no two dtypes share a name
}

TEST(DType, SafetensorsNamesRoundTrip) {
  for (const DType t : kAllDTypes) {
    const DTypeFacts& f = facts_of(t);
    SCOPED_TRACE(std::string(f.name));
    EXPECT_EQ(safetensors_dtype_name(t), f.safetensors);
    if (f.safetensors.empty()) {
      EXPECT_TRUE(is_packed(t));
      continue;
    }
    const auto parsed = dtype_from_safetensors_name(f.safetensors);
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(*parsed, t);
  }
}

TEST(DType, UnknownNamesAreRejected) {
  for (const std::string_view bad : {"", "F32", "float32", "fp16", "u3", "f32 ", "BF16", "int8", "?"}) {
    EXPECT_FALSE(dtype_from_name(bad).has_value()) << "'" << bad << "'";
  }
  // Safetensors names are case-sensitive and never our short names; the empty name of packed types
  // must not parse as U4.
  for (const std::string_view bad : {"", "f32", "bf16", "U4", "I4", "F8E4M3", "Bool", "bool", "F8_E4M3FN"}) {
    EXPECT_FALSE(dtype_from_safetensors_name(bad).has_value()) << "'" << bad << "'";
  }
}

TEST(DType, DTypeOfMapsCppTypes) {
  static_assert(dtype_of<float>::value == DType::F32);
  static_assert(dtype_of<double>::value == DType::F64);
  static_assert(dtype_of<std::int8_t>::value == DType::I8);
  static_assert(dtype_of<std::uint8_t>::value == DType::U8);
  static_assert(dtype_of<std::int16_t>::value == DType::I16);
  static_assert(dtype_of<std::uint16_t>::value == DType::U16);
  static_assert(dtype_of<std::int32_t>::value == DType::I32);
  static_assert(dtype_of<std::uint32_t>::value == DType::U32);
  static_assert(dtype_of<std::int64_t>::value == DType::I64);
  static_assert(dtype_of<std::uint64_t>::value == DType::U64);
  static_assert(dtype_of<bool>::value == DType::Bool);
  SUCCEED();
}

}  // namespace
}  // namespace lowbit
