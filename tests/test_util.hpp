// Helpers every CPU test binary shares: a private temporary folder, the expectation of a lowbit::Error with
// its message, a substring assertion, and the values of a tensor as a flat vector. The folder-specific
// helpers (io/io_test_util.hpp, model/model_test_util.hpp) build on these.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <exception>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "lowbit/core/error.hpp"
#include "lowbit/core/tensor.hpp"

namespace lowbit::test {

// A fresh folder under the system temp folder, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "lowbit-test-XXXXXX").string();
    std::vector<char> name(pattern.begin(), pattern.end());
    name.push_back('\0');
    if (::mkdtemp(name.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
    path_ = name.data();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }
  // Names of the entries in the folder, sorted.
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(path_)) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::filesystem::path path_;
};

// Runs `body`, requires it to throw lowbit::Error with `code`, and returns the message ("" when it did not
// throw, after recording the failure). Both argument orders are taken: error_message(code, body) and
// error_message(body, code).
template <typename Body>
std::string error_message(ErrorCode code, Body&& body) {
  try {
    body();
  } catch (const Error& e) {
    EXPECT_EQ(to_string(e.code()), to_string(code)) << "message: " << e.what();
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected lowbit::Error{" << to_string(code) << "}, got another exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected lowbit::Error{" << to_string(code) << "}, nothing was thrown";
  return {};
}
template <typename Body>
  requires(!std::is_same_v<std::remove_cvref_t<Body>, ErrorCode>)
std::string error_message(Body&& body, ErrorCode code) {
  return error_message(code, std::forward<Body>(body));
}

inline ::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

// The elements of `t` converted to fp32, in row-major order (any strides).
inline std::vector<float> floats_of(const Tensor& t) {
  const Tensor c = t.to(DType::F32).contiguous();
  return {c.data<float>(), c.data<float>() + c.numel()};
}

// The bytes of `t` in row-major order (any strides).
inline std::vector<std::uint8_t> bytes_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  const auto* p = static_cast<const std::uint8_t*>(c.raw_data());
  return {p, p + c.nbytes()};
}

}  // namespace lowbit::test
