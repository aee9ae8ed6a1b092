// Small things the subcommands share: the progress line, number formatting.
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/core/progress.hpp"

namespace lowbit::cli {

// A progress callback that draws "[ 12/42] 28%  <item>  elapsed 3.1 s, left 7.9 s" on stderr: one line
// redrawn in place on a terminal, one line per step otherwise (logs, CI).
ProgressCallback stderr_progress();
// Ends a redrawn progress line (prints the newline a terminal needs).
void end_progress();

std::string with_commas(std::uint64_t v);
std::string human_bytes(std::uint64_t bytes);  // "57.95 MiB"
std::string human_seconds(double seconds);     // "3.1 s", "2 min 05 s"

}  // namespace lowbit::cli
