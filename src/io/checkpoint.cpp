#include "lowbit/io/checkpoint.hpp"
#include "lowbit/io/atomic_file.hpp"

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

namespace lowbit::io {
namespace {

using nlohmann::json;

constexpr const char* kIndexName = "model.safetensors.index.json";

std::string read_text(const std::filesystem::path& path) { return read_text_file(path, "checkpoint"); }

// A shard must be a file of the index's own folder: no separators, no "." or "..".
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
}

// weight_map of the index: tensor name -> shard file name, every rule of the layout checked.
std::map<std::string, std::string> read_weight_map(const std::filesystem::path& index_path) {
  const std::string label = index_path.string();
  const std::string text = read_text(index_path);
  // Keys seen in each open object: a tensor listed twice would otherwise silently keep its last shard.
  std::vector<std::set<std::string>> open_objects;
  const auto on_event = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: open_objects.emplace_back(); break;
      case json::parse_event_t::object_end: open_objects.pop_back(); break;
      case json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        LOWBIT_CHECK(open_objects.back().insert(key).second, ErrorCode::Corrupt,
                     "checkpoint: '{}': the key '{}' appears twice in one object", label, key);
        break;
      }
      default: break;
    }
    return true;
  };
  json index;
  try {
    index = json::parse(text, on_event, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    LOWBIT_THROW(ErrorCode::Corrupt, "checkpoint: '{}' is not valid JSON: {}", label, e.what());
  }
  LOWBIT_CHECK(index.is_object(), ErrorCode::Corrupt, "checkpoint: '{}' is a JSON {}, not an object", label,
               index.type_name());
  const auto it = index.find("weight_map");
  LOWBIT_CHECK(it != index.end() && it->is_object(), ErrorCode::Corrupt,
               "checkpoint: '{}' has no \"weight_map\" object mapping tensor names to shard files", label);
  std::map<std::string, std::string> weight_map;
  for (const auto& [tensor, shard] : it->items()) {
    LOWBIT_CHECK(shard.is_string(), ErrorCode::Corrupt,
                 "checkpoint: '{}': weight_map gives tensor '{}' a JSON {}, not a shard file name", label, tensor,
                 shard.type_name());
    const auto& file = shard.get_ref<const std::string&>();
    LOWBIT_CHECK(is_plain_file_name(file), ErrorCode::Corrupt,
                 "checkpoint: '{}': weight_map puts tensor '{}' in '{}', which is not a plain file name of the "
                 "index's folder",
                 label, tensor, file);
    weight_map.emplace(tensor, file);
  }
  LOWBIT_CHECK(!weight_map.empty(), ErrorCode::Corrupt, "checkpoint: '{}': weight_map lists no tensors", label);
  return weight_map;
}

}  // namespace

Checkpoint Checkpoint::open(const std::filesystem::path& path) {
  Checkpoint checkpoint;
  checkpoint.path_ = path;
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  LOWBIT_CHECK(std::filesystem::exists(status), ErrorCode::IO, "checkpoint: '{}' does not exist", path.string());

  if (!std::filesystem::is_directory(status)) {
    checkpoint.files_.push_back(SafetensorsFile::open(path));
    for (const TensorInfo& t : checkpoint.files_[0].tensors()) checkpoint.owner_.emplace(t.name, 0);
    return checkpoint;
  }

  const std::filesystem::path index_path = path / kIndexName;
  if (std::filesystem::exists(index_path)) {
    const std::map<std::string, std::string> weight_map = read_weight_map(index_path);
    std::set<std::string> shards;
    for (const auto& [tensor, shard] : weight_map) shards.insert(shard);
    std::map<std::string, std::size_t> shard_index;
    for (const std::string& shard : shards) {
      const std::filesystem::path shard_path = path / shard;
      LOWBIT_CHECK(std::filesystem::is_regular_file(shard_path, ec), ErrorCode::Corrupt,
                   "checkpoint: '{}' lists shard '{}', which is not a file in '{}'", index_path.string(), shard,
                   path.string());
      shard_index.emplace(shard, checkpoint.files_.size());
      checkpoint.files_.push_back(SafetensorsFile::open(shard_path));
    }
    for (const auto& [tensor, shard] : weight_map) {
      const std::size_t i = shard_index.at(shard);
      LOWBIT_CHECK(checkpoint.files_[i].contains(tensor), ErrorCode::Corrupt,
                   "checkpoint: '{}' maps tensor '{}' to shard '{}', which does not hold it", index_path.string(),
                   tensor, shard);
      checkpoint.owner_.emplace(tensor, i);
    }
    for (const auto& [shard, i] : shard_index) {
      for (const TensorInfo& t : checkpoint.files_[i].tensors()) {
        const auto listed = weight_map.find(t.name);
        LOWBIT_CHECK(listed != weight_map.end(), ErrorCode::Corrupt,
                     "checkpoint: shard '{}' holds tensor '{}', which the index '{}' does not list", shard, t.name,
                     index_path.string());
        LOWBIT_CHECK(listed->second == shard, ErrorCode::Corrupt,
                     "checkpoint: shard '{}' holds tensor '{}', which the index '{}' puts in '{}'", shard, t.name,
                     index_path.string(), listed->second);
      }
    }
    return checkpoint;
  }

  std::vector<std::filesystem::path> shard_paths;
  for (const auto& entry : std::filesystem::directory_iterator(path)) {
    if (entry.path().extension() == ".safetensors" && entry.is_regular_file()) shard_paths.push_back(entry.path());
  }
  LOWBIT_CHECK(!shard_paths.empty(), ErrorCode::InvalidArgument,
               "checkpoint: folder '{}' holds no .safetensors files and no {}", path.string(), kIndexName);
  std::sort(shard_paths.begin(), shard_paths.end());
  for (const std::filesystem::path& shard_path : shard_paths) {
    const std::size_t i = checkpoint.files_.size();
    checkpoint.files_.push_back(SafetensorsFile::open(shard_path));
    for (const TensorInfo& t : checkpoint.files_[i].tensors()) {
      const auto [it, inserted] = checkpoint.owner_.emplace(t.name, i);
      LOWBIT_CHECK(inserted, ErrorCode::Corrupt,
                   "checkpoint: tensor '{}' is in both '{}' and '{}' of folder '{}', which has no {} to choose", t.name,
                   checkpoint.files_[it->second].path().filename().string(), shard_path.filename().string(),
                   path.string(), kIndexName);
    }
  }
  return checkpoint;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(owner_.size());
  for (const auto& [name, file] : owner_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

bool Checkpoint::contains(std::string_view name) const { return owner_.count(std::string(name)) != 0; }

const SafetensorsFile& Checkpoint::file_of(std::string_view name) const {
  const auto it = owner_.find(std::string(name));
  LOWBIT_CHECK(it != owner_.end(), ErrorCode::InvalidArgument,
               "checkpoint: '{}': no tensor named '{}' (the checkpoint holds {} tensors)", path_.string(), name,
               owner_.size());
  return files_[it->second];
}

}  // namespace lowbit::io
