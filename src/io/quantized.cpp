#include "lowbit/io/quantized.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>

#include "lowbit/io/atomic_file.hpp"

namespace lowbit::io {

std::vector<std::pair<std::string, Tensor>> quantized_tensors(const std::string& name, const quant::QuantizedTensor& q) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [component, tensor] : q.components) out.emplace_back(name + "." + component, tensor);
  return out;
}

std::pair<std::string, std::string> quantized_metadata(const std::string& name, const quant::QuantizedTensor& q) {
  nlohmann::json j;
  j["method"] = q.method;
  j["shape"] = std::vector<std::int64_t>(q.shape.begin(), q.shape.end());
  j["dtype"] = std::string(dtype_name(q.dtype));
  j["params"] = nlohmann::json::parse(quant::params_to_json(q.params));
  std::vector<std::string> components;
  for (const auto& [c, _] : q.components) components.push_back(c);
  j["components"] = components;
  return {std::string(kQuantMetadataPrefix) + name, j.dump()};
}

std::vector<std::string> quantized_names(const Checkpoint& checkpoint) {
  std::set<std::string> names;
  for (const auto& file : checkpoint.files()) {
    for (const auto& [key, _] : file.metadata()) {
      if (key.starts_with(kQuantMetadataPrefix)) names.insert(key.substr(kQuantMetadataPrefix.size()));
    }
  }
  return {names.begin(), names.end()};
}

quant::QuantizedTensor load_quantized(const Checkpoint& checkpoint, std::string_view name) {
  const std::string key = std::string(kQuantMetadataPrefix) + std::string(name);
  const std::string* text = nullptr;
  for (const auto& file : checkpoint.files()) {
    const auto it = file.metadata().find(key);
    if (it != file.metadata().end()) text = &it->second;
  }
  LOWBIT_CHECK(text != nullptr, ErrorCode::InvalidArgument, "load_quantized: '{}' holds no quantized weight '{}'",
               checkpoint.path().string(), name);
  const std::string context = fmt::format("load_quantized: '{}' in '{}'", name, checkpoint.path().string());
  const nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
  LOWBIT_CHECK(j.is_object() && j.contains("method") && j["method"].is_string() && j.contains("shape") &&
                   j["shape"].is_array() && j.contains("dtype") && j["dtype"].is_string() && j.contains("params") &&
                   j["params"].is_object() && j.contains("components") && j["components"].is_array(),
               ErrorCode::Corrupt, "{}: metadata is not a lowbit quantization record: '{}'", context,
               text->substr(0, 200));
  quant::QuantizedTensor q;
  q.method = j["method"].get<std::string>();
  std::vector<std::int64_t> dims;
  for (const auto& d : j["shape"]) {
    LOWBIT_CHECK(d.is_number_integer() && d.get<std::int64_t>() >= 0, ErrorCode::Corrupt, "{}: bad shape {}", context,
                 j["shape"].dump());
    dims.push_back(d.get<std::int64_t>());
  }
  LOWBIT_CHECK(dims.size() <= kMaxRank, ErrorCode::Corrupt, "{}: shape {} has rank > {}", context, j["shape"].dump(),
               kMaxRank);
  q.shape = Shape(std::span<const std::int64_t>(dims));
  const auto dtype = dtype_from_name(j["dtype"].get<std::string>());
  LOWBIT_CHECK(dtype.has_value(), ErrorCode::Corrupt, "{}: unknown dtype '{}'", context, j["dtype"].get<std::string>());
  q.dtype = *dtype;
  q.params = quant::params_from_json(j["params"].dump(), context);
  for (const auto& c : j["components"]) {
    LOWBIT_CHECK(c.is_string(), ErrorCode::Corrupt, "{}: component names must be strings", context);
    const std::string tensor_name = std::string(name) + "." + c.get<std::string>();
    LOWBIT_CHECK(checkpoint.contains(tensor_name), ErrorCode::Corrupt, "{}: component tensor '{}' is missing", context,
                 tensor_name);
    q.components[c.get<std::string>()] = checkpoint.tensor(tensor_name);
  }
  return q;
}

// ---- CheckpointWriter ------------------------------------------------------------------------------------

namespace {
std::filesystem::path unique_sibling(const std::filesystem::path& folder, const char* tag) {
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto candidate = folder;
    candidate += fmt::format(".{}-{:08x}", tag, rd());
    if (!std::filesystem::exists(candidate)) return candidate;
  }
  LOWBIT_THROW(ErrorCode::IO, "checkpoint writer: cannot find a free temporary name beside '{}'", folder.string());
}
}  // namespace

