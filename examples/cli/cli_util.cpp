#include "cli_util.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>

#include <fmt/format.h>


namespace lowbit::cli {
namespace {
bool g_line_open = false;
}

std::string with_commas(std::uint64_t v) {
  std::string digits = std::to_string(v);
  for (int i = static_cast<int>(digits.size()) - 3; i > 0; i -= 3) digits.insert(static_cast<std::size_t>(i), ",");
  return digits;
}

std::string human_bytes(std::uint64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1024.0 * 1024 * 1024) return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return fmt::format("{:.2f} MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return fmt::format("{:.1f} KiB", b / 1024.0);
  return fmt::format("{} B", bytes);
}

std::string human_seconds(double s) {
  if (s < 0) return "?";
  if (s < 60) return fmt::format("{:.1f} s", s);
  const auto total = static_cast<long>(std::lround(s));
  if (total < 3600) return fmt::format("{} min {:02d} s", total / 60, total % 60);
  return fmt::format("{} h {:02d} min", total / 3600, (total % 3600) / 60);
}

ProgressCallback stderr_progress() {
  const bool tty = isatty(fileno(stderr)) != 0;
  return [tty](const ProgressEvent& e) {
    const int width = static_cast<int>(std::to_string(e.total).size());
    const double pct = e.total > 0 ? 100.0 * static_cast<double>(e.done) / static_cast<double>(e.total) : 0.0;
    const std::string line =
        fmt::format("{} [{:>{}}/{}] {:3.0f}%  {}  elapsed {}, left {}", e.stage, e.done, width, e.total, pct, e.item,
                    human_seconds(e.elapsed_seconds), human_seconds(e.eta_seconds));
    if (tty) {
      fmt::print(stderr, "\r\x1b[2K{}", line);
      g_line_open = e.done < e.total;
      if (!g_line_open) fmt::print(stderr, "\n");
    } else {
      fmt::print(stderr, "{}\n", line);
    }
    std::fflush(stderr);
  };
}

void end_progress() {
  if (g_line_open) fmt::print(stderr, "\n");
  g_line_open = false;
}

}  // namespace lowbit::cli
