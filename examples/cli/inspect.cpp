// lowbit inspect PATH: every tensor of a safetensors file or checkpoint folder, then totals.
#include <cstdio>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli_util.hpp"
#include "commands.hpp"
#include "lowbit/io/checkpoint.hpp"

namespace lowbit::cli {
namespace {

struct InspectOptions {
  std::string path;
  bool json = false;
};

std::string dtype_label(DType t) {
  const std::string_view s = safetensors_dtype_name(t);
  return std::string(s.empty() ? dtype_name(t) : s);
}

void run_inspect(const InspectOptions& options) {
  const io::Checkpoint checkpoint = io::Checkpoint::open(options.path);
  const std::vector<std::string> names = checkpoint.names();
  std::uint64_t total_bytes = 0;
  std::uint64_t total_params = 0;
  for (const auto& name : names) {
    const auto& info = checkpoint.info(name);
    total_bytes += info.nbytes();
    total_params += static_cast<std::uint64_t>(info.shape.numel());
  }

  if (options.json) {
    nlohmann::json out;
    out["path"] = options.path;
    nlohmann::json files = nlohmann::json::array();
    for (const auto& f : checkpoint.files()) {
      files.push_back({{"file", f.path().filename().string()}, {"metadata", f.metadata()}});
    }
    out["files"] = files;
    nlohmann::json tensors = nlohmann::json::array();
    for (const auto& name : names) {
      const auto& info = checkpoint.info(name);
      tensors.push_back({{"name", name},
                         {"dtype", dtype_label(info.dtype)},
                         {"shape", std::vector<std::int64_t>(info.shape.begin(), info.shape.end())},
                         {"bytes", info.nbytes()},
                         {"file", checkpoint.file_of(name).path().filename().string()}});
    }
    out["tensors"] = tensors;
    out["total"] = {{"tensors", names.size()}, {"bytes", total_bytes}, {"parameters", total_params}};
    fmt::print("{}\n", out.dump(2));
    return;
  }

  std::size_t width = 4;
  for (const auto& name : names) width = std::max(width, name.size());
  fmt::print("{}: {} tensors in {} file{}\n", options.path, names.size(), checkpoint.files().size(),
             checkpoint.files().size() == 1 ? "" : "s");
  for (const auto& f : checkpoint.files()) {
    for (const auto& [key, value] : f.metadata()) {
      fmt::print("  metadata {}: {} = {}\n", f.path().filename().string(), key,
                 value.size() > 120 ? value.substr(0, 117) + "..." : value);
    }
  }
  fmt::print("{:<{}}  {:<7}  {:<22}  {:>15}\n", "name", width, "dtype", "shape", "bytes");
  for (const auto& name : names) {
    const auto& info = checkpoint.info(name);
    fmt::print("{:<{}}  {:<7}  {:<22}  {:>15}\n", name, width, dtype_label(info.dtype), info.shape.to_string(),
               with_commas(info.nbytes()));
  }
  fmt::print("total: {} tensors, {} parameters, {} bytes ({:.2f} MiB)\n", names.size(), with_commas(total_params),
             with_commas(total_bytes), static_cast<double>(total_bytes) / (1024.0 * 1024.0));
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto options = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand("inspect", "List each tensor's name, dtype, shape and bytes, then totals");
  cmd->add_option("path", options->path, "A .safetensors file or a checkpoint folder")->required();
  cmd->add_flag("--json", options->json, "Print JSON for scripts instead of a table");
  cmd->callback([options] { run_inspect(*options); });
}

}  // namespace lowbit::cli
