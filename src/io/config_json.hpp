// Private helpers of the readers of quantized-checkpoint configs (gptq, awq): config.json and
// quantize_config.json values as the Python tools that wrote them would take them.
#pragma once

#include <algorithm>
#include <cctype>
#include <exception>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "lowbit/core/error.hpp"
#include "lowbit/io/checkpoint.hpp"

namespace lowbit::io::detail {

// The folder holding a checkpoint's config files (the checkpoint itself, or a single file's folder).
inline std::filesystem::path config_folder(const Checkpoint& checkpoint) {
  return std::filesystem::is_directory(checkpoint.path()) ? checkpoint.path() : checkpoint.path().parent_path();
}

inline std::string ascii_lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return s;
}

// An integer value: a JSON integer, an integral float (4.0) or a string of digits ("4"), as Python's int()
// takes it from these files (the tools pass values through unchanged). Corrupt names `format`, the file
// (`source`) and the key otherwise.
inline std::int64_t config_integer(const nlohmann::ordered_json& v, std::string_view key, std::string_view source,
                                   std::string_view format) {
  if (v.is_number_integer()) return v.get<std::int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    LOWBIT_CHECK(d == static_cast<double>(static_cast<std::int64_t>(d)), ErrorCode::Corrupt,
                 "{}: '{}': '{}' = {} is not an integer", format, source, key, d);
    return static_cast<std::int64_t>(d);
  }
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    std::size_t used = 0;
    std::int64_t out = 0;
    try {
      out = std::stoll(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    LOWBIT_CHECK(used == s.size() && !s.empty(), ErrorCode::Corrupt, "{}: '{}': '{}' = \"{}\" is not an integer",
                 format, source, key, s);
    return out;
  }
  LOWBIT_THROW(ErrorCode::Corrupt, "{}: '{}': '{}' is {}; expected an integer", format, source, key, v.dump());
}

}  // namespace lowbit::io::detail
