// Subcommands of the lowbit CLI. Each register_* adds one subcommand with its options and callback;
// a callback throws lowbit::Error on failure and main() turns it into one line on stderr and exit code 2.
#pragma once

#include <CLI/CLI.hpp>

namespace lowbit::cli {

void register_inspect(CLI::App& app);
void register_quantize(CLI::App& app);
void register_dequantize(CLI::App& app);
void register_compare(CLI::App& app);
void register_quality(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_generate(CLI::App& app);

}  // namespace lowbit::cli
