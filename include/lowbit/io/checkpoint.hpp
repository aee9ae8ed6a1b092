// A checkpoint: the tensors of one model, in one safetensors file or in a folder of shards.
//
// Accepted layouts:
//   - a single .safetensors file;
//   - a folder with model.safetensors.index.json ({"weight_map": {tensor: shard file}}), the Hugging Face
//     sharded layout; every listed shard must exist in the folder and hold the tensors the map gives it;
//   - a folder with one or more *.safetensors files and no index (a tensor name must not repeat).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/io/safetensors.hpp"

namespace lowbit::io {

class Checkpoint {
 public:
  // Throws IO (missing path), Corrupt (a bad index or shard) or InvalidArgument (a folder with no
  // safetensors files, naming the folder).
  static Checkpoint open(const std::filesystem::path& path);

  const std::filesystem::path& path() const noexcept { return path_; }
  const std::vector<SafetensorsFile>& files() const noexcept { return files_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(std::string_view name) const;
  // Throws InvalidArgument naming the checkpoint and the tensor.
  const SafetensorsFile& file_of(std::string_view name) const;
  const TensorInfo& info(std::string_view name) const { return file_of(name).info(name); }
  Tensor tensor(std::string_view name) const { return file_of(name).tensor(name); }

 private:
  std::filesystem::path path_;
  std::vector<SafetensorsFile> files_;
  std::unordered_map<std::string, std::size_t> owner_;  // tensor name -> index into files_
};

}  // namespace lowbit::io
