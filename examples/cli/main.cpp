// lowbit: quantize LLM checkpoints, inspect and compare them.
#include <cstdio>
#include <exception>

#include <fmt/format.h>

#include "commands.hpp"
#include "lowbit/core/error.hpp"
#include "lowbit/version.hpp"

int main(int argc, char** argv) {
  CLI::App app{"lowbit " LOWBIT_VERSION_STRING ": low-bit quantization of LLM weights", "lowbit"};
  app.set_version_flag("--version", LOWBIT_VERSION_STRING);
  app.require_subcommand(1);
  lowbit::cli::register_inspect(app);
  lowbit::cli::register_quantize(app);
  lowbit::cli::register_dequantize(app);
  lowbit::cli::register_compare(app);
  lowbit::cli::register_quality(app);
  lowbit::cli::register_perplexity(app);
  lowbit::cli::register_generate(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help (code 0) or the parse error
    return code == 0 ? 0 : 2;
  } catch (const lowbit::Error& e) {
    fmt::print(stderr, "lowbit: error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "lowbit: error: {}\n", e.what());
    return 2;
  }
  return 0;
}