CheckpointWriter::CheckpointWriter(std::filesystem::path folder, std::uint64_t max_shard_bytes)
    : folder_(std::move(folder)), max_shard_bytes_(max_shard_bytes) {
  LOWBIT_CHECK(max_shard_bytes_ > 0, ErrorCode::InvalidArgument, "checkpoint writer: max_shard_bytes must be > 0");
  if (folder_.filename().empty()) folder_ = folder_.parent_path();  // "out/" -> "out"
  const auto parent = folder_.has_parent_path() ? folder_.parent_path() : std::filesystem::path(".");
  LOWBIT_CHECK(std::filesystem::is_directory(parent), ErrorCode::IO, "checkpoint writer: folder '{}' does not exist",
               parent.string());
  LOWBIT_CHECK(!std::filesystem::exists(folder_) || std::filesystem::is_directory(folder_), ErrorCode::IO,
               "checkpoint writer: '{}' exists and is not a folder", folder_.string());
  temp_ = unique_sibling(folder_, "tmp");
  std::error_code ec;
  std::filesystem::create_directory(temp_, ec);
  LOWBIT_CHECK(!ec, ErrorCode::IO, "checkpoint writer: cannot create '{}': {}", temp_.string(), ec.message());
}

CheckpointWriter::~CheckpointWriter() {
  if (!finished_) {
    std::error_code ec;
    std::filesystem::remove_all(temp_, ec);
  }
}

void CheckpointWriter::add(const std::string& name, const Tensor& tensor) {
  LOWBIT_CHECK(!finished_, ErrorCode::InvalidArgument, "checkpoint writer: add('{}') after finish()", name);
  const std::uint64_t bytes = tensor.nbytes();
  if (!pending_.empty() && pending_bytes_ + bytes > max_shard_bytes_) flush_shard();
  pending_.emplace_back(name, tensor);
  pending_bytes_ += bytes;
}

void CheckpointWriter::add_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

void CheckpointWriter::add_file(const std::filesystem::path& source, const std::string& name) {
  std::error_code ec;
  std::filesystem::copy_file(source, temp_ / name, std::filesystem::copy_options::overwrite_existing, ec);
  LOWBIT_CHECK(!ec, ErrorCode::IO, "checkpoint writer: cannot copy '{}': {}", source.string(), ec.message());
}

void CheckpointWriter::add_text_file(const std::string& name, const std::string& text) {
  write_file_atomically(temp_ / name, text);
}

void CheckpointWriter::flush_shard() {
  if (pending_.empty()) return;
  const auto path = temp_ / fmt::format("shard-{:05d}.safetensors", shard_names_.size() + 1);
  save_safetensors(path, pending_, metadata_);
  std::vector<std::string> names;
  for (const auto& [n, _] : pending_) names.push_back(n);
  shard_names_.push_back(std::move(names));
  bytes_written_ += std::filesystem::file_size(path);
  pending_.clear();
  pending_bytes_ = 0;
}

void CheckpointWriter::finish() {
  LOWBIT_CHECK(!finished_, ErrorCode::InvalidArgument, "checkpoint writer: finish() called twice");
  flush_shard();
  const std::size_t shards = shard_names_.size();
  auto rename_in_temp = [&](const std::string& from, const std::string& to) {
    std::error_code ec;
    std::filesystem::rename(temp_ / from, temp_ / to, ec);
    LOWBIT_CHECK(!ec, ErrorCode::IO, "checkpoint writer: cannot rename '{}': {}", (temp_ / from).string(), ec.message());
  };
  if (shards == 1) {
    rename_in_temp("shard-00001.safetensors", "model.safetensors");
  } else if (shards > 1) {
    nlohmann::json index;
    index["metadata"] = {{"total_size", bytes_written_}};
    nlohmann::json map = nlohmann::json::object();
    for (std::size_t s = 0; s < shards; ++s) {
      const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards);
      rename_in_temp(fmt::format("shard-{:05d}.safetensors", s + 1), file);
      for (const auto& n : shard_names_[s]) map[n] = file;
    }
    index["weight_map"] = map;
    write_file_atomically(temp_ / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  // Swap the finished folder in: the old target (if any) moves aside first and is removed last.
  std::error_code ec;
  std::filesystem::path old;
  if (std::filesystem::exists(folder_)) {
    old = unique_sibling(folder_, "old");
    std::filesystem::rename(folder_, old, ec);
    LOWBIT_CHECK(!ec, ErrorCode::IO, "checkpoint writer: cannot move the previous '{}' aside: {}", folder_.string(),
                 ec.message());
  }
  std::filesystem::rename(temp_, folder_, ec);
  if (ec) {
    if (!old.empty()) std::filesystem::rename(old, folder_);
    LOWBIT_THROW(ErrorCode::IO, "checkpoint writer: cannot rename '{}' to '{}': {}", temp_.string(), folder_.string(),
                 ec.message());
  }
  finished_ = true;
  if (!old.empty()) std::filesystem::remove_all(old, ec);
}

}  // namespace lowbit::io
