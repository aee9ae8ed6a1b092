// error.hpp: LOWBIT_CHECK / LOWBIT_THROW and the names of the error codes.
#include "lowbit/core/error.hpp"

#include <gtest/gtest.h>

#include <set>
#include <stdexcept>
#include <string>
#include <string_view>

namespace lowbit {
namespace {

// Formats "{}" from a counter so the test can see whether the message was built.
struct CountedArg {
  int* formatted;
};

}  // namespace
}  // namespace lowbit

template <>
struct fmt::formatter<lowbit::CountedArg> : fmt::formatter<std::string_view> {
  auto format(const lowbit::CountedArg& a, fmt::format_context& ctx) const {
    ++*a.formatted;
    return fmt::formatter<std::string_view>::format("counted", ctx);
  }
};

namespace lowbit {
namespace {

void check_group(int k, int group_size) {
  LOWBIT_CHECK(k % group_size == 0, ErrorCode::InvalidArgument,
               "quantize_affine: k = {} is not a multiple of group_size = {} (remainder {})", k, group_size,
               k % group_size);
}

TEST(LowbitCheck, PassingConditionDoesNotThrow) { EXPECT_NO_THROW(check_group(4096, 128)); }

TEST(LowbitCheck, FailingConditionThrowsErrorWithCodeAndFormattedMessage) {
  try {
    check_group(4100, 128);
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_STREQ(e.what(), "quantize_affine: k = 4100 is not a multiple of group_size = 128 (remainder 4)");
  }
}

TEST(LowbitCheck, ErrorIsARuntimeError) {
  EXPECT_THROW(check_group(3, 2), std::runtime_error);
  EXPECT_THROW(check_group(3, 2), Error);
}

TEST(LowbitCheck, MessageIsFormattedOnlyOnFailure) {
  int formatted = 0;
  LOWBIT_CHECK(true, ErrorCode::Corrupt, "never built: {}", CountedArg{&formatted});
  EXPECT_EQ(formatted, 0);
  try {
    LOWBIT_CHECK(false, ErrorCode::Corrupt, "built: {}", CountedArg{&formatted});
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Corrupt);
    EXPECT_STREQ(e.what(), "built: counted");
  }
  EXPECT_EQ(formatted, 1);
}

TEST(LowbitCheck, ConditionIsEvaluatedExactlyOnce) {
  int evaluations = 0;
  LOWBIT_CHECK(++evaluations > 0, ErrorCode::InvalidArgument, "unused");
  EXPECT_EQ(evaluations, 1);
  EXPECT_THROW(LOWBIT_CHECK(++evaluations < 0, ErrorCode::InvalidArgument, "x"), Error);
  EXPECT_EQ(evaluations, 2);
}

TEST(LowbitCheck, WorksAsASingleStatementInIfElse) {
  // The do/while(false) wrapper must make the macro one statement, so `else` binds to our `if`.
  bool reached_else = false;
  if (false)
    LOWBIT_CHECK(false, ErrorCode::InvalidArgument, "unreachable");
  else
    reached_else = true;
  EXPECT_TRUE(reached_else);
}

TEST(LowbitCheck, MessageWithoutArguments) {
  try {
    LOWBIT_CHECK(1 + 1 == 3, ErrorCode::Unsupported, "op: plain message; with braces {{}}");
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Unsupported);
    EXPECT_STREQ(e.what(), "op: plain message; with braces {}");
  }
}

TEST(LowbitThrow, ThrowsWithCodeAndMessage) {
  try {
    LOWBIT_THROW(ErrorCode::IO, "open: cannot open '{}': {}", "/no/such", "No such file or directory");
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::IO);
    EXPECT_STREQ(e.what(), "open: cannot open '/no/such': No such file or directory");
  }
}

TEST(ErrorCode, EveryCodeHasItsName) {
  const std::pair<ErrorCode, std::string_view> kNames[] = {
      {ErrorCode::InvalidArgument, "InvalidArgument"},
      {ErrorCode::ShapeMismatch, "ShapeMismatch"},
      {ErrorCode::DTypeMismatch, "DTypeMismatch"},
      {ErrorCode::Unsupported, "Unsupported"},
      {ErrorCode::IO, "IO"},
      {ErrorCode::Corrupt, "Corrupt"},
      {ErrorCode::Numerical, "Numerical"},
      {ErrorCode::OutOfMemory, "OutOfMemory"},
      {ErrorCode::Cuda, "Cuda"},
  };
  std::set<std::string_view> seen;
  for (const auto& [code, name] : kNames) {
    EXPECT_EQ(to_string(code), name);
    seen.insert(to_string(code));
  }
  EXPECT_EQ(seen.size(), std::size(kNames));
  // Cuda is the last enumerator; a value past it is not a code, and still gets a name, not a crash.
  EXPECT_EQ(static_cast<int>(ErrorCode::Cuda), static_cast<int>(std::size(kNames)) - 1);
  EXPECT_FALSE(to_string(static_cast<ErrorCode>(200)).empty());
}

TEST(Error, CodeAndMessageSurviveCopy) {
  const Error original(ErrorCode::Numerical, "gptq: not positive definite");
  const Error copy = original;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_EQ(copy.code(), ErrorCode::Numerical);
  EXPECT_STREQ(copy.what(), "gptq: not positive definite");
}

}  // namespace
}  // namespace lowbit
